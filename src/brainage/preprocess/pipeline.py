"""Preprocess one subject or a whole cohort into ``OUT/sub-<id>/anat`` (METHODS §2).

Per subject: load and validate the T1w → deepbet brain mask in native space → N4 bias-field
correction inside the mask → registration of the brain to the skull-stripped MNI152NLin2009aSym
template (ANTs affine or SyN) → image and mask resampled onto the template grid
(:func:`brainage.space.template_grid`) → intensity scaling → files, QC picture and sidecar.

Output layout (BIDS derivatives, as fMRIPrep; ``<res>`` is the resolution in mm, ``2``, ``1p5``)::

    OUT/sub-<id>/anat/
        sub-<id>_space-MNI152NLin2009aSym_res-<res>_desc-preproc_T1w.nii.gz   model input
        sub-<id>_space-MNI152NLin2009aSym_res-<res>_desc-brain_mask.nii.gz    uint8 brain mask
        sub-<id>_space-MNI152NLin2009aSym_res-<res>_desc-brain_mask.json      mask sidecar
        sub-<id>_from-T1w_to-MNI152NLin2009aSym_mode-image_xfm.mat            native → template
        sub-<id>_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.mat            template → native
        sub-<id>_space-MNI152NLin2009aSym_res-<res>_desc-preproc_T1w.json     sidecar, written last
    OUT/sub-<id>/figures/sub-<id>_desc-qc_T1w.png                             QC picture
    OUT/qc.tsv

(``.h5`` composite transforms instead of ``.mat`` for ``register="syn"``.) The sidecar holds the
configuration, the SHA-256 of the input file and the registration quality. Every file is written
atomically. These functions always compute; skipping finished subjects is the job of the stage
engine (:mod:`brainage.workflow`), whose record of a subject is keyed by the input's bytes, the
configuration and :data:`PREPROC_VERSION`.
"""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.errors import ConfigError, InputError
from brainage.io.atomic import atomic_path, write_json, write_tsv
from brainage.io.layout import RunLayout, res_label, scan_names, subject_label
from brainage.io.nifti import load_volume, save_nifti
from brainage.io.scans import modality_column
from brainage.preprocess import steps
from brainage.preprocess.config import PreprocessConfig
from brainage.preprocess.modalities import check_image as check_modality_image
from brainage.preprocess.qc import qc_figure, registration_quality
from brainage.space import TEMPLATE_SPACE, Grid, resample_to_grid, template_array, template_grid
from brainage.utils import StageTimer, file_hash

#: Bump when the preprocessing algorithm changes: finished subjects are then redone.
PREPROC_VERSION = "1"

#: Columns of :attr:`PreprocessResult.table` (one row per subject).
ROW_COLUMNS = (
    "participant_id",
    "preproc",
    "mask",
    "xfm",
    "inverse_xfm",
    "qc_png",
    "reg_quality",
    "seconds",
)


@dataclass
class PreprocessResult:
    """Outcome of :func:`preprocess_cohort`.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per preprocessed subject, in cohort order; columns :data:`ROW_COLUMNS`:
        ``participant_id`` (as in the cohort), absolute paths ``preproc``, ``mask``, ``xfm``,
        ``inverse_xfm``, ``qc_png``, ``reg_quality`` (Pearson r with the template),
        ``seconds`` (wall time of the subject's preprocessing).
    failures : list of InputError
        One per subject that could not be preprocessed, naming the subject, the file, what is
        wrong and what to do.
    """

    table: pd.DataFrame
    failures: list[InputError] = field(default_factory=list)


#: BIDS subject folder name of a participant id (see :func:`brainage.io.layout.subject_label`).
bids_subject = subject_label


def subject_files(out_dir: str | Path, participant_id: str, config: PreprocessConfig) -> dict:
    """Return the output paths of one subject (:meth:`brainage.io.layout.RunLayout.preproc`).

    Returns
    -------
    dict of str to Path
        Keys ``folder``, ``preproc``, ``mask``, ``xfm``, ``inverse_xfm``, ``qc_png``, ``sidecar``.
    """
    return RunLayout(Path(out_dir)).preproc(participant_id, config.resolution_mm, config.register)


