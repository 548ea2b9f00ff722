"""The preprocessing steps, one function each: skull stripping, N4, registration, scaling.

Images travel between steps as :class:`nibabel.Nifti1Image` (affine: voxel → world mm, RAS).
ANTs works in LPS; :func:`to_ants` and :func:`from_ants` convert, so an ANTs image and its NIfTI
twin put every voxel at the same world point. Heavy libraries (antspyx, deepbet, torch) are
imported inside the functions, never at import time.
"""

from __future__ import annotations

import contextlib
import functools
import threading
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.errors import InputError
from brainage.space import Grid, load_template

#: Resolution (mm) of the template the brain is registered to. The transform is in world mm,
#: so it is applied onto the output grid of any resolution; 2 mm keeps registration fast.
REGISTRATION_RESOLUTION_MM = 2.0

#: Bounds of a plausible skull-stripped brain volume, cm³ (neonate … large adult with margin).
BRAIN_VOLUME_CM3 = (150.0, 3000.0)

_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])
_BET = None
_BET_LOCK = threading.Lock()


# --------------------------------------------------------------------------- ANTs conversion
def to_ants(img: nib.Nifti1Image):
    """Convert a 3D NIfTI image to an ANTs image at the same world position.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Shape (i, j, k); affine voxel → RAS mm. The affine must not shear (ITK cannot store it).

    Returns
    -------
    ants.ANTsImage
        float32; ITK origin, spacing and direction from the affine converted to LPS.

    Raises
    ------
    InputError
        The affine shears or is singular.
    """
    import ants

    lps = _LPS @ np.asarray(img.affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    if np.any(spacing <= 0):
        raise InputError(f"image affine is singular (voxel sizes {spacing})", "fix the header")
    direction = lps[:3, :3] / spacing
    if np.abs(direction.T @ direction - np.eye(3)).max() > 1e-4:
        raise InputError(
            "image affine has shear, which ANTs cannot represent",
            "reslice the image to an oblique-free grid (e.g. nilearn.image.resample_img) first",
        )
    data = np.ascontiguousarray(np.asarray(img.dataobj, dtype=np.float32))
    return ants.from_numpy(
        data, origin=lps[:3, 3].tolist(), spacing=spacing.tolist(), direction=direction
    )


def from_ants(aimg) -> nib.Nifti1Image:
    """Convert an ANTs image to a NIfTI image (inverse of :func:`to_ants`).

    Returns
    -------
    nibabel.Nifti1Image
        float32 data, shape (i, j, k); affine voxel → RAS mm.
    """
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(aimg.direction) * np.asarray(aimg.spacing)[None, :]
    lps[:3, 3] = aimg.origin
    return nib.Nifti1Image(aimg.numpy().astype(np.float32), _LPS @ lps)


def grid_reference(grid: Grid):
    """Return an empty ANTs image on ``grid`` (the reference space to resample onto)."""
    return to_ants(nib.Nifti1Image(np.zeros(grid.shape, np.float32), grid.affine))


@contextlib.contextmanager
def ants_seed(seed: int):
    """Make ANTs registrations inside the block use a fixed random seed (restored after).

    ANTs treats ``--random-seed 0`` as "seed from the clock", so ``seed`` (any int >= 0) is
    passed as ``seed % (2**31 - 1) + 1``.
    """
    import ants.config

    old = ants.config._random_seed
    ants.config._random_seed = int(seed) % (2**31 - 1) + 1
    try:
        yield
    finally:
        ants.config._random_seed = old


# --------------------------------------------------------------------------- skull stripping
def _deepbet():
    """Return this process's deepbet model, loaded on first use (≈ 0.1 s, then reused)."""
    global _BET
    with _BET_LOCK:
        if _BET is None:
            from deepbet import BrainExtraction

            _BET = BrainExtraction()
        return _BET


def deepbet_mask(img: nib.Nifti1Image, threshold: float = 0.5) -> np.ndarray:
    """Brain mask of a T1w image by deepbet (Fisch et al. 2024, NeuroImage 2024; MIT licence).

    deepbet's two 3D U-Nets (bounding box at 128³, then the brain at 256³ inside the box) ship
    inside its wheel; nothing is downloaded. It runs on CUDA/MPS when available, else the CPU
    (≈ 3.5 s for a 2 mm IXI head on one core).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        T1w with skull, shape (i, j, k), any orientation (deepbet works in RAS internally).
    threshold : float
        Probability threshold of the brain class.

    Returns
    -------
    ndarray of bool, shape (i, j, k)
        Brain voxels on the grid of ``img`` (largest connected component, holes filled).
    """
    bet = _deepbet()
    _, mask_img, _ = bet.run(img, threshold=threshold)
    return np.asarray(mask_img.dataobj) > 0


# --------------------------------------------------------------------------- N4
def n4_correct(img: nib.Nifti1Image, mask: np.ndarray, shrink_factor: int = 4) -> nib.Nifti1Image:
    """N4 bias-field correction (Tustison et al. 2010) with ANTs, fitted inside ``mask``.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Shape (i, j, k), positive intensities.
    mask : ndarray of bool, shape (i, j, k)
        Voxels used to fit the field (the brain).
    shrink_factor : int
        Down-sampling while fitting; the field is applied at full resolution.

    Returns
    -------
    nibabel.Nifti1Image
        Corrected image on the grid of ``img``.
    """
    import ants

    data = np.asarray(img.dataobj, dtype=np.float32)
    low = float(data[mask].min()) if mask.any() else 0.0
    # N4 works on log intensities: shift to strictly positive values inside the mask.
    shifted = nib.Nifti1Image(data - low + 1.0 if low <= 0 else data, img.affine)
    aimg = to_ants(shifted)
    amask = to_ants(nib.Nifti1Image(mask.astype(np.float32), img.affine))
    out = ants.n4_bias_field_correction(aimg, mask=amask, shrink_factor=int(shrink_factor))
    return from_ants(out)


# --------------------------------------------------------------------------- registration
@functools.lru_cache(maxsize=2)
def _template_brain(resolution_mm: float):
    tpl = load_template(resolution_mm)
    data = tpl["t1w"].get_fdata(dtype=np.float32) * (tpl["mask"].get_fdata(dtype=np.float32) > 0)
    return nib.Nifti1Image(data.astype(np.float32), tpl["t1w"].affine)


def register_to_template(
    brain: nib.Nifti1Image, kind: str, workdir: str | Path, seed: int = 0
) -> tuple[str, str]:
    """Register a skull-stripped brain to the skull-stripped MNI152NLin2009aSym template (ANTs).

    The moving image is first centred on the template by the centres of mass; then ANTs
    ``Affine`` (mutual information, 32 bins, 20 % regular random sampling, shrink 6-4-2-1,
    smoothing 3-2-1-0 voxels; Avants et al. 2011), ``Rigid`` (the same, 6 parameters) or
    ``SyN`` (affine + symmetric diffeomorphic normalisation) is run against the template at
    :data:`REGISTRATION_RESOLUTION_MM`.

    Parameters
    ----------
    brain : nibabel.Nifti1Image
        Native-space brain, 0 outside the brain.
    kind : {"affine", "rigid", "syn"}
    workdir : str or Path
        Folder for ANTs' output files (use a fresh temporary folder: ANTs globs it).
    seed : int
        Random seed of the metric sampling.

    Returns
    -------
    forward, inverse : str
        Transform files. ``forward`` resamples a native image into template space
        (``ants.apply_transforms(fixed=template, moving=native, transformlist=[forward])``);
        ``inverse`` the other way. For ``"affine"`` and ``"rigid"`` both are ``.mat`` (the
        inverse written explicitly, so no ``whichtoinvert`` is needed), for ``"syn"`` composite
        ``.h5`` files.
    """
    import ants

    fixed = to_ants(_template_brain(REGISTRATION_RESOLUTION_MM))
    moving = to_ants(brain)
    prefix = str(Path(workdir) / "reg_")
    with ants_seed(seed):
        if kind in ("affine", "rigid"):
            out = ants.registration(
                fixed, moving, type_of_transform=kind.capitalize(), outprefix=prefix
            )
            forward = out["fwdtransforms"][0]
            inverse = str(Path(workdir) / "inverse.mat")
            ants.write_transform(ants.read_transform(forward).invert(), inverse)
        elif kind == "syn":
            out = ants.registration(
                fixed,
                moving,
                type_of_transform="SyN",
                outprefix=prefix,
                write_composite_transform=True,
            )
            forward, inverse = out["fwdtransforms"], out["invtransforms"]
            forward = forward[0] if isinstance(forward, (list, tuple)) else forward
            inverse = inverse[0] if isinstance(inverse, (list, tuple)) else inverse
        else:
            raise ValueError(f"'kind' must be 'affine', 'rigid' or 'syn'; got {kind!r}")
    return str(forward), str(inverse)


def write_identity_transform(path: str | Path) -> str:
    """Write an identity affine ``.mat`` (ANTs/ITK) to ``path`` and return it."""
    import ants

    tx = ants.create_ants_transform(transform_type="AffineTransform", dimension=3)
    ants.write_transform(tx, str(path))
    return str(path)


def apply_transform(
    img: nib.Nifti1Image, transform: str | Path, reference, interpolation: str = "linear"
) -> nib.Nifti1Image:
    """Resample ``img`` onto ``reference`` through an ANTs transform file.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        Image in the transform's moving space.
    transform : str or Path, or sequence of them
        ``.mat`` or composite ``.h5`` (in ANTs' "mode-image" sense: maps reference points to
        moving points, i.e. pulls ``img`` into the reference space). A sequence is composed as
        ANTs does: the last is applied first to the image (``[t1w_to_mni, flair_to_t1w]``
        pulls a FLAIR through its T1w into template space).
    reference : Grid or nibabel.Nifti1Image
        Output grid (template :class:`~brainage.space.Grid`, or an image whose grid to use).
    interpolation : {"linear", "nearestNeighbor", "bSpline", "genericLabel"}
        ANTs interpolator; masks: linear then threshold, labels: ``"genericLabel"``.

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the reference grid; 0 outside the field of view of ``img``.
    """
    import ants

    ref = grid_reference(reference) if isinstance(reference, Grid) else to_ants(reference)
    transforms = transform if isinstance(transform, (list, tuple)) else [transform]
    out = ants.apply_transforms(
        fixed=ref,
        moving=to_ants(img),
        transformlist=[str(t) for t in transforms],
        interpolator=interpolation,
        defaultvalue=0,
    )
    return from_ants(out)


# --------------------------------------------------------------------------- intensities
def scale_intensity(
    data: np.ndarray,
    mask: np.ndarray,
    method: str = "minmax",
    percentiles: tuple[float, float] = (0.5, 99.5),
    zero_outside: bool = True,
) -> np.ndarray:
    """Scale intensities using the statistics of the brain voxels.

    Parameters
    ----------
    data : ndarray, shape (i, j, k)
        Intensities (arbitrary units).
    mask : ndarray of bool, shape (i, j, k)
        Brain mask; at least two voxels with different values.
    method : {"minmax", "zscore"}
        ``"minmax"``: robust min-max, ``percentiles`` of the brain voxels map to 0 and 1 and the
        result is clipped to [0, 1]. ``"zscore"``: (x − mean) / std of the brain voxels.
    percentiles : tuple of float
        Lower and upper percentile (in %) for ``"minmax"``.
    zero_outside : bool
        Set voxels outside ``mask`` to 0.

    Returns
    -------
    ndarray, shape (i, j, k), float32

    Raises
    ------
    ValueError
        Unknown method, shapes differ, or the brain voxels are empty or constant.
    """
    data = np.asarray(data, dtype=np.float64)
    mask = np.asarray(mask, dtype=bool)
    if data.shape != mask.shape:
        raise ValueError(f"'data' shape {data.shape} and 'mask' shape {mask.shape} differ")
    values = data[mask]
    if values.size < 2:
        raise ValueError("the brain mask is empty: cannot scale intensities")
    if method == "minmax":
        low, high = np.percentile(values, percentiles)
        if not high > low:
            raise ValueError("brain intensities are constant: cannot scale them")
        out = np.clip((data - low) / (high - low), 0.0, 1.0)
    elif method == "zscore":
        std = values.std()
        if not std > 0:
            raise ValueError("brain intensities are constant: cannot scale them")
        out = (data - values.mean()) / std
    else:
        raise ValueError(f"'method' must be 'minmax' or 'zscore'; got {method!r}")
    if zero_outside:
        out[~mask] = 0.0
    return out.astype(np.float32)
