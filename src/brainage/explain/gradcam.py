"""Grad-CAM on a chosen layer with captum, upsampled to the input grid (paper 004; METHODS §8)."""

from __future__ import annotations

import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain._core import column_forward, register_method, resolve_layer

_MODES = ("trilinear", "nearest", "area")


def default_layer(model: nn.Module) -> str:
    """Return the default Grad-CAM layer name of ``model``.

    ``"layer3"`` if the model has it (ResNet3D, paper 004), else the name of the model's last
    ``nn.Conv3d`` (HofmannCNN: the last convolution, ``features.16``).

    Raises
    ------
    ConfigError
        The model has neither.
    """
    names = dict(model.named_modules())
    if "layer3" in names:
        return "layer3"
    convs = [name for name, m in names.items() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ConfigError("Grad-CAM needs a convolutional layer; give 'layer' (a module name)")
    return convs[-1]


@register_method("gradcam")
def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: str | None = None,
    relu: bool = False,
    interpolate_mode: str = "trilinear",
):
    """Grad-CAM of the predicted age (Selvaraju et al. 2017; captum ``LayerGradCam``).

    For the activations ``A`` of ``layer`` (shape (n, K, a, b, d)), per volume:
    ``α_k = mean_voxels ∂f/∂A_k`` and ``cam = Σ_k α_k A_k`` (shape (n, 1, a, b, d)), upsampled
    to the input grid (i, j, k) by ``torch.nn.functional.interpolate`` (trilinear,
    ``align_corners=False``, via captum ``LayerAttribution.interpolate``) and repeated over the
    input channels. For regression the single output neuron itself is explained.

    **Sign convention.** Signed by default (no ReLU, unlike classification Grad-CAM): positive
    regions are those whose activations, weighted by their mean gradient, raise the predicted age;
    negative ones lower it. ``relu=True`` keeps only the positive part (classic Grad-CAM).
    Units: years per layer voxel; e.g. when ``layer`` is followed only by global average
    pooling and the linear output neuron, the map on the layer's grid sums to ``f(x) − b_out``.

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), years.
    x : Tensor, shape (n, c, i, j, k)
        Input volumes (model input space).
    layer : str or None
        Dotted module name, e.g. ``"layer3"`` (ResNet3D) or ``"features.12"`` (HofmannCNN);
        None: :func:`default_layer`. The layer's output must be 5D (n, K, a, b, d).
    relu : bool
        Clamp the map at 0 (before upsampling).
    interpolate_mode : {"trilinear", "nearest", "area"}
        Upsampling mode.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Grad-CAM map on the input's voxel grid (the same map in every channel).
    """
    from captum.attr import LayerAttribution, LayerGradCam

    if interpolate_mode not in _MODES:
        raise ConfigError(
            f"'interpolate_mode' must be one of {', '.join(_MODES)}; got {interpolate_mode!r}"
        )
    _, module = resolve_layer(model, default_layer(model) if layer is None else layer)
    cam = LayerGradCam(column_forward(model), module).attribute(
        x, target=0, relu_attributions=bool(relu)
    )
    if not isinstance(cam, torch.Tensor) or cam.ndim != 5:
        shape = tuple(cam.shape) if isinstance(cam, torch.Tensor) else type(cam).__name__
        raise ConfigError(
            f"Grad-CAM layer {layer!r} must output a 5D tensor (n, channels, a, b, d); got {shape}"
        )
    cam = LayerAttribution.interpolate(
        cam.detach(), tuple(x.shape[2:]), interpolate_mode=interpolate_mode
    )
    return cam.expand(-1, x.shape[1], -1, -1, -1)
