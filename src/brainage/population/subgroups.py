"""Subgroup population maps (paper 004) and the stability of region rankings (METHODS §9).

:func:`subgroup_masks` splits a cohort by a categorical column (e.g. sex), by age group
(< 60, 60–70, > 70 years by default) and into accelerated vs. decelerated agers (the subjects
with the largest positive and negative brain-age gap); :func:`rank_stability` compares region
rankings between conditions (base models, folds, methods, subgroups) with Spearman's ρ,
Kendall's τ-b and the overlap of their top regions.
"""

from __future__ import annotations

import re
from itertools import combinations

import numpy as np
import pandas as pd

from brainage.errors import InputError

#: Built-in subgroup factors (anything else names a categorical cohort column).
AGE_GROUP, GAP_GROUP = "age_group", "gap_group"

#: Columns of a rank-stability table.
STABILITY_COLUMNS = ["factor", "a", "b", "n_regions", "spearman", "kendall", "top10_overlap"]

#: Most levels a categorical column may have to define subgroups.
MAX_LEVELS = 8


def group_label(factor: str, level: str) -> str:
    """File-name label of a subgroup, letters and digits: ``sex`` + ``F`` → ``sexF``.

    Age-group bounds are spelled out: ``< 60`` → ``under60``, ``60–70`` → ``60to70``,
    ``≥ 70`` → ``from70``.
    """
    level = str(level).replace("< ", "under").replace("≥ ", "from").replace("–", "to")
    return re.sub(r"[^A-Za-z0-9]", "", f"{factor}{level}") or "group"


def _age_levels(edges) -> list[tuple[str, float, float]]:
    edges = [float(e) for e in edges]
    bounds = [-np.inf, *edges, np.inf]
    out = []
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        if lo == -np.inf:
            name = f"< {hi:g}"
        elif hi == np.inf:
            name = f"≥ {lo:g}"
        else:
            name = f"{lo:g}–{hi:g}"
        out.append((name, lo, hi))
    return out


def age_adjusted(gaps, ages) -> np.ndarray:
    """Brain-age gap minus its linear trend on age (NaN where either is unknown).

    A gap that still follows age (regression to the mean, when the age-bias correction was not
    used) would make "accelerated" mostly young and "decelerated" mostly old subjects; the
    residual of ``gap ~ 1 + age`` ranks subjects against others of their age.

    Parameters
    ----------
    gaps, ages : array-like, shape (n,)
        Years.

    Returns
    -------
    ndarray, shape (n,)
    """
    gaps = np.asarray(gaps, float)
    ages = np.asarray(ages, float)
    ok = np.isfinite(gaps) & np.isfinite(ages)
    out = np.full(len(gaps), np.nan)
    if ok.sum() >= 3 and np.std(ages[ok]) > 0:
        slope, intercept = np.polyfit(ages[ok], gaps[ok], 1)
        out[ok] = gaps[ok] - (intercept + slope * ages[ok])
    else:
        out[ok] = gaps[ok]
    return out


