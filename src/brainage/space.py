"""Template space: the MNI152 2009a template shipped in nilearn and the fixed crop box.

All registered images, model inputs, relevance maps and population maps of brainage live in
``MNI152NLin2009aSym`` (ICBM 2009a non-linear symmetric, the template inside nilearn's wheel),
on a :class:`Grid` that covers a fixed box around the template brain. The box is defined in
millimetres, so grids of different resolutions cover the same brain.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import nibabel as nib
import numpy as np

from brainage.errors import ConfigError, SpaceMismatchError
from brainage.io.layout import TEMPLATE_SPACE  # noqa: F401  (BIDS name of the template space)

#: Crop box in MNI mm (RAS): lower corner and size. It contains the template brain mask
#: (x −72…72, y −107…73, z −72…82 mm) with a margin; at 2 mm it is 80 × 96 × 80 voxels.
BOX_ORIGIN_MM = (-80.0, -114.0, -74.0)
BOX_SIZE_MM = (160.0, 192.0, 160.0)


@dataclass(frozen=True)
class Grid:
    """A voxel grid in template space.

    Attributes
    ----------
    shape : tuple of int, length 3
        Number of voxels along i, j, k.
    affine : ndarray, shape (4, 4)
        Voxel index → MNI mm.
    """

    shape: tuple[int, int, int]
    affine_tuple: tuple

    @property
    def affine(self) -> np.ndarray:
        """Voxel → MNI mm affine, shape (4, 4)."""
        return np.array(self.affine_tuple, dtype=np.float64).reshape(4, 4)

    @property
    def resolution(self) -> float:
        """Voxel size in mm (isotropic)."""
        return float(abs(self.affine[0, 0]))

    def check(self, img: nib.Nifti1Image, name: str = "image") -> None:
        """Raise :class:`SpaceMismatchError` unless ``img`` lies on this grid."""
        if tuple(img.shape[:3]) != self.shape or not np.allclose(
            img.affine, self.affine, atol=1e-3
        ):
            raise SpaceMismatchError(
                f"{name} has shape {img.shape[:3]} and affine diagonal {np.diag(img.affine)[:3]}, "
                f"expected {self.shape} and {np.diag(self.affine)[:3]} ({TEMPLATE_SPACE}, "
                f"res {self.resolution:g} mm)",
                "resample it to the template grid first (brainage.space.resample_to_grid)",
            )


@functools.lru_cache(maxsize=8)
def template_grid(resolution_mm: float = 2.0) -> Grid:
    """Return the crop-box grid at ``resolution_mm`` (isotropic, in mm).

    Parameters
    ----------
    resolution_mm : float
        Voxel size in mm, e.g. 2 (80 × 96 × 80 voxels), 3 (54 × 64 × 54) or 4 (40 × 48 × 40).

    Returns
    -------
    Grid
    """
    r = float(resolution_mm)
    if not 0.5 <= r <= 16:
        raise ConfigError(f"'resolution_mm' must be between 0.5 and 16 mm; got {resolution_mm}")
    shape = tuple(int(np.ceil(s / r - 1e-6)) for s in BOX_SIZE_MM)
    affine = np.diag([r, r, r, 1.0])
    affine[:3, 3] = BOX_ORIGIN_MM
    return Grid(shape, tuple(affine.ravel().tolist()))


def resample_to_grid(img: nib.Nifti1Image, grid: Grid, interpolation: str = "continuous"):
    """Resample ``img`` (any space registered to MNI) onto ``grid``.

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D image whose affine maps to MNI mm.
    grid : Grid
    interpolation : {"continuous", "linear", "nearest"}
        Use ``"nearest"`` for label images and masks.

    Returns
    -------
    nibabel.Nifti1Image
        Image of shape ``grid.shape`` with ``grid.affine``; outside the field of view 0.
    """
    from nilearn.image import resample_img

    if tuple(img.shape[:3]) == grid.shape and np.allclose(img.affine, grid.affine, atol=1e-3):
        return img
    return resample_img(
        img,
        target_affine=grid.affine,
        target_shape=grid.shape,
        interpolation=interpolation,
        fill_value=0,
        force_resample=True,
        copy_header=True,
    )


@functools.lru_cache(maxsize=8)
def _template_arrays(resolution_mm: float):
    from nilearn import datasets

    grid = template_grid(resolution_mm)
    src_res = 1 if resolution_mm < 2 else 2
    t1 = resample_to_grid(datasets.load_mni152_template(resolution=src_res), grid)
    mask = resample_to_grid(datasets.load_mni152_brain_mask(resolution=src_res), grid, "nearest")
    gm = resample_to_grid(datasets.load_mni152_gm_template(resolution=src_res), grid)
    wm = resample_to_grid(datasets.load_mni152_wm_template(resolution=src_res), grid)
    out = {
        "t1w": np.asarray(t1.dataobj, dtype=np.float32),
        "mask": np.asarray(mask.dataobj) > 0.5,
        "gm": np.clip(np.asarray(gm.dataobj, dtype=np.float32), 0, 1),
        "wm": np.clip(np.asarray(wm.dataobj, dtype=np.float32), 0, 1),
    }
    for v in out.values():
        v.setflags(write=False)
    return out


def load_template(resolution_mm: float = 2.0) -> dict[str, nib.Nifti1Image]:
    """Return the MNI152 2009a template images on the crop-box grid.

    Parameters
    ----------
    resolution_mm : float
        Grid resolution in mm.

    Returns
    -------
    dict of str to nibabel.Nifti1Image
        ``"t1w"`` (template T1w intensities), ``"mask"`` (brain mask, uint8), ``"gm"`` and ``"wm"``
        (tissue probability maps in [0, 1]), all on :func:`template_grid` ``(resolution_mm)``.
        Everything comes from files inside the nilearn wheel; nothing is downloaded.
    """
    grid = template_grid(resolution_mm)
    arrays = _template_arrays(float(resolution_mm))
    return {
        k: nib.Nifti1Image(v.astype(np.uint8 if k == "mask" else np.float32), grid.affine)
        for k, v in arrays.items()
    }


def template_array(name: str, resolution_mm: float = 2.0) -> np.ndarray:
    """Return one template array (``"t1w"``, ``"mask"``, ``"gm"``, ``"wm"``), read-only.

    Returns
    -------
    ndarray, shape ``template_grid(resolution_mm).shape``
        float32 (bool for ``"mask"``).
    """
    return _template_arrays(float(resolution_mm))[name]


def mirror_x(data, resolution_mm: float, axis: int = -3):
    """Mirror volumes on :func:`template_grid` about the mid-sagittal plane x = 0 mm.

    The crop box spans x = −80 … −80 + r·(n − 1) mm, which is not symmetric about 0 (at 4 mm:
    −80 … 76), so reversing the array (``np.flip``) mirrors about x = −2 mm and moves the brain
    by one voxel. This function maps the value at x to −x: voxel ``i`` takes voxel
    ``c − i`` with ``c = −2 · x₀ / r`` (at 1, 2, 4 mm ``c`` is an integer and the mirror is exact;
    otherwise the two nearest voxels are interpolated linearly). Voxels whose mirror lies outside
    the box become 0. In the symmetric template (MNI152NLin2009aSym) the brain mask is its own
    mirror.

    Parameters
    ----------
    data : numpy.ndarray or torch.Tensor, shape (..., i, j, k)
        Volumes on ``template_grid(resolution_mm)`` (RAS voxel order: axis ``axis`` is x).
    resolution_mm : float
    axis : int
        The x axis of ``data``.

    Returns
    -------
    Same type, shape and dtype as ``data``.
    """
    grid = template_grid(resolution_mm)
    affine = grid.affine
    r, x0 = float(affine[0, 0]), float(affine[0, 3])
    n = data.shape[axis]
    if n != grid.shape[0]:
        raise ConfigError(
            f"mirror_x: axis {axis} has {n} voxels but the {resolution_mm:g} mm grid has "
            f"{grid.shape[0]} along x"
        )
    src = -2.0 * x0 / r - np.arange(n)  # fractional source voxel of each target voxel
    lo = np.floor(src + 1e-9).astype(int)
    frac = src - lo
    is_torch = type(data).__module__.startswith("torch")
    if is_torch:
        import torch

        moved = torch.movedim(data, axis, 0)
        out = torch.zeros_like(moved)
    else:
        moved = np.moveaxis(np.asarray(data), axis, 0)
        out = np.zeros_like(moved)
    for i in range(n):
        for idx, w in ((lo[i], 1.0 - frac[i]), (lo[i] + 1, frac[i])):
            if w > 1e-9 and 0 <= idx < n:
                out[i] += w * moved[idx] if w < 1 - 1e-9 else moved[idx]
    return torch.movedim(out, 0, axis) if is_torch else np.moveaxis(out, 0, axis)
