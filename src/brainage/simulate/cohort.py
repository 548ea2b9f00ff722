"""Synthetic BIDS cohorts of brain phantoms with ground truth (METHODS §11).

:func:`simulate_cohort` writes ``n_subjects`` phantoms (:func:`brainage.simulate.make_phantom`)
as a BIDS dataset that :func:`brainage.io.read_bids` reads like real data, plus a derivatives
dataset ``derivatives/truth`` with the masks of where age acts and a table of effect sizes::

    OUT/
      dataset_description.json              GeneratedBy: brainage simulate, seed, all parameters
      participants.tsv, participants.json   participant_id (sub-0001 …), age (years), sex
      sub-0001/anat/sub-0001_T1w.nii.gz     (and sub-0001_FLAIR.nii.gz)
      derivatives/truth/
        dataset_description.json
        truth.tsv, truth.json               effect sizes per subject
        sub-0001/anat/sub-0001_space-MNI152NLin2009aSym_res-4_desc-<mask>_mask.nii.gz
                                            mask in brain, ventricles, cortex, lesions, regions,
                                            ageeffect
        sub-0001/anat/sub-0001_space-MNI152NLin2009aSym_res-4_desc-change_map.nii.gz
                                            fraction of each voxel's tissue that age changes
        regions.tsv, regions.json           region-truth design only: the atlas regions and
                                            their atrophy rates

Two designs: ``"global"`` (ventricle enlargement, cortical thinning everywhere, lesions) and
``"regions"`` (region-level truth, issue 11: grey-matter atrophy with a known rate in chosen
Harvard-Oxford regions, :data:`brainage.simulate.effects.REGIONAL_ATROPHY`, the rest
age-invariant; ventricles and lesions as before, no global thinning).

Subject ``i`` (1-based) depends only on ``(seed, i)`` and the phantom parameters: its age, sex and
phantom seed come from the random stream ``SeedSequence([seed, i])``. A cohort of 10 subjects is
therefore the first 10 subjects of a cohort of 100, and ``n_jobs`` changes nothing but speed.
"""

from __future__ import annotations

import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np
import pandas as pd

from brainage import __version__
from brainage.errors import ConfigError, InputError, did_you_mean
from brainage.io import save_nifti, write_json, write_tsv
from brainage.simulate._anatomy import _install, template_anatomy
from brainage.simulate._checks import _check_number, _check_range
from brainage.simulate.effects import MASK_NAMES
from brainage.simulate.phantom import make_phantom, validate_phantom_params
from brainage.simulate.synthesis import check_contrasts
from brainage.space import TEMPLATE_SPACE, template_grid
from brainage.utils import stable_hash

#: Name written into ``GeneratedBy`` and used to recognise folders made by this function.
GENERATOR = "brainage simulate"
#: Hidden marker (ignored by BIDS tools) recording the parameter hash and completion.
MARKER = ".brainage_simulate.json"
TRUTH_MASKS = ("ventricles", "cortex", "lesions", "regions", "ageeffect", "brain")
#: Phantom designs of :func:`simulate_cohort`.
DESIGNS = ("global", "regions")


def res_label(resolution_mm: float) -> str:
    """BIDS ``res-`` label of a resolution: ``4.0`` → ``"4"``, ``2.5`` → ``"2p5"``."""
    r = float(resolution_mm)
    return str(int(r)) if r == int(r) else f"{r:g}".replace(".", "p")


