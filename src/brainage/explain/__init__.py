"""Explanation methods for 3D regression CNNs: voxel relevance maps of predicted age (METHODS §8).

One file per method, one registry, one protocol (after zennit and captum)::

    method(model, x, **params) -> ndarray, shape (n, c, i, j, k), float32

``x`` has shape (n, c, i, j, k); the map lives in the input's voxel space (same grid and affine).
Models output age in years with shape (n, 1); the single output neuron is explained, signed.
Maps are computed per volume (never averaged over the batch); the model is used in eval mode and
left unchanged (mode, parameters, ``requires_grad`` flags), with every hook and canonizer removed,
also when an error is raised.

Registered methods (see each function's docstring for parameters and sign convention):

- ``"lrp"``: zennit LRP with composites ``epsilon_plus_flat`` (default), ``epsilon_gamma_box``,
  ``alpha1_beta0`` and canonizers for BatchNorm and residual blocks; Σ R = f(x) − b_out
  (:func:`lrp`).
- ``"guided_backprop"``: captum Guided Backprop, clamping ReLU and LeakyReLU
  (:func:`guided_backprop`).
- ``"integrated_gradients"``: captum IG; Σ = f(x) − f(baseline) (:func:`integrated_gradients`).
- ``"gradcam"``: captum LayerGradCam on a named layer, signed, trilinear upsampling
  (:func:`gradcam`).
- ``"smoothgrad"``: captum NoiseTunnel over Saliency, seeded (:func:`smoothgrad`).
- ``"occlusion"``: captum Occlusion, box window and stride in voxels (:func:`occlusion`).
- ``"unoise"``: 3D U-Noise importance from a noise model trained beforehand with
  :func:`brainage.explain.unoise.fit_unoise` (paper 002).

A new method is one file with a function decorated by ``@register_method("name")`` plus one
import line here.
"""

from brainage.explain._core import METHODS, list_methods, register_method
from brainage.explain.api import explain, explain_ensemble
from brainage.explain.gradcam import gradcam
from brainage.explain.guided_backprop import guided_backprop
from brainage.explain.integrated_gradients import integrated_gradients
from brainage.explain.lrp import lrp
from brainage.explain.occlusion import occlusion
from brainage.explain.smoothgrad import smoothgrad
from brainage.explain.unoise import unoise

__all__ = [
    "METHODS",
    "explain",
    "explain_ensemble",
    "gradcam",
    "guided_backprop",
    "integrated_gradients",
    "list_methods",
    "lrp",
    "occlusion",
    "register_method",
    "smoothgrad",
    "unoise",
]
