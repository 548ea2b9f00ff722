"""Brain-age gap vs. covariates, user contrasts and centring of signed maps (METHODS §10)."""

import numpy as np
import pandas as pd
import pytest
import statsmodels.api as sm
from scipy import stats

from brainage.config import Config
from brainage.errors import ConfigError, InputError
from brainage.stats.gap import gap_covariates, gap_linear_models, sliding_window_correlations
from brainage.stats.maps import analysis_design, contrast_design
from brainage.stats.permutation import permutation_test


def _cohort(n=240, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    bmi = rng.normal(25, 4, n)
    # the gap rises with BMI only in subjects over 60: a window effect, as in paper 001 Fig. 7
    gap = rng.normal(0, 3, n) + np.where(age > 60, 0.9 * (bmi - 25), 0.0)
    ids = [f"sub-{i:03d}" for i in range(n)]
    cohort = pd.DataFrame({"participant_id": ids, "age": age, "sex": sex, "bmi": bmi,
                           "scanner_id": [f"s{i}" for i in range(n)]})  # fmt: skip
    return cohort, gap


def test_covariates_are_the_numeric_and_binary_columns():
    cohort, _ = _cohort()
    cohort["bmi"] = cohort["bmi"].astype(object)
    cohort.loc[3, "bmi"] = "n/a"
    values, codings = gap_covariates(cohort)
    assert set(values) == {"sex", "bmi"}
    assert codings["sex"] == "M vs F" and codings["bmi"] == "numeric"
    assert codings["scanner_id"].startswith("skipped")
    np.testing.assert_array_equal(values["sex"], (cohort["sex"] == "M").to_numpy(float))
    assert np.isnan(values["bmi"][3])
    with pytest.raises(InputError, match="'scanner_id' has 240 distinct values"):
        gap_covariates(cohort, ["scanner_id"])
    with pytest.raises(InputError, match="not a cohort column"):
        gap_covariates(cohort, ["weight"])


def test_sliding_windows_equal_scipy_and_find_the_planted_window():
    cohort, gap = _cohort()
    values, codings = gap_covariates(cohort)
    age = cohort["age"].to_numpy()
    table = sliding_window_correlations(age, gap, values, codings, width=10, step=5)
    # every r equals scipy's on the window's subjects; windows are 10 years wide, 5 apart
    for row in table.itertuples():
        inw = (age >= row.window_start) & (age <= row.window_end)
        r, p = stats.pearsonr(values[row.covariate][inw], gap[inw])
        assert row.n == inw.sum()
        assert row.r == pytest.approx(r) and row.p == pytest.approx(p)
        assert row.ci_low < row.r < row.ci_high
    steps = np.diff(table[table.covariate == "bmi"].window_start)
    assert np.allclose(steps[:-1], 5) and 0 < steps[-1] <= 5  # the last window ends at the oldest
    assert table.window_end.max() == pytest.approx(age.max())
    # Bonferroni over all correlations of the table
    m = table.p.notna().sum()
    np.testing.assert_allclose(table.p_bonferroni, np.minimum(table.p * m, 1))
    bmi = table[table.covariate == "bmi"]
    assert bmi[bmi.window_start >= 61].significant.all()
    assert not bmi[bmi.window_end <= 59].significant.any()
    assert not table[table.covariate == "sex"].significant.any()


def test_sliding_windows_control_the_family_wise_error_under_the_null():
    rng = np.random.default_rng(3)
    hits = 0
    for _ in range(200):
        age = rng.uniform(20, 80, 120)
        table = sliding_window_correlations(age, rng.normal(size=120), {"x": rng.normal(size=120)})
        hits += bool(table.significant.any())
    # Bonferroni is conservative: the family-wise rate is at most alpha (binomial upper bound)
    assert hits / 200 <= stats.binom.ppf(0.99, 200, 0.05) / 200


def test_gap_linear_model_equals_statsmodels():
    cohort, gap = _cohort()
    values, codings = gap_covariates(cohort)
    table = gap_linear_models(cohort["age"], gap, values, codings).set_index("covariate")
    age = cohort["age"].to_numpy()
    ac = age - age.mean()
    design = np.column_stack([np.ones(len(age)), values["bmi"], ac, ac**2 - np.mean(ac**2)])
    fit = sm.OLS(gap, design).fit()
    assert table.loc["bmi", "beta"] == pytest.approx(fit.params[1])
    assert table.loc["bmi", "p"] == pytest.approx(fit.pvalues[1])
    assert table.loc["bmi", "p"] < 1e-4 and table.loc["sex", "p"] > 0.01
    t, df = fit.tvalues[1], fit.df_resid
    assert table.loc["bmi", "partial_r"] == pytest.approx(t / np.sqrt(t**2 + df))


def _maps(n=40, seed=0):
    rng = np.random.default_rng(seed)
    mask = np.zeros((6, 6, 6), bool)
    mask[1:5, 1:5, 1:5] = True
    maps = rng.normal(size=(n, 6, 6, 6)).astype(np.float32)
    return rng, mask, maps


def test_contrast_design_is_the_two_sample_t_test_with_covariates():
    rng, mask, maps = _maps()
    n = len(maps)
    cohort = pd.DataFrame({"sex": rng.choice(["F", "M"], n), "site": rng.choice(["a", "b"], n)})
    cohort.loc[0, "sex"] = "n/a"
    ages = rng.uniform(20, 80, n)
    spec = Config(stats={"contrasts": [{"column": "sex", "covariates": ["age", "site"]}]})
    spec = spec.stats.contrasts[0]
    subjects = [f"s{i}" for i in range(n)]
    a = contrast_design(spec, maps, mask, subjects, cohort, ages, None, signed="scaled")
    assert a.skipped is None and a.subjects == subjects[1:]
    assert "M minus F" in a.description and "site (b vs a)" in a.description
    res = permutation_test(a.data, a.design, a.contrast, n_perm=9, seed=1)
    male = (cohort["sex"][1:] == "M").to_numpy(float)
    x = np.column_stack([np.ones(n - 1), male, ages[1:], (cohort["site"][1:] == "b")])
    for v in (0, 17):
        ref = sm.OLS(a.data[:, v], x).fit().tvalues[1]
        assert res.stat[v] == pytest.approx(ref, abs=1e-8)
    # the data are each subject's map over its mean |relevance|
    scale = np.abs(maps[1:, mask]).mean(axis=1)
    np.testing.assert_allclose(a.data, maps[1:, mask] / scale[:, None], rtol=1e-5)
    # two levels of a categorical column; too few subjects per level skip with the reason
    spec3 = Config(stats={"contrasts": [{"column": "g", "levels": ["b", "c"], "covariates": []}]})
    cohort["g"] = rng.choice(["a", "b", "c"], n)
    a3 = contrast_design(spec3.stats.contrasts[0], maps, mask, subjects, cohort, ages, None)
    assert set(cohort["g"][[s in a3.subjects for s in subjects]]) == {"b", "c"}
    cohort["g"] = ["b"] * (n - 3) + ["c"] * 3
    a4 = contrast_design(spec3.stats.contrasts[0], maps, mask, subjects, cohort, ages, None)
    assert a4.skipped and "per level" in a4.skipped
    cohort["g"] = rng.choice(["a", "b", "c"], n)
    spec5 = Config(stats={"contrasts": [{"column": "g", "covariates": []}]})
    with pytest.raises(InputError, match="'g' has 3 distinct values"):
        contrast_design(spec5.stats.contrasts[0], maps, mask, subjects, cohort, ages, None)


def test_centring_removes_the_global_offset_signed_relevance_carries():
    # signed relevance ≈ a spatial pattern + a global offset that follows the prediction (age):
    # uncentred, old − young is "significant" everywhere; centred, only the planted region
    rng, mask, _ = _maps()
    n = 40
    ages = np.r_[rng.uniform(20, 35, n // 2), rng.uniform(65, 80, n // 2)]
    maps = rng.normal(0, 0.3, (n, 6, 6, 6)) + 1.0 + 0.05 * (ages - 50)[:, None, None, None]
    maps[n // 2 :, 2, 2, 2] += 3.0
    pids = [f"s{i}" for i in range(n)]
    kw = dict(ages=ages, gaps=np.zeros(n), folds=None)
    results = {}
    for signed in ("scaled", "centred"):
        a = analysis_design("young_old", maps, mask, pids, signed=signed, **kw)
        results[signed] = permutation_test(a.data, a.design, a.contrast, n_perm=199, seed=0)
        if signed == "centred":
            np.testing.assert_allclose(a.data.mean(axis=1), 0, atol=1e-5)
    assert (results["scaled"].p_fwe <= 0.05).mean() > 0.8
    sig = results["centred"].p_fwe <= 0.05
    peak = (
        np.flatnonzero(mask.ravel() == 1).tolist().index(np.ravel_multi_index((2, 2, 2), (6,) * 3))
    )
    assert sig[peak] and sig.sum() <= 3


def test_contrast_configuration_is_checked():
    with pytest.raises(ConfigError, match="built-in analysis"):
        Config(stats={"contrasts": [{"column": "gap"}]})
    with pytest.raises(ConfigError, match="both the tested column and a covariate"):
        Config(stats={"contrasts": [{"column": "sex", "covariates": ["sex"]}]})
    cfg = Config(stats={"contrasts": [{"column": "dx_group"}], "analyses": ["one_sample"]})
    assert cfg.stats.tests() == ["one_sample", "dxgroup"]


def test_peak_table_finds_each_significant_peak_and_labels_it():
    from types import SimpleNamespace

    from brainage.stats.maps import peak_table

    shape, affine = (30, 30, 30), np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = -30
    stat = np.zeros(shape)
    stat[5:10, 5:10, 5:10], stat[7, 7, 7] = 3.0, 6.0
    stat[20:24, 20:24, 20:24], stat[21, 22, 22] = -3.0, -5.0
    stat[2, 25, 2] = 9.0  # a strong voxel that is not significant
    p = np.where(stat != 0, 0.01, 1.0)
    p[2, 25, 2] = 0.2
    labels = np.zeros(shape, int)
    labels[:15] = 1
    atlas = SimpleNamespace(labels=labels, names={1: "Left_thing"})
    table = peak_table(stat, p, affine, atlas)
    assert len(table) == 2
    top = table.iloc[0]
    assert (top.peak_x, top.peak_y, top.peak_z) == (-16.0, -16.0, -16.0)  # voxel (7, 7, 7)
    assert top.peak_stat == 6.0 and top.region == "Left_thing" and top.cluster_mm3 == 125 * 8
    neg = table.iloc[1]
    assert neg.peak_stat == -5.0 and neg.region == "(no label)" and neg.p_fwe == 0.01
    assert peak_table(stat, np.ones(shape), affine).empty


def test_cluster_table_sizes_peaks_and_covered_regions():
    from types import SimpleNamespace

    from brainage.stats.maps import cluster_table

    shape, affine = (20, 20, 20), np.diag([2.0, 2.0, 2.0, 1.0])
    stat = np.zeros(shape)
    stat[2:6, 2:6, 2:6], stat[3, 4, 4] = 3.0, 7.0  # 64 voxels, positive
    stat[12:14, 12:14, 12:14] = -4.0  # 8 voxels, negative
    p = np.where(stat != 0, 0.01, 1.0)
    labels = np.zeros(shape, int)
    labels[2:4] = 1  # half of the positive cluster
    labels[4:5] = 2  # a quarter; the last quarter is unlabelled
    atlas = SimpleNamespace(labels=labels, names={1: "A", 2: "B"})
    table = cluster_table(stat, stat, p, affine, atlas)
    assert list(table["sign"]) == ["positive", "negative"]
    assert list(table["n_voxels"]) == [64, 8]
    assert table["volume_mm3"].iloc[0] == pytest.approx(64 * 8)
    first = table.iloc[0]
    assert (first.peak_x, first.peak_y, first.peak_z, first.peak_stat) == (6, 8, 8, 7.0)
    assert first.peak_region == "A" and first.regions == "A 50 %, B 25 %, unlabelled 25 %"
    assert table.iloc[1].peak_region == "(no label)" and table.iloc[1].peak_stat == -4.0