def subject_draws(seed: int, index: int, age_range=(20.0, 85.0)) -> dict:
    """Age, sex and phantom seed of subject ``index`` (1-based) of a cohort with ``seed``.

    Parameters
    ----------
    seed : int
        Cohort seed.
    index : int
        1-based subject number (``sub-0001`` is 1).
    age_range : (float, float)
        Ages are uniform in it (years), rounded to 2 decimals.

    Returns
    -------
    dict
        ``participant_id``, ``age`` (years), ``sex`` (``"M"``/``"F"``), ``phantom_seed`` (int).
    """
    rng = np.random.default_rng(np.random.SeedSequence([int(seed), int(index)]))
    age = round(float(rng.uniform(age_range[0], age_range[1])), 2)
    sex = "F" if rng.random() < 0.5 else "M"
    phantom_seed = int(rng.integers(0, 2**31 - 1))
    return {
        "participant_id": f"sub-{index:04d}",
        "age": age,
        "sex": sex,
        "phantom_seed": phantom_seed,
    }


def _subject(index, seed, age_range, resolution_mm, contrasts, lesions, params, root) -> dict:
    """Make and write subject ``index``; return its truth row (runs in worker processes)."""
    draw = subject_draws(seed, index, age_range)
    pid = draw["participant_id"]
    phantom = make_phantom(
        draw["age"],
        resolution_mm=resolution_mm,
        seed=draw["phantom_seed"],
        contrasts=contrasts,
        lesions=lesions,
        age_range=age_range,
        **params,
    )
    root = Path(root)
    meta = {"space": TEMPLATE_SPACE, "gen": "brainage-simulate"}
    for contrast, image in phantom.images.items():
        save_nifti(
            image, phantom.affine, root / pid / "anat" / f"{pid}_{contrast}.nii.gz", metadata=meta
        )
    truth_anat = root / "derivatives" / "truth" / pid / "anat"
    res = res_label(resolution_mm)
    for name in TRUTH_MASKS:
        save_nifti(
            phantom.masks[name],
            phantom.affine,
            truth_anat / f"{pid}_space-{TEMPLATE_SPACE}_res-{res}_desc-{name}_mask.nii.gz",
            dtype=np.uint8,
            metadata=meta,
        )
    save_nifti(
        phantom.change,
        phantom.affine,
        truth_anat / f"{pid}_space-{TEMPLATE_SPACE}_res-{res}_desc-change_map.nii.gz",
        metadata=meta,
    )
    row = {"participant_id": pid, "sex": draw["sex"]}
    row.update(phantom.effects())
    return row


def _prepare_folder(root: Path, digest: str) -> bool:
    """Return True when ``root`` already holds this exact complete cohort; else clear our files.

    Raises
    ------
    InputError
        ``root`` is a file, or a non-empty folder that brainage simulate did not make.
    """
    if root.exists() and not root.is_dir():
        raise InputError("output path is a file", "give a folder for the cohort", path=root)
    if not root.exists() or not any(root.iterdir()):
        return False
    marker = root / MARKER
    if not marker.exists():
        raise InputError(
            "output folder is not empty and was not made by brainage simulate",
            "give a new or empty folder (nothing in it is deleted)",
            path=root,
        )
    import json

    try:
        info = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        info = {}
    if info.get("hash") == digest and info.get("complete"):
        return True
    # our own earlier (other or unfinished) cohort: remove exactly what we write
    for path in root.glob("sub-*"):
        if path.is_dir():
            shutil.rmtree(path)
    shutil.rmtree(root / "derivatives" / "truth", ignore_errors=True)
    for name in ("participants.tsv", "participants.json", "dataset_description.json"):
        (root / name).unlink(missing_ok=True)
    return False


def _progress(enabled: bool):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("subjects"),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
        disable=not enabled,
        transient=False,
    )


