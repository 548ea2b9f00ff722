"""Summarise the finished runs of a study into its tables and maps (paper 000, METHODS §7).

Reads every run folder (training logs, ``model.json`` phases, ``predictions.tsv``, phase maps,
population maps) and writes the study tables of :class:`~brainage.study.layout.StudyLayout`:
per-run test MAEs, MAE-vs-epoch curves, phases (Table 2 of paper 000), voxel agreement across
seeds per condition and phase, Welch t-tests between conditions, and atlas-region rankings by
their share of the top-1 % voxels with their stability across seeds and conditions.

Every number is recomputed from the run folders, so the summary of an interrupted and resumed
study equals that of an uninterrupted one.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.io.atomic import write_tsv
from brainage.io.layout import RunLayout
from brainage.io.scans import read_tsv
from brainage.study.analysis import (
    condition_ttests,
    phase_summary,
    phase_table,
    voxel_agreement,
)
from brainage.study.design import StudyConfig
from brainage.study.layout import StudyLayout

log = logging.getLogger("brainage")

#: Top fraction of a map's voxels whose share per atlas region ranks the regions (paper 000).
TOP_FRACTION = 0.01

#: Columns of ``agreement.tsv``.
AGREEMENT_COLUMNS = ["condition", "phase", "threshold", "quantile", "n_seeds", "n_agree",
                     "n_voxels", "fraction"]  # fmt: skip

#: Columns of ``regions_ranks.tsv``.
RANK_COLUMNS = ["condition", "seed", "region", "n_top", "top_share", "mean_relevance", "rank"]


def summary_method(cfg) -> str | None:
    """Explanation method of the study's maps: the first of ``explain.methods`` but U-Noise."""
    return next((m for m in cfg.explain.methods if m != "unoise"), None)


def _models(layout: RunLayout) -> list[tuple[int | None, Path]]:
    """``(fold, folder)`` of every whole-brain CNN of a run, from its ``train`` records.

    Records, not folders: a folder left by an earlier configuration (another ``n_folds``) is
    not one of the run's models.
    """
    from brainage.workflow.records import read_records
    from brainage.workflow.stages.train import is_explainer, parse_model_item

    out = []
    for item, rec in sorted(read_records(layout, "train").items()):
        if is_explainer(item) and "training_log.tsv" in rec.outputs:
            folder = rec.output(layout, "model.json").parent
            out.append((parse_model_item(item)[0], folder))
    return sorted(out, key=lambda x: (-1 if x[0] is None else x[0], str(x[1])))


def _phase_maps(layout: RunLayout, n_phases: int) -> dict[str, Path | None]:
    """Phase ``"1"``… → the run's phase map named by its ``phases`` record (None: not reached)."""
    from brainage.workflow.records import read_records

    recs = read_records(layout, "phases")
    out: dict[str, Path | None] = {}
    for k in range(1, n_phases + 1):
        rec = recs.get(f"phase-{k}")
        ok = rec is not None and rec.values.get("reached") and "map" in rec.outputs
        out[str(k)] = rec.output(layout, "map") if ok else None
    return out


def run_metrics(layout: RunLayout, seed: int) -> tuple[dict, dict]:
    """Test MAEs and training logs of one study run.

    Returns
    -------
    metrics : dict
        ``best_mae`` (the CNN at its best validation epoch — the model the run uses — on the
        test subjects, years), ``last_mae`` (at its last epoch, from the monitored test MAE,
        pooled over folds weighted by their test subjects), ``ensemble_mae`` (the run's
        ensemble, uncorrected), ``n_test``, ``best_epoch`` and ``n_epochs`` (means over folds).
    logs : dict of int or None → pandas.DataFrame
        Fold → training log.
    """
    path = layout.file("predictions.tsv")
    pred = (read_tsv(path) if path.exists()
            else pd.DataFrame(columns=["split", "age", "brain_age"]))  # fmt: skip
    test = pred[(pred["split"] == "test") & pred["age"].notna()]
    col = f"brain_age_seed-{seed}"
    best = float(np.mean(np.abs(test[col] - test["age"]))) if col in test and len(test) else np.nan
    ens = float(np.mean(np.abs(test["brain_age"] - test["age"]))) if len(test) else np.nan
    logs, last, weights, best_epochs, n_epochs = {}, [], [], [], []
    for fold, folder in _models(layout):
        tlog = pd.read_csv(folder / "training_log.tsv", sep="\t")
        meta = json.loads((folder / "model.json").read_text())
        logs[fold] = tlog
        best_epochs.append(meta.get("best_epoch", np.nan))
        n_epochs.append(len(tlog))
        if "test_mae" in tlog and meta.get("n_test_monitored"):
            last.append(float(tlog["test_mae"].iloc[-1]))
            weights.append(meta["n_test_monitored"])
    metrics = {
        "best_mae": best,
        "last_mae": float(np.average(last, weights=weights)) if last else np.nan,
        "ensemble_mae": ens,
        "n_test": len(test),
        "best_epoch": float(np.mean(best_epochs)) if best_epochs else np.nan,
        "n_epochs": float(np.mean(n_epochs)) if n_epochs else np.nan,
    }
    return metrics, logs


