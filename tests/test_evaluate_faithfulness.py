"""Perturbation curves and AOPC (Samek et al. 2017) against a linear model's known answer."""

import numpy as np
import pytest

from brainage.errors import ConfigError
from brainage.evaluate.faithfulness import (
    DEFAULT_FRACTIONS,
    aopc,
    faithfulness_scores,
    mean_with_ci,
    perturbation_curves,
)

SHAPE = (6, 7, 5)


def _linear(seed=0, n=6):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(1, *SHAPE))
    ref = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    x = rng.normal(size=(n, 1, *SHAPE)).astype(np.float32)
    mask = np.ones(SHAPE, bool)
    mask[0] = False  # voxels outside the brain are never removed

    def predict(batch):
        return (np.asarray(batch, float) * w).sum(axis=(1, 2, 3, 4)) + 40.0

    exact = w * (x.astype(float) - ref)  # the exact attribution of a linear model
    return predict, x, exact, ref, mask


def test_aopc_of_the_perfect_ordering_on_a_linear_model_is_its_known_value():
    predict, x, rel, ref, mask = _linear()
    curves = perturbation_curves(predict, x, rel, ref, mask)
    counts = np.rint(np.asarray(DEFAULT_FRACTIONS) * mask.sum()).astype(int)
    for s in range(len(x)):
        r = rel[s, 0][mask]
        drop = np.concatenate([[0.0], np.cumsum(np.sort(r)[::-1])])[counts]
        np.testing.assert_allclose(curves["morf"][s], curves["morf"][s, 0] - drop, rtol=1e-4)
        rise = np.concatenate([[0.0], np.cumsum(np.sort(r))])[counts]
        np.testing.assert_allclose(curves["lerf"][s], curves["lerf"][s, 0] - rise, rtol=1e-4)
    expected = np.array([
        np.mean(np.concatenate([[0.0], np.cumsum(np.sort(rel[s, 0][mask])[::-1])])[counts])
        for s in range(len(x))
    ])  # fmt: skip
    np.testing.assert_allclose(aopc(curves["morf"]), expected, rtol=1e-4)
    # no order removes faster than the perfect one, none slower than its reverse
    a = {o: aopc(c) for o, c in curves.items()}
    assert np.all(a["morf"] >= a["random"] - 1e-6) and np.all(a["random"] >= a["lerf"] - 1e-6)


def test_a_map_of_noise_is_no_better_than_random_and_the_seed_fixes_the_random_order():
    predict, x, rel, ref, mask = _linear(seed=1, n=12)
    noise = np.random.default_rng(7).normal(size=rel.shape)
    scores, curves = faithfulness_scores(predict, x, noise, ref, mask, seed=3)
    lo, hi = scores["aopc_morf_minus_random_ci_low"], scores["aopc_morf_minus_random_ci_high"]
    assert lo < 0 < hi  # an uninformative map: MoRF indistinguishable from random
    good, _ = faithfulness_scores(predict, x, rel, ref, mask, seed=3)
    assert good["aopc_morf_minus_random_ci_low"] > 0  # the exact map beats random
    again, _ = faithfulness_scores(predict, x, noise, ref, mask, seed=3)
    assert again == scores
    assert curves["morf"][0] == 0 and len(curves["fractions"]) == len(curves["morf"])


def test_a_region_the_model_ignores_changes_nothing():
    predict, x, rel, ref, mask = _linear(seed=2)
    w_zero = np.zeros(SHAPE, bool)
    w_zero[3:] = True

    def ignores(batch):
        b = np.asarray(batch, float).copy()
        b[:, :, w_zero] = 0.0
        return predict(b)

    only = mask & w_zero
    curves = perturbation_curves(ignores, x, rel, ref, only, orders=("random",))
    c = curves["random"]
    np.testing.assert_allclose(c, np.broadcast_to(c[:, :1], c.shape), atol=1e-9)


def test_noisy_imputation_is_seeded_and_bad_arguments_are_clear():
    predict, x, rel, ref, mask = _linear(seed=4)
    a = perturbation_curves(predict, x, rel, ref, mask, imputation="noisy_mean", seed=1)
    b = perturbation_curves(predict, x, rel, ref, mask, imputation="noisy_mean", seed=1)
    np.testing.assert_array_equal(a["morf"], b["morf"])
    with pytest.raises(ConfigError, match="fractions"):
        perturbation_curves(predict, x, rel, ref, mask, fractions=(0.1, 0.2))
    with pytest.raises(ConfigError, match="removal order"):
        perturbation_curves(predict, x, rel, ref, mask, orders=("best",))
    with pytest.raises(ConfigError, match="imputation"):
        perturbation_curves(predict, x, rel, ref, mask, imputation="blur")


def test_bootstrap_ci_of_the_mean():
    v = np.random.default_rng(0).normal(3.0, 1.0, 200)
    m, lo, hi = mean_with_ci(v)
    se = v.std(ddof=1) / np.sqrt(len(v))
    assert lo < m < hi and hi - lo == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert np.isnan(mean_with_ci([1.0, 2.0])[1])
