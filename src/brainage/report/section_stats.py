"""Report section on voxelwise statistics: significant relevance clusters (paper 001, TFCE)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.report import make_figures as mf
from brainage.report.run_folder import RunFolder


def _stats_section(run: RunFolder) -> list[dict] | None:
    """One entry per (method, analysis): summary, cluster table (top 10), thresholded figure."""
    folder = run.root / "stats"
    summaries = sorted(folder.glob("method-*_test-*_summary.json")) if folder.is_dir() else []
    if not summaries:
        return None
    out = []
    for path in summaries:
        s = json.loads(path.read_text())
        entry = {"summary": s, "clusters": [], "figure": None}
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
            fig = mf.stat_map_figure(shown, title=f"t where TFCE FWE p ≤ {s.get('alpha', 0.05):g}")
            entry["figure"] = mf.figure_to_data_uri(fig)
        out.append(entry)
    return out
