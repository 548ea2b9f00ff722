"""The HTML report: one self-contained page summarising a run folder.

The page embeds every figure as a base64 PNG and its CSS inline; it loads nothing from the network,
so it can be mailed, archived or opened offline. Every section renders even when its inputs are
missing (it then says "not computed").
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.report import make_figures as mf
from brainage.report.run_folder import (
    RunFolder,
    column_to_model,
    metrics_from_predictions,
    read_run_folder,
)
from brainage.stats.lesions import SUMMARY_FIELDS

log = logging.getLogger(__name__)

#: Number of regions shown per atlas (bar chart and table).
N_TOP_REGIONS = 15
#: Number of subjects in the QC gallery (lowest registration quality first).
N_QC_GALLERY = 8
#: Maximum number of failure rows listed.
N_FAILURES_SHOWN = 200
#: Number of subjects (rows) in the side-by-side figure of explanation methods.
N_XAI_SUBJECTS = 3
#: Columns of ``evaluation/xai.tsv`` shown, with header, digits and role: ``"gt"`` (ground truth,
#: higher is better; the best method is highlighted), ``"chance"`` (chance level of the ground
#: truth scores), ``"check"`` (sanity check / agreement).
XAI_TABLE_COLUMNS = (
    ("mass_accuracy", "mass accuracy", 3, "gt"),
    ("mask_fraction", "mask fraction (chance)", 3, "chance"),
    ("roc_auc", "ROC AUC", 3, "gt"),
    ("topk_precision", "top-k precision", 3, "gt"),
    ("randomisation_spearman", "Spearman after randomisation", 2, "check"),
    ("seed_dice", "seed agreement (Dice)", 2, "check"),
    ("population_roc_auc", "population ROC AUC", 3, "gt"),
)
#: Significance level of the lesion reading (paper 003).
LESION_ALPHA = 0.05


def write_report(out_dir, path=None, title: str | None = None) -> Path:
    """Write ``OUT/report.html`` for the run folder ``out_dir``.

    Parameters
    ----------
    out_dir : str or Path
        Run folder (see DESIGN.md for its layout). Only ``predictions.tsv`` is required.
    path : str or Path, optional
        Where to write the page; default ``out_dir / "report.html"``.
    title : str, optional
        Page title; default the ``Name`` of ``dataset_description.json``.

    Returns
    -------
    Path
        The HTML file, written atomically. It is self-contained: figures are ``data:`` URIs, the
        CSS is inline and nothing refers to an external URL.

    Raises
    ------
    InputError
        ``out_dir`` or its ``predictions.tsv`` is missing or unusable.
    """
    from brainage.io.atomic import write_text

    out_dir = Path(out_dir)
    html = render_report(out_dir, title=title)
    return write_text(Path(path) if path is not None else out_dir / "report.html", html)


def render_report(out_dir, title: str | None = None) -> str:
    """Return the report of ``out_dir`` as an HTML string (see :func:`write_report`)."""
    import jinja2

    run = read_run_folder(out_dir)
    context = build_context(run, title=title)
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("brainage.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["pval"] = _pval
    env.filters["sig"] = _sig
    return env.get_template("report.html").render(**context)


def _fmt(value, digits: int = 2) -> str:
    """Format a number for display; ``n/a`` for missing values."""
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(v):
        return "n/a"
    if float(v).is_integer() and digits == 0:
        return f"{int(v)}"
    return f"{v:.{digits}f}"


def _pval(value) -> str:
    """Format a p value: three decimals, ``< 0.001`` below that, ``n/a`` when missing."""
    v = _number(value)
    if v is None:
        return "n/a"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _sig(value, digits: int = 3) -> str:
    """Format a number to ``digits`` significant digits (relevance values span many decades)."""
    v = _number(value)
    return "n/a" if v is None else f"{v:.{digits}g}"


def _number(value) -> float | None:
    """``value`` as a finite float, or None (missing, ``n/a``, text)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _safe(section: str, run: RunFolder, fn, *args, **kwargs):
    """Run one section builder; on any error record it and return None (the page still renders)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # a broken figure must not cost the whole report
        log.warning("report section %s failed: %s", section, exc)
        run.problems.append(f"section '{section}' could not be drawn: {type(exc).__name__}: {exc}")
        return None


# --------------------------------------------------------------------------------------------
# context
# --------------------------------------------------------------------------------------------


def build_context(run: RunFolder, title: str | None = None) -> dict:
    """Collect everything the template shows (figures already rendered to data URIs).

    Parameters
    ----------
    run : RunFolder
        From :func:`brainage.report.run_folder.read_run_folder`.
    title : str, optional

    Returns
    -------
    dict
        Keys ``title``, ``summary``, ``cohort``, ``scatter``, ``metrics``, ``bias``,
        ``training``, ``xai``, ``methods``, ``qc``, ``failures``, ``provenance``, ``problems``,
        ``generated``.
    """
    import brainage

    desc = run.description or {}
    metrics, metrics_source = _metrics(run)
    cohort = _cohort_frame(run)
    context = {
        "title": title or desc.get("Name") or "brainage report",
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": (run.provenance or {}).get("version") or brainage.__version__,
        "run_dir": str(run.root.resolve()),
    }
    sanity = _sanity(run)
    context["summary"] = _summary(run, metrics, cohort)
    context["summary"]["sanity"] = {
        "passing": [m for m, v in sanity.items() if v == "pass"],
        "failing": [m for m, v in sanity.items() if v == "fail"],
    }
    context["cohort"] = _safe("cohort", run, _cohort_section, run, cohort)
    context["scatter"] = _safe("scatter", run, _scatter_section, run)
    context["metrics"] = _safe("metrics", run, _metrics_section, run, metrics, metrics_source)
    context["bias"] = _safe("bias", run, _bias_section, run)
    context["training"] = _safe("training", run, _training_section, run)
    context["xai"] = _safe("explanation methods", run, _xai_section, run, sanity)
    context["methods"] = _safe("methods", run, _methods_section, run) or []
    for entry in context["methods"]:
        entry["sanity"] = sanity.get(entry["name"])
    context["qc"] = _safe("qc", run, _qc_section, run)
    context["failures"] = _safe("failures", run, _failures_section, run)
    context["provenance"] = _safe("provenance", run, _provenance_section, run)
    context["problems"] = list(run.problems)
    return context


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
            }
            break
    counts = pred["split"].value_counts()
    return {
        "n_subjects": int(len(pred)),
        "n_with_age": int(pred["age"].notna().sum()),
        "splits": [(s, int(counts[s])) for s in mf._ordered_splits(pred["split"])],
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
    for split in mf._ordered_splits(cohort["split"]):
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
        splits = [s for s in mf._ordered_splits(cohort["split"]) if s in tab.columns]
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
    return {
        "uri": mf.figure_to_data_uri(fig),
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
    if model.startswith("seed-") or model.startswith("model-"):
        return "base"
    return "other"


def _metrics_section(run: RunFolder, metrics: pd.DataFrame, source: str) -> dict | None:
    if metrics is None or metrics.empty:
        return None
    splits = mf._ordered_splits(metrics["split"])
    models = sorted(
        pd.unique(metrics["model"].astype(str)),
        key=lambda m: (_MODEL_KIND_ORDER[_model_kind(m)], mf._natural_key(m)),
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
        "warnings": [str(w) for w in warnings],
        "extra": {
            k: v
            for k, v in bias.items()
            if k
            not in {
                "slope",
                "intercept",
                "slope_ci",
                "n_validation",
                "val_mae_before",
                "val_mae_after_cv",
                "recommended_column",
                "warnings",
            }
            and isinstance(v, (str, int, float, bool))
        },
    }


def _training_section(run: RunFolder) -> dict | None:
    logs = run.training_logs
    if not logs:
        return None
    rows = []
    for (cond, seed), frame in sorted(
        logs.items(), key=lambda kv: (kv[0][0], mf._natural_key(kv[0][1]))
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


def _background(res: str):
    from brainage.space import load_template

    try:
        return load_template(float(str(res).replace("p", ".")))["t1w"]
    except Exception:  # unknown resolution label: nilearn's bundled template is the fallback
        return None


def _map_figure(path: Path, res: str, title: str, top: bool) -> tuple[str, str]:
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float64)
    nonzero = np.abs(data[data != 0])
    signed = bool((data < 0).any() and (data > 0).any())
    fade = None
    if top:
        threshold = 0.05 * float(nonzero.max()) if nonzero.size else None
        note = "voxels above 5 % of the maximum shown"
    else:
        lo, hi = np.percentile(nonzero, [50, 99]) if nonzero.size else (0.0, 1.0)
        threshold = float(lo) if nonzero.size else None
        fade = (float(lo), float(max(hi, lo + 1e-12)))
        note = "voxels with |value| above the median shown, fading in up to the 99th percentile"
    fig = mf.stat_map_figure(
        nib.Nifti1Image(data.astype(np.float32), img.affine),
        bg_img=_background(res),
        title=title,
        threshold=threshold,
        symmetric=signed or not top,
        fade=fade,
    )
    return mf.figure_to_data_uri(fig), note


def _methods_section(run: RunFolder) -> list[dict]:
    from brainage.atlas.registry import ATLAS_INFO
    from brainage.population import read_sidecar

    out = []
    for method in run.methods:
        pop = run.population.get(method, {})
        entry = {
            "name": method,
            "res": pop.get("res"),
            "space": pop.get("space"),
            "maps": [],
            "atlases": [],
            "n_subjects": None,
        }
        for kind, label in (("mean", "population mean map"), ("top10", "top-10 % map, smoothed")):
            if kind not in pop:
                entry["maps"].append({"label": label, "uri": None, "note": None, "file": None})
                continue
            side = read_sidecar(pop[kind])
            if side.get("NSubjects") is not None:
                entry["n_subjects"] = side["NSubjects"]
            res = _safe(
                f"{method} {kind} map",
                run,
                _map_figure,
                pop[kind],
                pop.get("res"),
                f"{method}: {label}",
                kind == "top10",
            )
            uri, note = res if res else (None, None)
            entry["maps"].append(
                {
                    "label": label,
                    "uri": uri,
                    "note": note,
                    "file": str(pop[kind].relative_to(run.root)),
                }
            )
        for atlas, table in sorted(run.regions.get(method, {}).items()):
            top = table.sort_values("mean_relevance", ascending=False, kind="stable")
            top = top.head(N_TOP_REGIONS)
            info = ATLAS_INFO.get(atlas, {})
            bar = _safe(f"{method} {atlas} regions", run, _region_bar, table, method, atlas)
            entry["atlases"].append(
                {
                    "name": atlas,
                    "title": info.get("title", atlas),
                    "licence": info.get("licence"),
                    "citation": info.get("citation"),
                    "n_regions": len(table),
                    "bar": bar,
                    "rows": [
                        {
                            "rank": r.get("rank", i + 1),
                            "region": str(r["region"]),
                            "n_voxels": r.get("n_voxels"),
                            "mean": r.get("mean_relevance"),
                            "top10": r.get("top10_fraction"),
                        }
                        for i, r in enumerate(top.to_dict("records"))
                    ],
                }
            )
        out.append(entry)
    return out


def _region_bar(table: pd.DataFrame, method: str, atlas: str) -> str:
    title = f"{method} — {atlas}: top {N_TOP_REGIONS} regions"
    return mf.figure_to_data_uri(mf.region_bar_figure(table, N_TOP_REGIONS, title))


# --------------------------------------------------------------------------------------------
# explanation methods vs ground truth (evaluation/)
# --------------------------------------------------------------------------------------------


def _parse_bool(value) -> bool | None:
    """``True``/``False`` cells of a TSV (also ``1``/``0``, ``yes``/``no``); None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in {"true", "1", "1.0", "yes", "pass"}:
        return True
    if text in {"false", "0", "0.0", "no", "fail"}:
        return False
    return None


