"""The main job: cohort → preprocess → train ensemble → predict → explain → population → report.

Each stage is a library call; :func:`run` chains them in one output folder laid out like a BIDS
derivatives dataset (DESIGN.md). Every stage's outputs are keyed by a hash of their inputs and
parameters, so a rerun skips finished work and an interrupted run resumes where it stopped.
"""

from __future__ import annotations

import datetime as _dt
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainage import __version__
from brainage.config import DEMO_OVERRIDES, dump_config, load_config, seeds_of
from brainage.data.splits import make_splits
from brainage.ensemble import (
    AgeBiasCorrection,
    RidgeHead,
    ensemble_uncertainty,
    fit_ensemble_head,
    regression_metrics,
)
from brainage.errors import InputError
from brainage.io.atomic import atomic_path, write_json, write_text, write_tsv
from brainage.io.cohort import Cohort, failures_frame, read_bids
from brainage.io.nifti import save_nifti
from brainage.space import TEMPLATE_SPACE, template_array, template_grid
from brainage.train import TrainConfig, load_model, predict_volumes, train_model
from brainage.utils import StageTimer, select_device, stable_hash

log = logging.getLogger("brainage")

#: Name of the single training condition of ``brainage run`` (``sweep`` adds others).
CONDITION = "default"


@dataclass
class RunResult:
    """Where a run wrote its outputs and its headline numbers.

    Attributes
    ----------
    out_dir : Path
    predictions : pandas.DataFrame
        Contents of ``predictions.tsv``.
    metrics : pandas.DataFrame
        Contents of ``metrics.tsv``.
    stage_seconds : dict of str to float
        Wall-clock seconds per stage.
    report : Path or None
    """

    out_dir: Path
    predictions: pd.DataFrame
    metrics: pd.DataFrame
    stage_seconds: dict = field(default_factory=dict)
    report: Path | None = None


def _console():
    from rich.console import Console

    return Console(stderr=True)


def _progress():
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[status]}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=_console(),
        transient=False,
    )


def _bids_label(pid: str) -> str:
    from brainage.preprocess import bids_subject

    return bids_subject(pid)


# --------------------------------------------------------------------------- stages


def preprocess_stage(cohort: Cohort, out_dir: Path, cfg: dict, progress: bool = True):
    """Preprocess every subject (cached per subject); return (table, failures).

    Returns
    -------
    table : pandas.DataFrame
        Cohort rows of the successfully preprocessed subjects merged with the preprocessing
        outputs (``preproc``, ``mask``, ``reg_quality``, …).
    failures : list of InputError
    """
    from brainage.preprocess import PreprocessConfig, preprocess_cohort

    pcfg = PreprocessConfig.from_dict(cfg["preprocess"])
    result = preprocess_cohort(
        cohort,
        out_dir,
        pcfg,
        n_jobs=cfg["run"]["n_jobs"],
        backend=cfg["run"]["backend"],
        strict=cfg["run"]["strict"],
        progress=progress,
        dask_address=cfg["run"]["dask_address"],
    )
    table = cohort.table.merge(
        result.table, on="participant_id", how="inner", suffixes=("", "_pre")
    )
    return table.reset_index(drop=True), list(result.failures)


def load_volumes(table: pd.DataFrame, out_dir: Path, resolution_mm: float) -> np.ndarray:
    """Load preprocessed volumes on ``template_grid(resolution_mm)``, cached as ``.npy``.

    Returns
    -------
    ndarray, shape (n_subjects, 1, i, j, k), float32
        In :data:`~brainage.space.TEMPLATE_SPACE`, row order of ``table``.
    """
    from brainage.preprocess import load_preprocessed

    grid = template_grid(resolution_mm)
    stamps = [
        (pid, str(p), Path(p).stat().st_size, Path(p).stat().st_mtime_ns)
        for pid, p in zip(table["participant_id"], table["preproc"], strict=True)
    ]
    key = stable_hash(stamps, grid.shape, resolution_mm)
    cache = out_dir / "cache" / f"volumes_res-{resolution_mm:g}_{key}.npy"
    if cache.exists():
        return np.load(cache, mmap_mode="r")
    x = load_preprocessed(table, grid)
    if cache.parent.exists():
        shutil.rmtree(cache.parent)  # stale caches of earlier inputs
    with atomic_path(cache) as tmp:
        np.save(tmp, x)
    return np.load(cache, mmap_mode="r")