def _load(path: Path) -> np.ndarray | None:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj, np.float64) if path.exists() else None


def region_ranks(mean_map: np.ndarray, atlas, mask, fraction: float = TOP_FRACTION):
    """Rank atlas regions by their share of a map's top voxels (paper 000).

    Parameters
    ----------
    mean_map : ndarray, shape atlas.grid.shape
        A population mean relevance map in template space.
    atlas : brainage.atlas.Atlas
    mask : ndarray of bool
        Brain mask on the same grid.
    fraction : float
        Top fraction of the in-mask labelled voxels (default 1 %).

    Returns
    -------
    pandas.DataFrame
        ``region``, ``n_top`` (top voxels in the region), ``top_share`` (n_top / all top
        voxels), ``mean_relevance``, ``rank`` (1 = most top voxels; ties by mean relevance).
    """
    from brainage.atlas import region_table

    t = region_table(mean_map, atlas, mask, top_fraction=fraction)
    t["n_top"] = np.rint(t["top10_fraction"] * t["n_voxels"]).astype(int)
    t["top_share"] = t["n_top"] / max(int(t["n_top"].sum()), 1)
    t = t.sort_values(["n_top", "mean_relevance"], ascending=False, kind="stable")
    t["rank"] = np.arange(1, len(t) + 1)
    return t[["region", "n_top", "top_share", "mean_relevance", "rank"]].reset_index(drop=True)


def summarise_study(
    layout: StudyLayout, study: StudyConfig, runs, table: pd.DataFrame
) -> pd.DataFrame:
    """Write the study tables and maps from the finished runs; return ``runs.tsv``.

    Parameters
    ----------
    layout : StudyLayout
    study : StudyConfig
    runs : list of StudyRun
    table : pandas.DataFrame
        The runner's rows (run, condition, seed, status, seconds, error).

    Returns
    -------
    pandas.DataFrame
        ``table`` with the columns of :func:`run_metrics` added, as written to ``runs.tsv``.
    """
    finished = set(table.loc[table["status"] == "finished", "run"])
    metrics, logs, maps = {}, {}, {}
    for r in runs:
        if r.name not in finished:
            continue
        rl = RunLayout(layout.run(r.name), r.config.train.resolution_mm)
        metrics[r.name], fold_logs = run_metrics(rl, r.seed)
        for fold, tlog in fold_logs.items():
            logs[(r.condition, r.seed, fold)] = tlog
        method = summary_method(r.config)
        if method is not None:
            final = rl.population(method, "mean")
            maps[r.name] = {"final": _load(final)}
            for k, p in _phase_maps(rl, len(study.phases)).items():
                maps[r.name][k] = None if p is None else _load(p)
    extra = pd.DataFrame([{"run": n, **m} for n, m in metrics.items()])
    out = table.merge(extra, on="run", how="left") if len(extra) else table
    write_tsv(layout.table("runs"), out)
    _write_curves(layout, logs)
    phases = phase_table(logs, study.phases)
    write_tsv(layout.table("phases"), phases)
    write_tsv(layout.table("phase_summary"), phase_summary(phases))
    done = out[out["status"] == "finished"]
    write_tsv(layout.table("ttests"), condition_ttests(done))
    for old in (layout.root / "maps").glob("*.nii.gz"):  # only this summary's maps remain
        old.unlink()
    _write_maps(layout, study, [r for r in runs if r.name in maps], maps)
    return out


def _write_curves(layout: StudyLayout, logs: dict) -> None:
    frames = []
    for (condition, seed, fold), tlog in logs.items():
        cols = [c for c in ("epoch", "train_loss", "val_mae", "test_mae") if c in tlog]
        f = tlog[cols].copy()
        f.insert(0, "fold", "n/a" if fold is None else fold)
        f.insert(0, "seed", seed)
        f.insert(0, "condition", condition)
        frames.append(f)
    cols = ["condition", "seed", "fold", "epoch", "train_loss", "val_mae", "test_mae"]
    write_tsv(layout.table("curves"), pd.concat(frames) if frames else pd.DataFrame(columns=cols))


