"""Report sections on how the run went: registration QC, failures and provenance."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from brainage.report import make_figures as mf
from brainage.report.formatting import _flat, _is_number
from brainage.report.run_folder import RunFolder

#: Number of subjects in the QC gallery (lowest registration quality first).
N_QC_GALLERY = 8
#: Maximum number of failure rows listed.
N_FAILURES_SHOWN = 200


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


#: QC flag: registration quality below the median minus this many MADs (scaled to σ) of the run.
QC_MAD_THRESHOLD = 3.0


def qc_threshold(values) -> float | None:
    """Registration quality below which a subject is flagged for a look (robust outlier rule).

    ``median − 3 × 1.4826 × MAD`` of the run's ``reg_quality`` (Pearson r of the registered brain
    with the template inside its mask): a subject far below its cohort is more likely
    misregistered than anatomically unusual. None with fewer than 5 values.
    """
    v = pd.to_numeric(pd.Series(values), errors="coerce").dropna().to_numpy(float)
    if len(v) < 5:
        return None
    med = float(pd.Series(v).median())
    mad = 1.4826 * float(pd.Series(abs(v - med)).median())
    return med - QC_MAD_THRESHOLD * mad


#: Prediction columns of the subject table.
SUBJECT_COLUMNS = ("age", "brain_age", "brain_age_gap", "uncertainty", "brain_age_lower",
                   "brain_age_upper", "split", "fold")  # fmt: skip


def _missing(value) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _subjects_section(run: RunFolder) -> dict | None:
    """One row per subject: age, brain age, gap, uncertainty, interval, split, fold, QC."""
    pred = run.predictions
    if pred is None or pred.empty:
        return None
    qc = run.qc if run.qc is not None else pd.DataFrame(columns=["participant_id"])
    qc = qc.set_index("participant_id") if "participant_id" in qc else qc
    threshold = qc_threshold(qc["reg_quality"]) if "reg_quality" in qc else None
    rows = []
    for rec in pred.to_dict("records"):
        pid = str(rec["participant_id"])
        q = qc.loc[pid] if pid in qc.index else None
        reg = pd.to_numeric(q["reg_quality"], errors="coerce") if q is not None else None
        png = q.get("qc_png") if q is not None else None
        values = {k: rec.get(k) for k in SUBJECT_COLUMNS}
        rows.append({
            "pid": pid,
            **{k: None if _missing(v) else v for k, v in values.items()},
            "interval_unbounded": any(
                isinstance(values.get(k), float) and abs(values[k]) == float("inf")
                for k in ("brain_age_lower", "brain_age_upper")
            ),
            "reg_quality": reg,
            "flag": threshold is not None and reg is not None and reg < threshold,
            "qc_png": png if isinstance(png, str) and png else None,
            "page": None,  # the subject page, once written (brainage.report.subject_pages)
        })  # fmt: skip
    n_cnn = sum(1 for c in pred.columns if str(c).startswith("brain_age_seed-"))
    return {"rows": rows, "threshold": threshold, "mad": QC_MAD_THRESHOLD,
            "n_flagged": sum(r["flag"] for r in rows), "n_cnn": n_cnn,
            "few_cnn": 0 < n_cnn < MIN_CNN_FOR_UNCERTAINTY,
            "t_factor": _t_factor(n_cnn)}  # fmt: skip


#: Base CNNs below which the report warns that the uncertainty (a t-interval width) is unusable.
MIN_CNN_FOR_UNCERTAINTY = 3


def _t_factor(n: int) -> float | None:
    """``2 · t_{0.975, n−1} / √n``: the uncertainty per year of base-model SD (None for n < 2)."""
    if n < 2:
        return None
    from scipy import stats

    return float(2 * stats.t.ppf(0.975, n - 1) / n**0.5)
