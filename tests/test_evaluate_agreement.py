"""Agreement of maps across seeds: top-k Dice and paper 000's voxel agreement."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from brainage.errors import ConfigError, DimensionError
from brainage.evaluate import agreeing_voxels, seed_agreement, topk_dice, voxel_agreement_map

SHAPE = (7, 8, 9)


@pytest.fixture
def mask() -> np.ndarray:
    m = np.zeros(SHAPE, bool)
    m[1:6, 1:7, 1:8] = True  # 210 voxels
    return m


def test_dice_identical_is_one_and_disjoint_is_zero(mask):
    rng = np.random.default_rng(0)
    a = rng.standard_normal(SHAPE)
    assert topk_dice(a, a, mask, fraction=0.05) == 1.0
    assert topk_dice(a, 3.0 * a, mask, fraction=0.2) == 1.0  # scale-invariant
    b = np.zeros(SHAPE)
    c = np.zeros(SHAPE)
    b[1, 1:7, 1:3] = 1.0  # 12 voxels
    c[5, 1:7, 1:3] = 1.0  # 12 other voxels
    # top 5 % of 210 = 11 voxels, all inside the two disjoint blocks
    assert topk_dice(b, c, mask, fraction=0.05) == 0.0


def test_dice_half_overlap_and_magnitude(mask):
    idx = np.argwhere(mask)
    a = np.zeros(SHAPE)
    b = np.zeros(SHAPE)
    n_top = 21  # ceil(0.1 * 210)
    for v, (i, j, k) in enumerate(idx[:n_top]):
        a[i, j, k] = 10.0 + v
    for v, (i, j, k) in enumerate(idx[n_top // 2 + 1 : n_top // 2 + 1 + n_top]):
        b[i, j, k] = -(10.0 + v)  # negative: counted by magnitude
    overlap = n_top - (n_top // 2 + 1)
    assert topk_dice(a, b, mask, fraction=0.1) == pytest.approx(overlap / n_top)
    rng = np.random.default_rng(5)
    c = rng.standard_normal(SHAPE)
    assert topk_dice(c, -c, mask, fraction=0.1) == 1.0
    assert topk_dice(c, -c, mask, fraction=0.1, absolute=False) == 0.0


def test_dice_outside_mask_ignored_and_stacks(mask):
    rng = np.random.default_rng(1)
    a = rng.standard_normal((2, *SHAPE))
    b = a.copy()
    b[:, ~mask] = 100.0  # huge values outside the mask change nothing
    assert np.array_equal(topk_dice(a, b, mask), np.ones(2))
    with pytest.raises(DimensionError):
        topk_dice(a, b[0], mask)
    with pytest.raises(ConfigError, match="'fraction'"):
        topk_dice(a, b, mask, fraction=0.0)


def test_seed_agreement_mean_pairwise(mask):
    rng = np.random.default_rng(2)
    a = rng.standard_normal(SHAPE)
    b = rng.standard_normal(SHAPE)
    assert seed_agreement([a, a, a], mask) == 1.0
    expected = np.mean(
        [topk_dice(x, y, mask, 0.1) for x, y in itertools.combinations([a, a, b], 2)]
    )
    assert seed_agreement([a, a, b], mask, fraction=0.1) == pytest.approx(expected)
    assert seed_agreement(np.stack([a, a, b]), mask, fraction=0.1) == pytest.approx(expected)
    with pytest.raises(ConfigError, match="at least 2"):
        seed_agreement([a], mask)


def test_agreeing_voxels_hand_example():
    # 10 voxels on a (1, 2, 5) grid, 3 seeds, quantile 0.5 keeps each seed's top 5 voxels
    m = np.ones((1, 2, 5), bool)
    ranks = [
        [9, 8, 7, 6, 5, 4, 3, 2, 1, 0],  # keeps voxels 0-4
        [0, 9, 8, 7, 6, 5, 1, 2, 3, 4],  # keeps voxels 1-5
        [0, 1, 2, 3, 9, 8, 7, 6, 5, 4],  # keeps voxels 4-8
    ]
    maps = [np.asarray(r, float).reshape(1, 2, 5) for r in ranks]
    counts = voxel_agreement_map(maps, m, quantile=0.5).ravel()
    assert counts.tolist() == [1, 2, 2, 2, 3, 2, 1, 1, 1, 0]
    assert agreeing_voxels(maps, m, quantile=0.5) == 5  # kept by ≥ 2 of 3 seeds
    # z-normalisation makes the count invariant to a positive affine change of any seed
    maps[1] = 7.0 * maps[1] - 3.0
    assert agreeing_voxels(maps, m, quantile=0.5) == 5


def test_agreeing_voxels_default_quantile(mask):
    rng = np.random.default_rng(3)
    maps = [rng.standard_normal(SHAPE) for _ in range(4)]
    # quantile 0 keeps everything: every mask voxel agrees
    assert agreeing_voxels(maps, mask, quantile=0.0) == mask.sum()
    counts = voxel_agreement_map(maps, mask)
    assert counts[~mask].sum() == 0
    # each seed keeps 95 % of the mask
    assert counts.sum() == pytest.approx(4 * 0.95 * mask.sum(), abs=4)
    n = agreeing_voxels(maps, mask)
    assert n == int((counts > 2).sum())
    assert 0.8 * mask.sum() < n < mask.sum()
    with pytest.raises(ConfigError, match="'quantile'"):
        agreeing_voxels(maps, mask, quantile=1.0)
    with pytest.raises(DimensionError):
        agreeing_voxels(maps, mask[:-1])
