import numpy as np
import pytest
import torch
from scipy import stats

from brainage.ensemble import (
    AgeBiasCorrection,
    RidgeHead,
    ensemble_uncertainty,
    regression_metrics,
    residualize_gap,
)


def test_ridge_head_recovers_weights():
    rng = np.random.default_rng(0)
    truth = rng.uniform(20, 80, 200)
    p = np.column_stack([truth + rng.normal(0, s, 200) for s in (2, 10, 30)])
    head = RidgeHead(alpha=1.0).fit(p, truth)
    assert head.coef_[0] > head.coef_[1] > head.coef_[2] >= 0
    assert (
        regression_metrics(truth, head.predict(p))["mae"]
        < regression_metrics(truth, p.mean(1))["mae"]
    )
    again = RidgeHead.from_dict(head.to_dict())
    np.testing.assert_allclose(again.predict(p), head.predict(p))
    oof = head.cross_val_predict(p, truth)
    assert oof.shape == (200,) and np.mean(np.abs(oof - truth)) < 3


def test_uncertainty_matches_t_interval():
    p = np.array([[40.0, 42.0, 44.0], [50.0, 50.0, 50.0]])
    w = ensemble_uncertainty(p)
    lo, hi = stats.t.interval(0.95, 2, loc=42, scale=stats.sem([40, 42, 44]))
    assert w[0] == pytest.approx(hi - lo)
    assert w[1] == 0
    assert np.isnan(ensemble_uncertainty(p[:, :1])).all()


def test_bias_correction_known_answer():
    age = np.linspace(20, 80, 50)
    pred = 0.6 * age + 20  # regression to the mean, no noise
    bc = AgeBiasCorrection(n_bootstrap=200).fit(age, pred)
    assert bc.slope_ == pytest.approx(0.6) and bc.intercept_ == pytest.approx(20)
    np.testing.assert_allclose(bc.transform(pred), age)
    assert bc.recommended_ == "brain_age_corrected" and bc.warnings_ == []
    assert bc.slope_ci_[0] == pytest.approx(0.6) and bc.slope_ci_[1] == pytest.approx(0.6)


def test_bias_correction_guard_flat_slope():
    rng = np.random.default_rng(1)
    age = rng.uniform(20, 80, 20)
    pred = 50 + 0.05 * (age - 50) + rng.normal(0, 5, 20)  # under-fitting model
    with pytest.warns(UserWarning, match="age-bias correction"):
        bc = AgeBiasCorrection(n_bootstrap=200).fit(age, pred)
    assert bc.recommended_ == "brain_age"
    assert any("slope" in w for w in bc.warnings_)
    d = bc.to_dict()
    assert d["recommended_column"] == "brain_age"
    assert AgeBiasCorrection.from_dict(d).transform([50.0])[0] == pytest.approx(
        bc.transform([50.0])[0]
    )


def test_residualize_gap_removes_age_dependence():
    age = np.linspace(20, 80, 30)
    gap = -0.4 * (age - 50) + np.sin(age)
    res = residualize_gap(gap, age)
    assert abs(np.corrcoef(age, res)[0, 1]) < 1e-8


def test_regression_metrics_ignores_nan():
    m = regression_metrics([20, 30, np.nan, 50], [22, 27, 40, 50])
    assert m["n"] == 3 and m["mae"] == pytest.approx(5 / 3)


def test_guarded_head_prefers_mean_for_exchangeable_models_and_ridge_for_one_good_model():
    from brainage.ensemble import fit_ensemble_head

    rng = np.random.default_rng(3)
    age = rng.uniform(20, 80, 19)
    # five exchangeable noisy models: averaging is the right answer
    same = np.column_stack([age + rng.normal(0, 6, 19) for _ in range(5)])
    head, info = fit_ensemble_head(same, age)
    assert info["kind"] == "mean" and np.allclose(head.coef_, 0.2)
    # one accurate model among useless ones: the ridge head must find it
    age = rng.uniform(20, 80, 60)
    mixed = np.column_stack(
        [age + rng.normal(0, 1, 60)] + [rng.uniform(20, 80, 60) for _ in range(4)]
    )
    head, info = fit_ensemble_head(mixed, age)
    assert info["kind"] == "ridge" and np.argmax(head.coef_) == 0
    assert info["cv_mae_ridge"] < info["cv_mae_mean"]


def test_bias_correction_with_too_few_subjects_is_identity():
    with pytest.warns(UserWarning, match="not fitted"):
        bc = AgeBiasCorrection(n_bootstrap=10).fit([30.0, 40.0, 50.0], [35.0, 41.0, 47.0])
    assert bc.recommended_ == "brain_age"
    np.testing.assert_allclose(bc.transform([33.0, 60.0]), [33.0, 60.0])


# ---------------------------------------------------------------------------- conformal intervals
def test_conformal_quantile_is_the_finite_sample_rank():
    from brainage.ensemble import conformal_quantile

    scores = np.arange(1.0, 20.0)  # 19 scores: rank ceil(20 * 0.95) = 19 → the largest
    assert conformal_quantile(scores, 0.95) == 19.0
    assert conformal_quantile(np.arange(1.0, 40.0), 0.95) == 38.0  # ceil(40 * .95) = 38
    assert conformal_quantile(np.arange(1.0, 10.0), 0.95) == np.inf  # too few for 95 %
    assert conformal_quantile([1.0, np.nan, 2.0, 3.0], 0.5) == 2.0  # NaN dropped