def _sanity(run: RunFolder) -> dict:
    """Read ``passes_randomisation`` of ``xai.tsv`` as ``method → "pass" | "fail" | None``."""
    if run.xai is None or "passes_randomisation" not in run.xai.columns:
        return {}
    out = {}
    for rec in run.xai.to_dict("records"):
        if pd.isna(rec["method"]):
            continue
        ok = _parse_bool(rec.get("passes_randomisation"))
        out[str(rec["method"])] = None if ok is None else ("pass" if ok else "fail")
    return out


def _pass_threshold(run: RunFolder) -> float:
    """Pass threshold of the randomisation check: ``evaluate.threshold`` of the run's config."""
    from brainage.evaluate import PASS_THRESHOLD

    if run.config_text:
        try:
            import yaml

            value = (yaml.safe_load(run.config_text) or {}).get("evaluate", {}).get("threshold")
            if _number(value) is not None:
                return float(value)
        except Exception:  # an unreadable config only costs the exact threshold
            pass
    return PASS_THRESHOLD


def _xai_section(run: RunFolder, sanity: dict) -> dict | None:
    table = _xai_table(run, sanity) if run.xai is not None and len(run.xai) else None
    figure = _safe("explanation methods figure", run, _xai_figure, run, sanity)
    lesions = _lesion_section(run) if run.lesions is not None and len(run.lesions) else None
    if table is None and figure is None and lesions is None:
        return None
    return {"table": table, "figure": figure, "lesions": lesions}