def subgroup_masks(
    factor: str,
    cohort: pd.DataFrame,
    ages,
    gaps,
    age_edges=(60.0, 70.0),
    gap_fraction: float = 0.2,
) -> dict[str, np.ndarray]:
    """Members of each subgroup of one factor.

    Parameters
    ----------
    factor : str
        ``"age_group"``: ages in ``[edge_i, edge_i+1)`` with open ends (paper 004: < 60,
        60–70, ≥ 70). ``"gap_group"``: ``accelerated`` = the
        ``gap_fraction`` of subjects with the largest brain-age gap, ``decelerated`` = the
        smallest (most negative; pass the :func:`age_adjusted` gap to rank subjects against
        others of their age). Any other value: a categorical cohort column.
    cohort : pandas.DataFrame
        One row per subject (aligned with ``ages`` and ``gaps``).
    ages, gaps : array-like, shape (n,)
        Years; NaN: unknown (the subject is in no group of that factor).
    age_edges : sequence of float
    gap_fraction : float
        In (0, 0.5].

    Returns
    -------
    dict of str → ndarray of bool, shape (n,)
        Level name → members, in a stable order.

    Raises
    ------
    InputError
        The column is missing or has more than :data:`MAX_LEVELS` levels.
    """
    ages = np.asarray(ages, float)
    gaps = np.asarray(gaps, float)
    if factor == AGE_GROUP:
        out = {}
        for name, lo, hi in _age_levels(age_edges):
            out[name] = np.isfinite(ages) & (ages >= lo) & (ages < hi)
        return out
    if factor == GAP_GROUP:
        known = np.isfinite(gaps)
        k = int(np.floor(gap_fraction * known.sum()))
        acc, dec = np.zeros(len(gaps), bool), np.zeros(len(gaps), bool)
        if k >= 1:
            order = np.flatnonzero(known)[np.argsort(gaps[known], kind="stable")]
            dec[order[:k]] = True
            acc[order[-k:]] = True
        return {"accelerated": acc, "decelerated": dec}
    if factor not in cohort:
        raise InputError(
            f"population.subgroups names {factor!r}, which is neither {AGE_GROUP!r}, "
            f"{GAP_GROUP!r} nor a cohort column (columns: {', '.join(map(str, cohort.columns))})",
            "name a categorical column of participants.tsv",
        )
    values = cohort[factor].replace({"n/a": np.nan, "": np.nan})
    levels = sorted(values.dropna().astype(str).unique())
    if len(levels) > MAX_LEVELS:
        raise InputError(
            f"cohort column {factor!r} has {len(levels)} levels; subgroup maps need at most "
            f"{MAX_LEVELS}",
            "bin it into a few groups in participants.tsv, or drop it from population.subgroups",
        )
    text = values.astype(str).where(values.notna(), None)
    return {lv: (text == lv).to_numpy() for lv in levels}


def rank_stability(tables: dict, factor: str, value: str = "mean_relevance") -> pd.DataFrame:
    """Agreement of region rankings between every pair of conditions.

    Parameters
    ----------
    tables : dict of str → pandas.DataFrame
        Condition (e.g. ``seed-0``, ``fold-1``, a method) → its region table (columns
        ``region`` and ``value``; :func:`brainage.atlas.region_table`).
    factor : str
        What varies between the conditions (``model``, ``fold``, ``method``, …).
    value : str
        Column that ranks the regions.

    Returns
    -------
    pandas.DataFrame
        :data:`STABILITY_COLUMNS`: Spearman's ρ and Kendall's τ-b of ``value`` over the regions
        both tables have, and the fraction of the top-10 regions (by ``value``) they share.
    """
    from scipy import stats

    rows = []
    for a, b in combinations(tables, 2):
        ta = tables[a].set_index("region")[value]
        tb = tables[b].set_index("region")[value]
        common = ta.index.intersection(tb.index)
        x, y = ta[common].to_numpy(float), tb[common].to_numpy(float)
        row = {"factor": factor, "a": a, "b": b, "n_regions": len(common)}
        if len(common) >= 3 and np.std(x) > 0 and np.std(y) > 0:
            top = min(10, len(common))
            top_a = set(ta[common].sort_values(ascending=False).index[:top])
            top_b = set(tb[common].sort_values(ascending=False).index[:top])
            row |= {"spearman": float(stats.spearmanr(x, y).statistic),
                    "kendall": float(stats.kendalltau(x, y).statistic),
                    "top10_overlap": len(top_a & top_b) / top}  # fmt: skip
        rows.append(row)
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def ranks_long(tables: dict, factor: str, value: str = "mean_relevance") -> pd.DataFrame:
    """Region ranks per condition in long form (``factor``, ``condition``, ``region``, ``rank``).

    ``rank`` 1 = the largest ``value`` in that condition's table (ties: table order).
    """
    frames = []
    for cond, t in tables.items():
        rank = t[value].rank(ascending=False, method="first").astype(int)
        frames.append(pd.DataFrame({"factor": factor, "condition": cond,
                                    "region": t["region"], "rank": rank}))  # fmt: skip
    cols = ["factor", "condition", "region", "rank"]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=cols)
