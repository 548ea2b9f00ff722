"""Move images between a subject's native space and template space with its saved transforms.

:func:`~brainage.preprocess.preprocess_subject` keeps, per subject, the ANTs transform that
pulls a native image into MNI152NLin2009aSym (``xfm``) and the one that pulls a template-space
image back into the native scan (``inverse_xfm``). A relevance map computed on the preprocessed
input lives in template space; to look at it on the subject's own scan::

    from brainage.preprocess import warp_to_native
    native_map = warp_to_native("relevance.nii.gz", row, row_t1w_path)
    native_map.to_filename("relevance_space-T1w.nii.gz")

With the ANTs command-line tools the same is::

    antsApplyTransforms -d 3 -i relevance.nii.gz -r sub-01_T1w.nii.gz -o out.nii.gz
                        -t sub-01_from-MNI152NLin2009aSym_to-T1w_mode-image_xfm.mat

and with antspyx: ``ants.apply_transforms(fixed=native, moving=map, transformlist=[inverse])``.
For ``register="affine"`` the inverse ``.mat`` is the explicitly inverted affine, so the same
result is obtained from the forward file with ``whichtoinvert=[True]``; for ``register="syn"``
both files are composite ``.h5`` transforms (affine + warp field) and need no flags.
"""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.errors import InputError
from brainage.io.nifti import load_volume
from brainage.preprocess import steps
from brainage.space import Grid, template_grid

_INTERPOLATIONS = ("linear", "nearestNeighbor", "genericLabel", "bSpline")


def _image(img, what: str) -> nib.Nifti1Image:
    if isinstance(img, (str, Path)):
        return load_volume(img)
    if isinstance(img, nib.spatialimages.SpatialImage):
        data = np.asarray(img.dataobj, dtype=np.float32)
        if data.ndim != 3:
            raise InputError(f"{what} must be 3D; got shape {data.shape}")
        return nib.Nifti1Image(data, img.affine)
    raise InputError(f"{what} must be a NIfTI image or a path; got {type(img).__name__}")


def _transform(row, key: str) -> str:
    try:
        path = row[key]
    except (KeyError, TypeError, IndexError):
        raise InputError(
            f"'row' has no {key!r} entry",
            "pass a row of PreprocessResult.table (or the dict preprocess_subject returned)",
        ) from None
    if not Path(path).is_file():
        raise InputError("transform file does not exist", "rerun preprocessing", path=path)
    return str(path)


def _check_interpolation(interpolation: str) -> None:
    if interpolation not in _INTERPOLATIONS:
        raise InputError(
            f"'interpolation' must be one of {', '.join(_INTERPOLATIONS)}; got {interpolation!r}"
        )


def warp_to_native(
    map_img, row, native_ref_path: str | Path, interpolation: str = "linear"
) -> nib.Nifti1Image:
    """Bring a template-space image (e.g. a relevance map) onto the subject's native scan.

    Parameters
    ----------
    map_img : nibabel.Nifti1Image or path
        3D image in MNI152NLin2009aSym (any grid: its affine says where it is).
    row : dict or pandas.Series
        The subject's preprocessing row (needs ``inverse_xfm``).
    native_ref_path : str or Path
        The subject's native T1w (defines the output grid: shape and voxel → scanner mm).
    interpolation : {"linear", "nearestNeighbor", "genericLabel", "bSpline"}
        ``"genericLabel"`` or ``"nearestNeighbor"`` for label images.

    Returns
    -------
    nibabel.Nifti1Image
        float32, shape and affine of the native T1w; 0 outside the map's field of view.
    """
    _check_interpolation(interpolation)
    moving = _image(map_img, "'map_img'")
    ref = load_volume(native_ref_path)
    return steps.apply_transform(moving, _transform(row, "inverse_xfm"), ref, interpolation)


def warp_to_template(
    img, row, grid: Grid | float | None = None, interpolation: str = "linear"
) -> nib.Nifti1Image:
    """Bring a native-space image of a subject (e.g. a lesion mask) into template space.

    Parameters
    ----------
    img : nibabel.Nifti1Image or path
        3D image in the subject's native (scanner) space.
    row : dict or pandas.Series
        The subject's preprocessing row (needs ``xfm``; ``preproc`` when ``grid`` is None).
    grid : Grid or float, optional
        Output template grid or its resolution in mm; default: the grid of ``row["preproc"]``.
    interpolation : {"linear", "nearestNeighbor", "genericLabel", "bSpline"}

    Returns
    -------
    nibabel.Nifti1Image
        float32 image on the grid, voxel → MNI152NLin2009aSym mm.
    """
    _check_interpolation(interpolation)
    moving = _image(img, "'img'")
    if grid is None:
        header = nib.load(str(row["preproc"]))
        grid = Grid(tuple(header.shape[:3]), tuple(np.asarray(header.affine, float).ravel()))
    elif isinstance(grid, (int, float)) and not isinstance(grid, bool):
        grid = template_grid(float(grid))
    return steps.apply_transform(moving, _transform(row, "xfm"), grid, interpolation)