def _xai_columns(frame: pd.DataFrame) -> list[tuple]:
    """:data:`XAI_TABLE_COLUMNS` plus one ``roc_auc_<effect>`` column per scored effect."""
    effects = [
        (c, f"ROC AUC {c.removeprefix('roc_auc_')}", 3, "gt")
        for c in frame.columns
        if c.startswith("roc_auc_") and frame[c].notna().any()
    ]
    return [*XAI_TABLE_COLUMNS, *effects]


def _xai_table(run: RunFolder, sanity: dict) -> dict:
    frame = run.xai[run.xai["method"].notna()]
    columns = _xai_columns(frame)
    records = frame.to_dict("records")
    values = {key: [_number(rec.get(key)) for rec in records] for key, *_ in columns}
    best = {}
    for key, _, _, role in columns:
        finite = [v for v in values[key] if v is not None]
        if role == "gt" and len(finite) >= 2:
            best[key] = max(finite)
    rows = []
    for i, rec in enumerate(records):
        method = str(rec["method"])
        cells = []
        for key, _, digits, role in columns:
            v = values[key][i]
            cells.append(
                {
                    "key": key,
                    "value": v,
                    "digits": digits,
                    "role": role,
                    "best": key in best and v is not None and bool(np.isclose(v, best[key])),
                }
            )
        mass, chance = values["mass_accuracy"][i], values["mask_fraction"][i]
        rows.append(
            {
                "method": method,
                "n_subjects": _number(rec.get("n_subjects")),
                "cells": cells,
                "ratio": mass / chance if mass is not None and chance else None,
                "sanity": sanity.get(method),
            }
        )
    gt_keys = [k for k, _, _, role in columns if role in ("gt", "chance")]
    return {
        "columns": [{"key": k, "header": h, "role": role} for k, h, _, role in columns],
        "effects": [k.removeprefix("roc_auc_") for k, *_ in columns if k.startswith("roc_auc_")],
        "rows": rows,
        "has_truth": any(v is not None for k in gt_keys for v in values[k]),
        "has_dice": any(v is not None for v in values["seed_dice"]),
        "passing": [r["method"] for r in rows if r["sanity"] == "pass"],
        "failing": [r["method"] for r in rows if r["sanity"] == "fail"],
        "unchecked": [r["method"] for r in rows if r["sanity"] is None],
        "threshold": _pass_threshold(run),
        "best": sorted(best),
    }