@pytest.mark.parametrize("kind", ["conformal", "conformal_scaled"])
def test_conformal_interval_covers_at_its_level(kind):
    """Split-conformal theory: level ≤ coverage ≤ level + 1/(n+1), averaged over calibrations."""
    from brainage.ensemble import ConformalInterval, interval_scores

    rng = np.random.default_rng(0)
    n_cal, n_new, level, reps = 60, 400, 0.9, 200
    cover = []
    for _ in range(reps):
        spread = rng.uniform(0.5, 3.0, n_cal + n_new)
        age = rng.uniform(20, 80, n_cal + n_new)
        pred = age + rng.normal(0, 1, n_cal + n_new) * (1 + spread)  # error grows with spread
        ci = ConformalInterval(kind, level).fit(age[:n_cal], pred[:n_cal], spread[:n_cal])
        lo, hi = ci.predict(pred[n_cal:], spread[n_cal:])
        cover.append(interval_scores(age[n_cal:], lo, hi)["coverage"])
    se = np.std(cover) / np.sqrt(reps)
    assert level - 3 * se <= np.mean(cover) <= level + 1 / (n_cal + 1) + 3 * se
    if kind == "conformal_scaled":  # adaptive: width follows the spread, so it tracks the error
        assert interval_scores(age[n_cal:], lo, hi)["spearman_width_abs_error"] > 0.2


def test_cross_conformal_calibrates_each_fold_on_the_others():
    from brainage.ensemble import ConformalInterval, cross_conformal_interval

    rng = np.random.default_rng(1)
    n = 90
    age = rng.uniform(20, 80, n)
    pred = age + rng.normal(0, 4, n)
    spread = np.ones(n)
    groups = np.repeat([1, 2, 3], 30)
    pred[groups == 1] += 30  # fold 1 is badly off: its own residuals must not set its width
    lo, hi, overall = cross_conformal_interval(age, pred, spread, groups, "conformal", 0.9)
    for g in (1, 2, 3):
        other = groups != g
        q = ConformalInterval("conformal", 0.9).fit(age[other], pred[other], spread[other]).q_
        np.testing.assert_allclose(hi[groups == g] - pred[groups == g], q)
    assert overall.n_calibration_ == n
    # fold 1 is calibrated on folds 2 and 3 (small residuals) and so misses its subjects
    inside = (age >= lo) & (age <= hi)
    assert inside[groups == 1].mean() < 0.2 and inside[groups != 1].mean() > 0.5


def test_head_takes_a_learner_only_when_it_lowers_the_validation_error():
    from brainage.ensemble import fit_ensemble_head

    rng = np.random.default_rng(3)
    age = rng.uniform(20, 80, 40)
    cnn = np.column_stack([age + rng.normal(0, 4, 40) for _ in range(2)])
    bad = age.mean() + rng.normal(0, 1, 40)  # a learner that knows nothing
    head, info = fit_ensemble_head(
        np.column_stack([cnn, bad]), age, positive=True, networks=[True, True, False]
    )
    assert info["kind"] in ("mean_networks", "ridge")
    assert head.coef_[2] < 0.1  # the useless learner gets (almost) no weight
    assert info["cv_mae_mean_networks"] < info["cv_mae_mean"]
    good = age + rng.normal(0, 4, 40)  # an independent learner as good as the CNNs
    _, info = fit_ensemble_head(np.column_stack([cnn, good]), age, networks=[True, True, False])
    assert info["kind"] != "mean_networks" and info["cv_mae_mean"] < info["cv_mae_mean_networks"]


def test_voxel_ridge_recovers_a_linear_age_signal_and_equals_sklearn():
    from sklearn.linear_model import Ridge

    from brainage.models import fit_voxel_ridge

    rng = np.random.default_rng(0)
    n, shape = 60, (6, 7, 5)
    mask = np.zeros(shape, bool)
    mask[1:5, 1:6, 1:4] = True
    age = rng.uniform(20, 80, n + 20)
    x = rng.normal(0, 1, (n + 20, 1, *shape)).astype(np.float32)
    x[:, 0, 2, 3, 2] += (age - 50) / 3  # one voxel carries age
    x[:, 0, 0, 0, 0] = 100 * age  # outside the mask: must be ignored
    model, info = fit_voxel_ridge(x[:n], age[:n], mask)
    with torch.no_grad():
        pred = model(torch.as_tensor(x[n:])).reshape(-1).numpy()
    assert np.mean(np.abs(pred - age[n:])) < 8.0 < np.mean(np.abs(age[n:] - age[:n].mean()))
    w = model.weight.detach().numpy()[0]
    standardised = np.abs(w) * x[:n, 0].std(axis=0)  # weight per voxel sd
    assert np.all(w[~mask] == 0) and standardised[2, 3, 2] == standardised.max()
    # the same as sklearn's ridge on the standardised masked voxels, with the chosen penalty
    f = x[:, 0][:, mask].astype(np.float64)
    mu, sd = f[:n].mean(0), f[:n].std(0)
    ref = Ridge(alpha=info["alpha"]).fit((f[:n] - mu) / sd, age[:n])
    np.testing.assert_allclose(pred, ref.predict((f[n:] - mu) / sd), rtol=1e-4, atol=1e-3)
