"""Ground-truth metrics of relevance maps: known answers, chance levels, sklearn as reference."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from brainage.errors import ConfigError, DimensionError, InputError
from brainage.evaluate import (
    effect_roc_auc,
    mask_fraction,
    mass_accuracy,
    population_scores,
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


# --------------------------------------------------------------------------- single effects


def _two_effects(truth):
    """Split the truth box into two effects: a = first half along i, b = the rest."""
    a = truth.copy()
    a[11:] = False
    return a, truth & ~a


def test_effect_auc_leaves_out_the_other_effects(brain, truth):
    a, b = _two_effects(truth)
    r = np.where(a, 1.0, 0.0) + np.where(b, 100.0, 0.0)  # b outranks a, but b is not scored
    assert effect_roc_auc(r, a, truth, brain) == pytest.approx(1.0)
    # effect b finds its voxels too; all truth scored together also gives 1
    assert effect_roc_auc(r, b, truth, brain) == pytest.approx(1.0)
    # a map on effect b only: effect a is at chance against the non-truth voxels
    assert effect_roc_auc(np.where(b, 1.0, 0.0), a, truth, brain) == pytest.approx(0.5)


def test_effect_auc_equals_roc_auc_for_the_whole_truth(brain, truth):
    r = np.random.default_rng(3).normal(size=SHAPE)
    assert effect_roc_auc(r, truth & brain, truth, brain) == pytest.approx(roc_auc(r, truth, brain))


def test_effect_auc_oracle(brain, truth):
    a, _ = _two_effects(truth)
    r = np.random.default_rng(4).normal(size=SHAPE)
    keep = brain & (a | ~truth)
    expected = roc_auc_score(a[keep], np.abs(r[keep]))
    assert effect_roc_auc(r, a, truth, brain) == pytest.approx(expected)


def test_effect_auc_errors_and_empty_effect(brain, truth):
    outside = np.zeros(SHAPE, bool)
    outside[2:4, 12:14, 10:12] = True  # brain voxels that are not truth voxels
    assert (outside & brain).any() and not (outside & truth).any()
    with pytest.raises(InputError, match="outside 'truth'"):
        effect_roc_auc(np.ones(SHAPE), outside, truth, brain)
    assert np.isnan(effect_roc_auc(np.ones(SHAPE), np.zeros(SHAPE, bool), truth, brain))
    with pytest.raises(DimensionError):
        effect_roc_auc(np.ones(SHAPE), np.zeros((3, 3, 3), bool), truth, brain)


# --------------------------------------------------------------------------- population map


def test_population_scores_known_answer(brain, truth):
    inside = truth & brain
    # truth in 2 of 3 subjects at the box, in 1 of 3 at another voxel set
    extra = np.zeros(SHAPE, bool)
    extra[4:7, 12:15, 9:12] = True
    extra &= brain
    truths = np.stack([truth, truth, extra | truth & False])
    maps = np.stack([inside * 1.0, inside * 5.0, inside * 0.1]).astype(float)
    out = population_scores(maps, truths, brain, min_share=0.5)
    assert out["population_mask_fraction"] == pytest.approx(inside.sum() / brain.sum())
    assert out["population_roc_auc"] == pytest.approx(1.0)
    assert out["population_mass_accuracy"] == pytest.approx(1.0)
    # min_share 1/3 adds the voxels true in one subject only
    low = population_scores(maps, truths, brain, min_share=0.3)
    assert low["population_mask_fraction"] == pytest.approx((inside | extra).sum() / brain.sum())


def test_population_scores_scale_invariant_and_chance(brain, truth):
    rng = np.random.default_rng(5)
    maps = rng.normal(size=(4, *SHAPE))
    scaled = maps * np.array([1.0, 10.0, 0.01, 3.0])[:, None, None, None]
    a = population_scores(maps, truth, brain)
    b = population_scores(scaled, truth, brain)
    assert a == pytest.approx(b)
    flat = population_scores(np.ones((3, *SHAPE)), truth, brain)
    assert flat["population_mass_accuracy"] == pytest.approx(flat["population_mask_fraction"])
    assert flat["population_roc_auc"] == pytest.approx(0.5)
    with pytest.raises(ConfigError):
        population_scores(maps, truth, brain, min_share=0)
    with pytest.raises(DimensionError):
        population_scores(maps, np.stack([truth] * 3), brain)
