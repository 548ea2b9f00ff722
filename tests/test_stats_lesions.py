"""Paper 003's lesion analysis: relevance in lesions vs. expected relevance, paired t-test."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from brainage.errors import ConfigError, DimensionError
from brainage.stats import lesion_relevance_test, write_lesion_table

SHAPE = (10, 12, 9)


def synthetic(n: int, lesion_boost: float, seed: int):
    """Positive-skewed relevance maps; lesions of 0–60 voxels get ``lesion_boost`` on average."""
    rng = np.random.default_rng(seed)
    brain = np.zeros(SHAPE, bool)
    brain[1:9, 1:11, 1:8] = True
    maps = rng.standard_normal((n, *SHAPE)) + 0.5
    lesions = np.zeros((n, *SHAPE), bool)
    brain_idx = np.flatnonzero(brain)
    for s in range(n):
        size = [0, 30, 31, 60][s % 4] if s < 4 else int(rng.integers(35, 60))
        chosen = rng.choice(brain_idx, size=size, replace=False)
        lesions[s].flat[chosen] = True
        maps[s].flat[chosen] += lesion_boost * (1 + 0.5 * rng.standard_normal())
    return maps, lesions, brain


def hand_computed(maps, lesions, brain, min_voxels=30):
    a, e = [], []
    for s in range(len(maps)):
        les = lesions[s] & brain
        if les.sum() <= min_voxels:
            continue
        r = maps[s]
        a.append(r[les].mean())
        e.append(r[brain & (r > 0)].mean())
    diff = np.array(a) - np.array(e)
    n = diff.size
    t = diff.mean() / (diff.std(ddof=1) / np.sqrt(n))
    p = 2 * sps.t.sf(abs(t), n - 1)
    return np.array(a), np.array(e), t, p, diff.mean() / diff.std(ddof=1)


def test_lesions_with_more_relevance():
    maps, lesions, brain = synthetic(24, lesion_boost=2.0, seed=0)
    res = lesion_relevance_test(maps, lesions, brain)
    a, e, t, p, d = hand_computed(maps, lesions, brain)
    assert res["n_subjects"] == len(a) == 22  # the subjects with 0 and exactly 30 voxels drop out
    assert res["n_excluded"] == 2
    assert res["t"] == pytest.approx(t, rel=1e-10)
    assert res["p"] == pytest.approx(p, rel=1e-8)
    scipy_res = sps.ttest_rel(a, e)
    assert res["t"] == pytest.approx(scipy_res.statistic)
    assert res["p"] == pytest.approx(scipy_res.pvalue)
    assert res["df"] == 21
    assert res["d"] == pytest.approx(d)
    assert res["d"] > 1.0
    assert res["p"] < 1e-6
    assert res["mean_difference"] == pytest.approx((a - e).mean())
    subjects = res["subjects"]
    assert list(subjects["included"][:4]) == [False, False, True, True]
    assert list(subjects["n_lesion_voxels"][:4]) == [0, 30, 31, 60]
    s = 3
    les = lesions[s] & brain
    assert subjects["lesion_relevance"][s] == pytest.approx(maps[s][les].mean())
    assert subjects["expected_relevance"][s] == pytest.approx(maps[s][brain & (maps[s] > 0)].mean())
    greater = lesion_relevance_test(maps, lesions, brain, alternative="greater")
    assert greater["p"] == pytest.approx(res["p"] / 2)


def test_lesions_carrying_no_relevance():
    maps, lesions, brain = synthetic(40, lesion_boost=0.0, seed=1)
    # make lesion voxels look like average positive-relevance voxels: expected relevance is the
    # mean of positive voxels, so draw lesion relevance from the positive part of the map
    rng = np.random.default_rng(2)
    for s in range(len(maps)):
        pos = maps[s][brain & (maps[s] > 0)]
        maps[s][lesions[s]] = rng.choice(pos, size=int(lesions[s].sum()))
    res = lesion_relevance_test(maps, lesions, brain)
    a, e, t, p, d = hand_computed(maps, lesions, brain)
    assert res["t"] == pytest.approx(t)
    assert res["p"] == pytest.approx(p)
    assert res["p"] > 0.2
    assert abs(res["d"]) < 0.3


def test_validation_and_edge_cases():
    maps, lesions, brain = synthetic(4, lesion_boost=1.0, seed=3)
    few = lesion_relevance_test(maps, lesions, brain)  # only 2 subjects > 30 voxels
    assert few["n_subjects"] == 2 and np.isfinite(few["t"])
    one = lesion_relevance_test(maps, lesions, brain, min_lesion_voxels=59)
    assert one["n_subjects"] == 1 and np.isnan(one["t"]) and np.isnan(one["p"])
    with pytest.raises(ConfigError, match="'min_lesion_voxels'"):
        lesion_relevance_test(maps, lesions, brain, min_lesion_voxels=-1)
    with pytest.raises(ConfigError, match="'alternative'"):
        lesion_relevance_test(maps, lesions, brain, alternative="bigger")
    with pytest.raises(DimensionError, match="'lesion_masks'"):
        lesion_relevance_test(maps, lesions[:3], brain)
    # (n, 1, i, j, k) maps from brainage.explain are accepted
    again = lesion_relevance_test(maps[:, None], lesions, brain)
    assert again["t"] == pytest.approx(few["t"])


def test_write_lesion_table(tmp_path):
    maps, lesions, brain = synthetic(8, lesion_boost=1.0, seed=4)
    res = lesion_relevance_test(
        maps, lesions, brain, participant_ids=[f"sub-{i}" for i in range(8)]
    )
    other = lesion_relevance_test(np.abs(maps), lesions, brain)
    path = write_lesion_table({"lrp": res, "abs": other}, tmp_path)
    assert path == tmp_path / "evaluation" / "lesions.tsv"
    summary = pd.read_csv(path, sep="\t")
    assert list(summary["method"]) == ["lrp", "abs"]
    assert summary["t"].iloc[0] == pytest.approx(res["t"], rel=1e-5)
    subjects = pd.read_csv(tmp_path / "evaluation" / "lesions_subjects.tsv", sep="\t")
    assert len(subjects) == 16 and subjects.columns[0] == "method"
    assert subjects["participant_id"].iloc[0] == "sub-0"
    single = write_lesion_table(res, tmp_path / "single")
    assert pd.read_csv(single, sep="\t")["n_subjects"].iloc[0] == res["n_subjects"]
