"""Further input channels of a scan (FLAIR, T2w, PDw) brought onto its T1w's template grid.

A scan's T1w is skull-stripped and registered to the template (:mod:`brainage.preprocess.pipeline`);
every further image of that scan (``preprocess.modalities``, e.g. ``[T1w, FLAIR]`` for the
white-matter-lesion analysis of paper 003) follows it, as fMRIPrep and FreeSurfer treat a FLAIR:

1. rigid registration of the image to the T1w in native space (ANTs ``Rigid``, mutual
   information, fitted inside the T1w brain mask; identity with ``register: none``, where both
   images are already in MNI space);
2. N4 bias-field correction inside the T1w brain mask brought into the image's space;
3. resampling onto the template grid through the T1w's transform composed with the rigid one
   (one interpolation);
4. the T1w's template-space brain mask and the same intensity scaling.

Outputs (beside the T1w's, :meth:`brainage.io.layout.RunLayout.preproc_modality`)::

    OUT/sub-<id>/anat/
        sub-<id>_space-MNI152NLin2009aSym_res-<res>_desc-preproc_FLAIR.nii.gz   model channel
        sub-<id>_from-FLAIR_to-T1w_mode-image_xfm.mat                           rigid transform
        sub-<id>_space-MNI152NLin2009aSym_res-<res>_desc-preproc_FLAIR.json     sidecar, last
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.errors import InputError
from brainage.io.atomic import atomic_path, write_json
from brainage.io.layout import RunLayout, res_label
from brainage.io.nifti import load_volume, save_nifti
from brainage.preprocess import steps
from brainage.space import TEMPLATE_SPACE, Grid
from brainage.utils import file_hash


def check_image(participant_id: str, modality: str, image_path) -> Path:
    """Return the path of a scan's further image, or raise why it cannot be used.

    Raises
    ------
    InputError
        The scan has no such image (``None`` or ``""``), or the file does not exist.
    """
    pid = str(participant_id)
    if image_path is None or str(image_path).strip() == "":
        raise InputError(
            f"no {modality} image for this scan, but preprocess.modalities asks for one",
            f"add {pid}/anat/{pid}_{modality}.nii.gz (or a '{modality.lower()}' column to the "
            f"table), exclude the subject, or drop {modality} from preprocess.modalities",
            pid,
        )
    path = Path(image_path)
    if not path.is_file():
        raise InputError(f"{modality} image file does not exist", "check the path", pid, path)
    return path


def register_to_t1w(
    image: nib.Nifti1Image,
    t1w: nib.Nifti1Image,
    t1w_mask: np.ndarray,
    workdir: str | Path,
    seed: int = 0,
) -> tuple[str, str]:
    """Rigidly register an image of another contrast onto its T1w, in native space (ANTs).

    Parameters
    ----------
    image : nibabel.Nifti1Image
        The moving image (e.g. a FLAIR with skull), shape (i, j, k), scanner space.
    t1w : nibabel.Nifti1Image
        The fixed image: the same scan's (N4-corrected) T1w, scanner space.
    t1w_mask : ndarray of bool
        The T1w's brain mask on the T1w's grid: the metric is evaluated inside it.
    workdir : str or Path
        Fresh folder for ANTs' files.
    seed : int
        Seed of the metric sampling (:func:`brainage.preprocess.steps.ants_seed`).

    Returns
    -------
    forward, inverse : str
        ``.mat`` files: ``forward`` pulls ``image`` onto the T1w grid (``mode-image`` sense:
        T1w points → image points), ``inverse`` the other way.

    Notes
    -----
    ANTs ``Rigid`` (6 parameters, Mattes mutual information, centres of mass aligned first):
    mutual information because the contrasts differ (Avants et al. 2011).
    """
    import ants

    fixed = steps.to_ants(t1w)
    moving = steps.to_ants(image)
    mask = steps.to_ants(nib.Nifti1Image(t1w_mask.astype(np.float32), t1w.affine))
    prefix = str(Path(workdir) / "tot1w_")
    with steps.ants_seed(seed):
        out = ants.registration(
            fixed, moving, type_of_transform="Rigid", mask=mask, outprefix=prefix
        )
    forward = str(out["fwdtransforms"][0])
    inverse = str(Path(workdir) / "tot1w_inverse.mat")
    ants.write_transform(ants.read_transform(forward).invert(), inverse)
    return forward, inverse


def preprocess_modality(
    participant_id: str,
    modality: str,
    image_path: str | Path | None,
    t1w: nib.Nifti1Image,
    t1w_mask: np.ndarray,
    t1w_forward: str,
    grid: Grid,
    template_mask: np.ndarray,
    out_dir: str | Path,
    config,
    workdir: str | Path,
    source_uri: str | None = None,
) -> dict:
    """Bring one further image of a scan onto its T1w's template grid (module docstring).

    Parameters
    ----------
    participant_id : str
        Scan key, for file names and messages.
    modality : str
        BIDS suffix (``"FLAIR"``, ``"T2w"``, ``"PDw"``).
    image_path : str or Path or None
        The image, scanner space (MNI space with ``config.register == "none"``); None or ``""``
        when the cohort has none for this scan.
    t1w : nibabel.Nifti1Image
        The scan's native T1w as registered (N4-corrected when ``config.bias_correct``).
    t1w_mask : ndarray of bool
        Its native brain mask (deepbet, or the voxels > 0 without skull stripping).
    t1w_forward : str
        The T1w's native → template transform (``mode-image``).
    grid : Grid
        Template grid of the outputs.
    template_mask : ndarray of bool, shape ``grid.shape``
        The T1w's brain mask on the grid: the image is scaled inside it (and 0 outside it when
        ``config.skull_strip``).
    out_dir : str or Path
        Run folder ``OUT``.
    config : PreprocessConfig
    workdir : str or Path
        Temporary folder of the subject.
    source_uri : str, optional
        BIDS URI of the input for the sidecar's ``Sources``.

    Returns
    -------
    dict
        ``preproc`` and ``xfm`` (paths), ``input_hash`` (SHA-256 of the input file).

    Raises
    ------
    InputError
        The scan has no such image, it is unreadable, or a step fails; the message names the
        subject, the file and what to do.
    """
    from brainage.preprocess.pipeline import PREPROC_VERSION, _bids_sidecar, _step, _versions
    from brainage.utils import StageTimer

    pid = str(participant_id)
    path = check_image(pid, modality, image_path)
    files = RunLayout(Path(out_dir)).preproc_modality(pid, config.resolution_mm, modality)
    timer = StageTimer()
    check = f"check the {modality} image, or exclude the subject"
    with _step(f"reading the {modality} image", pid, path, timer, "check the file"):
        img = load_volume(path, pid)
    with _step(f"{modality} to T1w registration", pid, path, timer, check):
        if config.register == "none":
            to_t1w = steps.write_identity_transform(Path(workdir) / f"{modality}_identity.mat")
            from_t1w = to_t1w
        else:
            to_t1w, from_t1w = register_to_t1w(img, t1w, t1w_mask, workdir, config.seed)
    if config.bias_correct:
        with _step(f"{modality} N4 bias-field correction", pid, path, timer, check):
            mask_t1w = nib.Nifti1Image(t1w_mask.astype(np.float32), t1w.affine)
            mask_here = np.asarray(steps.apply_transform(mask_t1w, from_t1w, img).dataobj) >= 0.5
            if not mask_here.any():
                raise InputError(
                    f"the T1w brain mask does not overlap the {modality} image",
                    "check that both images are of the same head and have correct headers",
                )
            img = steps.n4_correct(img, mask_here, config.n4_shrink_factor)
    with _step(f"{modality} resampling and scaling", pid, path, timer, check):
        moved = steps.apply_transform(img, [t1w_forward, to_t1w], grid, "linear")
        out = steps.scale_intensity(
            np.asarray(moved.dataobj), template_mask, config.intensity,
            zero_outside=config.skull_strip,
        )  # fmt: skip
    with _step(f"writing the {modality} outputs", pid, path, timer, "check the output folder"):
        files["preproc"].parent.mkdir(parents=True, exist_ok=True)
        meta = {"space": TEMPLATE_SPACE, "res": res_label(config.resolution_mm)}
        save_nifti(out, grid.affine, files["preproc"], metadata=meta)
        with atomic_path(files["xfm"]) as tmp:
            Path(tmp).write_bytes(Path(to_t1w).read_bytes())
    input_hash = file_hash(path)
    how = "identity (already in MNI space)" if config.register == "none" else "rigid (ANTs)"
    write_json(files["sidecar"], {
        "Description": f"{modality} image preprocessed by brainage: {how} registration to the "
        f"scan's T1w, " + ("N4 bias-field corrected, " if config.bias_correct else "")
        + f"resampled through the T1w's transform, masked and scaled ({config.intensity}) in "
        "the T1w's brain mask.",
        **_bids_sidecar(config, source_uri or path.resolve().as_uri()),
        "SkullStripped": bool(config.skull_strip),
        "participant_id": pid,
        "modality": modality,
        "input_hash": input_hash,
        "preproc_version": PREPROC_VERSION,
        "config": config.to_dict(),
        "seconds": {k: round(v, 3) for k, v in timer.seconds.items()},
        "versions": _versions(),
        "files": {k: v.name for k, v in files.items() if k != "sidecar"},
    })  # fmt: skip
    return {"preproc": str(files["preproc"]), "xfm": str(files["xfm"]), "input_hash": input_hash}


def preprocess_extra(pid, extra, t1w, t1w_mask, t1w_forward, grid, template_mask, out_dir,
                     config, workdir) -> dict:  # fmt: skip
    """Run :func:`preprocess_modality` for each ``modality → (path, source_uri)`` of ``extra``.

    Returns
    -------
    dict
        ``preproc_<modality>`` and ``xfm_<modality>`` paths (empty without ``extra``).
    """
    out = {}
    for modality, (image, uri) in (extra or {}).items():
        done = preprocess_modality(pid, modality, image, t1w, t1w_mask, t1w_forward, grid,
                                   template_mask, out_dir, config, workdir, uri)  # fmt: skip
        out[f"preproc_{modality}"] = done["preproc"]
        out[f"xfm_{modality}"] = done["xfm"]
    return out
