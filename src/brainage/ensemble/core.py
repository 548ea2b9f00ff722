"""Ensembles of base models, uncertainty, age-bias correction and the brain-age gap.

Implements paper 001 (Hofmann et al. 2021: sub-ensembles with a ridge head, uncertainty as the
95 % interval across base models) and the age-bias correction of Smith et al. 2019 / Le et al.
2018 as specified in METHODS §5–6, with the guards of §6.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats

from brainage.errors import InputError
from brainage.utils import check_random_state


def _check_2d(predictions, name="predictions") -> np.ndarray:
    p = np.asarray(predictions, dtype=np.float64)
    if p.ndim != 2:
        raise InputError(f"'{name}' must have shape (n_subjects, n_models); got {p.shape}")
    return p


@dataclass
class RidgeHead:
    """Ridge regression of age on the base models' predictions (paper 001's head model).

    Parameters
    ----------
    alpha : float
        Ridge penalty (paper: 1.0).
    positive : bool
        Constrain the model weights to be ≥ 0 (non-negative stacking, Breiman 1996), which keeps
        the head from extrapolating with opposite-sign weights when the validation set is small.

    Attributes
    ----------
    coef_ : ndarray, shape (n_models,)
        Weight of each base model.
    intercept_ : float
        Years.
    """

    alpha: float = 1.0
    positive: bool = True
    coef_: np.ndarray | None = None
    intercept_: float | None = None

    def fit(self, predictions, ages) -> RidgeHead:
        """Fit on validation predictions, shape (n_val, n_models), and ages (n_val,), years."""
        from sklearn.linear_model import Ridge

        p = _check_2d(predictions)
        ridge = Ridge(alpha=self.alpha, positive=self.positive).fit(p, np.asarray(ages, float))
        self.coef_ = ridge.coef_.astype(np.float64)
        self.intercept_ = float(ridge.intercept_)
        return self

    def predict(self, predictions) -> np.ndarray:
        """Combine predictions, shape (n, n_models), into ensemble ages, shape (n,), years."""
        if self.coef_ is None:
            raise RuntimeError("RidgeHead.predict called before fit")
        return _check_2d(predictions) @ self.coef_ + self.intercept_

    def cross_val_predict(self, predictions, ages, n_splits: int = 5, seed: int = 0) -> np.ndarray:
        """Out-of-fold ensemble predictions for the fitting subjects themselves.

        Used to fit the age-bias correction on predictions the head has not been fitted on.

        Returns
        -------
        ndarray, shape (n_val,)
            Years.
        """
        from sklearn.model_selection import KFold

        p = _check_2d(predictions)
        ages = np.asarray(ages, float)
        out = np.empty(len(ages))
        k = min(n_splits, len(ages))
        for tr, te in KFold(k, shuffle=True, random_state=seed).split(p):
            out[te] = RidgeHead(self.alpha, self.positive).fit(p[tr], ages[tr]).predict(p[te])
        return out

    @classmethod
    def equal_weights(cls, n_models: int) -> RidgeHead:
        """Return a head that averages the base models (weights 1/N, intercept 0)."""
        head = cls(alpha=0.0, positive=True)
        head.coef_ = np.full(n_models, 1.0 / n_models)
        head.intercept_ = 0.0
        return head

    @classmethod
    def mean_of(cls, columns) -> RidgeHead:
        """Return a head that averages the base models marked in ``columns`` (bool, (n_models,))."""
        cols = np.asarray(columns, bool)
        head = cls.equal_weights(cols.size)
        head.coef_ = np.where(cols, 1.0 / cols.sum(), 0.0)
        return head

    def to_dict(self) -> dict:
        """Parameters and fitted values as plain JSON types."""
        return {
            "alpha": self.alpha,
            "positive": self.positive,
            "coef": None if self.coef_ is None else self.coef_.tolist(),
            "intercept": self.intercept_,
        }

    @classmethod
    def from_dict(cls, d: dict) -> RidgeHead:
        """Inverse of :meth:`to_dict`."""
        head = cls(d["alpha"], d["positive"])
        head.coef_ = np.asarray(d["coef"], dtype=np.float64)
        head.intercept_ = float(d["intercept"])
        return head


def fit_ensemble_head(
    predictions,
    ages,
    alpha: float = 1.0,
    positive: bool = True,
    seed: int = 0,
    networks=None,
    subset_name: str = "mean_networks",
) -> tuple[RidgeHead, dict]:
    """Fit the ridge head of paper 001, guarded against over-fitting a small validation set.

    The ridge head and plain averaging are compared by 5-fold cross-validated MAE on the
    validation subjects; the ridge head is kept only when it is better. With tens of validation
    subjects a ridge head over N correlated base models tends to select a few of them and
    extrapolate, which raises the error on new subjects. When some base models are non-CNN
    learners (``networks`` marks the CNNs), the mean of the CNNs alone is a third candidate, so
    a learner joins the ensemble only when it lowers the validation MAE.

    Parameters
    ----------
    predictions : array-like, shape (n_val, n_models)
        Base-model predictions for the validation subjects, years.
    ages : array-like, shape (n_val,)
        Years.
    alpha, positive : see :class:`RidgeHead`.
    seed : int
        Seed of the cross-validation folds.
    networks : array-like of bool, shape (n_models,), optional
        Which base models are CNNs (default: all).
    subset_name : str
        Name of the third candidate, the mean of the ``networks`` columns alone (the top head
        of a multi-level ensemble calls it ``"brain"``: the whole-brain sub-ensemble alone).

    Returns
    -------
    head : RidgeHead
        The chosen head, fitted on all validation subjects.
    info : dict
        ``{"kind": "ridge" | "mean" | subset_name, "cv_mae_ridge", "cv_mae_mean",
        "cv_mae_<subset_name>"}`` (years; the means are not fitted, so their validation MAE is
        already out-of-sample).
    """
    p = _check_2d(predictions)
    ages = np.asarray(ages, float)
    n = p.shape[1]
    networks = np.ones(n, bool) if networks is None else np.asarray(networks, bool)
    ridge = RidgeHead(alpha, positive).fit(p, ages)
    cv_ridge = float(np.mean(np.abs(ridge.cross_val_predict(p, ages, seed=seed) - ages)))
    heads = {"ridge": (ridge, cv_ridge)}
    mean = RidgeHead.equal_weights(n)
    heads["mean"] = (mean, float(np.mean(np.abs(mean.predict(p) - ages))))
    if 0 < networks.sum() < n:
        only = RidgeHead.mean_of(networks)
        heads[subset_name] = (only, float(np.mean(np.abs(only.predict(p) - ages))))
    eligible = [k for k in heads if k != "ridge" or n > 1]
    kind = min(eligible, key=lambda k: (heads[k][1], k != "mean"))  # ties: the plain mean
    info = {"kind": kind, **{f"cv_mae_{k}": float(v[1]) for k, v in heads.items()}}
    return heads[kind][0], info


def ensemble_uncertainty(predictions, level: float = 0.95) -> np.ndarray:
    """Width of the confidence interval of the mean of the base models' predictions.

    Parameters
    ----------
    predictions : array-like, shape (n_subjects, n_models)
        Base-model predictions, years.
    level : float
        Confidence level (paper 001: 95 %).

    Returns
    -------
    ndarray, shape (n_subjects,)
        ``2 · t_{(1+level)/2, N−1} · s / √N`` in years, with ``s`` the sample standard deviation
        across the N base models; NaN when N < 2.
    """
    p = _check_2d(predictions)
    n = p.shape[1]
    if n < 2:
        return np.full(p.shape[0], np.nan)
    t = stats.t.ppf(0.5 + level / 2, n - 1)
    return 2 * t * p.std(axis=1, ddof=1) / np.sqrt(n)


@dataclass
class AgeBiasCorrection:
    """Linear age-bias correction (Smith et al. 2019; Le et al. 2018; METHODS §6).

    Fits ``predicted = a · age + b`` on validation subjects only and corrects
    ``corrected = (predicted − b) / a``. Because it divides by the slope ``a``, it is guarded:
    a bootstrap confidence interval of ``a`` is reported, leave-one-out cross-validation on the
    validation subjects measures whether the correction lowers the MAE, and ``recommended``
    says which prediction to use.

    Parameters
    ----------
    min_slope : float
        Below this slope the correction is judged unstable.
    n_bootstrap : int
        Bootstrap resamples for the slope interval.
    seed : int
        Bootstrap seed.

    Attributes
    ----------
    slope_, intercept_ : float
        ``a`` (unitless) and ``b`` (years).
    slope_ci_ : tuple of float
        95 % bootstrap percentile interval of ``a``.
    val_mae_before_, val_mae_after_cv_ : float
        Validation MAE without correction and with leave-one-out corrected predictions, years.
    recommended_ : {"brain_age_corrected", "brain_age"}
    warnings_ : list of str
    """

    min_slope: float = 0.3
    n_bootstrap: int = 1000
    seed: int = 0
    slope_: float | None = None
    intercept_: float | None = None
    slope_ci_: tuple = (float("nan"), float("nan"))
    n_validation_: int = 0
    val_mae_before_: float = float("nan")
    val_mae_after_cv_: float = float("nan")
    recommended_: str = "brain_age"
    warnings_: list = field(default_factory=list)

    @staticmethod
    def _fit_line(age, pred) -> tuple[float, float]:
        a, b = np.polyfit(age, pred, 1)
        return float(a), float(b)

    def fit(self, ages, predictions) -> AgeBiasCorrection:
        """Fit on validation ages and predictions, both shape (n_val,), years.

        With fewer than 5 subjects (or one age only) the correction is left at the identity,
        with a warning, and ``recommended_`` is ``"brain_age"``.
        """
        age = np.asarray(ages, float)
        pred = np.asarray(predictions, float)
        if len(age) < 5 or np.ptp(age) == 0:
            # too few subjects to fit a line: keep the identity and say so
            self.n_validation_ = len(age)
            self.slope_, self.intercept_ = 1.0, 0.0
            self.slope_ci_ = (float("nan"), float("nan"))
            self.val_mae_before_ = float(np.mean(np.abs(pred - age))) if len(age) else float("nan")
            self.val_mae_after_cv_ = float("nan")
            self.recommended_ = "brain_age"
            self.warnings_ = [
                f"not fitted: needs ≥ 5 validation subjects with different ages, got {len(age)} "
                "(use a larger split.validation_fraction); brain_age_corrected = brain_age"
            ]
            warnings.warn("age-bias correction: " + self.warnings_[0], stacklevel=2)
            return self
        self.n_validation_ = len(age)
        self.slope_, self.intercept_ = self._fit_line(age, pred)
        rng = check_random_state(self.seed)
        boots = []
        for _ in range(self.n_bootstrap):
            idx = rng.integers(0, len(age), len(age))
            if np.ptp(age[idx]) > 0:
                boots.append(self._fit_line(age[idx], pred[idx])[0])
        self.slope_ci_ = (float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5)))
        loo = np.empty(len(age))
        for i in range(len(age)):
            keep = np.arange(len(age)) != i
            a, b = self._fit_line(age[keep], pred[keep])
            loo[i] = (pred[i] - b) / a if abs(a) > 1e-6 else np.nan
        self.val_mae_before_ = float(np.mean(np.abs(pred - age)))
        self.val_mae_after_cv_ = float(np.nanmean(np.abs(loo - age)))
        self.warnings_ = []
        unstable = False
        if self.slope_ < self.min_slope:
            unstable = True
            self.warnings_.append(
                f"fitted slope a = {self.slope_:.2f} is below {self.min_slope}: the model "
                "under-fits age and dividing by a would inflate errors"
            )
        if self.slope_ci_[0] <= 0:
            unstable = True
            self.warnings_.append(
                f"the 95 % interval of the slope "
                f"({self.slope_ci_[0]:.2f}, {self.slope_ci_[1]:.2f}) "
                "is not above 0"
            )
        if self.val_mae_after_cv_ > self.val_mae_before_ * 1.10:
            unstable = True
            self.warnings_.append(
                f"correction raises the cross-validated validation MAE from "
                f"{self.val_mae_before_:.2f} to {self.val_mae_after_cv_:.2f} years"
            )
        self.recommended_ = "brain_age" if unstable else "brain_age_corrected"
        for w in self.warnings_:
            warnings.warn("age-bias correction: " + w, stacklevel=2)
        return self

    def transform(self, predictions) -> np.ndarray:
        """Corrected predictions ``(pred − b) / a``, shape (n,), years."""
        if self.slope_ is None:
            raise RuntimeError("AgeBiasCorrection.transform called before fit")
        return (np.asarray(predictions, float) - self.intercept_) / self.slope_

    def to_dict(self) -> dict:
        """Fitted values for ``bias_correction.json``."""
        d = asdict(self)
        out = {k.rstrip("_"): v for k, v in d.items()}
        out["slope_ci"] = list(self.slope_ci_)
        out["recommended_column"] = self.recommended_
        return out

    @classmethod
    def from_dict(cls, d: dict) -> AgeBiasCorrection:
        """Inverse of :meth:`to_dict`."""
        obj = cls(d.get("min_slope", 0.3), d.get("n_bootstrap", 1000), d.get("seed", 0))
        obj.slope_, obj.intercept_ = float(d["slope"]), float(d["intercept"])
        obj.slope_ci_ = tuple(d["slope_ci"])
        obj.n_validation_ = d.get("n_validation", 0)
        obj.val_mae_before_ = d.get("val_mae_before", float("nan"))
        obj.val_mae_after_cv_ = d.get("val_mae_after_cv", float("nan"))
        obj.recommended_ = d.get("recommended_column", "brain_age")
        obj.warnings_ = list(d.get("warnings", []))
        return obj


def residualize_gap(gap, ages, fit_mask=None) -> np.ndarray:
    """Brain-age gap with age regressed out ("age as covariate" variant, Le et al. 2018).

    Parameters
    ----------
    gap : array-like, shape (n,)
        Brain-age gap, years.
    ages : array-like, shape (n,)
        Chronological age, years.
    fit_mask : array-like of bool, shape (n,), optional
        Subjects the linear fit gap ~ age is estimated on (e.g. validation); default all.

    Returns
    -------
    ndarray, shape (n,)
        ``gap − (c · age + d)``, years.
    """
    gap = np.asarray(gap, float)
    ages = np.asarray(ages, float)
    m = np.ones(len(gap), bool) if fit_mask is None else np.asarray(fit_mask, bool)
    c, d = np.polyfit(ages[m], gap[m], 1)
    return gap - (c * ages + d)


def regression_metrics(ages, predictions) -> dict:
    """MAE, RMSE (years) and Pearson r of predictions vs. ages (NaN ages ignored).

    Returns
    -------
    dict
        ``{"n", "mae", "rmse", "r"}``; r is NaN for fewer than 3 subjects.
    """
    age = np.asarray(ages, float)
    pred = np.asarray(predictions, float)
    ok = np.isfinite(age) & np.isfinite(pred)
    age, pred = age[ok], pred[ok]
    n = int(ok.sum())
    if n == 0:
        return {"n": 0, "mae": np.nan, "rmse": np.nan, "r": np.nan}
    err = pred - age
    r = float(np.corrcoef(age, pred)[0, 1]) if n >= 3 and np.std(pred) > 0 else np.nan
    return {
        "n": n,
        "mae": float(np.mean(np.abs(err))),
        "rmse": float(np.sqrt(np.mean(err**2))),
        "r": r,
    }
