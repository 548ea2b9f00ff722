"""Report sections on subgroup maps (paper 004) and on the stability of region rankings."""

from __future__ import annotations

import json

import nibabel as nib
import pandas as pd

from brainage.report import make_figures as mf
from brainage.report.figures_stats import rank_chart_figure, subgroup_maps_figure
from brainage.report.run_folder import RunFolder

#: What varies between the conditions of a rank-stability factor.
FACTOR_TITLES = {
    "model": "base models (seeds)",
    "fold": "cross-fitting folds",
    "method": "explanation methods",
}


def _subgroups_section(run: RunFolder) -> list[dict] | None:
    """Per method: the subgroups, their sizes and top regions, and one figure of their maps."""
    from brainage.io.layout import RunLayout
    from brainage.space import load_template

    folder = run.root / "regions"
    out = []
    for path in sorted(folder.glob("method-*_subgroups.json")) if folder.is_dir() else []:
        s = json.loads(path.read_text())
        layout = RunLayout(run.root)
        images, rows = {}, []
        for factor, f in s["factors"].items():
            for g in f["groups"]:
                rows.append({"factor": factor, **g})
                if "label" in g:
                    img_path = layout.subgroup_map(s["method"], g["label"])
                    if img_path.exists():
                        images[f"{factor} {g['level']} (n = {g['n']})"] = nib.load(str(img_path))
        figure = None
        if images:
            first = next(iter(images.values()))
            res = float(abs(first.affine[0, 0]))
            from brainage.report.section_population import UNITS

            label = UNITS.get(str(s.get("normalise")), "mean relevance (normalised)")
            fig = subgroup_maps_figure(
                images, mask=load_template(res)["mask"], colorbar_label=label
            )
            figure = mf.figure_to_data_uri(fig)
        agreement = [
            {"factor": k, **p} for k, f in s["factors"].items() for p in f["rank_agreement"]
        ]
        out.append({"summary": s, "rows": rows, "figure": figure, "agreement": agreement})
    return out or None


def _stability_section(run: RunFolder) -> list[dict] | None:
    """Per method (and across methods): mean rank agreement per factor and a rank chart."""
    folder = run.root / "regions"
    out = []
    paths = sorted(folder.glob("method-*_stability.tsv")) if folder.is_dir() else []
    for path in paths:
        method = path.name.removeprefix("method-").removesuffix("_stability.tsv")
        table = pd.read_csv(path, sep="\t")
        ranks_path = path.with_name(path.name.replace("_stability.tsv", "_ranks.tsv"))
        ranks = pd.read_csv(ranks_path, sep="\t") if ranks_path.exists() else None
        factors = []
        for factor, t in table.groupby("factor", sort=False):
            entry = {
                "factor": factor,
                "title": FACTOR_TITLES.get(factor, factor),
                "n_conditions": len(set(t["a"]) | set(t["b"])),
                "n_pairs": len(t),
                "spearman_mean": t["spearman"].mean(),
                "spearman_min": t["spearman"].min(),
                "kendall_mean": t["kendall"].mean(),
                "top10_mean": t["top10_overlap"].mean(),
                "n_regions": int(t["n_regions"].max()),
                "chart": None,
            }
            if ranks is not None and (ranks["factor"] == factor).any():
                r = ranks[ranks["factor"] == factor]
                title = f"{method}: top regions across {entry['title']}"
                entry["chart"] = mf.figure_to_data_uri(rank_chart_figure(r, 10, title))
            factors.append(entry)
        if factors:
            name = "all methods" if method == "all" else method
            out.append({"method": name, "factors": factors, "file": f"regions/{path.name}"})
    return out or None