def _label(pid: str) -> str:
    pid = str(pid)
    return pid if pid.startswith("sub-") else f"sub-{pid}"


def _pick_subjects(run: RunFolder, methods: list[str], n: int) -> list[str]:
    """Up to ``n`` subjects with maps of every method (if possible with truth), spread over age."""
    sets = [set(run.subject_maps[m]) for m in methods]
    pool = sorted(set.intersection(*sets)) or sorted(set.union(*sets))
    with_truth = [s for s in pool if s in run.truth]
    pool = with_truth or pool
    ages = {
        _label(p): a
        for p, a in zip(run.predictions["participant_id"], run.predictions["age"], strict=True)
        if pd.notna(a)
    }
    pool = sorted(pool, key=lambda s: (s not in ages, ages.get(s, 0.0), mf._natural_key(s)))
    if len(pool) <= n:
        return pool
    picks = np.unique(np.rint(np.linspace(0, len(pool) - 1, n)).astype(int))
    return [pool[i] for i in picks]


def _xai_figure(run: RunFolder, sanity: dict) -> dict | None:
    from brainage.io.layout import parse_entities

    methods = [m for m in run.explained_methods if run.subject_maps.get(m)]
    if not methods:
        return None
    subjects = _pick_subjects(run, methods, N_XAI_SUBJECTS)
    maps = {
        m: [
            nib.load(str(run.subject_maps[m][s])) if s in run.subject_maps[m] else None
            for s in subjects
        ]
        for m in methods
    }
    truths = [nib.load(str(run.truth[s])) if s in run.truth else None for s in subjects]
    ages = {
        _label(p): a
        for p, a in zip(run.predictions["participant_id"], run.predictions["age"], strict=True)
    }
    labels = [
        s + (f"\nage {ages[s]:.0f} y" if _number(ages.get(s)) is not None else "") for s in subjects
    ]
    first = next(
        run.subject_maps[m][s] for m in methods for s in subjects if s in run.subject_maps[m]
    )
    res = parse_entities(first).get("res")
    background, brain = _background(res), _brain_mask(res)
    fig = mf.methods_side_by_side_figure(
        maps,
        labels,
        truths=truths,
        background=background,
        brain=brain,
        flagged=[m for m in methods if sanity.get(m) == "fail"],
    )
    uri = mf.figure_to_data_uri(fig, dpi=100, max_colors=256)
    return {
        "uri": uri,
        "methods": methods,
        "subjects": subjects,
        "has_truth": any(t is not None for t in truths),
        "background": background is not None,
        "kbytes": len(uri) * 3 / 4 / 1024,
    }


