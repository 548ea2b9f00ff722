"""Report section on the explanation methods vs ground truth (``evaluation/``)."""

from __future__ import annotations

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.io.layout import RunLayout
from brainage.report import make_figures as mf
from brainage.report.figures_common import _natural_key
from brainage.report.formatting import _number, _parse_bool
from brainage.report.run_folder import RunFolder
from brainage.report.section_common import _background, _brain_mask, _safe
from brainage.stats.lesions import SUMMARY_FIELDS

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
    faith = _safe("faithfulness", run, _faithfulness_section, run)
    regions = _safe("region-level truth", run, _region_truth_section, run)
    agreement = _safe("method agreement", run, _agreement_section, run)
    if table is None and figure is None and lesions is None and faith is None:
        return None
    return {"table": table, "figure": figure, "lesions": lesions, "faithfulness": faith,
            "regions": regions, "agreement": agreement}  # fmt: skip


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
    pool = sorted(pool, key=lambda s: (s not in ages, ages.get(s, 0.0), _natural_key(s)))
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


def _faithfulness_section(run: RunFolder) -> dict | None:
    """AOPC per method (xai.tsv) with CIs, a verdict and the mean perturbation curves."""
    from brainage.report.figures_plots import perturbation_curves_figure

    if run.xai is None or "aopc_morf" not in run.xai.columns:
        return None
    rows = []
    for rec in run.xai[run.xai["method"].notna()].to_dict("records"):
        v = {k: _number(rec.get(k)) for k in (
            "aopc_morf", "aopc_morf_ci_low", "aopc_morf_ci_high", "aopc_lerf", "aopc_random",
            "aopc_morf_minus_random", "aopc_morf_minus_random_ci_low",
            "aopc_morf_minus_random_ci_high", "faithfulness_n", "reliance_spearman")}  # fmt: skip
        if v["aopc_morf"] is None:
            continue
        lo = v["aopc_morf_minus_random_ci_low"]
        rows.append({"method": str(rec["method"]), "v": v,
                     "faithful": None if lo is None else lo > 0})  # fmt: skip
    if not rows:
        return None
    curves = {}
    for r in rows:
        path = RunLayout(run.root).faithfulness(r["method"])
        if path.is_file():
            curves[r["method"]] = pd.read_csv(path, sep="\t")
    figure = mf.figure_to_data_uri(perturbation_curves_figure(curves)) if curves else None
    best = max(rows, key=lambda r: r["v"]["aopc_morf_minus_random"] or float("-inf"))
    return {"rows": rows, "figure": figure, "best": best["method"]}


#: Columns of the region-level and robustness table (``xai.tsv``).
_REGION_KEYS = ("region_roc_auc", "population_region_roc_auc", "region_effect_spearman",
                "population_region_effect_spearman", "region_n_effect", "region_n_none",
                "reliance_spearman", "max_sensitivity")  # fmt: skip


def _region_truth_section(run: RunFolder) -> dict | None:
    """Region-level truth scores and max-sensitivity per method, and the truth scatter plots."""
    from brainage.report.figures_truth import region_truth_figure

    if run.xai is None or not {"region_roc_auc", "max_sensitivity"} & set(run.xai.columns):
        return None
    rows = []
    for rec in run.xai[run.xai["method"].notna()].to_dict("records"):
        v = {k: _number(rec.get(k)) for k in _REGION_KEYS}
        if all(x is None for x in v.values()):
            continue
        rows.append({"method": str(rec["method"]), "v": v})
    if not rows:
        return None
    tables, atlas = {}, None
    for r in rows:
        path = RunLayout(run.root).region_truth(r["method"])
        if path.is_file():
            tables[r["method"]] = pd.read_csv(path, sep="\t")
            atlas = atlas or str(tables[r["method"]]["atlas"].iloc[0])
    figure = mf.figure_to_data_uri(region_truth_figure(tables)) if tables else None
    scored = [r for r in rows if r["v"]["population_region_roc_auc"] is not None]
    best = None
    if scored:
        best = max(scored, key=lambda r: r["v"]["population_region_roc_auc"])["method"]
    return {"rows": rows, "figure": figure, "atlas": atlas, "best": best,
            "has_truth": bool(scored)}  # fmt: skip


def _agreement_section(run: RunFolder) -> dict | None:
    """Spearman of the methods' region tables (``evaluation/method_agreement.tsv``)."""
    from brainage.report.figures_truth import method_agreement_figure

    path = RunLayout(run.root).method_agreement()
    if not path.is_file():
        return None
    table = pd.read_csv(path, sep="\t")
    if table.empty:
        return None
    figures = []
    for atlas, part in table.groupby("atlas", sort=False):
        present = set(part["method_a"]) | set(part["method_b"])
        order = [m for m in run.explained_methods if m in present]
        uri = mf.figure_to_data_uri(method_agreement_figure(part, order or None))
        finite = part["spearman"].dropna()
        figures.append({"atlas": str(atlas), "uri": uri,
                        "median": float(finite.median()) if len(finite) else None,
                        "n_regions": int(part["n_regions"].max())})  # fmt: skip
    return {"figures": figures}


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
        channel = rec.get("channel")
        rows.append({
            "method": "ensemble" if pd.isna(method) else str(method), "v": v, "uses": uses,
            "channel": None if channel is None or pd.isna(channel) else str(channel),
        })  # fmt: skip
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
