"""Report sections on the predictions: summary, cohort, scatter, metrics, bias, training."""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainage.report import make_figures as mf
from brainage.report.figures_common import _natural_key, _ordered_splits
from brainage.report.run_folder import RunFolder, column_to_model, metrics_from_predictions


def _metrics(run: RunFolder) -> tuple[pd.DataFrame, str]:
    if run.metrics is not None and len(run.metrics):
        return run.metrics, "metrics.tsv"
    return metrics_from_predictions(run.predictions), "computed from predictions.tsv"


def _recommended_column(run: RunFolder) -> str:
    col = (run.bias or {}).get("recommended_column")
    if isinstance(col, str) and col in run.predictions.columns:
        return col
    return "brain_age"


def _metric_row(metrics: pd.DataFrame, model: str, split: str):
    rows = metrics[
        (metrics["model"].astype(str) == model) & (metrics["split"].astype(str) == split)
    ]
    return None if rows.empty else rows.iloc[0]


def _summary(run: RunFolder, metrics: pd.DataFrame, cohort: pd.DataFrame) -> dict:
    pred = run.predictions
    col = _recommended_column(run)
    model = column_to_model(col) or "ensemble"
    quote = None
    if not ((metrics["model"].astype(str) == model).any()):
        metrics = metrics_from_predictions(pred)  # e.g. metrics.tsv lacks the recommended model
    for split in ("test", "validation"):
        row = _metric_row(metrics, model, split)
        if row is not None and np.isfinite(float(row["mae"])):
            quote = {
                "split": split,
                "mae": float(row["mae"]),
                "n": int(row["n"]) if "n" in row and pd.notna(row["n"]) else None,
                "r": float(row["r"]) if "r" in row and pd.notna(row["r"]) else None,
                "mae_ci": None,
                "r_ci": None,
                "n_resamples": None,
            }
            if col in pred:
                part = pred[(pred["split"] == split) & pred["age"].notna()]
                quote.update(metric_intervals(part[col], part["age"]))
            break
    counts = pred["split"].value_counts()
    return {
        "n_subjects": int(len(pred)),
        "n_with_age": int(pred["age"].notna().sum()),
        "splits": [(s, int(counts[s])) for s in _ordered_splits(pred["split"])],
        "column": col,
        "model": model,
        "quote": quote,
        "n_failures": None if run.failures is None else int(len(run.failures)),
        "methods": run.methods,
        "age_range": (
            (float(pred["age"].min()), float(pred["age"].max()))
            if pred["age"].notna().any()
            else None
        ),
    }


def metric_intervals(
    predicted, age, level: float = 0.95, n_resamples: int = 2000, seed: int = 0
) -> dict:
    """Bootstrap confidence intervals of the MAE and of Pearson's r across subjects.

    Parameters
    ----------
    predicted, age : array_like, shape (n_subjects,)
        Predicted and chronological age in years (NaNs dropped pairwise).
    level : float
        Confidence level.
    n_resamples : int
        Bootstrap resamples of the subjects (with replacement, pairs kept together).
    seed : int
        Seed of the resampling (the same seed gives the same interval).

    Returns
    -------
    dict
        ``mae_ci`` (years) and ``r_ci``, each ``(low, high)`` or None with fewer than 5 subjects;
        percentile intervals of :func:`scipy.stats.bootstrap`.
    """
    from scipy import stats

    p, a = np.asarray(predicted, float), np.asarray(age, float)
    ok = np.isfinite(p) & np.isfinite(a)
    p, a = p[ok], a[ok]
    out = {"mae_ci": None, "r_ci": None, "level": level, "n_resamples": n_resamples}
    if len(p) < 5:
        return out
    kw = {"confidence_level": level, "n_resamples": n_resamples, "method": "percentile",
          "random_state": np.random.default_rng(seed)}  # fmt: skip
    mae = stats.bootstrap((np.abs(p - a),), np.mean, **kw).confidence_interval
    out["mae_ci"] = (float(mae.low), float(mae.high))
    if np.std(p) > 0 and np.std(a) > 0:

        def pearson(x, y, axis=-1):
            x = x - x.mean(axis, keepdims=True)
            y = y - y.mean(axis, keepdims=True)
            return (x * y).sum(axis) / np.sqrt((x * x).sum(axis) * (y * y).sum(axis))

        r = stats.bootstrap((p, a), pearson, paired=True, vectorized=True, **kw)
        out["r_ci"] = (float(r.confidence_interval.low), float(r.confidence_interval.high))
    return out


