"""Guided Backpropagation with captum, extended to LeakyReLU (paper 000; METHODS §8)."""

from __future__ import annotations

import functools
import warnings

import torch
from torch import nn

from brainage.explain._core import column_forward, register_method


@functools.lru_cache(maxsize=1)
def _guided_backprop_class():
    """Captum's GuidedBackprop, with the clamped backward also applied to ``nn.LeakyReLU``.

    captum (0.7–0.9) hooks only ``nn.ReLU`` modules; through a LeakyReLU it would pass the plain
    gradient (negative values included), which is not Guided Backpropagation. The subclass
    registers captum's own hook (``_register_backward_hook`` → ``_backward_hook``, which returns
    ``relu(grad_input)``) on LeakyReLU modules too. For a LeakyReLU with slope a > 0,
    ``grad_input = grad_output · (1 if z > 0 else a)``, so the hook yields
    ``relu(grad_output) · (1 if z > 0 else a)``: negative gradients are clamped as for ReLU and
    the leaky slope is kept.
    """
    from captum._utils.common import _register_backward_hook
    from captum.attr import GuidedBackprop

    class LeakyGuidedBackprop(GuidedBackprop):
        def __init__(self, model: nn.Module, forward_func) -> None:
            super().__init__(model)
            self.forward_func = forward_func

        def _register_hooks(self, module: nn.Module) -> None:
            if isinstance(module, (nn.ReLU, nn.LeakyReLU)):
                self.backward_hooks.extend(
                    _register_backward_hook(module, self._backward_hook, self)
                )

    return LeakyGuidedBackprop


@register_method("guided_backprop")
def guided_backprop(model: nn.Module, x: torch.Tensor):
    """Guided Backpropagation of the predicted age (Springenberg et al. 2015; captum).

    The gradient of the single output neuron (age, years) with respect to the input, where the
    backward pass of every ``nn.ReLU`` and ``nn.LeakyReLU`` module is clamped to non-negative
    values (``relu(grad)``; the leaky slope is kept, see :func:`_guided_backprop_class`).
    Activations must be modules, each used once per forward pass (``torch.nn.functional.relu``
    calls are not seen; brainage's models satisfy both). captum's hooks are removed in its
    ``finally``, and :func:`~brainage.explain._core.model_guard` removes any left over.

    **Sign convention.** Signed, units years per intensity unit: positive voxels are those where
    a (guided) increase in intensity raises the predicted age. Only the clamping at activations
    makes it "guided"; the first convolution's weights can still make input gradients negative.
    Paper 000 z-normalises the maps per subject before averaging; that is left to the population
    stage.

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), years.
    x : Tensor, shape (n, c, i, j, k)
        Input volumes (model input space).

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Guided gradient per voxel, in the input's voxel space.
    """
    gbp = _guided_backprop_class()(model, column_forward(model))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Setting backward hooks on ReLU")
        return gbp.attribute(x.requires_grad_(True), target=0)
