"""Occlusion with captum (Zeiler & Fergus 2014; METHODS §8 baseline method)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain._core import (
    column_forward,
    make_baseline,
    positive_int,
    register_method,
    voxel_triple,
)


@register_method("occlusion", per_channel=False)
def occlusion(
    model: nn.Module,
    x: torch.Tensor,
    window=8,
    stride=None,
    baseline=0.0,
    perturbations_per_eval: int = 8,
):
    """Occlusion: the drop of the predicted age when a box of voxels is set to a baseline.

    captum ``Occlusion``: a box of ``window`` voxels (all channels) slides over the grid with
    step ``stride``, starting at voxel 0 on each axis; where the last step would leave the grid
    the box is cut at the border, so every voxel is covered. For each box position w,
    ``Δ_w = f(x) − f(x with the voxels of w replaced by the baseline's)``, and each voxel gets the
    mean of ``Δ_w`` over the boxes that contain it. With ``stride == window`` (non-overlapping
    boxes), every voxel of a box gets that box's Δ.

    **Sign convention.** Signed, years: positive where hiding the region lowers the predicted
    age (its content makes the brain look older), negative where hiding it raises the
    prediction. Example: for a linear model ``f(x) = Σ w·x + b`` with baseline 0 and
    non-overlapping boxes, a voxel's value is ``Σ_{v in its box} w_v x_v``.

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), years.
    x : Tensor, shape (n, c, i, j, k)
        Input volumes (model input space).
    window : int or (int, int, int)
        Box size in voxels along (i, j, k); at most the grid size.
    stride : int, (int, int, int) or None
        Step in voxels (≤ window); None: ``window`` (non-overlapping boxes).
    baseline : float, {"zeros", "mean"}, ndarray or Tensor
        What replaces the box: a constant intensity (0 = background after skull stripping), or
        any baseline of :func:`~brainage.explain._core.make_baseline`, e.g. a
        reference volume of shape (c, i, j, k) such as the mean training image (``brainage run``:
        ``baseline: training_mean``), so that a box is replaced by what an average brain has
        there instead of by a black hole.
    perturbations_per_eval : int
        Occluded copies per forward pass (bounds memory).

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Occlusion effect per voxel, years, in the input's voxel space.
    """
    from captum.attr import Occlusion

    window = voxel_triple("window", window)
    stride = window if stride is None else voxel_triple("stride", stride)
    grid = tuple(x.shape[2:])
    if any(w > g for w, g in zip(window, grid, strict=True)):
        raise ConfigError(f"'window' {window} must fit in the volume grid {grid} (voxels)")
    if any(s > w for s, w in zip(stride, window, strict=True)):
        raise ConfigError(
            f"'stride' {stride} must not exceed 'window' {window} (voxels would be skipped)"
        )
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool):
        if not np.isfinite(baseline):
            raise ConfigError(f"'baseline' must be finite; got {baseline!r}")
        base = float(baseline)
    else:
        base = make_baseline(baseline, x)
    perturbations_per_eval = positive_int("perturbations_per_eval", perturbations_per_eval)
    c = x.shape[1]
    return Occlusion(column_forward(model)).attribute(
        x,
        sliding_window_shapes=(c, *window),
        strides=(c, *stride),
        baselines=base,
        target=0,
        perturbations_per_eval=perturbations_per_eval,
    )