def _brain_mask(res):
    from brainage.space import load_template

    try:
        return load_template(float(str(res).replace("p", ".")))["mask"]
    except Exception:  # unknown resolution label: scale over nonzero voxels instead
        return None


# numeric summary fields of the lesion test shown in the report (names owned by brainage.stats)
_LESION_COLUMNS = tuple(f for f in SUMMARY_FIELDS if f not in ("min_lesion_voxels", "alternative"))


def _lesion_section(run: RunFolder) -> dict:
    rows = []
    for rec in run.lesions.to_dict("records"):
        v = {k: _number(rec.get(k)) for k in _LESION_COLUMNS}
        uses = None
        if v["d"] is not None and v["p"] is not None:
            uses = v["d"] > 0 and v["p"] < LESION_ALPHA
        method = rec.get("method")
        rows.append(
            {"method": "ensemble" if pd.isna(method) else str(method), "v": v, "uses": uses}
        )
    first = run.lesions.iloc[0]
    return {
        "rows": rows,
        "uses": [r["method"] for r in rows if r["uses"] is True],
        "not_uses": [r["method"] for r in rows if r["uses"] is False],
        "untested": [r["method"] for r in rows if r["uses"] is None],
        "alpha": LESION_ALPHA,
        "min_voxels": _number(first.get("min_lesion_voxels")),
        "alternative": first.get("alternative") if "alternative" in run.lesions else None,
    }


