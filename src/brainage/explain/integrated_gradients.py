"""Integrated Gradients with captum (Sundararajan et al. 2017; METHODS §8 baseline method)."""

from __future__ import annotations

import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain._core import column_forward, make_baseline, positive_int, register_method

_RULES = ("gausslegendre", "riemann_trapezoid", "riemann_middle", "riemann_left", "riemann_right")


@register_method("integrated_gradients")
def integrated_gradients(
    model: nn.Module,
    x: torch.Tensor,
    baseline="zeros",
    n_steps: int = 50,
    internal_batch_size: int = 8,
    rule: str = "gausslegendre",
):
    """Integrated Gradients of the predicted age along the straight path from a baseline (captum).

    ``IG(x)_v = (x_v − x'_v) · ∫₀¹ ∂f/∂x_v (x' + α (x − x')) dα``, the integral approximated
    with ``n_steps`` points of quadrature ``rule``. Each volume is attributed on its own, the
    ``n_steps`` model evaluations being run ``internal_batch_size`` at a time (this bounds memory
    to about ``internal_batch_size`` forward+backward passes).

    **Completeness and sign convention.** Signed, years: ``Σ_voxels IG(x) ≈ f(x) − f(x')``, the
    change of the predicted age from the baseline to the volume; positive voxels raise the
    prediction relative to the baseline.

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), years.
    x : Tensor, shape (n, c, i, j, k)
        Input volumes (model input space).
    baseline : {"zeros", "mean"}, float, ndarray or Tensor
        Reference input x'; see :func:`make_baseline`.
    n_steps : int
        Number of points of the path integral.
    internal_batch_size : int
        Model evaluations per forward pass.
    rule : str
        captum quadrature: "gausslegendre", "riemann_trapezoid", "riemann_middle", ….

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Attribution per voxel, years, in the input's voxel space.
    """
    from captum.attr import IntegratedGradients

    n_steps = positive_int("n_steps", n_steps)
    internal_batch_size = positive_int("internal_batch_size", internal_batch_size)
    if rule not in _RULES:
        raise ConfigError(f"'rule' must be one of {', '.join(_RULES)}; got {rule!r}")
    base = make_baseline(baseline, x)
    ig = IntegratedGradients(column_forward(model))
    out = torch.empty_like(x)
    for s in range(x.shape[0]):
        out[s : s + 1] = ig.attribute(
            x[s : s + 1],
            baselines=base[s : s + 1],
            target=0,
            n_steps=n_steps,
            method=rule,
            internal_batch_size=internal_batch_size,
        ).detach()
    return out
