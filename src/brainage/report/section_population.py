"""Report section on the explanation methods' population maps and region tables."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.io.layout import RunLayout
from brainage.report import make_figures as mf
from brainage.report.run_folder import RunFolder
from brainage.report.section_common import _background, _safe

#: Number of regions shown per atlas (bar chart and table).
N_TOP_REGIONS = 15


#: Colour-bar label of a population map, by the normalisation of its subject maps.
UNITS = {
    "zscore": "mean relevance (z)",
    "sum": "mean share of |relevance|",
    "abs": "mean |relevance| (z)",
    "none": "mean relevance (method units)",
}


def _map_figure(path: Path, res: str, title: str, top: bool) -> tuple[str, str]:
    from brainage.population import read_sidecar

    norm = read_sidecar(path).get("Normalisation")
    label = UNITS.get(str(norm), "mean relevance (a.u.)")
    if top:
        label = "top-10 % (smoothed)"
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
        title=None,  # the page's heading names the map; nilearn's title box hid the first slice
        threshold=threshold,
        symmetric=signed or not top,
        fade=fade,
        colorbar_label=label,
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
            if atlas.endswith("native") and not info:
                info = {"title": f"{atlas.removesuffix('native')} — each subject's own native "
                        "label map (relevance warped with its inverse transform)"}  # fmt: skip
            bar = _safe(f"{method} {atlas} regions", run, _region_bar, table, method, atlas)
            entry["atlases"].append(
                {
                    "name": atlas,
                    "title": info.get("title", atlas),
                    "licence": info.get("licence"),
                    "citation": info.get("citation"),
                    "n_regions": len(table),
                    "file": str(RunLayout(run.root).regions(method, atlas).relative_to(run.root)),
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
