"""NIfTI reading with validation, and atomic NIfTI writing."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.errors import DimensionError, InputError
from brainage.io.atomic import atomic_path


def load_volume(
    path: str | Path, participant_id: str | None = None, dtype=np.float32
) -> nib.Nifti1Image:
    """Load one 3D NIfTI volume and check that it is usable.

    Parameters
    ----------
    path : str or Path
        A ``.nii`` or ``.nii.gz`` file.
    participant_id : str, optional
        Used in error messages.
    dtype : numpy dtype
        Data type of the returned image's array.

    Returns
    -------
    nibabel.Nifti1Image
        A 3D image, shape (i, j, k), whose affine maps voxel indices to world mm (scanner or
        template space, as stored in the file). A 4D file whose 4th axis has length 1 is squeezed.

    Raises
    ------
    InputError
        The file is missing, unreadable or truncated, its data are all zero or not finite.
    DimensionError
        The image is not 3D (2D, or 4D with more than one volume).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(
            "image file does not exist",
            "check the path in the cohort table or the BIDS folder",
            participant_id,
            path,
        )
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj, dtype=dtype)
    except Exception as exc:  # nibabel raises many types for corrupt/truncated files
        raise InputError(
            f"cannot read NIfTI ({type(exc).__name__}: {' '.join(str(exc).split())[:100]})",
            "the file is corrupt or truncated; re-export or re-download it",
            participant_id,
            path,
        ) from None
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DimensionError(
            f"image is {data.ndim}D (shape {data.shape}), expected one 3D volume",
            "give one 3D T1w volume per subject (split 4D series first)",
            participant_id,
            path,
        )
    if min(data.shape) < 8:
        raise DimensionError(
            f"image shape {data.shape} is too small for a brain volume (a slice or a 2D image?)",
            "give a 3D T1w volume",
            participant_id,
            path,
        )
    if not np.all(np.isfinite(data)):
        raise InputError(
            "image contains NaN or infinite values",
            "fix the image (e.g. fslmaths -nan) and rerun",
            participant_id,
            path,
        )
    if not np.any(data):
        raise InputError(
            "image is all zero", "the scan is empty; replace or exclude it", participant_id, path
        )
    return nib.Nifti1Image(data, img.affine, header=_clean_header(img, dtype))


def _clean_header(img, dtype) -> nib.Nifti1Header:
    header = img.header.copy() if isinstance(img.header, nib.Nifti1Header) else nib.Nifti1Header()
    header.set_data_dtype(dtype)
    header.set_slope_inter(None, None)
    return header


#: NIfTI ``qform_code`` / ``sform_code`` per coordinate space: 1 scanner anatomical, 4 MNI152.
XFORM_CODES = {"scanner": 1, "template": 4}


def save_nifti(
    data: np.ndarray,
    affine: np.ndarray,
    path: str | Path,
    dtype=np.float32,
    metadata=None,
    space: str = "template",
) -> Path:
    """Write a volume to NIfTI atomically.

    Parameters
    ----------
    data : ndarray, shape (i, j, k) or (i, j, k, t)
        Voxel values.
    affine : ndarray, shape (4, 4)
        Voxel → world (mm) mapping of ``data``; it defines the space the image lives in.
    path : str or Path
        Destination, ``.nii.gz`` for compressed output.
    dtype : numpy dtype
        On-disk data type.
    metadata : dict, optional
        Written into the header's description field (at most 80 characters), e.g. ``{"space":
        "MNI152NLin2009aSym"}``.
    space : {"template", "scanner"}
        Space of ``affine``: MNI152 template space (default; ``sform_code`` and ``qform_code``
        4, NIFTI_XFORM_MNI_152) or a scanner's native space (code 1). Spatial units are mm.

    Returns
    -------
    Path
        ``path``.
    """
    data = np.asarray(data)
    affine = np.asarray(affine, dtype=np.float64)
    if affine.shape != (4, 4):
        raise DimensionError(f"'affine' must have shape (4, 4); got {affine.shape}")
    if space not in XFORM_CODES:
        raise ValueError(f"'space' must be one of {sorted(XFORM_CODES)}; got {space!r}")
    img = nib.Nifti1Image(data.astype(dtype, copy=False), affine)
    img.header.set_qform(affine, code=XFORM_CODES[space])
    img.header.set_sform(affine, code=XFORM_CODES[space])
    img.header.set_xyzt_units("mm", "sec")
    if metadata:
        desc = ";".join(f"{k}={v}" for k, v in metadata.items())[:79]
        img.header["descrip"] = desc.encode()
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