def _write_maps(layout: StudyLayout, study: StudyConfig, runs, maps: dict) -> None:
    """Agreement per condition and phase, condition mean maps, region ranks and stability.

    Always writes its tables (empty without maps), so none survives from an earlier summary.
    """
    from brainage.atlas import load_atlas
    from brainage.errors import BrainageError
    from brainage.io.nifti import save_nifti
    from brainage.population.subgroups import STABILITY_COLUMNS, rank_stability
    from brainage.space import template_array, template_grid

    if not runs:
        write_tsv(layout.table("agreement"), pd.DataFrame(columns=AGREEMENT_COLUMNS))
        write_tsv(layout.table("regions_ranks"), pd.DataFrame(columns=RANK_COLUMNS))
        cols = ["condition", *STABILITY_COLUMNS]
        write_tsv(layout.table("regions_stability"), pd.DataFrame(columns=cols))
        return
    cfg = runs[0].config
    res, method = cfg.train.resolution_mm, summary_method(cfg)
    grid, mask = template_grid(res), template_array("mask", res).astype(bool)
    atlas = load_atlas(cfg.population.atlases[0], grid) if cfg.population.atlases else None
    rows, ranks, stability = [], [], []
    conditions = list(dict.fromkeys(r.condition for r in runs))
    for cond in conditions:
        mine = [r for r in runs if r.condition == cond]
        for phase in ["final", *map(str, range(1, len(study.phases) + 1))]:
            seed_maps = [maps[r.name][phase] for r in mine if maps[r.name][phase] is not None]
            thr = np.nan if phase == "final" else study.phases[int(phase) - 1]
            for q in study.agreement_quantiles:
                row = {"condition": cond, "phase": phase, "threshold": thr, "quantile": q,
                       "n_seeds": len(seed_maps)}  # fmt: skip
                if len(seed_maps) >= 2:  # agreement needs two seeds (see StudyConfig.phases)
                    agree = voxel_agreement(seed_maps, mask, q)
                    row |= {k: agree[k] for k in ("n_agree", "n_voxels", "fraction")}
                    save_nifti(agree["agree"].astype(np.uint8), grid.affine,
                               layout.agreement_map(cond, phase, method, res, q), dtype=np.uint8,
                               metadata={"condition": cond, "phase": phase, "method": method,
                                         "quantile": q, "n_seeds": len(seed_maps)})  # fmt: skip
                rows.append(row)
        finals = {r.seed: maps[r.name]["final"] for r in mine if maps[r.name]["final"] is not None}
        if not finals:
            continue
        save_nifti(np.mean(list(finals.values()), axis=0).astype(np.float32), grid.affine,
                   layout.condition_map(cond, method, res),
                   metadata={"condition": cond, "method": method, "seeds": sorted(finals),
                             "space": "MNI152NLin2009aSym"})  # fmt: skip
        if atlas is None:
            continue
        tables = {}
        for s, m in finals.items():
            try:
                tables[f"seed-{s}"] = region_ranks(m, atlas, mask)
            except BrainageError as err:  # e.g. a map with NaN: that seed is left out
                log.warning("region ranks of %s seed %s: %s", cond, s, err)
                continue
            ranks.append(tables[f"seed-{s}"].assign(condition=cond, seed=s))
        if len(tables) >= 2:
            stability.append(rank_stability(tables, "seed", "n_top").assign(condition=cond))
    write_tsv(layout.table("agreement"), pd.DataFrame(rows, columns=AGREEMENT_COLUMNS))
    ranks_df = pd.concat(ranks, ignore_index=True) if ranks else pd.DataFrame(columns=RANK_COLUMNS)
    write_tsv(layout.table("regions_ranks"), ranks_df[RANK_COLUMNS])
    if len(ranks_df):  # between conditions: their seed-mean shares of the top voxels
        means = ranks_df.groupby(["condition", "region"], sort=False)["top_share"].mean()
        by_cond = {c: means[c].rename("top_share").reset_index() for c in conditions
                   if c in means.index.get_level_values(0)}  # fmt: skip
        if len(by_cond) >= 2:
            stability.append(rank_stability(by_cond, "condition", "top_share").assign(
                condition="all"))  # fmt: skip
    cols = ["condition", *STABILITY_COLUMNS]
    stab = pd.concat(stability, ignore_index=True)[cols] if stability else None
    write_tsv(
        layout.table("regions_stability"), pd.DataFrame(columns=cols) if stab is None else stab
    )