def _cohort_frame(run: RunFolder) -> pd.DataFrame:
    """Cohort table with age, split (and sex): cohort.tsv, else predictions.tsv."""
    pred = run.predictions
    if run.cohort is not None:
        cohort = run.cohort.copy()
        if "split" not in cohort:
            cohort = cohort.merge(
                pred[["participant_id", "split"]], on="participant_id", how="left"
            )
        if "age" not in cohort:
            cohort = cohort.merge(pred[["participant_id", "age"]], on="participant_id", how="left")
    else:
        cols = [c for c in ("participant_id", "age", "sex", "split") if c in pred.columns]
        cohort = pred[cols].copy()
    cohort["age"] = pd.to_numeric(cohort["age"], errors="coerce")
    cohort["split"] = cohort["split"].fillna("n/a").astype(str)
    return cohort


def _cohort_section(run: RunFolder, cohort: pd.DataFrame) -> dict:
    rows = []
    for split in _ordered_splits(cohort["split"]):
        part = cohort[cohort["split"] == split]
        ages = part["age"].dropna()
        rows.append(
            {
                "split": split,
                "n": len(part),
                "n_age": len(ages),
                "mean": ages.mean() if len(ages) else None,
                "sd": ages.std(ddof=1) if len(ages) > 1 else None,
                "min": ages.min() if len(ages) else None,
                "max": ages.max() if len(ages) else None,
            }
        )
    ages = cohort["age"].dropna()
    total = {
        "split": "all",
        "n": len(cohort),
        "n_age": len(ages),
        "mean": ages.mean() if len(ages) else None,
        "sd": ages.std(ddof=1) if len(ages) > 1 else None,
        "min": ages.min() if len(ages) else None,
        "max": ages.max() if len(ages) else None,
    }
    sex = None
    if "sex" in cohort.columns and cohort["sex"].notna().any():
        tab = pd.crosstab(cohort["sex"].fillna("n/a").astype(str), cohort["split"])
        splits = [s for s in _ordered_splits(cohort["split"]) if s in tab.columns]
        sex = {
            "splits": splits,
            "rows": [
                (idx, [int(tab.loc[idx, s]) for s in splits], int(tab.loc[idx].sum()))
                for idx in tab.index
            ],
        }
    hist = mf.figure_to_data_uri(mf.age_histogram_figure(cohort)) if len(ages) else None
    return {
        "source": "cohort.tsv" if run.cohort is not None else "predictions.tsv",
        "rows": rows,
        "total": total,
        "sex": sex,
        "hist": hist,
        "n_failures": None if run.failures is None else int(len(run.failures)),
    }


def _scatter_section(run: RunFolder) -> dict | None:
    pred = run.predictions
    scored = pred[pred["age"].notna() & pred["split"].isin(["validation", "test"])]
    if scored.empty:
        return None
    fig = mf.predicted_vs_age_figure(pred)
    gap = None
    if "brain_age_gap" in pred and pred.loc[scored.index, "brain_age_gap"].notna().any():
        gap = mf.figure_to_data_uri(mf.gap_figure(pred))
    return {
        "uri": mf.figure_to_data_uri(fig),
        "gap_uri": gap,
        "has_corrected": "brain_age_corrected" in pred.columns
        and pred["brain_age_corrected"].notna().any(),
        "n": len(scored),
    }


_MODEL_KIND_ORDER = {"base": 0, "ensemble": 1, "baseline": 2, "other": 3}


def _model_kind(model: str) -> str:
    if model.startswith("ensemble") or model.startswith("mlens"):
        return "ensemble"
    if "baseline" in model:
        return "baseline"
    if model.startswith(("seed-", "model-", "voxelridge")):
        return "base"
    return "other"