def train_stage(
    x: np.ndarray, table: pd.DataFrame, out_dir: Path, cfg: dict, progress: bool = True
) -> list[Path]:
    """Train one base model per seed (skipped when already trained with the same inputs).

    Returns
    -------
    list of Path
        One folder per seed: ``OUT/models/default/seed-<n>``.
    """
    tcfg = TrainConfig(**cfg["train"])
    train = (table["split"] == "train").to_numpy()
    val = (table["split"] == "validation").to_numpy()
    ages = table["age"].to_numpy(float)
    data_key = stable_hash(
        table.loc[train | val, ["participant_id", "split"]].values.tolist(),
        cfg["preprocess"],
        x.shape,
    )
    folders = []
    seeds = seeds_of(cfg)
    bar = _progress() if progress else None
    if bar:
        bar.start()
    try:
        for seed in seeds:
            folder = out_dir / "models" / CONDITION / f"seed-{seed}"
            key = stable_hash(tcfg.to_dict(), seed, data_key)
            marker = folder / "hash.txt"
            if marker.exists() and marker.read_text() != key:
                shutil.rmtree(folder)  # trained with other inputs or settings
            write_text(marker, key)
            task = None
            if bar:
                task = bar.add_task(f"train seed {seed}", total=tcfg.epochs, status="")

            def tick(epoch, total, val_mae, task=task):
                if bar:
                    bar.update(task, completed=epoch, status=f"val MAE {val_mae:.2f} y")

            x_train = np.asarray(x[train])
            x_val = np.asarray(x[val])
            res = train_model(
                x_train,
                ages[train],
                x_val,
                ages[val],
                tcfg,
                seed,
                folder,
                progress=tick,
                meta_extra={"hash": key},
            )
            if bar:
                bar.update(
                    task, completed=tcfg.epochs, status=f"best val MAE {res.best_val_mae:.2f} y"
                )
            folders.append(folder)
    finally:
        if bar:
            bar.stop()
    return folders


def prediction_table(
    participant_ids, ages, base, brain_age, correction, split, names
) -> pd.DataFrame:
    """Build the ``predictions.tsv`` table.

    Parameters
    ----------
    participant_ids : sequence of str, length n
    ages : ndarray, shape (n,)
        Chronological age, years (NaN = unknown).
    base : ndarray, shape (n, n_models)
        Base-model predictions, years.
    brain_age : ndarray, shape (n,)
        Ensemble prediction, years.
    correction : AgeBiasCorrection
        Fitted correction; its ``recommended_`` column defines the brain-age gap.
    split : str or sequence of str
    names : sequence of str, length n_models
        Base-model names (``seed-<n>``), one extra column ``brain_age_<name>`` each.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id, age, brain_age, brain_age_corrected, brain_age_gap,
        uncertainty, split, brain_age_<name>…``.
    """
    corrected = correction.transform(brain_age)
    use = corrected if correction.recommended_ == "brain_age_corrected" else brain_age
    pred = pd.DataFrame(
        {
            "participant_id": list(participant_ids),
            "age": ages,
            "brain_age": brain_age,
            "brain_age_corrected": corrected,
            "brain_age_gap": use - ages,
            "uncertainty": ensemble_uncertainty(base),
            "split": split,
        }
    )
    for j, name in enumerate(names):
        pred[f"brain_age_{name}"] = base[:, j]
    return pred


