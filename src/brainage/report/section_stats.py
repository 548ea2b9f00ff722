"""Report section on voxelwise statistics: significant relevance clusters (paper 001, TFCE)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.io.layout import parse_entities
from brainage.report import make_figures as mf
from brainage.report.figures_stats import gap_windows_figure, glass_brain_figure
from brainage.report.run_folder import RunFolder


def _stats_section(run: RunFolder) -> list[dict] | None:
    """One entry per (method, analysis): summary, cluster table (top 10), thresholded figure."""
    folder = run.root / "stats"
    summaries = sorted(folder.glob("method-*_test-*_summary.json")) if folder.is_dir() else []
    order = {"onesample": 0, "youngold": 1, "gap": 2}  # then the user contrasts

    def key(path):
        e = parse_entities(path)
        return e.get("method", ""), order.get(e.get("test", ""), 3), e.get("test", "")

    summaries.sort(key=key)
    if not summaries:
        return None
    out = []
    for path in summaries:
        s = json.loads(path.read_text())
        entry = {"summary": s, "clusters": [], "figure": None, "glass": None}
        stem = path.name.removesuffix("_summary.json")
        table = folder / f"{stem}_clusters.tsv"
        if table.exists():
            clusters = pd.read_csv(table, sep="\t")
            entry["n_clusters"] = len(clusters)
            entry["clusters"] = clusters.head(10).to_dict("records")
        t_map = sorted(folder.glob(f"{stem}_*_stat-t_statmap.nii.gz"))
        p_map = sorted(folder.glob(f"{stem}_*_stat-pfwe_statmap.nii.gz"))
        if t_map and p_map and s.get("n_significant", 0) > 0:
            t_img, p_img = nib.load(str(t_map[0])), nib.load(str(p_map[0]))
            t = np.asarray(t_img.dataobj, np.float32)
            keep = np.asarray(p_img.dataobj) <= s.get("alpha", 0.05)
            shown = nib.Nifti1Image(np.where(keep, t, 0).astype(np.float32), t_img.affine)
            title = f"t where TFCE FWE p ≤ {s.get('alpha', 0.05):g}"
            outline = nib.Nifti1Image(keep.astype(np.float32), t_img.affine)
            entry["glass"] = mf.figure_to_data_uri(glass_brain_figure(shown, title, outline))
            entry["figure"] = mf.figure_to_data_uri(mf.stat_map_figure(shown, title=title))
        out.append(entry)
    return out


def _gap_section(run: RunFolder) -> dict | None:
    """Gather the gap-vs-covariates results: sliding-window figure and linear-model table."""
    folder = run.root / "stats"
    summary = folder / "gap_summary.json"
    if not summary.exists():
        return None
    s = json.loads(summary.read_text())
    windows = pd.read_csv(folder / "gap_windows.tsv", sep="\t")
    models = pd.read_csv(folder / "gap_models.tsv", sep="\t")
    skipped = {k: v for k, v in s["covariates"].items() if str(v).startswith("skipped")}
    significant = windows[windows["significant"].astype(bool)]
    entry = {"summary": s, "models": models.to_dict("records"), "figure": None,
             "skipped": skipped, "significant": significant.to_dict("records")}  # fmt: skip
    if len(windows) and windows["r"].notna().any():
        fig = gap_windows_figure(windows, s.get("alpha", 0.05))
        entry["figure"] = mf.figure_to_data_uri(fig)
    return entry