def _steps_done(config: PreprocessConfig) -> list[str]:
    steps_done = ["skull-stripped (deepbet)"] if config.skull_strip else []
    steps_done += ["N4 bias-field corrected"] if config.bias_correct else []
    reg = {"none": "resampled (already in MNI space)", "rigid": "rigidly aligned",
           "affine": "affinely registered", "syn": "non-linearly registered (SyN)"}  # fmt: skip
    steps_done.append(f"{reg.get(config.register, config.register)} to {TEMPLATE_SPACE}")
    return steps_done


def _bids_sidecar(config: PreprocessConfig, source: str) -> dict:
    """BIDS-Derivatives keys of an image on the template grid."""
    res = config.resolution_mm
    return {
        "Sources": [source],
        "SpatialReference": TEMPLATE_SPACE,
        "Resolution": {res_label(res): f"{res:g} mm isotropic voxels on brainage's "
                       f"{TEMPLATE_SPACE} grid (brainage.space.template_grid)"},
    }  # fmt: skip


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("brainage", "antspyx", "deepbet", "torch", "nibabel", "numpy"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "n/a"
    return out


@contextlib.contextmanager
def _step(name: str, participant_id: str, path, timer: StageTimer, fix: str):
    """Time a step; turn any library error into a one-line :class:`InputError`."""
    try:
        with timer(name):
            yield
    except InputError as err:
        problem = " ".join(str(err.problem).split())  # one line, whatever the library said
        if err.participant_id is None or err.path is None or problem != err.problem:
            raise type(err)(
                problem, err.fix, err.participant_id or participant_id, err.path or path
            ) from err
        raise
    except (MemoryError, KeyboardInterrupt):
        raise
    except Exception as exc:
        detail = " ".join(str(exc).split())[:160] or "no message"
        raise InputError(
            f"{name} failed ({type(exc).__name__}: {detail})", fix, participant_id, path
        ) from exc


def _row(participant_id, files, reg_quality, seconds: dict) -> dict:
    return {
        "participant_id": participant_id,
        "preproc": str(files["preproc"]),
        "mask": str(files["mask"]),
        "xfm": str(files["xfm"]),
        "inverse_xfm": str(files["inverse_xfm"]),
        "qc_png": str(files["qc_png"]),
        "reg_quality": float("nan") if reg_quality is None else float(reg_quality),
        "seconds": float(seconds.get("total", float("nan"))),
    }


def native_brain_key(input_hash: str, config: PreprocessConfig) -> str:
    """Cache key of a subject's native-space brain: input bytes, the steps before registration.

    Skull stripping and N4 do not depend on the registration, intensity scaling or grid, so
    conditions of a study that differ only there share them (:func:`preprocess_subject`'s
    ``native_cache``). The key holds the SHA-256 of the input, ``skull_strip``,
    ``bias_correct``, ``n4_shrink_factor``, :data:`PREPROC_VERSION` and the versions of deepbet
    and ANTsPy.
    """
    from brainage.utils import stable_hash

    versions = _versions()
    return stable_hash(input_hash, config.skull_strip, config.bias_correct,
                       config.n4_shrink_factor, PREPROC_VERSION, versions["deepbet"],
                       versions["antspyx"], length=24)  # fmt: skip


def _native_brain(img, input_hash, pid, t1w_path, config, timer, check, cache):
    """Skull-stripped (mask) and N4-corrected image in native space, cached by content.

    With ``cache`` the result is written there (atomically, the sidecar last) and always read
    back, so a cached and a fresh computation give the same bits downstream.
    """
    if cache is None or not (config.skull_strip or config.bias_correct):
        return _compute_native_brain(img, pid, t1w_path, config, timer, check)
    key = native_brain_key(input_hash, config)
    folder = Path(cache)
    image_path = folder / f"{key}_desc-brain_T1w.nii.gz"
    mask_path = folder / f"{key}_desc-brain_mask.nii.gz"
    meta_path = folder / f"{key}_desc-brain_T1w.json"
    if not (meta_path.exists() and image_path.exists() and mask_path.exists()):
        brain, mask, volume = _compute_native_brain(img, pid, t1w_path, config, timer, check)
        save_nifti(np.asarray(brain.dataobj, np.float32), brain.affine, image_path, space="scanner")
        save_nifti(mask.astype(np.uint8), brain.affine, mask_path, np.uint8, space="scanner")
        write_json(meta_path, {"participant_id": pid, "input_hash": input_hash,
                               "brain_volume_cm3": float(volume), "key": key})  # fmt: skip
    import json

    with _step("reading the native brain", pid, image_path, timer, "delete the cache file"):
        cached = nib.load(str(image_path))
        brain = nib.Nifti1Image(np.asarray(cached.dataobj, np.float32), cached.affine)
        mask = np.asarray(nib.load(str(mask_path)).dataobj) > 0
        volume = json.loads(meta_path.read_text())["brain_volume_cm3"]
    return brain, mask, volume


def _compute_native_brain(img, pid, t1w_path, config, timer, check):
    """Return the (N4-corrected) image, its brain mask and the brain volume in cm³."""
    if config.skull_strip:
        with _step("skull stripping (deepbet)", pid, t1w_path, timer, check):
            mask = steps.deepbet_mask(img)
            volume = mask.sum() * float(np.prod(img.header.get_zooms()[:3])) / 1000.0
            low, high = steps.BRAIN_VOLUME_CM3
            if not low <= volume <= high:
                raise InputError(
                    f"skull stripping found an implausible brain volume of {volume:.0f} cm³ "
                    f"(expected {low:.0f}-{high:.0f})",
                    "check that the image is a T1w head scan with a correct header",
                )
    else:
        mask = np.asarray(img.dataobj) > 0
        volume = mask.sum() * float(np.prod(img.header.get_zooms()[:3])) / 1000.0
    if config.bias_correct:
        with _step("N4 bias-field correction", pid, t1w_path, timer, check):
            img = steps.n4_correct(img, mask, config.n4_shrink_factor)
    return img, mask, volume


def preprocess_subject(
    participant_id: str,
    t1w_path: str | Path,
    out_dir: str | Path,
    config: PreprocessConfig | None = None,
    native_cache: str | Path | None = None,
    source_uri: str | None = None,
    extra: dict | None = None,
) -> dict:
    """Preprocess one T1w scan into template space (see the module docstring).

    Parameters
    ----------
    participant_id : str
        Subject id as in the cohort table (``sub-`` is added for the folder name if missing).
    t1w_path : str or Path
        3D T1w NIfTI in native (scanner) space, with skull unless ``config.skull_strip`` is
        False; in MNI space when ``config.register == "none"``.
    out_dir : str or Path
        Run output folder ``OUT``; files go to ``OUT/sub-<id>/anat`` and ``…/figures``.
    config : PreprocessConfig, optional
        Defaults to ``PreprocessConfig()`` (2 mm, deepbet, N4, affine, min-max).
    native_cache : str or Path, optional
        Folder of native-space brains (skull-stripped, N4-corrected) keyed by
        :func:`native_brain_key`: reused when present, written when not. Preprocessings that
        differ only in registration, intensity scaling or grid then strip and correct each
        scan once.
    source_uri : str, optional
        BIDS URI of the input (``bids:raw:sub-01/anat/sub-01_T1w.nii.gz``,
        :func:`brainage.io.derivatives.bids_uri`) for the sidecars' ``Sources``; default its
        ``file://`` URI.
    extra : dict, optional
        Further images of the scan, modality → ``(path, source_uri or None)`` (``"FLAIR"``,
        ``"T2w"``), brought onto the same grid through the T1w
        (:func:`brainage.preprocess.modalities.preprocess_modality`).

    Returns
    -------
    dict
        Keys :data:`ROW_COLUMNS`, and ``preproc_<modality>`` / ``xfm_<modality>`` per ``extra``
        image. ``preproc``: float32 image on
        ``template_grid(config.resolution_mm)`` (voxel → MNI152NLin2009aSym mm), scaled as
        ``config.intensity`` says; ``mask``: uint8 brain mask on the same grid; ``xfm`` /
        ``inverse_xfm``: ANTs transforms native → template / template → native (use
        :func:`brainage.preprocess.warp_to_template` / :func:`~brainage.preprocess.warp_to_native`);
        ``reg_quality``: :func:`~brainage.preprocess.qc.registration_quality`; ``seconds``: wall
        time of the computation.

    Raises
    ------
    InputError
        The image is missing, unreadable, not 3D or empty, or a step fails (skull stripping,
        N4, registration, scaling); the one-line message names the subject, the file, the step
        and what to do. The original library error is chained as ``__cause__``.
    ConfigError
        ``config`` is not a :class:`PreprocessConfig`.

    Notes
    -----
    Reproducibility: the registration is seeded (``config.seed``), and bit-for-bit reproducible
    when ITK runs one thread, as in the workers of :func:`preprocess_cohort`. Called directly in
    a process whose ITK uses several threads (multi-threaded metric sums), transforms of two runs
    differ at the 1e-3 mm level; call :func:`brainage.parallel.limit_threads` first (before any
    ITK use in the process) to avoid that.
    """
    config = PreprocessConfig() if config is None else config
    if not isinstance(config, PreprocessConfig):
        raise ConfigError(f"'config' must be a PreprocessConfig; got {type(config).__name__}")
    t0 = time.perf_counter()
    pid = str(participant_id)
    t1w_path = Path(t1w_path)
    files = subject_files(out_dir, pid, config)
    if not t1w_path.is_file():
        raise InputError(
            "image file does not exist",
            "check the path in the cohort table or the BIDS folder",
            pid,
            t1w_path,
        )
    input_hash = file_hash(t1w_path)
    for modality, (image, _) in (extra or {}).items():  # a missing one fails before any work
        check_modality_image(pid, modality, image)

    timer = StageTimer()
    with _step("reading the image", pid, t1w_path, timer, "check the file"):
        img = load_volume(t1w_path, pid)
    grid = template_grid(config.resolution_mm)
    check = "check the image and its QC picture, or exclude the subject"
    with tempfile.TemporaryDirectory(prefix="brainage-preproc-") as work:
        img, mask, volume = _native_brain(
            img, input_hash, pid, t1w_path, config, timer, check, native_cache
        )
        with _step("registration", pid, t1w_path, timer, check):
            if config.register == "none":
                forward = inverse = steps.write_identity_transform(Path(work) / "identity.mat")
            else:
                data = np.asarray(img.dataobj, dtype=np.float32) * mask
                brain = nib.Nifti1Image(data, img.affine)
                forward, inverse = steps.register_to_template(
                    brain, config.register, work, config.seed
                )
            moved = steps.apply_transform(img, forward, grid, "linear")
            mask_img = nib.Nifti1Image(mask.astype(np.float32), img.affine)
            moved_mask = steps.apply_transform(mask_img, forward, grid, "linear")
            out_mask = np.asarray(moved_mask.dataobj) >= 0.5
            if not out_mask.any():
                hint = (
                    "the image does not overlap the MNI brain box; is it really in MNI space? "
                    "Use register='affine' for native-space scans"
                    if config.register == "none"
                    else check
                )
                raise InputError("the brain mask is empty in template space", hint)
        with _step("intensity scaling", pid, t1w_path, timer, check):
            out = steps.scale_intensity(
                np.asarray(moved.dataobj),
                out_mask,
                config.intensity,
                zero_outside=config.skull_strip,
            )
        with _step("writing outputs", pid, t1w_path, timer, "check the output folder"):
            files["folder"].mkdir(parents=True, exist_ok=True)
            meta = {"space": TEMPLATE_SPACE, "res": res_label(config.resolution_mm)}
            save_nifti(out, grid.affine, files["preproc"], metadata=meta)
            save_nifti(out_mask.astype(np.uint8), grid.affine, files["mask"], np.uint8, meta)
            for key, src in (("xfm", forward), ("inverse_xfm", inverse)):
                with atomic_path(files[key]) as tmp:
                    shutil.copyfile(src, tmp)
            tpl_mask = template_array("mask", config.resolution_mm)
            reg_quality = registration_quality(
                out, template_array("t1w", config.resolution_mm), tpl_mask
            )
            qc_figure(
                out,
                tpl_mask,
                files["qc_png"],
                title=f"{pid}  {config.register} registration  r = {reg_quality:.3f}",
            )
        from brainage.preprocess.modalities import preprocess_extra

        channels = preprocess_extra(pid, extra, img, mask, forward, grid, out_mask, out_dir,
                                    config, work)  # fmt: skip
    seconds = {k: round(v, 3) for k, v in timer.seconds.items()}
    seconds["total"] = round(time.perf_counter() - t0, 3)
    source = source_uri or t1w_path.resolve().as_uri()
    bids = _bids_sidecar(config, source)
    sidecar = {
        "Description": "T1w scan preprocessed by brainage: "
        + ", ".join(_steps_done(config))
        + f"; intensities scaled ({config.intensity}).",
        **bids,
        "SkullStripped": bool(config.skull_strip),
        "participant_id": pid,
        "input_hash": input_hash,
        "preproc_version": PREPROC_VERSION,
        "config": config.to_dict(),
        "reg_quality": reg_quality,
        "brain_volume_cm3": round(float(volume), 1),
        "seconds": seconds,
        "versions": _versions(),
        "files": {
            k: v.name for k, v in files.items() if k not in ("folder", "sidecar", "mask_sidecar")
        },
    }
    mask_sidecar = {"Description": "Brain mask (deepbet, then resampled to the template grid).",
                    "Type": "Brain", **bids}  # fmt: skip
    write_json(files["mask_sidecar"], mask_sidecar)
    write_json(files["sidecar"], sidecar)
    return {**_row(pid, files, reg_quality, seconds), **channels}


def _subject_task(item: tuple, out_dir: str, config: PreprocessConfig) -> dict:
    """Picklable task for the executors: ``item`` is ``(participant_id, t1w_path, extra)``."""
    participant_id, t1w, extra = item
    return preprocess_subject(participant_id, t1w, out_dir, config, extra=extra)


def _as_input_error(item: tuple[str, str], exc: BaseException) -> InputError:
    if isinstance(exc, InputError):
        return exc
    pid, t1w = item[:2]
    detail = " ".join(str(exc).split())[:160] or "no message"
    return InputError(
        f"preprocessing failed ({type(exc).__name__}: {detail})",
        "rerun this subject with backend='serial' for the full traceback, or exclude it",
        pid,
        t1w,
    )


def preprocess_cohort(
    cohort,
    out_dir: str | Path,
    config: PreprocessConfig | None = None,
    n_jobs: int = 2,
    backend: str = "processes",
    strict: bool = False,
    progress: bool = True,
    dask_address=None,
) -> PreprocessResult:
    """Preprocess every subject of a cohort, in parallel, skipping finished subjects.

    Parameters
    ----------
    cohort : Cohort or pandas.DataFrame
        Subjects; the table needs the columns ``participant_id`` and ``t1w`` (image path), and
        one column per further modality of ``config.modalities`` (``flair``, …).
    out_dir : str or Path
        Run output folder ``OUT``.
    config : PreprocessConfig, optional
        Defaults to ``PreprocessConfig()``.
    n_jobs : int
        Parallel workers (one thread each, see :func:`brainage.parallel.run_tasks`).
    backend : {"processes", "serial", "dask"}
        Executor; ``"serial"`` for debugging.
    strict : bool
        Raise the first failure instead of collecting failures.
    progress : bool
        Show a progress bar.
    dask_address : str or distributed.Client, optional
        Existing Dask cluster for ``backend="dask"``.

    Returns
    -------
    PreprocessResult
        ``table`` (one row per success, cohort order) and ``failures``. Also writes
        ``OUT/qc.tsv`` (``participant_id, reg_quality, qc_png, preproc, mask``; paths
        relative to ``OUT``) atomically.

    Raises
    ------
    InputError
        With ``strict=True``: the first subject that fails. Also when the table lacks the
        ``participant_id`` or ``t1w`` column.
    ConfigError
        Invalid ``config``, ``backend`` or ``n_jobs``.
    """
    config = PreprocessConfig() if config is None else config
    if not isinstance(config, PreprocessConfig):
        raise ConfigError(f"'config' must be a PreprocessConfig; got {type(config).__name__}")
    table = cohort.table if hasattr(cohort, "table") else cohort
    if not isinstance(table, pd.DataFrame):
        raise InputError(f"'cohort' must be a Cohort or a DataFrame; got {type(cohort).__name__}")
    missing = [c for c in ("participant_id", "t1w") if c not in table.columns]
    if missing:
        raise InputError(
            f"cohort table lacks column(s) {', '.join(missing)} (has {', '.join(table.columns)})",
            "give participant_id and t1w (image path) columns",
        )
    out_dir = Path(out_dir)
    failures: list[InputError] = []
    items, seen = [], {}
    for rec in table.to_dict("records"):
        pid, t1w = str(rec["participant_id"]), str(rec["t1w"])
        try:
            sub = scan_names(pid)[2]
            if sub in seen:
                raise InputError(
                    f"participant_id maps to the same folder {sub} as {seen[sub]!r}",
                    "make the ids unique after removing non-alphanumeric characters",
                    pid,
                    t1w,
                )
        except InputError as err:
            if strict:
                raise
            failures.append(err if err.path else InputError(err.problem, err.fix, pid, t1w))
            continue
        seen[sub] = pid
        extra = {}
        for m in config.extra_modalities:
            image = rec.get(modality_column(m))
            extra[m] = (image if isinstance(image, str) else "", None)
        items.append((pid, t1w, extra))

    from brainage.parallel import iter_tasks

    task = functools.partial(_subject_task, out_dir=str(out_dir), config=config)
    rows = {}
    items_all = items
    outcomes = iter_tasks(
        task,
        items,
        n_jobs=n_jobs,
        backend=backend,
        description="Preprocessing",
        progress=progress,
        dask_address=dask_address,
    )
    with contextlib.closing(outcomes):
        for item, outcome in outcomes:
            if isinstance(outcome, BaseException):
                err = _as_input_error(item, outcome)
                if strict:
                    raise err
                failures.append(err)
            else:
                rows[item[0]] = outcome
    order = [item[0] for item in items_all if item[0] in rows]
    result = pd.DataFrame([rows[pid] for pid in order], columns=list(ROW_COLUMNS))
    qc = result[["participant_id", "reg_quality", "qc_png", "preproc", "mask"]].copy()
    for col in ("qc_png", "preproc", "mask"):
        qc[col] = [_relative(p, out_dir) for p in qc[col]]
    write_tsv(RunLayout(out_dir).qc_table, qc)
    return PreprocessResult(result, failures)


def _relative(path: str, root: Path) -> str:
    try:
        return str(Path(path).resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def load_preprocessed(rows, grid: Grid | float | None = None) -> np.ndarray:
    """Stack preprocessed images into a model input array.

    Parameters
    ----------
    rows : pandas.DataFrame, list of dict, or list of paths
        ``PreprocessResult.table`` (its ``preproc`` column), rows with a ``preproc`` key, or
        the image paths themselves.
    grid : Grid or float, optional
        Target template grid (or its resolution in mm). Images on another grid (e.g. 2 mm
        preprocessing, 3 mm training) are resampled by world coordinates with
        :func:`brainage.space.resample_to_grid` (linear interpolation: no overshoot outside the
        input's range, so min-max images stay in [0, 1]). ``None``: the grid of the first image;
        all must share it.

    Returns
    -------
    ndarray, shape (n_subjects, 1, i, j, k), float32
        ``i, j, k = grid.shape``; voxel → MNI152NLin2009aSym mm by ``grid.affine``.

    Raises
    ------
    InputError
        A file is missing or unreadable.
    SpaceMismatchError
        ``grid`` is None and the images do not share one grid.
    """
    if isinstance(rows, pd.DataFrame):
        paths = rows["preproc"].tolist()
    else:
        paths = [r["preproc"] if isinstance(r, dict) else r for r in rows]
    if isinstance(grid, (int, float)) and not isinstance(grid, bool):
        grid = template_grid(float(grid))
    fixed_grid = grid is None
    arrays = []
    for path in paths:
        img = load_volume(path)
        if grid is None:
            grid = Grid(tuple(img.shape), tuple(np.asarray(img.affine, float).ravel().tolist()))
        if fixed_grid:
            grid.check(img, name=str(path))  # raises SpaceMismatchError
        elif tuple(img.shape) != grid.shape or not np.allclose(img.affine, grid.affine, atol=1e-3):
            img = resample_to_grid(img, grid, interpolation="linear")
        arrays.append(np.asarray(img.dataobj, dtype=np.float32))
    if not arrays:
        shape = (0, 1) + (tuple(grid.shape) if grid is not None else (0, 0, 0))
        return np.zeros(shape, np.float32)
    return np.stack(arrays)[:, None]