def predict_stage(
    x: np.ndarray, table: pd.DataFrame, model_dirs: list[Path], out_dir: Path, cfg: dict
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Base-model predictions → ridge head → bias correction → predictions.tsv and metrics.tsv.

    The ridge head and the age-bias correction are fitted on the validation subjects only. The
    correction is fitted on out-of-fold head predictions (5-fold within validation) so that it
    never sees predictions fitted to the same ages; validation rows of ``predictions.tsv`` carry
    these out-of-fold predictions too. Test subjects are never used for fitting anything.

    Returns
    -------
    predictions : pandas.DataFrame
    metrics : pandas.DataFrame
    """
    models = [load_model(d) for d in model_dirs]
    device = select_device(cfg["train"]["device"])
    names = [f"seed-{m[1]['seed']}" for m in models]
    base = np.column_stack([predict_volumes(m.to(device), x, device=device) for m, _ in models])
    ages = table["age"].to_numpy(float)
    split = table["split"].to_numpy()
    val = split == "validation"
    head, head_info = fit_ensemble_head(
        base[val],
        ages[val],
        cfg["ensemble"]["ridge_alpha"],
        cfg["ensemble"]["ridge_positive"],
        seed=cfg["seed"],
    )
    ens = head.predict(base)
    if head_info["kind"] == "ridge":  # out-of-fold head predictions for validation subjects
        ens[val] = head.cross_val_predict(base[val], ages[val], seed=cfg["seed"])
    bc = AgeBiasCorrection(
        cfg["bias_correction"]["min_slope"], cfg["bias_correction"]["n_bootstrap"], cfg["seed"]
    ).fit(ages[val], ens[val])
    pred = prediction_table(table["participant_id"], ages, base, ens, bc, split, names)
    corrected = pred["brain_age_corrected"].to_numpy()
    train_mean = float(np.mean([m[1]["train_mean_age"] for m in models]))
    rows = []
    for s in ("train", "validation", "test"):
        sel = split == s
        if not sel.any():
            continue
        columns = [(n, base[sel, j]) for j, n in enumerate(names)]
        columns += [("ensemble", ens[sel]), ("ensemble_corrected", corrected[sel])]
        columns += [("mean_age_baseline", np.full(sel.sum(), train_mean))]
        for name, values in columns:
            rows.append({"model": name, "split": s, **regression_metrics(ages[sel], values)})
    metrics = pd.DataFrame(rows)
    write_tsv(out_dir / "predictions.tsv", pred)
    write_tsv(out_dir / "metrics.tsv", metrics)
    bias = bc.to_dict()
    bias["gap_from"] = bc.recommended_
    write_json(out_dir / "bias_correction.json", bias)
    write_json(
        out_dir / "ensemble.json",
        {
            "condition": CONDITION,
            "base_models": [str(Path(d).relative_to(out_dir)) for d in model_dirs],
            "names": names,
            "head": head.to_dict(),
            "head_choice": head_info,
            "train_mean_age": train_mean,
            "resolution_mm": cfg["train"]["resolution_mm"],
        },
    )
    return pred, metrics


def relevance_path(
    out_dir: Path, method: str, pid: str, resolution_mm: float, model: str | None = None
) -> Path:
    """Where the relevance map of ``pid`` for ``method`` is written (template space).

    ``model=None`` gives the ensemble map (mean over base models); ``model="seed-0"`` the map of
    one base model, under ``explain/method-<m>/seed-0/``.
    """
    label = _bids_label(pid)
    folder = out_dir / "explain" / f"method-{method}"
    if model is not None:
        folder = folder / model
    desc = method.replace("_", "")
    name = f"{label}_space-{TEMPLATE_SPACE}_res-{resolution_mm:g}_desc-{desc}_relevance.nii.gz"
    return folder / name


def _explained_rows(table: pd.DataFrame, which: str) -> np.ndarray:
    """Row indices of the subjects to explain: ``test``, ``heldout`` (val. + test), ``all``."""
    if which == "test":
        sel = table["split"] == "test"
    elif which == "heldout":
        sel = table["split"].isin(["validation", "test"])
    elif which == "all":
        sel = pd.Series(True, index=table.index)
    else:
        from brainage.errors import ConfigError

        raise ConfigError(f"'explain.subjects' must be 'test', 'heldout' or 'all'; got {which!r}")
    return np.flatnonzero(sel.to_numpy())


def _fit_noise_models(x, table, model_dirs, models, cfg):
    """Fit (or load) one 3D U-Noise model per base model, saved beside it (paper 002)."""
    from brainage.explain.unoise import fit_unoise

    params = dict(cfg["explain"]["params"].get("unoise_fit", {}))
    n_fit = int(params.pop("n_subjects", 64))
    train = np.flatnonzero((table["split"] == "train").to_numpy())[:n_fit]
    val = np.flatnonzero((table["split"] == "validation").to_numpy())
    ages = table["age"].to_numpy(float)
    noise = []
    for d, m in zip(model_dirs, models, strict=True):
        noise.append(
            fit_unoise(
                m,
                np.asarray(x[train]),
                ages[train],
                np.asarray(x[val]),
                ages[val],
                seed=cfg["seed"],
                out_path=Path(d) / "unoise.pt",
                **params,
            )
        )
    return noise


#: Configuration value of an explanation method's ``baseline`` that stands for the mean of the
#: training volumes (a reference brain on the model's grid), resolved by :func:`method_params`.
TRAINING_MEAN = "training_mean"


def method_params(params: dict, x: np.ndarray, table: pd.DataFrame) -> dict:
    """Resolve an explanation method's configured parameters for this run.

    Returns a copy in which ``baseline: training_mean`` is replaced by the mean training volume,
    shape (c, i, j, k), on the model's grid (a reference brain for Integrated Gradients and
    occlusion).

    Raises
    ------
    InputError
        ``training_mean`` is asked for but the run has no training subjects.
    """
    params = dict(params)
    if isinstance(params.get("baseline"), str) and params["baseline"] == TRAINING_MEAN:
        rows = np.flatnonzero(table["split"].to_numpy() == "train")
        if rows.size == 0:
            raise InputError(
                "explanation baseline 'training_mean' needs training subjects; this run has none",
                fix="use another baseline (e.g. 'zeros') in the explain parameters",
            )
        total = np.zeros(x.shape[1:], dtype=np.float64)
        for start in range(0, rows.size, 32):  # bounded memory on a memory-mapped stack
            total += np.asarray(x[rows[start : start + 32]], dtype=np.float64).sum(axis=0)
        params["baseline"] = (total / rows.size).astype(np.float32)
    return params


def _unoise_version() -> int:
    """Algorithm version of 3D U-Noise: a new version invalidates cached U-Noise maps."""
    from brainage.explain.unoise import ALGORITHM_VERSION

    return ALGORITHM_VERSION


def explain_stage(
    x: np.ndarray,
    table: pd.DataFrame,
    model_dirs: list[Path],
    out_dir: Path,
    cfg: dict,
    progress: bool = True,
) -> dict[str, list[Path]]:
    """Relevance maps of the chosen subjects for every method (METHODS §8).

    Each base model's map is written under ``explain/method-<m>/seed-<n>/`` and their mean (the
    ensemble map, paper 001) under ``explain/method-<m>/``, as NIfTI in template space (the
    model's input grid). A subject is skipped when its maps exist for the same models and
    parameters. ``"unoise"`` first fits one noise model per base model (cached beside it).

    Returns
    -------
    dict of str to list of Path
        Ensemble map files per method, in the order of the explained subjects.
    """
    import torch

    from brainage.explain import explain

    ecfg = cfg["explain"]
    res = cfg["train"]["resolution_mm"]
    grid = template_grid(res)
    idx = _explained_rows(table, ecfg["subjects"])
    loaded = [load_model(d) for d in model_dirs]
    models = [m for m, _ in loaded]
    names = [f"seed-{meta['seed']}" for _, meta in loaded]
    out: dict[str, list[Path]] = {}
    bar = _progress() if progress else None
    if bar:
        bar.start()
    try:
        for method in ecfg["methods"]:
            params = dict(ecfg["params"].get(method, {}))
            key = stable_hash(
                [meta.get("hash") for _, meta in loaded],
                method,
                params,
                ecfg["params"].get("unoise_fit") if method == "unoise" else None,
                _unoise_version() if method == "unoise" else None,
            )
            mdir = out_dir / "explain" / f"method-{method}"
            marker = mdir / "hash.txt"
            if marker.exists() and marker.read_text() != key:
                shutil.rmtree(mdir)
            paths = [
                relevance_path(out_dir, method, table["participant_id"].iloc[i], res) for i in idx
            ]
            todo = [(i, p) for i, p in zip(idx, paths, strict=True) if not p.exists()]
            resolved = method_params(params, x, table) if todo else params
            per_model_params = [dict(resolved) for _ in models]
            if todo and method == "unoise":
                for pm, noise in zip(
                    per_model_params,
                    _fit_noise_models(x, table, model_dirs, models, cfg),
                    strict=True,
                ):
                    pm["noise_model"] = noise
            write_text(marker, key)
            task = (
                bar.add_task(
                    f"explain {method}", total=len(idx), completed=len(idx) - len(todo), status=""
                )
                if bar
                else None
            )
            bs = max(1, int(ecfg["batch_size"]))
            for start in range(0, len(todo), bs):
                chunk = todo[start : start + bs]
                vols = torch.as_tensor(np.stack([np.asarray(x[i]) for i, _ in chunk]))
                maps = [
                    explain(m, vols, method, batch_size=bs, **pm)
                    for m, pm in zip(models, per_model_params, strict=True)
                ]
                for c, (i, p) in enumerate(chunk):
                    pid = table["participant_id"].iloc[i]
                    meta = {"space": TEMPLATE_SPACE, "method": method}
                    for name, mp in zip(names, maps, strict=True):
                        save_nifti(
                            mp[c, 0],
                            grid.affine,
                            relevance_path(out_dir, method, pid, res, name),
                            metadata=meta,
                        )
                    mean = np.mean([mp[c, 0] for mp in maps], axis=0)
                    save_nifti(
                        mean, grid.affine, p, metadata=meta
                    )  # written last: completion marker
                if bar:
                    bar.advance(task, len(chunk))
            out[method] = paths
    finally:
        if bar:
            bar.stop()
    return out


def population_stage(maps: dict[str, list[Path]], out_dir: Path, cfg: dict) -> dict:
    """Write population maps and atlas region tables per method (METHODS §9).

    Returns
    -------
    dict
        ``{method: {"maps": {...paths}, "regions": {atlas: path}}}``.
    """
    import nibabel as nib

    from brainage.atlas import load_atlas, region_table
    from brainage.population import write_population_maps

    pcfg = cfg["population"]
    res = cfg["train"]["resolution_mm"]
    grid = template_grid(res)
    mask = template_array("mask", res)
    atlases = {name: load_atlas(name, grid) for name in pcfg["atlases"]}
    out = {}
    for method, paths in maps.items():
        if not paths:
            continue
        stack = np.stack([np.asarray(nib.load(str(p)).dataobj, dtype=np.float32) for p in paths])
        written = write_population_maps(
            stack,
            mask,
            grid,
            out_dir,
            method,
            normalise=pcfg["normalise"],
            fraction=pcfg["top_fraction"],
            sigma_vox=pcfg["sigma_vox"],
        )
        mean_map = np.asarray(nib.load(str(written["mean"])).dataobj, dtype=np.float32)
        regions = {}
        for name, atlas in atlases.items():
            tab = region_table(mean_map, atlas, mask=mask, top_fraction=pcfg["top_fraction"])
            p = out_dir / "regions" / f"method-{method}_atlas-{name}_regions.tsv"
            write_tsv(p, tab)
            regions[name] = p
        out[method] = {"maps": written, "regions": regions}
    return out


#: Masks of the single simulated effects (``derivatives/truth``) scored one at a time.
TRUTH_EFFECTS = ("ventricles", "cortex", "lesions")


def _load_truth(truth_dir: Path, pid: str, name: str, grid) -> np.ndarray | None:
    """One ground-truth mask of a simulated subject on ``grid`` (nearest neighbour), or None."""
    import nibabel as nib

    from brainage.space import resample_to_grid

    label = _bids_label(pid)
    found = sorted((truth_dir / label / "anat").glob(f"{label}_*desc-{name}_mask.nii*"))
    if not found:
        return None
    img = resample_to_grid(nib.load(str(found[0])), grid, "nearest")
    return np.asarray(img.dataobj) > 0.5


def evaluate_stage(
    x: np.ndarray,
    table: pd.DataFrame,
    model_dirs: list[Path],
    maps: dict[str, list[Path]],
    out_dir: Path,
    cfg: dict,
    truth_dir: Path | None,
) -> pd.DataFrame | None:
    """Score the explanation methods: ground truth, randomisation check, seed agreement, lesions.

    Writes ``OUT/evaluation/xai.tsv`` (one row per method; METHODS §11, Adebayo et al. 2018) and,
    when lesion masks exist, ``OUT/evaluation/lesions.tsv`` (paper 003). Without ground truth
    (real data) the table still holds the randomisation check and the seed agreement.

    Returns
    -------
    pandas.DataFrame or None
        The xai table; None when no maps were made.
    """
    import nibabel as nib
    import torch

    from brainage.evaluate import (
        METRICS,
        cascading_randomisation,
        evaluate_explanations,
        seed_agreement,
        write_xai_table,
    )
    from brainage.population import normalise_maps
    from brainage.stats import lesion_relevance_test, write_lesion_table

    if not maps:
        return None
    ecfg = cfg["evaluate"]
    res = cfg["train"]["resolution_mm"]
    grid = template_grid(res)
    brain = template_array("mask", res)
    idx = _explained_rows(table, cfg["explain"]["subjects"])
    pids = table["participant_id"].iloc[idx].tolist()
    loaded = [load_model(d) for d in model_dirs]
    names = [f"seed-{meta['seed']}" for _, meta in loaded]

    def read(paths):
        return np.stack([np.asarray(nib.load(str(p)).dataobj, dtype=np.float32) for p in paths])

    stacks = {m: read(paths) for m, paths in maps.items()}
    agreement = {}
    for method in maps:
        per_seed = []
        for name in names:
            seed_paths = [relevance_path(out_dir, method, pid, res, name) for pid in pids]
            if all(p.exists() for p in seed_paths):
                per_seed.append(normalise_maps(read(seed_paths), brain).mean(axis=0))
        if len(per_seed) >= 2:
            agreement[method] = seed_agreement(per_seed, brain, fraction=ecfg["top_fraction"])
    randomisation = {}
    if ecfg["randomisation"]:
        n = min(int(ecfg["n_subjects"]), len(idx))
        vols = torch.as_tensor(np.stack([np.asarray(x[i]) for i in idx[:n]]))
        for method in maps:
            if method in ("unoise",):
                continue  # needs a noise model refitted per randomised network
            params = dict(cfg["explain"]["params"].get(method, {}))
            cache = out_dir / "evaluation" / "randomisation" / f"method-{method}.tsv"
            key = stable_hash(loaded[0][1].get("hash"), method, params, pids[:n], cfg["seed"])
            if (
                cache.exists()
                and (cache.parent / f"method-{method}.hash").exists()
                and ((cache.parent / f"method-{method}.hash").read_text() == key)
            ):
                randomisation[method] = pd.read_csv(cache, sep="\t")["spearman"].iloc[-1]
                continue
            steps = cascading_randomisation(
                loaded[0][0],
                vols,
                method,
                cfg["seed"],
                mask=brain,
                **method_params(params, x, table),
            )
            write_tsv(cache, steps)
            write_text(cache.parent / f"method-{method}.hash", key)
            randomisation[method] = steps
    masks = {}  # ground-truth mask stacks (n, i, j, k), each read once
    if truth_dir is not None:
        for name in ("ageeffect", *TRUTH_EFFECTS):
            found = [_load_truth(truth_dir, pid, name, grid) for pid in pids]
            if all(m is not None for m in found):
                masks[name] = np.stack(found)
    truths = masks.get("ageeffect")
    has_truth = truths is not None
    if has_truth:
        for pid, t in zip(pids, truths, strict=True):
            save_nifti(
                t.astype(np.uint8),
                grid.affine,
                out_dir / "evaluation" / "truth" / f"{_bids_label(pid)}_desc-ageeffect_mask.nii.gz",
                dtype=np.uint8,
            )
    if "lesions" in masks:
        results = {
            m: lesion_relevance_test(stack, masks["lesions"], brain) for m, stack in stacks.items()
        }
        write_lesion_table(results, out_dir)
    if has_truth:
        effects = {name: masks[name] & truths for name in TRUTH_EFFECTS if name in masks}
    else:
        effects, truths = {}, np.zeros((len(pids), *grid.shape), dtype=bool)
    table_xai = evaluate_explanations(
        stacks,
        truths,
        brain,
        randomisation=randomisation or None,
        seed_agreement=agreement or None,
        threshold=ecfg["threshold"],
        effects=effects,
    )
    if not has_truth:
        scores = [*METRICS, "population_mass_accuracy", "population_mask_fraction"]
        table_xai[[*scores, "population_roc_auc"]] = np.nan
    write_xai_table(table_xai, out_dir)
    return table_xai


# --------------------------------------------------------------------------- the main job


def _dataset_description(cfg: dict, seeds: list[int], source: str) -> dict:
    return {
        "Name": "brainage run",
        "BIDSVersion": "1.9.0",
        "DatasetType": "derivative",
        "GeneratedBy": [{"Name": "brainage", "Version": __version__}],
        "SourceDatasets": [{"URL": str(source)}],
        "brainage": {"config": cfg, "seeds": seeds},
    }


def run(
    cohort: Cohort,
    out_dir: str | Path,
    config: dict | None = None,
    progress: bool = True,
    report: bool = True,
) -> RunResult:
    """Run the whole pipeline on a cohort.

    Parameters
    ----------
    cohort : Cohort
        From :func:`brainage.io.read_bids` or :func:`brainage.io.read_table`.
    out_dir : str or Path
        Output folder (created); see DESIGN.md for its layout. Rerunning on the same folder
        reuses every finished output whose inputs and parameters are unchanged.
    config : dict, optional
        Full configuration (:func:`brainage.config.load_config`); default: the defaults.
    progress : bool
        Show rich progress bars.
    report : bool
        Write ``report.html``.

    Returns
    -------
    RunResult

    Raises
    ------
    InputError
        Too few usable subjects; with ``run.strict`` the first subject that fails.
    """
    cfg = config if config is not None else load_config()
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    console = _console()
    timer = StageTimer()
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    seeds = seeds_of(cfg)
    remove_stale_temporaries(out)
    write_text(out / "config.yaml", dump_config(cfg))
    write_json(out / "dataset_description.json", _dataset_description(cfg, seeds, cohort.source))

    console.log(
        f"cohort: {len(cohort)} subjects from {cohort.source} "
        f"({int(cohort.has_age.sum())} with age)"
    )
    with timer("preprocess"):
        table, pre_failures = preprocess_stage(cohort, out, cfg, progress)
    failures = failures_frame(cohort.failures, "cohort")
    failures = pd.concat([failures, failures_frame(pre_failures, "preprocess")], ignore_index=True)
    write_tsv(out / "failures.tsv", failures)
    if len(failures):
        console.log(f"[yellow]{len(failures)} subject(s) failed; see {out / 'failures.tsv'}")
    table["split"] = make_splits(
        table, cfg["split"]["test_fraction"], cfg["split"]["validation_fraction"], cfg["seed"]
    ).to_numpy()
    cohort_cols = [
        c for c in ("participant_id", "age", "sex", "site", "split", "t1w", "preproc") if c in table
    ]
    write_tsv(out / "cohort.tsv", table[cohort_cols])

    with timer("load_volumes"):
        x = load_volumes(table, out, cfg["train"]["resolution_mm"])
    with timer("train"):
        model_dirs = train_stage(x, table, out, cfg, progress)
    with timer("predict"):
        pred, metrics = predict_stage(x, table, model_dirs, out, cfg)
    test = metrics[
        (metrics["split"] == "test") & metrics["model"].isin(["ensemble", "ensemble_corrected"])
    ]
    for _, r in test.iterrows():
        console.log(f"test {r['model']}: MAE {r['mae']:.2f} years, r = {r['r']:.2f} (n = {r['n']})")
    with timer("explain"):
        maps = (
            explain_stage(x, table, model_dirs, out, cfg, progress)
            if cfg["explain"]["methods"]
            else {}
        )
    with timer("population"):
        population_stage(maps, out, cfg)
    with timer("evaluate"):
        evaluate_stage(x, table, model_dirs, maps, out, cfg, cohort.truth_dir)
    provenance = {
        "version": __version__,
        "command": " ".join(sys.argv),
        "started": started,
        "finished": None,
        "stage_seconds": timer.seconds,
        "seeds": seeds,
        "device": str(select_device(cfg["train"]["device"])),
        "n_threads": _n_threads(),
        "python": sys.version.split()[0],
        "libraries": _library_versions(),
    }
    report_path = None
    if report:
        with timer("report"):
            write_json(out / "provenance.json", provenance)
            from brainage.report import write_report

            report_path = write_report(out)
    provenance["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    provenance["stage_seconds"] = timer.seconds
    write_json(out / "provenance.json", provenance)
    if report_path is not None:
        console.log(f"report: {report_path}")
    return RunResult(out, pred, metrics, dict(timer.seconds), report_path)


def remove_stale_temporaries(out_dir: Path) -> int:
    """Delete temporary files left by a killed run (``.<name>.<random>.tmp…``, see io.atomic).

    Returns
    -------
    int
        Number of files removed.
    """
    stale = [p for p in Path(out_dir).rglob(".*.tmp*") if p.is_file()]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


def _n_threads() -> int:
    import torch

    return torch.get_num_threads()


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in (
        "torch",
        "numpy",
        "nibabel",
        "nilearn",
        "antspyx",
        "deepbet",
        "zennit",
        "captum",
        "torchio",
    ):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _finished_run(run_dir, needed: tuple[str, ...]) -> Path:
    """Return the resolved run folder, or raise InputError naming the first missing file."""
    run_dir = Path(run_dir).expanduser().resolve()
    for name in needed:
        if not (run_dir / name).exists():
            raise InputError(
                f"{name} is missing: not a finished brainage run",
                "give the --out folder of a completed `brainage run`",
                path=run_dir,
            )
    return run_dir


def predict(
    model_dir: str | Path,
    cohort: Cohort,
    out_dir: str | Path,
    explain_methods: tuple[str, ...] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Apply a trained run to new subjects.

    Preprocesses the new subjects exactly as in the run ``model_dir`` (its ``config.yaml``),
    applies its base models, ridge head and age-bias correction, and writes
    ``out_dir/predictions.tsv`` (split ``predict``; ``brain_age_gap`` where the age is known),
    ``out_dir/failures.tsv`` and, when ages are known, ``out_dir/metrics.tsv``.

    Parameters
    ----------
    model_dir : str or Path
        Output folder of an earlier :func:`run`.
    cohort : Cohort
        New subjects (ages optional).
    out_dir : str or Path
    explain_methods : tuple of str
        Also write relevance maps with these methods.
    progress : bool

    Returns
    -------
    pandas.DataFrame
        The predictions table.

    Raises
    ------
    InputError
        ``model_dir`` is not a finished brainage run.
    """
    model_dir = _finished_run(model_dir, ("config.yaml", "ensemble.json", "bias_correction.json"))
    out = Path(out_dir).expanduser().resolve()
    cfg = load_config(model_dir / "config.yaml")
    ens = json.loads((model_dir / "ensemble.json").read_text())
    head = RidgeHead.from_dict(ens["head"])
    bc = AgeBiasCorrection.from_dict(json.loads((model_dir / "bias_correction.json").read_text()))
    out.mkdir(parents=True, exist_ok=True)
    table, pre_failures = preprocess_stage(cohort, out, cfg, progress)
    failures = pd.concat(
        [failures_frame(cohort.failures, "cohort"), failures_frame(pre_failures, "preprocess")],
        ignore_index=True,
    )
    write_tsv(out / "failures.tsv", failures)
    if table.empty:
        raise InputError("no subject could be preprocessed", f"see {out / 'failures.tsv'}")
    x = load_volumes(table, out, ens["resolution_mm"])
    model_dirs = [model_dir / d for d in ens["base_models"]]
    models = [load_model(d)[0] for d in model_dirs]
    base = np.column_stack([predict_volumes(m, x) for m in models])
    ages = table["age"].to_numpy(float)
    brain_age = head.predict(base)
    pred = prediction_table(
        table["participant_id"], ages, base, brain_age, bc, "predict", ens["names"]
    )
    corrected = pred["brain_age_corrected"].to_numpy()
    write_tsv(out / "predictions.tsv", pred)
    if np.isfinite(ages).any():
        rows = [
            {"model": n, "split": "predict", **regression_metrics(ages, v)}
            for n, v in [
                ("ensemble", brain_age),
                ("ensemble_corrected", corrected),
                ("mean_age_baseline", np.full(len(ages), ens["train_mean_age"])),
            ]
        ]
        write_tsv(out / "metrics.tsv", pd.DataFrame(rows))
    if explain_methods:
        table = table.assign(split="test")
        cfg = dict(
            cfg, explain=dict(cfg["explain"], methods=list(explain_methods), subjects="test")
        )
        explain_stage(x, table, model_dirs, out, cfg, progress)
    return pred


def demo(
    out_dir: str | Path = "brainage-demo",
    n_subjects: int = 120,
    seed: int = 0,
    progress: bool = True,
) -> RunResult:
    """Run the whole pipeline on a synthetic cohort made on the fly.

    Simulates ``n_subjects`` brain phantoms from the MNI152 template with age-dependent ventricle
    enlargement, cortical thinning and white-matter lesions (:mod:`brainage.simulate`) into
    ``out_dir/sourcedata/phantoms`` (a BIDS dataset with ground truth), then calls :func:`run`
    with :data:`brainage.config.DEMO_OVERRIDES` (4 mm, no skull stripping or registration since
    the phantoms are skull-free and already in template space).

    Returns
    -------
    RunResult
    """
    from brainage.simulate import simulate_cohort

    out = Path(out_dir).expanduser().resolve()
    cfg = load_config(overrides={**DEMO_OVERRIDES, "seed": seed})
    t0 = time.perf_counter()
    bids = out / "sourcedata" / "phantoms"
    if not (bids / "participants.tsv").exists():
        simulate_cohort(
            bids,
            n_subjects=n_subjects,
            resolution_mm=cfg["preprocess"]["resolution_mm"],
            seed=seed,
            progress=progress,
        )
    _console().log(f"simulated {n_subjects} phantoms in {time.perf_counter() - t0:.1f} s")
    return run(read_bids(bids), out, cfg, progress=progress)


def preprocess_only(cohort: Cohort, out_dir: str | Path, config: dict, progress: bool = True):
    """Run only the preprocessing stage and write ``failures.tsv`` (``brainage preprocess``).

    Returns
    -------
    pandas.DataFrame
        The preprocessed subjects with their output paths and registration quality.
    """
    out = Path(out_dir).expanduser().resolve()
    out.mkdir(parents=True, exist_ok=True)
    table, pre_failures = preprocess_stage(cohort, out, config, progress)
    failures = pd.concat(
        [failures_frame(cohort.failures, "cohort"), failures_frame(pre_failures, "preprocess")],
        ignore_index=True,
    )
    write_tsv(out / "failures.tsv", failures)
    return table


def explain_run(
    run_dir: str | Path,
    methods: list[str] | None = None,
    subjects: str | None = None,
    params: dict | None = None,
    progress: bool = True,
    report: bool = True,
) -> dict[str, list[Path]]:
    """Explain a finished run again, e.g. with other methods (``brainage explain``).

    Reads the run's configuration, cohort (``cohort.tsv``) and base models, writes relevance maps
    for ``methods`` (defaults: the run's), then population maps, region tables, the evaluation
    table and the report, and records the methods in ``config.yaml``.

    Parameters
    ----------
    run_dir : str or Path
        Output folder of a finished :func:`run`.
    methods : list of str, optional
        Registered explanation methods (:func:`brainage.explain.list_methods`).
    subjects : {"test", "heldout", "all"}, optional
    params : dict, optional
        Per-method parameters, e.g. ``{"occlusion": {"window": 6}}``.

    Returns
    -------
    dict of str to list of Path
        Ensemble map files per method.

    Raises
    ------
    InputError
        ``run_dir`` is not a finished run.
    """
    from brainage.errors import ConfigError, did_you_mean
    from brainage.explain import list_methods

    out = _finished_run(run_dir, ("config.yaml", "cohort.tsv", "ensemble.json"))
    cfg = load_config(out / "config.yaml")
    if methods:
        for m in methods:
            if m not in list_methods():
                raise ConfigError(
                    f"unknown explanation method {m!r}; {did_you_mean(m, list_methods())}"
                )
        cfg["explain"]["methods"] = list(methods)
    if subjects:
        cfg["explain"]["subjects"] = subjects
    if params:
        cfg["explain"]["params"] = {**cfg["explain"]["params"], **params}
    table = pd.read_csv(out / "cohort.tsv", sep="\t", dtype={"participant_id": str})
    ens = json.loads((out / "ensemble.json").read_text())
    model_dirs = [out / d for d in ens["base_models"]]
    x = load_volumes(table, out, cfg["train"]["resolution_mm"])
    maps = explain_stage(x, table, model_dirs, out, cfg, progress)
    population_stage(maps, out, cfg)
    desc = json.loads((out / "dataset_description.json").read_text())
    source = Path(desc.get("SourceDatasets", [{}])[0].get("URL", ""))
    truth = source / "derivatives" / "truth"
    evaluate_stage(x, table, model_dirs, maps, out, cfg, truth if truth.is_dir() else None)
    write_text(out / "config.yaml", dump_config(cfg))
    if report:
        from brainage.report import write_report

        write_report(out)
    return maps