def simulate_cohort(
    out_dir,
    n_subjects: int = 120,
    resolution_mm: float = 4.0,
    age_range=(20.0, 85.0),
    seed: int = 0,
    contrasts=("T1w",),
    lesions: bool = True,
    n_jobs: int = 1,
    progress: bool = True,
    design: str = "global",
    **phantom_params,
) -> Path:
    """Write a synthetic BIDS cohort of brain phantoms with ground-truth masks (METHODS §11).

    Parameters
    ----------
    out_dir : str or Path
        Folder of the BIDS dataset. It must be new, empty, or an earlier output of this function:
        the same cohort (same parameter hash, complete) is left as it is and returned at once;
        another or unfinished one is replaced. Any other non-empty folder raises.
    n_subjects : int
        Number of subjects, ``sub-0001`` … (≥ 1).
    resolution_mm : float
        Grid resolution (mm) of :func:`brainage.space.template_grid`; images are already in
        MNI152NLin2009aSym and skull-stripped.
    age_range : (float, float)
        Ages are uniform in it (years, 2 decimals); the "where age acts" masks cover it.
    seed : int
        Cohort seed (≥ 0); recorded in ``dataset_description.json``.
    contrasts : sequence of {"T1w", "FLAIR"}
        Images written per subject (``sub-*_T1w.nii.gz``, ``sub-*_FLAIR.nii.gz``).
    lesions : bool
        Whether white-matter lesions are simulated.
    n_jobs : int
        Worker processes (1 = in this process, -1 = one per CPU). Results do not depend on it.
        Workers are spawned (safe with torch), so a script calling this with ``n_jobs > 1`` needs
        an ``if __name__ == "__main__":`` guard. At 4 mm one process is usually fastest (about
        0.05–0.1 s a subject against ~2 s to start a worker).
    progress : bool
        Show a progress bar (rich).
    design : {"global", "regions"}
        ``"regions"``: the region-truth design — ``regional_atrophy`` defaults to
        :data:`brainage.simulate.effects.REGIONAL_ATROPHY` over the Harvard-Oxford regions and
        ``cortical_thinning_mm`` to 0 (both can still be given); ``derivatives/truth/regions.tsv``
        lists every region of the atlas with its rate.
    **phantom_params
        Further keyword arguments of :func:`make_phantom` (``noise``, ``bias_field``,
        ``deformation_mm``, ``ventricle_growth_mm``, ``cortical_thinning_mm``, ``lesion_rate``, …).

    Returns
    -------
    Path
        ``out_dir``, now a BIDS dataset with ``derivatives/truth``
        (``brainage.io.read_bids(out_dir).truth_dir`` points there).

    Raises
    ------
    ConfigError
        A parameter is invalid or unknown (with a "did you mean" hint).
    InputError
        ``out_dir`` is a file or a foreign non-empty folder.

    Notes
    -----
    ``derivatives/truth/truth.tsv`` has one row per subject: ``participant_id``, ``sex``, ``age``,
    ``phantom_seed`` (``make_phantom(age, seed=phantom_seed, …)`` remakes the subject),
    ``ventricle_volume_ml``, ``ventricle_growth_mm``, ``cortical_thinning_mm``,
    ``cortical_thickness_mm`` (proxy), ``cortex_<contrast>_mean`` (noise-free mean intensity in the
    cortex band), ``lesion_count``, ``lesion_voxels``, ``lesion_volume_ml`` and the voxel counts of
    the masks. Every file is written atomically; a hidden marker records the parameter hash, and
    the cohort is complete once the marker says so (written last).
    """
    n_subjects = _check_number("n_subjects", n_subjects, 1, 1_000_000, integer=True)
    seed = _check_number("seed", seed, 0, 2**63 - 1, integer=True)
    resolution_mm = float(template_grid(resolution_mm).resolution)
    age_range = _check_range("age_range", age_range, 0.0, 130.0)
    contrasts = check_contrasts(contrasts)
    n_jobs = _check_number("n_jobs", n_jobs, -1, 4096, integer=True)
    if n_jobs == 0:
        raise ConfigError("'n_jobs' must be a positive integer or -1 (all CPUs); got 0")
    if n_jobs == -1:
        n_jobs = os.cpu_count() or 1
    # validate the phantom parameters once, here, before any file is touched
    reserved = {"age", "seed", "resolution_mm", "contrasts", "lesions", "age_range"}
    clash = sorted(reserved.intersection(phantom_params))
    if clash:
        raise ConfigError(f"'{clash[0]}' is set by simulate_cohort itself; do not pass it twice")
    if design not in DESIGNS:
        raise ConfigError(f"unknown phantom design {design!r}; {did_you_mean(design, DESIGNS)}")
    if design == "regions":
        from brainage.simulate._anatomy import region_names
        from brainage.simulate.effects import design_rates

        phantom_params.setdefault("regional_atrophy", design_rates(region_names()))
        phantom_params.setdefault("cortical_thinning_mm", 0.0)
    phantom = validate_phantom_params(**phantom_params)
    parameters = {
        "design": design,
        "n_subjects": n_subjects,
        "resolution_mm": resolution_mm,
        "age_range": list(age_range),
        "seed": seed,
        "contrasts": list(contrasts),
        "lesions": bool(lesions),
        "phantom": {k: v for k, v in phantom.items() if k not in reserved},
    }
    digest = stable_hash(__version__, parameters)
    root = Path(out_dir).expanduser().resolve()
    if _prepare_folder(root, digest):
        return root
    root.mkdir(parents=True, exist_ok=True)
    write_json(root / MARKER, {"generator": GENERATOR, "hash": digest, "complete": False})

    t0 = time.perf_counter()
    args = (seed, age_range, resolution_mm, contrasts, bool(lesions), phantom_params, str(root))
    rows = []
    with _progress(progress) as bar:
        task = bar.add_task(f"simulate {res_label(resolution_mm)} mm", total=n_subjects)
        if n_jobs == 1 or n_subjects == 1:
            for i in range(1, n_subjects + 1):
                rows.append(_subject(i, *args))
                bar.advance(task)
        else:
            import multiprocessing

            with ProcessPoolExecutor(
                max_workers=min(n_jobs, n_subjects),
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_install,
                initargs=(template_anatomy(resolution_mm),),
            ) as pool:
                futures = [pool.submit(_subject, i, *args) for i in range(1, n_subjects + 1)]
                for future in as_completed(futures):
                    rows.append(future.result())
                    bar.advance(task)
    seconds = time.perf_counter() - t0

    truth = pd.DataFrame(rows).sort_values("participant_id").reset_index(drop=True)
    _write_tables(root, truth, parameters, digest, seconds)
    write_json(root / MARKER, {"generator": GENERATOR, "hash": digest, "complete": True})
    return root


