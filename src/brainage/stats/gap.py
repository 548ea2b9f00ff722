"""The brain-age gap against cohort covariates (paper 001, Fig. 7; METHODS §10).

:func:`sliding_window_correlations` gives Pearson's r between the gap and each covariate in
overlapping age windows (so that age itself, which the gap still carries, matters little),
with Bonferroni-corrected p-values; :func:`gap_linear_models` fits ``gap ~ covariate + age +
age²`` on everyone. :func:`gap_covariates` picks the numeric and binary columns of a cohort.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainage.errors import InputError
from brainage.stats.maps import _column_values

#: Columns of the sliding-window table.
WINDOW_COLUMNS = [
    "covariate", "coding", "window_start", "window_end", "window_centre", "n", "r",
    "ci_low", "ci_high", "p", "p_bonferroni", "significant",
]  # fmt: skip

#: Columns of the linear-model table.
MODEL_COLUMNS = [
    "covariate", "coding", "n", "beta", "se", "t", "p", "ci_low", "ci_high", "partial_r",
]  # fmt: skip

#: Cohort columns that are never covariates (identifiers, age, the run's own columns).
RESERVED = {"participant_id", "age", "split", "fold", "source", "t1w", "session", "ses", "run"}


def gap_covariates(cohort: pd.DataFrame, names=None) -> tuple[dict, dict]:
    """Pick and code the covariates of a cohort as floats.

    Parameters
    ----------
    cohort : pandas.DataFrame
        One row per subject (e.g. ``participants.tsv``).
    names : list of str, optional
        Columns to use; default: every numeric or binary column not in :data:`RESERVED`.

    Returns
    -------
    values : dict of str → ndarray, shape (n,)
        The column as floats, binary columns coded 0/1 (NaN: unknown).
    codings : dict of str → str
        ``"numeric"`` or ``"<level 1> vs <level 0>"``; columns left out by default map to the
        reason (in ``values`` they are absent).

    Raises
    ------
    InputError
        A named column is missing, or is neither numeric nor binary.
    """
    values, codings = {}, {}
    explicit = names is not None
    for col in names if explicit else cohort.columns:
        if col in RESERVED and not explicit:
            continue
        if col not in cohort:
            raise InputError(
                f"stats.covariates names {col!r}, which is not a cohort column (columns: "
                f"{', '.join(map(str, cohort.columns))})",
                "name columns of participants.tsv",
            )
        try:
            x, levels = _column_values(cohort[col], col)
        except InputError:
            if explicit:
                raise
            codings[col] = "skipped: neither numeric nor binary"
            continue
        if np.isfinite(x).sum() < 3 or np.nanstd(x) == 0:
            codings[col] = "skipped: constant or mostly unknown"
            continue
        values[col] = x
        codings[col] = "numeric" if levels is None else f"{levels[1]} vs {levels[0]}"
    return values, codings


def _pearson(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """r, two-sided p (t-distribution) and the Fisher-z 95 % interval."""
    from scipy import stats

    res = stats.pearsonr(x, y)
    ci = res.confidence_interval(0.95)
    return float(res.statistic), float(res.pvalue), float(ci.low), float(ci.high)


def sliding_window_correlations(
    ages,
    gaps,
    covariates: dict,
    codings: dict | None = None,
    width: float = 10.0,
    step: float = 2.5,
    min_subjects: int = 10,
    alpha: float = 0.05,
) -> pd.DataFrame:
    """Pearson r between the brain-age gap and each covariate in overlapping age windows.

    Windows ``[start, start + width]`` start at the youngest age and move by ``step``; the last
    one ends at the oldest. Bonferroni correction is over every correlation in the table (all
    windows of all covariates), so a marked window is significant at family-wise level ``alpha``.

    Parameters
    ----------
    ages, gaps : array-like, shape (n,)
        Chronological age and brain-age gap, years (NaN: unknown, left out).
    covariates : dict of str → ndarray, shape (n,)
        From :func:`gap_covariates`.
    codings : dict of str → str, optional
    width, step : float
        Years.
    min_subjects : int
        Fewer subjects with both values in a window (or fewer than 2 per level of a binary
        covariate) give no r (NaN, not counted in the correction).
    alpha : float

    Returns
    -------
    pandas.DataFrame
        :data:`WINDOW_COLUMNS`, one row per covariate and window.
    """
    ages = np.asarray(ages, float)
    gaps = np.asarray(gaps, float)
    codings = codings or {}
    known = np.isfinite(ages) & np.isfinite(gaps)
    rows = []
    if known.sum() and covariates:
        lo, hi = float(ages[known].min()), float(ages[known].max())
        starts = list(np.arange(lo, max(hi - width, lo) + 1e-9, step))
        if starts[-1] + width < hi:
            starts.append(hi - width)
        for name, x in covariates.items():
            x = np.asarray(x, float)
            binary = set(np.unique(x[np.isfinite(x)])) <= {0.0, 1.0}
            for start in starts:
                end = start + width
                inw = known & np.isfinite(x) & (ages >= start) & (ages <= end)
                row = {"covariate": name, "coding": codings.get(name, ""),
                       "window_start": start, "window_end": end, "window_centre": start + width / 2,
                       "n": int(inw.sum())}  # fmt: skip
                enough = inw.sum() >= min_subjects and np.std(x[inw]) > 0
                if binary:
                    enough &= min((x[inw] == 0).sum(), (x[inw] == 1).sum()) >= 2
                if enough:
                    r, p, c0, c1 = _pearson(x[inw], gaps[inw])
                else:
                    r = p = c0 = c1 = np.nan
                rows.append(row | {"r": r, "ci_low": c0, "ci_high": c1, "p": p})
    table = pd.DataFrame(rows, columns=[c for c in WINDOW_COLUMNS if c not in
                                        ("p_bonferroni", "significant")])  # fmt: skip
    m = int(table["p"].notna().sum())
    table["p_bonferroni"] = np.minimum(table["p"] * max(m, 1), 1.0)
    table["significant"] = table["p_bonferroni"] <= alpha
    return table[WINDOW_COLUMNS]


def gap_linear_models(ages, gaps, covariates: dict, codings: dict | None = None) -> pd.DataFrame:
    """``gap ~ 1 + covariate + age + age²`` per covariate, by ordinary least squares.

    Parameters
    ----------
    ages, gaps : array-like, shape (n,)
        Years (NaN rows are left out).
    covariates, codings
        As in :func:`sliding_window_correlations`.

    Returns
    -------
    pandas.DataFrame
        :data:`MODEL_COLUMNS`: the covariate's coefficient (years of gap per unit, or of the
        second level over the first), its standard error, t, two-sided p, 95 % interval and
        partial correlation given age and age².
    """
    import statsmodels.api as sm

    ages = np.asarray(ages, float)
    gaps = np.asarray(gaps, float)
    codings = codings or {}
    rows = []
    for name, x in covariates.items():
        x = np.asarray(x, float)
        use = np.isfinite(ages) & np.isfinite(gaps) & np.isfinite(x)
        row = {"covariate": name, "coding": codings.get(name, ""), "n": int(use.sum())}
        if use.sum() < 6 or np.std(x[use]) == 0:
            rows.append(row)
            continue
        ac = ages[use] - ages[use].mean()
        design = np.column_stack([np.ones(use.sum()), x[use], ac, ac**2 - np.mean(ac**2)])
        fit = sm.OLS(gaps[use], design).fit()
        t = float(fit.tvalues[1])
        ci = fit.conf_int(0.05)[1]
        rows.append(row | {
            "beta": float(fit.params[1]), "se": float(fit.bse[1]), "t": t,
            "p": float(fit.pvalues[1]), "ci_low": float(ci[0]), "ci_high": float(ci[1]),
            "partial_r": t / np.sqrt(t**2 + fit.df_resid),
        })  # fmt: skip
    return pd.DataFrame(rows, columns=MODEL_COLUMNS)
