"""Subgroup definitions (paper 004) and rank stability of region tables."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainage.errors import InputError
from brainage.population.subgroups import (
    group_label,
    rank_stability,
    ranks_long,
    subgroup_masks,
)


def test_age_groups_partition_the_subjects_with_age():
    ages = np.array([20.0, 59.9, 60.0, 65.0, 69.99, 70.0, 85.0, np.nan])
    groups = subgroup_masks("age_group", pd.DataFrame(), ages, np.zeros(8), [60, 70])
    assert list(groups) == ["< 60", "60–70", "≥ 70"]
    np.testing.assert_array_equal(groups["< 60"], [1, 1, 0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(groups["60–70"], [0, 0, 1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(groups["≥ 70"], [0, 0, 0, 0, 0, 1, 1, 0])
    # every subject with an age is in exactly one group
    total = sum(g.astype(int) for g in groups.values())
    np.testing.assert_array_equal(total, np.isfinite(ages).astype(int))


def test_gap_groups_are_the_extremes_of_the_gap():
    rng = np.random.default_rng(0)
    gaps = rng.normal(size=50)
    gaps[7] = np.nan
    g = subgroup_masks("gap_group", pd.DataFrame(), np.ones(50), gaps, gap_fraction=0.2)
    k = int(0.2 * 49)
    assert g["accelerated"].sum() == g["decelerated"].sum() == k
    assert np.nanmin(gaps[g["accelerated"]]) > np.nanmax(gaps[~g["accelerated"] & ~np.isnan(gaps)])
    assert np.nanmax(gaps[g["decelerated"]]) < np.nanmin(gaps[~g["decelerated"] & ~np.isnan(gaps)])
    assert not g["accelerated"][7] and not g["decelerated"][7]


def test_age_adjusted_gap_removes_the_linear_age_trend():
    from brainage.population.subgroups import age_adjusted

    rng = np.random.default_rng(2)
    ages = rng.uniform(20, 80, 200)
    gaps = 10 - 0.2 * ages + rng.normal(0, 1, 200)  # regression to the mean
    gaps[5] = np.nan
    adj = age_adjusted(gaps, ages)
    ok = np.isfinite(adj)
    assert np.isnan(adj[5]) and ok.sum() == 199
    assert abs(np.corrcoef(ages[ok], adj[ok])[0, 1]) < 1e-10 and abs(adj[ok].mean()) < 1e-10
    # on the raw gap the accelerated are the young; on the adjusted gap they are not
    raw = subgroup_masks("gap_group", pd.DataFrame(), ages, gaps)
    fair = subgroup_masks("gap_group", pd.DataFrame(), ages, adj)
    assert ages[raw["accelerated"]].mean() < 40
    assert abs(ages[fair["accelerated"]].mean() - ages[fair["decelerated"]].mean()) < 10


def test_categorical_column_groups_and_errors():
    cohort = pd.DataFrame({"sex": ["F", "M", "n/a", "F"], "id": ["a", "b", "c", "d"]})
    g = subgroup_masks("sex", cohort, np.ones(4), np.zeros(4))
    assert list(g) == ["F", "M"]
    np.testing.assert_array_equal(g["F"], [True, False, False, True])
    assert group_label("sex", "F") == "sexF"
    assert group_label("age_group", "60–70") == "agegroup60to70"
    assert group_label("age_group", "< 60") == "agegroupunder60"
    with pytest.raises(InputError, match="neither 'age_group'"):
        subgroup_masks("site", cohort, np.ones(4), np.zeros(4))
    many = pd.DataFrame({"site": [f"s{i}" for i in range(12)]})
    with pytest.raises(InputError, match="12 levels"):
        subgroup_masks("site", many, np.ones(12), np.zeros(12))


def _table(values, regions):
    t = pd.DataFrame({"region": regions, "mean_relevance": values})
    t = t.sort_values("mean_relevance", ascending=False).reset_index(drop=True)
    t["rank"] = np.arange(1, len(t) + 1)
    return t


def test_rank_stability_equals_scipy_on_the_common_regions():
    rng = np.random.default_rng(1)
    regions = [f"r{i}" for i in range(30)]
    base = rng.normal(size=30)
    tables = {
        "seed-0": _table(base, regions),
        "seed-1": _table(base + 0.3 * rng.normal(size=30), regions),
        "seed-2": _table(rng.normal(size=29), regions[1:]),  # one region missing
    }
    out = rank_stability(tables, "model")
    assert list(out[["a", "b"]].itertuples(index=False, name=None)) == [
        ("seed-0", "seed-1"), ("seed-0", "seed-2"), ("seed-1", "seed-2"),
    ]  # fmt: skip
    a = tables["seed-0"].set_index("region")["mean_relevance"]
    b = tables["seed-2"].set_index("region")["mean_relevance"]
    common = b.index
    row = out.iloc[1]
    assert row.n_regions == 29
    assert row.spearman == pytest.approx(stats.spearmanr(a[common], b[common]).statistic)
    assert row.kendall == pytest.approx(stats.kendalltau(a[common], b[common]).statistic)
    # a close copy ranks alike; identical tables agree perfectly
    assert out.iloc[0].spearman > 0.8
    same = rank_stability({"x": tables["seed-0"], "y": tables["seed-0"]}, "method")
    assert same.iloc[0].spearman == pytest.approx(1) and same.iloc[0].top10_overlap == 1
    # reversing the ranking gives −1 and no shared top-10 (30 regions)
    rev = _table(-base, regions)
    opp = rank_stability({"x": tables["seed-0"], "y": rev}, "method").iloc[0]
    assert opp.spearman == pytest.approx(-1) and opp.top10_overlap == 0
    long = ranks_long(tables, "model")
    assert len(long) == 89 and set(long.condition) == set(tables)
    # ranks follow the chosen column: here the table's own ranking
    first = long[long.condition == "seed-0"]
    assert list(first["rank"]) == list(tables["seed-0"]["rank"])