def _write_tables(root: Path, truth: pd.DataFrame, parameters: dict, digest: str, seconds: float):
    participants = truth[["participant_id", "age", "sex"]].copy()
    participants["age"] = participants["age"].map(lambda a: f"{a:.2f}")
    write_tsv(root / "participants.tsv", participants, dictionary=False)
    write_json(
        root / "participants.json",
        {
            "age": {"Description": "age of the simulated subject", "Units": "year"},
            "sex": {
                "Description": "sex drawn at random; it has no effect on the phantom",
                "Levels": {"F": "female", "M": "male"},
            },
        },
    )
    generated_by = {
        "Name": GENERATOR,
        "Version": __version__,
        "Description": "3D brain phantoms from the MNI152 2009a template with known age effects "
        "(ventricle enlargement, cortical thinning, white-matter lesions); METHODS §11",
        "Seed": parameters["seed"],
        "Parameters": parameters,
        "ParametersHash": digest,
        "Seconds": round(seconds, 2),
    }
    write_json(
        root / "dataset_description.json",
        {
            "Name": f"brainage synthetic cohort (seed {parameters['seed']})",
            "BIDSVersion": "1.9.0",
            "DatasetType": "raw",
            "License": "CC0",
            "GeneratedBy": [generated_by],
        },
    )
    truth_root = root / "derivatives" / "truth"
    write_tsv(truth_root / "truth.tsv", truth, dictionary=False)
    write_json(truth_root / "truth.json", _TRUTH_COLUMNS)
    rates = parameters["phantom"].get("regional_atrophy")
    if rates:
        _write_region_table(truth_root, rates, parameters["resolution_mm"])
    write_json(
        truth_root / "dataset_description.json",
        {
            "Name": "ground truth of the brainage synthetic cohort",
            "BIDSVersion": "1.9.0",
            "DatasetType": "derivative",
            "GeneratedBy": [generated_by],
            "SourceDatasets": [{"URL": "../.."}],
        },
    )


