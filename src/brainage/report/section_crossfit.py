"""Report section on cross-fitting: per-fold accuracy, ensemble heads, calibrated intervals."""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainage.report import make_figures as mf
from brainage.report.run_folder import RunFolder


def _fold_rows(run: RunFolder) -> list[dict]:
    """One row per outer fold: n, ensemble MAE and r, head weights, bias slope."""
    fm = run.fold_metrics
    folds = (run.ensemble or {}).get("folds") or []
    names = (run.ensemble or {}).get("names") or []
    rows = []
    for f in folds:
        fold = f.get("fold")
        row = {"fold": fold, "n": None, "mae": None, "r": None, "mae_corrected": None}
        if fm is not None and fold is not None:
            part = fm[fm["fold"].astype(str) == str(fold)]
            for model, key in (("ensemble", "mae"), ("ensemble_corrected", "mae_corrected")):
                hit = part[part["model"].astype(str) == model]
                if len(hit):
                    row[key] = float(hit["mae"].iloc[0])
                    if model == "ensemble":
                        row["n"], row["r"] = int(hit["n"].iloc[0]), float(hit["r"].iloc[0])
            base = part[part["model"].astype(str).str.startswith("seed-")]["mae"].astype(float)
            row["best_base_mae"] = float(base.min()) if len(base) else None
        choice = f.get("head_choice") or {}
        head = f.get("head") or {}
        if head.get("kind") == "mlens":  # the top head's weights over the sub-ensembles
            coef, labels = (head.get("top") or {}).get("coef") or [], head.get("groups") or []
            row["head"] = f"two-level, top: {choice.get('kind', 'n/a')}"
        else:
            coef, labels = head.get("coef") or [], f.get("names", names)
            row["head"] = choice.get("kind", "n/a")
        row["weights"] = ", ".join(f"{n} {w:.2f}" for n, w in zip(labels, coef, strict=False))
        bias = f.get("bias_correction") or {}
        row["slope"] = bias.get("slope")
        row["gap_from"] = bias.get("recommended_column", "brain_age")
        rows.append(row)
    return rows


def _subensemble_rows(run: RunFolder) -> list[dict]:
    """One row per sub-ensemble of a multi-level ensemble: out-of-fold MAE, top weight, choice."""
    ens = run.ensemble or {}
    groups = ens.get("sub_ensembles") or []
    if len(groups) < 2:
        return []
    pred, folds = run.predictions, ens.get("folds") or []
    scored = pred[pred["age"].notna() & (pred["split"].astype(str) == "test")]
    rows = []
    for j, g in enumerate(groups):
        col, unc = f"brain_age_ensemble-{g}", f"uncertainty_ensemble-{g}"
        weights, kinds = [], []
        for f in folds:
            head = f.get("head") or {}
            coef = (head.get("top") or {}).get("coef") or []
            if j < len(coef):
                weights.append(float(coef[j]))
            sub = ((f.get("head_choice") or {}).get("sub_ensembles") or {}).get(g) or {}
            kinds.append(sub.get("kind", "n/a"))
        mae = (scored[col] - scored["age"]).abs().mean() if col in scored else None
        rows.append(
            {
                "name": g,
                "mae": None if mae is None or pd.isna(mae) else float(mae),
                "weight": float(np.mean(weights)) if weights else None,
                "uncertainty": float(scored[unc].median()) if unc in scored else None,
                "heads": ", ".join(f"{k} ×{kinds.count(k)}" for k in dict.fromkeys(kinds)),
            }
        )
    return rows


def _crossfit_section(run: RunFolder) -> dict | None:
    """Context of the cross-fitting section (None for a hold-out run without intervals)."""
    ens = run.ensemble or {}
    pred = run.predictions
    scored = pred[pred["age"].notna() & (pred["split"].astype(str) == "test")]
    crossfit = ens.get("scheme") == "kfold"
    interval = ens.get("interval") or {}
    if not crossfit and not interval:
        return None
    out = {
        "crossfit": crossfit,
        "n_folds": len(ens.get("folds") or []),
        "n_oof": int(len(scored)),
        "folds": _fold_rows(run) if crossfit else [],
        "sub_ensembles": _subensemble_rows(run),
        "interval": None,
        "figure": None,
    }
    if interval:
        scores = interval.get("scores") or {}
        out["interval"] = {
            "kind": interval.get("kind"),
            "level": interval.get("level"),
            "coverage": scores.get("coverage"),
            "median_width": scores.get("median_width"),
            "spearman": scores.get("spearman_width_abs_error"),
            "n": scores.get("n"),
        }
        if len(scored) and "brain_age_lower" in scored:
            finite = np.isfinite(scored["brain_age_upper"].astype(float))
            if finite.any():
                out["figure"] = mf.figure_to_data_uri(mf.interval_figure(scored[finite]))
        err = (scored["brain_age"] - scored["age"]).abs()
        if "uncertainty" in scored and len(scored) > 2:
            rho = pd.Series(scored["uncertainty"].astype(float)).corr(err, method="spearman")
            out["interval"]["spearman_uncertainty"] = None if pd.isna(rho) else float(rho)
    return out
