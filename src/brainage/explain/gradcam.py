"""Grad-CAM on a chosen layer with captum, upsampled to the input grid (paper 004; METHODS §8).

Layers of 2D branches of projection (2.5D) models are spread back along the projection axis.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain._core import column_forward, register_method, resolve_layer

_MODES = ("trilinear", "nearest", "area")


def default_layer(model: nn.Module) -> str | tuple[str, ...]:
    """Return the default Grad-CAM layer name(s) of ``model``.

    The names of ``model.gradcam_layers`` if the model declares them (2.5D models such as
    :class:`brainage.models.projection.ProjectionCNN`: one layer per 2D branch), else
    ``"layer3"`` if the model has it (ResNet3D, paper 004), else the name of the model's last
    ``nn.Conv3d`` (HofmannCNN: the last convolution, ``features.16``).

    A :class:`brainage.models.compartment.CompartmentModel` (region sub-ensembles) uses the
    default of the network it wraps (``net.`` prefixed).

    Raises
    ------
    ConfigError
        The model has none of these.
    """
    if _compartment(model) is not None:
        inner = default_layer(model.net)
        return f"net.{inner}" if isinstance(inner, str) else tuple(f"net.{n}" for n in inner)
    declared = _projected_layers(model)
    if declared:
        return tuple(declared)
    names = dict(model.named_modules())
    if "layer3" in names:
        return "layer3"
    convs = [name for name, m in names.items() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ConfigError("Grad-CAM needs a convolutional layer; give 'layer' (a module name)")
    return convs[-1]


def _compartment(model: nn.Module):
    """Return the model if it is a compartment wrapper (it crops its input), else None."""
    return model if callable(getattr(model, "uncrop", None)) else None


def _projected_layers(model: nn.Module) -> dict[str, int]:
    """``model.gradcam_layers`` (layer name → projected input axis 0/1/2), or {} if undeclared."""
    declared = getattr(model, "gradcam_layers", None)
    return dict(declared) if declared else {}


def _layer_names(model: nn.Module, layer) -> list:
    """Return the layer argument as a list of names or modules (None: :func:`default_layer`)."""
    if layer is None:
        layer = default_layer(model)
    if isinstance(layer, (str, nn.Module)):
        return [layer]
    if isinstance(layer, (list, tuple)) and layer:
        return list(layer)
    raise ConfigError(
        f"'layer' must be a module name, a list of module names or None; got {layer!r}"
    )


def _to_input_grid(cam: torch.Tensor, name: str, axis, x: torch.Tensor, mode: str):
    """Upsample a layer's CAM to the input grid (i, j, k); shape (n, 1, i, j, k).

    A 5D CAM (n, 1, a, b, d) is interpolated in 3D. A 4D CAM (n, 1, a, b) of a 2D branch whose
    input was projected along ``axis`` is interpolated to the two remaining input axes and
    repeated along ``axis``.
    """
    from captum.attr import LayerAttribution

    grid = tuple(x.shape[2:])
    if cam.ndim == 5:
        return LayerAttribution.interpolate(cam, grid, interpolate_mode=mode)
    if cam.ndim == 4 and axis is not None:
        plane = tuple(s for a, s in enumerate(grid) if a != axis)
        mode2d = "bilinear" if mode == "trilinear" else mode
        cam = LayerAttribution.interpolate(cam, plane, interpolate_mode=mode2d)
        return cam.unsqueeze(2 + axis).expand(-1, -1, *grid)
    shape = tuple(cam.shape)
    raise ConfigError(
        f"Grad-CAM layer {name!r} must output a 5D tensor (n, channels, a, b, d), or a 4D tensor "
        "(n, channels, a, b) of a 2D branch that the model lists in 'gradcam_layers'; "
        f"got {shape}"
    )


@register_method("gradcam", per_channel=False)
def gradcam(
    model: nn.Module,
    x: torch.Tensor,
    layer: str | Sequence[str] | None = None,
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

    **Compartment models** (region sub-ensembles) crop their input to a box: the CAM is
    upsampled to the box, placed in the input grid and zeroed outside the compartment.

    **2D layers of projection (2.5D) models.** A model may declare ``gradcam_layers``, a dict
    from layer name to the input axis (0 = i, 1 = j, 2 = k) that its branch projected out before
    that layer (:class:`brainage.models.projection.ProjectionCNN`:
    ``{"coronal.features": 1, "sagittal.features": 0}``). The 2D CAM (n, 1, a, b) of such a
    layer lives on the plane of the two remaining input axes: it is upsampled to them (bilinear
    for ``"trilinear"``; ``"nearest"`` and ``"area"`` as named) and repeated along the projected
    axis, e.g. the coronal branch's CAM is upsampled to (i, k) and repeated along j. With
    several layers (a list, or the default of such a model) the 3D maps of the layers are
    summed. Each branch's map is thus constant along its projection axis: it says which rays
    matter, not where along them (paper 004, Appendix D).

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), years.
    x : Tensor, shape (n, c, i, j, k)
        Input volumes (model input space).
    layer : str, sequence of str or None
        Dotted module name, e.g. ``"layer3"`` (ResNet3D) or ``"features.12"`` (HofmannCNN), or
        several names (their maps are summed); None: :func:`default_layer`. Each layer's output
        must be 5D (n, K, a, b, d), or 4D (n, K, a, b) for a layer the model lists in
        ``gradcam_layers``.
    relu : bool
        Clamp each layer's map at 0 (before upsampling and summing).
    interpolate_mode : {"trilinear", "nearest", "area"}
        Upsampling mode.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Grad-CAM map on the input's voxel grid (the same map in every channel).
    """
    from captum.attr import LayerGradCam

    if interpolate_mode not in _MODES:
        raise ConfigError(
            f"'interpolate_mode' must be one of {', '.join(_MODES)}; got {interpolate_mode!r}"
        )
    declared = _projected_layers(model)
    total = None
    for item in _layer_names(model, layer):
        name, module = resolve_layer(model, item)
        cam = LayerGradCam(column_forward(model), module).attribute(
            x, target=0, relu_attributions=bool(relu)
        )
        if not isinstance(cam, torch.Tensor):
            raise ConfigError(
                f"Grad-CAM layer {name!r} must output a 5D tensor (n, channels, a, b, d); "
                f"got {type(cam).__name__}"
            )
        wrapper = _compartment(model)
        if wrapper is None:
            cam = _to_input_grid(cam.detach(), name, declared.get(name), x, interpolate_mode)
        else:  # the layer lives on the crop box: upsample to it, then place it in the grid
            box = wrapper.crop(x.detach())
            cam = _to_input_grid(cam.detach(), name, declared.get(name), box, interpolate_mode)
            cam = wrapper.uncrop(cam)
        total = cam if total is None else total + cam
    return total.expand(-1, x.shape[1], -1, -1, -1)
