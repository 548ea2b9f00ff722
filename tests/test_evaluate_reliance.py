"""Reliance by intervention (issue 11, item 2): known answers on a linear model."""

import numpy as np
import pytest

from brainage.evaluate.reliance import region_relevance, region_reliance, reliance_spearman

SHAPE = (6, 6, 4)


def _setup(seed=0, n=5):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 7, SHAPE)  # 6 regions and background
    w = rng.normal(size=SHAPE)
    w[labels == 3] = 0.0  # the model ignores region 3
    ref = rng.normal(size=(1, *SHAPE)).astype(np.float32)
    x = rng.normal(size=(n, 1, *SHAPE)).astype(np.float32)

    def predict(batch):
        return (np.asarray(batch, float)[:, 0] * w).sum(axis=(1, 2, 3)) + 50.0

    return predict, x, labels, ref, w


def test_reliance_of_a_linear_model_is_its_exact_region_contribution():
    predict, x, labels, ref, w = _setup()
    rel = region_reliance(predict, x, labels, ref, batch_size=4)
    for s in range(len(x)):
        for j, r in enumerate(range(1, 7)):
            inside = labels == r
            expected = (w[inside] * (x[s, 0][inside] - ref[0][inside])).sum()
            assert rel[s, j] == pytest.approx(expected, abs=1e-4)
    np.testing.assert_allclose(rel[:, 2], 0.0, atol=1e-9)  # region 3 is ignored: reliance 0


def test_a_map_equal_to_the_reliance_scores_spearman_one():
    predict, x, labels, ref, w = _setup(seed=1)
    rel = region_reliance(predict, x, labels, ref)
    exact_map = w * (x[:, 0].astype(float) - ref[0])  # the exact attribution of a linear model
    by_region = region_relevance(exact_map, labels)
    np.testing.assert_allclose(by_region, rel, atol=1e-4)
    per, pop = reliance_spearman(by_region, rel)
    assert per == pytest.approx(1.0) and pop == pytest.approx(1.0)
    reversed_map = region_relevance(-exact_map, labels)
    assert reliance_spearman(reversed_map, rel)[0] == pytest.approx(-1.0)
    noise = np.random.default_rng(5).normal(size=(200, 40))
    assert abs(reliance_spearman(noise, np.random.default_rng(6).normal(size=(200, 40)))[0]) < 0.05
