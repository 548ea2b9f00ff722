"""SmoothGrad with captum (Smilkov et al. 2017; METHODS §8 baseline method)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain._core import column_forward, positive_int, register_method, seeded


@register_method("smoothgrad")
def smoothgrad(
    model: nn.Module,
    x: torch.Tensor,
    nt_samples: int = 25,
    stdevs: float = 0.15,
    nt_samples_batch_size: int = 8,
    absolute: bool = False,
    random_state: int = 0,
):
    """SmoothGrad: the gradient of the predicted age averaged over noisy copies of each volume.

    captum ``NoiseTunnel(Saliency)`` with ``nt_type="smoothgrad"``: for each volume x,
    ``SG(x) = mean_{s=1..nt_samples} ∇f(x + ε_s)`` with ``ε_s ~ N(0, σ²)`` voxel-wise and
    ``σ = stdevs · (max(x) − min(x))`` (a fraction of that volume's intensity range, as in the
    paper). Volumes are processed one at a time, so each gets its own σ.

    **Randomness.** The noise is drawn from torch's generator seeded with ``random_state`` for
    every volume (the generator state outside is restored): the same standard-normal draws,
    scaled by each volume's σ, are used for all volumes ("common random numbers"), so a volume's
    map does not depend on the batch it was computed in, and differences between subjects are
    not due to different noise draws.

    **Sign convention.** Signed by default, years per intensity unit: positive voxels are where
    an increase of intensity raises the predicted age (on average over the noise).
    ``absolute=True`` averages ``|∇f|`` instead (captum's Saliency default).

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), years.
    x : Tensor, shape (n, c, i, j, k)
        Input volumes (model input space).
    nt_samples : int
        Noisy copies per volume.
    stdevs : float
        Noise standard deviation as a fraction of each volume's intensity range (≥ 0).
    nt_samples_batch_size : int
        Noisy copies per forward pass (bounds memory).
    absolute : bool
        Average absolute gradients.
    random_state : int
        Seed of the noise.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Averaged gradient per voxel, in the input's voxel space.
    """
    from captum.attr import NoiseTunnel, Saliency

    nt_samples = positive_int("nt_samples", nt_samples)
    nt_samples_batch_size = positive_int("nt_samples_batch_size", nt_samples_batch_size)
    if (
        isinstance(stdevs, bool)
        or not isinstance(stdevs, (int, float, np.number))
        or not stdevs >= 0
    ):
        raise ConfigError(
            f"'stdevs' must be a number >= 0 (fraction of the intensity range); got {stdevs!r}"
        )
    if isinstance(random_state, bool) or not isinstance(random_state, (int, np.integer)):
        raise ConfigError(f"'random_state' must be an int; got {random_state!r}")
    tunnel = NoiseTunnel(Saliency(column_forward(model)))
    out = torch.empty_like(x)
    for s in range(x.shape[0]):
        xs = x[s : s + 1]
        sigma = float(stdevs) * float(xs.max() - xs.min())
        with seeded(int(random_state), x.device):
            out[s : s + 1] = tunnel.attribute(
                xs,
                nt_type="smoothgrad",
                nt_samples=nt_samples,
                nt_samples_batch_size=min(nt_samples_batch_size, nt_samples),
                stdevs=sigma,
                target=0,
                abs=bool(absolute),
            ).detach()
    return out
