"""Agreement of relevance maps across seeds, methods or conditions (paper 000; METHODS §7, §9).

* :func:`topk_dice` — Dice overlap of the top-``fraction`` voxels (by ``|r|``) of two maps
  (paper 000 aggregates the top 1 % of each map by region);
* :func:`seed_agreement` — mean pairwise :func:`topk_dice` over the maps of several seeds;
* :func:`voxel_agreement_map` / :func:`agreeing_voxels` — paper 000's "agreeing voxels": per
  seed, the z-normalised test-set mean map; voxels below its ``quantile`` are discarded; a voxel
  agrees when it is kept in more than half of the seeds.

All maps lie on one voxel grid (the template grid of the run); only voxels inside ``mask`` (the
brain mask) are considered.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from brainage.errors import ConfigError, DimensionError
from brainage.evaluate._checks import (
    as_map,
    as_mask,
    brain_voxels,
    fraction_in_unit_interval,
)


def _top_set(values: np.ndarray, n_top: int) -> np.ndarray:
    """Boolean selector of the ``n_top`` largest ``values`` (1D); ties broken by voxel order."""
    order = np.argsort(-values, kind="stable")
    sel = np.zeros(values.size, dtype=bool)
    sel[order[:n_top]] = True
    return sel


def _n_top(n_voxels: int, fraction: float) -> int:
    return max(1, math.ceil(fraction * n_voxels))


def topk_dice(maps_a, maps_b, mask, fraction: float = 0.01, absolute: bool = True):
    """Dice coefficient of the top-``fraction`` voxels of two relevance maps.

    In each map the ``ceil(fraction · |mask|)`` voxels of ``mask`` with the largest value are
    selected (by ``|r|`` when ``absolute``, else by signed value; exact ties at the cut are
    broken by voxel order); Dice = ``2 |A ∩ B| / (|A| + |B|)`` = ``|A ∩ B| / k``.

    Parameters
    ----------
    maps_a, maps_b : ndarray, shape (i, j, k) or (n, i, j, k)
        Two maps (or two stacks of n maps compared pairwise, subject by subject) on the same grid.
    mask : ndarray of bool, shape (i, j, k)
        Brain mask; only its voxels are ranked.
    fraction : float
        Share of mask voxels selected, in (0, 1] (default 0.01 = top 1 %, paper 000).
    absolute : bool
        Rank by magnitude (default) or by signed value.

    Returns
    -------
    float or ndarray, shape (n,)
        Dice in [0, 1] (1: same top set; 0: disjoint); an array for 4D inputs.

    Raises
    ------
    ConfigError
        ``fraction`` outside (0, 1].
    DimensionError
        Shapes differ or are not 3D / 4D.
    InputError
        Non-finite maps, non-binary or empty mask.
    """
    a = as_map("maps_a", maps_a, (3, 4))
    b = as_map("maps_b", maps_b, (3, 4))
    m = as_mask("mask", mask, 3)
    fraction = fraction_in_unit_interval("fraction", fraction)
    if a.shape != b.shape:
        raise DimensionError(f"'maps_a' has shape {a.shape} but 'maps_b' has shape {b.shape}")
    if a.shape[-3:] != m.shape:
        raise DimensionError(
            f"'mask' has shape {m.shape}; expected {a.shape[-3:]} to match the maps"
        )
    n_top = _n_top(brain_voxels(m, "mask"), fraction)

    def one(x: np.ndarray, y: np.ndarray) -> float:
        x, y = x[m], y[m]
        if absolute:
            x, y = np.abs(x), np.abs(y)
        return float((_top_set(x, n_top) & _top_set(y, n_top)).sum() / n_top)

    if a.ndim == 3:
        return one(a, b)
    return np.array([one(a[s], b[s]) for s in range(a.shape[0])])


def _seed_stack(maps_per_seed, mask) -> tuple[np.ndarray, np.ndarray]:
    """Validate a list of per-seed 3D maps and the mask; return (stack (s, i, j, k), mask)."""
    if isinstance(maps_per_seed, np.ndarray):
        stack = as_map("maps_per_seed", maps_per_seed, 4)
    else:
        maps = [as_map(f"maps_per_seed[{s}]", mp, 3) for s, mp in enumerate(maps_per_seed)]
        shapes = {mp.shape for mp in maps}
        if len(shapes) > 1:
            raise DimensionError(
                f"the maps in 'maps_per_seed' have different shapes: {sorted(shapes)}"
            )
        stack = np.stack(maps) if maps else np.empty((0, 1, 1, 1))
    if stack.shape[0] < 2:
        raise ConfigError(
            f"'maps_per_seed' needs at least 2 maps (one per seed); got {stack.shape[0]}"
        )
    m = as_mask("mask", mask, 3)
    if stack.shape[1:] != m.shape:
        raise DimensionError(
            f"'mask' has shape {m.shape}; expected {stack.shape[1:]} to match 'maps_per_seed'"
        )
    brain_voxels(m, "mask")
    return stack, m


def seed_agreement(maps_per_seed, mask, fraction: float = 0.01, absolute: bool = True) -> float:
    """Mean pairwise top-``fraction`` Dice between the maps of different seeds.

    Parameters
    ----------
    maps_per_seed : sequence of ndarray, each shape (i, j, k), or ndarray (s, i, j, k)
        One map per seed (e.g. each seed's test-set mean map), s ≥ 2.
    mask : ndarray of bool, shape (i, j, k)
        Brain mask.
    fraction, absolute
        As for :func:`topk_dice`.

    Returns
    -------
    float
        Mean of the s (s − 1) / 2 pairwise Dice coefficients, in [0, 1].

    Raises
    ------
    ConfigError
        Fewer than two maps, or ``fraction`` outside (0, 1].
    DimensionError, InputError
        As for :func:`topk_dice`.
    """
    stack, m = _seed_stack(maps_per_seed, mask)
    fraction = fraction_in_unit_interval("fraction", fraction)
    n_top = _n_top(int(m.sum()), fraction)
    values = np.abs(stack[:, m]) if absolute else stack[:, m]
    tops = [_top_set(v, n_top) for v in values]
    dice = [(x & y).sum() / n_top for x, y in itertools.combinations(tops, 2)]
    return float(np.mean(dice))


def voxel_agreement_map(maps_per_seed, mask, quantile: float = 0.05) -> np.ndarray:
    """Count, per voxel, the seeds that keep it after the quantile cut (paper 000, METHODS §7).

    Per seed: the map is z-normalised inside ``mask`` (mean 0, sd 1; the test-set mean map of
    z-normalised subject maps is normalised again), and voxels with a value below the seed's
    ``quantile`` (computed inside the mask) are discarded; the rest are kept.

    Parameters
    ----------
    maps_per_seed : sequence of ndarray, each shape (i, j, k), or ndarray (s, i, j, k)
        One map per seed (signed; take ``np.abs`` first to rank magnitudes).
    mask : ndarray of bool, shape (i, j, k)
        Brain mask.
    quantile : float
        Quantile in [0, 1) below which voxels are discarded. METHODS §7 (paper 000) gives 0.05:
        the lowest 5 % are discarded, 95 % kept. The paper also speaks of "top quantiles"; pass
        ``quantile=0.95`` to keep only the top 5 %.

    Returns
    -------
    ndarray of int, shape (i, j, k)
        Seeds keeping each voxel (0 outside ``mask``).

    Raises
    ------
    ConfigError
        ``quantile`` outside [0, 1) or fewer than two maps.
    DimensionError, InputError
        Mismatched shapes, non-finite maps, bad mask.
    """
    return _agreement_counts(maps_per_seed, mask, quantile)[0]


def _agreement_counts(maps_per_seed, mask, quantile) -> tuple[np.ndarray, int]:
    stack, m = _seed_stack(maps_per_seed, mask)
    if (
        isinstance(quantile, bool)
        or not isinstance(quantile, (int, float, np.floating))
        or not (0.0 <= float(quantile) < 1.0)
    ):
        raise ConfigError(f"'quantile' must be a number in [0, 1); got {quantile!r}")
    counts = np.zeros(m.shape, dtype=np.int64)
    for v in stack[:, m]:
        sd = v.std()
        z = (v - v.mean()) / sd if sd > 0 else np.zeros_like(v)
        keep = z >= np.quantile(z, float(quantile))
        counts[m] += keep
    return counts, stack.shape[0]


def agreeing_voxels(maps_per_seed, mask, quantile: float = 0.05) -> int:
    """Count the voxels kept in more than half of the seeds (paper 000's voxel agreement).

    Parameters
    ----------
    maps_per_seed, mask, quantile
        As for :func:`voxel_agreement_map`.

    Returns
    -------
    int
        Voxels of ``mask`` whose agreement count exceeds s / 2.

    Raises
    ------
    ConfigError, DimensionError, InputError
        As for :func:`voxel_agreement_map`.
    """
    counts, n_seeds = _agreement_counts(maps_per_seed, mask, quantile)
    return int((counts > n_seeds / 2).sum())
