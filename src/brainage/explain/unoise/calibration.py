"""Noise-scale calibration: the largest ``s`` whose noise floor the predictor tolerates."""

from __future__ import annotations

import torch
from torch import nn

from brainage.explain._core import as_column, model_device_dtype, model_guard
from brainage.explain.unoise.noise_model import as_cpu_batch

__all__ = ["calibrate_noise_scale"]


@torch.no_grad()
def calibrate_noise_scale(
    predictor: nn.Module,
    x,
    vmin: float = 1.0,
    max_change: float = 1.0,
    seed: int = 0,
    max_halvings: int = 16,
    device=None,
) -> float:
    """Largest noise scale ``s`` whose noise floor leaves the predictor's output nearly unchanged.

    Tries ``s = s_auto / 2^k`` for k = 0, 1, …, ``max_halvings``, where ``s_auto`` is the mean SD
    of the volumes (the paper's z-scored unit), and returns the first ``s`` for which Gaussian
    noise of SD ``vmin · s`` in every voxel changes the prediction by at most ``max_change``
    years on average, ``mean |f(x + vmin·s·ε) − f(x)| ≤ max_change`` (one fixed noise draw). This
    makes the least noise the U-Noise mask can ask for harmless, so that the noise model has
    room to learn where more is tolerated (see :mod:`brainage.explain.unoise`).

    Parameters
    ----------
    predictor : torch.nn.Module
        Frozen age regressor, output (n, 1) or (n,), years. Left unchanged (run in eval mode
        under :func:`~brainage.explain._core.model_guard`).
    x : ndarray or Tensor, shape (n, c, i, j, k)
        Calibration volumes (brainage: up to 32 training volumes).
    vmin : float ≥ 0
        Lower end of the noise range (paper: 1). With 0 the floor is no noise: ``s_auto``.
    max_change : float > 0
        Tolerated mean absolute change of the prediction, years.
    seed : int
        Seed of the noise draw (an explicit ``torch.Generator``; global random state is not
        touched).
    max_halvings : int
        Largest k tried; the last ``s`` is returned if none passes.
    device : optional
        Default: the predictor's device.

    Returns
    -------
    float
        ``s`` in input intensity units.

    Raises
    ------
    DimensionError, InputError
        ``x`` is not a 5D batch of finite volumes.
    """
    xt = as_cpu_batch(x, "x")
    predictor_device, pdtype = model_device_dtype(predictor)
    if device is None:
        device = predictor_device
    s_auto = float(xt.flatten(2).std(dim=2, correction=0).mean())
    if vmin == 0 or s_auto == 0:
        return s_auto if s_auto > 0 else 1.0
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(xt.shape, generator=gen)

    def predict(volumes: torch.Tensor) -> torch.Tensor:
        """Predictions (n,), years, in batches of 4 volumes."""
        return torch.cat(
            [
                as_column(predictor(volumes[i : i + 4].to(device, pdtype)))[:, 0].float().cpu()
                for i in range(0, volumes.shape[0], 4)
            ]
        )

    with model_guard(predictor):
        clean = predict(xt)
        for k in range(max_halvings + 1):
            scale = s_auto / 2**k
            if float((predict(xt + vmin * scale * eps) - clean).abs().mean()) <= max_change:
                break
    return float(scale)