def _qc_section(run: RunFolder) -> dict | None:
    qc = run.qc
    if qc is None or qc.empty:
        return None
    qc = qc.copy()
    qc["reg_quality"] = pd.to_numeric(qc["reg_quality"], errors="coerce")
    worst = (
        qc[qc["reg_quality"].notna()].sort_values("reg_quality", kind="stable").head(N_QC_GALLERY)
    )
    gallery = []
    for rec in worst.to_dict("records"):
        uri = None
        png = rec.get("qc_png")
        if isinstance(png, str) and png:
            path = Path(png) if Path(png).is_absolute() else run.root / png
            uri = mf.png_file_to_data_uri(path)
        gallery.append({"pid": rec["participant_id"], "value": rec["reg_quality"], "uri": uri})
    values = qc["reg_quality"].dropna()
    return {
        "n": len(qc),
        "median": values.median() if len(values) else None,
        "min": values.min() if len(values) else None,
        "hist": mf.figure_to_data_uri(mf.qc_histogram_figure(values, worst["reg_quality"])),
        "gallery": gallery,
    }


def _failures_section(run: RunFolder) -> dict | None:
    if run.failures is None:
        return None
    frame = run.failures.fillna("n/a")
    cols = [c for c in ("participant_id", "stage", "file", "error") if c in frame.columns]
    cols += [c for c in frame.columns if c not in cols]
    rows = [
        [str(v) for v in rec] for rec in frame[cols].head(N_FAILURES_SHOWN).itertuples(index=False)
    ]
    by_stage = frame["stage"].value_counts().to_dict() if "stage" in frame else {}
    return {
        "n": len(frame),
        "columns": cols,
        "rows": rows,
        "by_stage": by_stage,
        "truncated": len(frame) > N_FAILURES_SHOWN,
    }


def _provenance_section(run: RunFolder) -> dict:
    prov = run.provenance or {}
    desc = run.description or {}
    stages = prov.get("stage_seconds") or {}
    total = sum(float(v) for v in stages.values() if _is_number(v))
    stage_rows = [
        {"stage": k, "seconds": float(v), "share": 100 * float(v) / total if total else None}
        for k, v in stages.items()
        if _is_number(v)
    ]
    seeds = prov.get("seeds")
    if seeds is None:
        seeds = (desc.get("brainage") or {}).get("seeds")
    generated_by = desc.get("GeneratedBy") or []
    return {
        "available": bool(prov or desc or run.config_text),
        "version": prov.get("version"),
        "command": prov.get("command"),
        "started": prov.get("started"),
        "finished": prov.get("finished"),
        "device": prov.get("device"),
        "n_threads": prov.get("n_threads"),
        "seeds": ", ".join(str(s) for s in seeds) if isinstance(seeds, (list, tuple)) else seeds,
        "stages": stage_rows,
        "total": total if stage_rows else None,
        "config": run.config_text,
        "generated_by": json.dumps(generated_by, indent=2) if generated_by else None,
        "bids_version": desc.get("BIDSVersion"),
        "extra": {
            k: _flat(v)
            for k, v in prov.items()
            if k not in _PROV_KEYS and isinstance(v, (str, int, float, bool, dict, list))
        },
    }


_PROV_KEYS = {
    "version",
    "command",
    "started",
    "finished",
    "stage_seconds",
    "seeds",
    "device",
    "n_threads",
}


def _flat(value) -> str:
    """One-line text of a provenance value (dicts as ``key value, …``)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _is_number(v) -> bool:
    try:
        return np.isfinite(float(v))
    except (TypeError, ValueError):
        return False
