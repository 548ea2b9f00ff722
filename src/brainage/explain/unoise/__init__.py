"""3D U-Noise: learned voxel-wise noise masks as importance maps (paper 002; METHODS §8).

Bintsi et al. (2021), "Voxel-level importance maps for interpretable brain age estimation",
extending U-Noise (Koker et al. 2021, arXiv:2101.05791) to 3D regression. A 3D U-Net (the *noise
model*) is trained, with the age predictor ``f`` frozen, to add as much Gaussian noise as
possible to every voxel without harming ``f``'s prediction. Voxels that tolerate little noise are
important: ``importance = 1 − m`` where ``m = sigmoid(U-Net(x)) ∈ (0, 1)`` is the noise mask.

Training (:func:`fit_unoise`) has two stages, as in the paper:

1. *Pretraining* — the U-Net is trained as an autoencoder (voxel-wise MSE between its linear
   output and ``x``), so that it starts from features of brain structure.
2. *Noise training* — ``f`` frozen (eval mode, ``requires_grad`` off; both restored afterwards)::

       m       = sigmoid(U-Net(x))                               mask, shape of x
       σ       = (m · (v_max − v_min) + v_min) · s                noise SD per voxel
       x_noisy = x + σ · ε,          ε ~ N(0, 1) (seeded)
       L       = mean_batch (f(x_noisy) − y)² − r · mean_voxels log m

   with ``v_min = 1``, ``v_max = 5``, ``r = 0.1`` (paper). The paper's Eq. (1) is typeset as
   ``X + f_ψ(X)(v_max − v_min)ε + v_min``; its text says the mask is *scaled to* [v_min, v_max]
   and *then* multiplied by ε, which is what is implemented (a constant ``+ v_min`` shift of the
   image would make no sense).

**Target y.** The paper trains with "an input image X and label y", the MSE "between the
chronological and biological age", i.e. the *true age*: ``target="age"`` (default). With
``target="prediction"`` the clean prediction ``f(x)`` is used instead (the map then explains the
model's output rather than its accuracy, and subjects without a known age can be used).

**Intensity scale.** The paper normalised each image to zero mean and unit variance, so its
``v_min``, ``v_max`` are in units of the image's standard deviation. brainage inputs are min-max
scaled to [0, 1] inside the brain (0 outside), whose whole-volume SD is ≈ 0.2–0.35. The noise SD is
therefore multiplied by ``s``: ``noise_scale="auto"`` (default) uses, per volume and channel, the
SD of ``x`` over all voxels — exactly the paper's setting expressed in our intensity units
(equivalent to z-scoring each volume, adding the paper's noise and undoing the z-scoring).
A number uses that fixed ``s`` for every volume (``1.0`` = the paper's values read literally in
input units). ``noise_scale="calibrated"`` (brainage's default) picks the largest
``s = s_auto / 2^k`` at which the *least* noise the mask allows, ``v_min · s`` everywhere,
changes the predictor's output by at most ``calibration_years`` (1 year) on average
(:func:`calibrate_noise_scale`). Reason: for a predictor trained on a few hundred scans without
noise augmentation the paper's floor is destructive — on the 400-phantom cohort at 4 mm, noise of
1 image SD everywhere raised the validation MAE from 3.2 to 16.9 years (the mean-age predictor's
level), so every mask ruins the prediction and the noise model learns nothing but ``m → 0``
(uniform importance). The paper's predictor (UK Biobank, 13 750 scans) may tolerate it; ours do
not.

The U-Net is trained once per predictor and saved (:func:`fit_unoise` with ``out_path``; a second
call with identical inputs and parameters loads it instead of retraining); maps of new volumes
are then one forward pass (:func:`unoise_importance`, or the registered method ``"unoise"``).

Modules: :mod:`~brainage.explain.unoise.network` (the U-Net),
:mod:`~brainage.explain.unoise.noise_model` (the trained model, checkpoint I/O, fingerprints),
:mod:`~brainage.explain.unoise.fit` (:func:`fit_unoise`, parameter checks),
:mod:`~brainage.explain.unoise.training` (the training loop and loss),
:mod:`~brainage.explain.unoise.calibration` (:func:`calibrate_noise_scale`) and
:mod:`~brainage.explain.unoise.method` (the registered method and :func:`unoise_importance`).
"""

from brainage.explain.unoise.calibration import calibrate_noise_scale
from brainage.explain.unoise.fit import ALGORITHM_VERSION, fit_unoise
from brainage.explain.unoise.method import unoise, unoise_importance
from brainage.explain.unoise.network import UNet3D
from brainage.explain.unoise.noise_model import UNoiseModel, load_unoise, predictor_fingerprint
from brainage.explain.unoise.training import _noise_loss as _noise_loss  # used by the tests

__all__ = [
    "ALGORITHM_VERSION",
    "UNet3D",
    "UNoiseModel",
    "calibrate_noise_scale",
    "fit_unoise",
    "load_unoise",
    "predictor_fingerprint",
    "unoise",
    "unoise_importance",
]