def _metrics_section(run: RunFolder, metrics: pd.DataFrame, source: str) -> dict | None:
    if metrics is None or metrics.empty:
        return None
    splits = _ordered_splits(metrics["split"])
    models = sorted(
        pd.unique(metrics["model"].astype(str)),
        key=lambda m: (_MODEL_KIND_ORDER[_model_kind(m)], _natural_key(m)),
    )
    recommended = column_to_model(_recommended_column(run))
    rows = []
    for model in models:
        cells = []
        for split in splits:
            row = _metric_row(metrics, model, split)
            cells.append(
                None
                if row is None
                else {
                    "n": row.get("n"),
                    "mae": row.get("mae"),
                    "r": row.get("r"),
                    "rmse": row.get("rmse"),
                }
            )
        rows.append(
            {
                "model": model,
                "kind": _model_kind(model),
                "cells": cells,
                "recommended": model == recommended,
            }
        )
    base = metrics[metrics["model"].astype(str).map(_model_kind) == "base"]
    base_summary = []
    for split in splits:
        part = base[base["split"].astype(str) == split]["mae"].astype(float)
        if len(part) > 1:
            base_summary.append(
                {"split": split, "mean": part.mean(), "sd": part.std(ddof=1), "n_models": len(part)}
            )
    return {"source": source, "splits": splits, "rows": rows, "base_summary": base_summary}


#: Keys of ``bias_correction.json`` the bias box states in its sentences (not listed again).
BIAS_SHOWN = {"slope", "intercept", "slope_ci", "n_validation", "val_mae_before",
              "val_mae_after_cv", "recommended_column", "recommended", "warnings",
              "slope_ci_meaning", "n_folds_recommending", "folds"}  # fmt: skip
#: Readable names of the other settings of the correction.
BIAS_LABELS = {
    "min_slope": "smallest slope a accepted (below it the correction is not recommended)",
    "n_bootstrap": "bootstrap resamples of the slope's 95 % CI",
    "seed": "seed of the bootstrap",
    "gap_from": "brain-age gap computed from",
}


def _bias_section(run: RunFolder) -> dict | None:
    bias = run.bias
    if not bias:
        return None
    ci = bias.get("slope_ci") or [None, None]
    warnings = bias.get("warnings") or []
    if isinstance(warnings, str):
        warnings = [warnings]
    return {
        "slope": bias.get("slope"),
        "intercept": bias.get("intercept"),
        "ci_lo": ci[0] if len(ci) > 0 else None,
        "ci_hi": ci[1] if len(ci) > 1 else None,
        "n_validation": bias.get("n_validation"),
        "before": bias.get("val_mae_before"),
        "after": bias.get("val_mae_after_cv"),
        "recommended": bias.get("recommended_column") or "brain_age",
        "n_folds": len(bias["folds"]) if isinstance(bias.get("folds"), list) else None,
        "n_recommending": bias.get("n_folds_recommending"),
        "warnings": [str(w) for w in warnings],
        "extra": [
            (BIAS_LABELS.get(k, k.replace("_", " ")), f"{v:.3g}" if isinstance(v, float) else v)
            for k, v in bias.items()
            if k not in BIAS_SHOWN and isinstance(v, (str, int, float, bool))
        ],
    }


def _training_section(run: RunFolder) -> dict | None:
    logs = run.training_logs
    if not logs:
        return None
    rows = []
    for (cond, seed), frame in sorted(
        logs.items(), key=lambda kv: (kv[0][0], _natural_key(kv[0][1]))
    ):
        best = None
        if "val_mae" in frame and frame["val_mae"].notna().any():
            i = frame["val_mae"].astype(float).idxmin()
            best = {"epoch": frame.loc[i, "epoch"], "val_mae": frame.loc[i, "val_mae"]}
        rows.append(
            {
                "condition": cond,
                "seed": seed,
                "epochs": len(frame),
                "best": best,
                "seconds": frame["seconds"].astype(float).sum() if "seconds" in frame else None,
            }
        )
    return {
        "uri": mf.figure_to_data_uri(mf.training_curves_figure(logs)),
        "rows": rows,
    }
