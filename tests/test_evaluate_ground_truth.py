"""Ground-truth metrics of relevance maps: known answers, chance levels, sklearn as reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from brainage.errors import ConfigError, DimensionError, InputError
from brainage.evaluate import (
    mask_fraction,
    mass_accuracy,
    roc_auc,
    score_maps,
    topk_precision,
)

SHAPE = (24, 28, 22)


def ellipsoid(shape, scale=0.45) -> np.ndarray:
    grids = np.meshgrid(*[np.linspace(-0.5, 0.5, s) for s in shape], indexing="ij")
    return sum((g / scale) ** 2 for g in grids) <= 1.0


@pytest.fixture
def brain() -> np.ndarray:
    return ellipsoid(SHAPE)


@pytest.fixture
def truth(brain) -> np.ndarray:
    t = np.zeros(SHAPE, bool)
    t[8:14, 10:16, 6:12] = True  # inside the brain
    t[0, 0, :3] = True  # outside the brain: must be ignored
    return t


def test_perfect_map_scores_one(brain, truth):
    r = truth.astype(float)
    assert mass_accuracy(r, truth, brain) == 1.0
    assert roc_auc(r, truth, brain) == 1.0
    assert topk_precision(r, truth, brain) == 1.0


def test_inverted_map_scores_zero(brain, truth):
    r = (~truth).astype(float)
    assert mass_accuracy(r, truth, brain) == 0.0
    assert roc_auc(r, truth, brain) == 0.0
    assert topk_precision(r, truth, brain) == 0.0


def test_mask_fraction_ignores_truth_outside_brain(brain, truth):
    expected = (truth & brain).sum() / brain.sum()
    assert mask_fraction(truth, brain) == pytest.approx(expected)
    assert (truth & ~brain).any()  # the fixture really has truth outside the brain
    assert mask_fraction(truth, brain) != pytest.approx(truth.sum() / brain.sum())


def test_random_map_scores_chance():
    shape = (40, 48, 36)
    rng = np.random.default_rng(0)
    b = ellipsoid(shape)
    t = np.zeros(shape, bool)
    t[10:25, 15:30, 10:22] = True
    r = rng.standard_normal(shape)
    frac = mask_fraction(t, b)
    assert 0.05 < frac < 0.5
    assert roc_auc(r, t, b) == pytest.approx(0.5, abs=0.02)
    assert mass_accuracy(r, t, b) == pytest.approx(frac, abs=0.02)
    assert topk_precision(r, t, b) == pytest.approx(frac, abs=0.03)


def test_roc_auc_equals_sklearn_with_ties(brain):
    rng = np.random.default_rng(1)
    r = np.round(rng.standard_normal(SHAPE), 1)  # many ties
    t = (np.abs(r) + rng.standard_normal(SHAPE) > 1.2) & brain
    expected = roc_auc_score(t[brain], np.abs(r[brain]))
    assert roc_auc(r, t, brain) == pytest.approx(expected, abs=1e-12)
    assert 0.6 < expected < 0.95  # informative, not trivial


def test_mass_accuracy_counts_only_positive_relevance(brain, truth):
    r = np.where(truth, -5.0, 1.0)
    assert mass_accuracy(r, truth, brain) == 0.0
    r = np.where(truth, 3.0, -1.0)
    assert mass_accuracy(r, truth, brain) == 1.0
    assert np.isnan(mass_accuracy(-np.ones(SHAPE), truth, brain))


def test_mass_accuracy_hand_computed():
    b = np.ones((2, 3, 4), bool)
    t = np.zeros((2, 3, 4), bool)
    t[0, 0, :2] = True
    r = np.zeros((2, 3, 4))
    r[0, 0, 0] = 3.0  # in truth
    r[0, 0, 1] = -2.0  # in truth, negative: ignored
    r[1, 2, 3] = 1.0  # outside truth
    assert mass_accuracy(r, t, b) == pytest.approx(3.0 / 4.0)


def test_topk_precision_known_answer_and_ties():
    b = np.ones((2, 3, 4), bool)
    t = np.zeros((2, 3, 4), bool)
    t[0, 0, :3] = True
    r = np.zeros((2, 3, 4))
    r[0, 0, 0] = 5.0  # truth
    r[1, 1, 1] = -4.0  # not truth, large magnitude
    r[0, 0, 1] = 3.0  # truth
    assert topk_precision(r, t, b, k=1) == 1.0
    assert topk_precision(r, t, b, k=2) == 0.5
    assert topk_precision(r, t, b, k=3) == pytest.approx(2 / 3)
    # k = 4: three clear voxels (2 hits) + one of 21 tied zeros, 1 of which is truth
    assert topk_precision(r, t, b, k=4) == pytest.approx((2 + 1 / 21) / 4)
    # a constant map scores the chance level exactly, whatever the voxel order
    assert topk_precision(np.ones((2, 3, 4)), t, b) == pytest.approx(3 / 24)


def test_metrics_invariant_to_voxel_order(brain, truth):
    rng = np.random.default_rng(2)
    r = rng.standard_normal(SHAPE) + 2 * truth
    flip = (slice(None, None, -1), slice(None), slice(None, None, -1))
    for metric in (mass_accuracy, roc_auc, topk_precision):
        assert metric(r[flip], truth[flip], brain[flip]) == pytest.approx(metric(r, truth, brain))


def test_degenerate_truth_gives_nan(brain):
    empty = np.zeros(SHAPE, bool)
    r = np.ones(SHAPE)
    assert np.isnan(roc_auc(r, empty, brain))
    assert np.isnan(topk_precision(r, empty, brain))
    assert np.isnan(roc_auc(r, brain, brain))  # truth = whole brain: no negatives


def test_input_validation(brain, truth):
    r = np.zeros(SHAPE)
    with pytest.raises(DimensionError, match="'truth' has shape"):
        mass_accuracy(r, truth[:-1], brain[:-1])
    with pytest.raises(DimensionError):
        roc_auc(r[..., None], truth, brain)
    with pytest.raises(InputError, match="binary"):
        roc_auc(r, truth * 0.5, brain)
    bad = r.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN"):
        mass_accuracy(bad, truth, brain)
    with pytest.raises(InputError, match="empty"):
        mask_fraction(truth, np.zeros(SHAPE, bool))
    with pytest.raises(ConfigError, match="'k'"):
        topk_precision(r, truth, brain, k=0)
    with pytest.raises(ConfigError, match="'k'"):
        topk_precision(r, truth, brain, k=int(brain.sum()) + 1)
    # 0/1 integer masks are accepted as booleans
    assert roc_auc(truth.astype(float), truth.astype(np.uint8), brain.astype(int)) == 1.0


def test_score_maps_rows_match_single_calls(brain, truth):
    rng = np.random.default_rng(3)
    n = 3
    maps = rng.standard_normal((n, *SHAPE)) + truth * np.arange(n)[:, None, None, None]
    truths = np.stack([truth, truth, np.roll(truth, 3, axis=0)])
    table = score_maps(maps, truths, brain, participant_ids=["sub-a", "sub-b", "sub-c"])
    assert list(table["participant_id"]) == ["sub-a", "sub-b", "sub-c"]
    for s in range(n):
        row = table.iloc[s]
        assert row["mass_accuracy"] == pytest.approx(mass_accuracy(maps[s], truths[s], brain))
        assert row["roc_auc"] == pytest.approx(roc_auc(maps[s], truths[s], brain))
        assert row["topk_precision"] == pytest.approx(topk_precision(maps[s], truths[s], brain))
        assert row["mask_fraction"] == pytest.approx(mask_fraction(truths[s], brain))
        assert row["n_truth_voxels"] == (truths[s] & brain).sum()
    # AUC grows with the signal added to the truth voxels
    assert table["roc_auc"].iloc[2] > table["roc_auc"].iloc[1] > table["roc_auc"].iloc[0] - 0.05

    # explain's (n, 1, i, j, k) output and a shared truth mask are accepted
    shared = score_maps(maps[:, None], truth, brain)
    assert shared["roc_auc"].iloc[0] == pytest.approx(table["roc_auc"].iloc[0])


def test_score_maps_validation(brain, truth):
    maps = np.zeros((2, *SHAPE))
    with pytest.raises(DimensionError, match="'truths'"):
        score_maps(maps, np.stack([truth] * 3), brain)
    with pytest.raises(DimensionError, match="channels"):
        score_maps(np.zeros((2, 2, *SHAPE)), truth, brain)
    with pytest.raises(InputError, match="participant_ids"):
        score_maps(maps, truth, brain, participant_ids=["a"])