def _write_region_table(truth_root: Path, rates: dict, resolution_mm: float) -> None:
    """``regions.tsv``: every region of the design atlas, its atrophy rate and group."""
    from brainage.atlas import load_atlas
    from brainage.simulate.effects import REGION_ATLAS, REGIONAL_ATROPHY

    atlas = load_atlas(REGION_ATLAS, template_grid(resolution_mm))
    groups = {}
    for group, (_rate, patterns) in REGIONAL_ATROPHY.items():
        for name in rates:
            if any(p in name for p in patterns):
                groups.setdefault(name, group)
    rows = [
        {
            "atlas": REGION_ATLAS,
            "label": label,
            "region": name,
            "atrophy_rate": float(rates.get(name, 0.0)),
            "group": groups.get(name, "age-invariant" if name not in rates else "custom"),
        }
        for label, name in sorted(atlas.names.items())
    ]
    write_tsv(truth_root / "regions.tsv", pd.DataFrame(rows), dictionary=False)
    write_json(
        truth_root / "regions.json",
        {
            "atlas": {"Description": "atlas of the region-truth design (brainage registry name)"},
            "label": {"Description": "label value of the region in that atlas"},
            "region": {"Description": "region name"},
            "atrophy_rate": {
                "Description": "fraction of the region's grey matter turned into CSF by age 85, "
                "linear from age 20, before each subject's own rate factor (0: age-invariant)"
            },
            "group": {"Description": "group of REGIONAL_ATROPHY the region belongs to"},
        },
    )


_TRUTH_COLUMNS = {
    "age": {"Description": "age", "Units": "year"},
    "phantom_seed": {"Description": "seed of make_phantom that remakes this subject"},
    "ventricle_volume_ml": {"Description": "lateral-ventricle volume", "Units": "mL"},
    "ventricle_growth_mm": {"Description": "growth of the ventricles at this age", "Units": "mm"},
    "cortical_thinning_mm": {"Description": "depth of cortex turned into CSF", "Units": "mm"},
    "cortical_thickness_mm": {
        "Description": "thickness proxy: GM volume in the cortex mask / outer surface area",
        "Units": "mm",
    },
    "cortex_T1w_mean": {"Description": "noise-free mean T1w intensity in the cortex mask"},
    "cortex_FLAIR_mean": {"Description": "noise-free mean FLAIR intensity in the cortex mask"},
    "lesion_count": {"Description": "number of white-matter lesions"},
    "lesion_voxels": {"Description": "voxels in the lesions mask"},
    "lesion_volume_ml": {"Description": "sum of lesion partial volumes", "Units": "mL"},
    "ventricles_voxels": {"Description": "voxels in the ventricles mask (enlargement zone)"},
    "cortex_voxels": {"Description": "voxels in the cortex mask (thinning band)"},
    "regions_voxels": {"Description": "voxels in the regions mask (regional atrophy)"},
    "ageeffect_voxels": {"Description": "voxels in the ageeffect mask (union)"},
    "masks": {
        "Description": "derivatives/truth/sub-*/anat/*_desc-<mask>_mask.nii.gz, on the "
        "template grid (same affine as the images); a voxel is in a mask when >= 5 % of its "
        "tissue changes",
        "Levels": {name: name for name in MASK_NAMES},
    },
    "change": {
        "Description": "derivatives/truth/sub-*/anat/*_desc-change_map.nii.gz: fraction of each "
        "voxel's tissue that age changes over the cohort's age range (all effects; lesions: the "
        "subject's lesion fraction); its mean over an atlas region is the region's true effect"
    },
}
