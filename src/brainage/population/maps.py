"""Population relevance maps: per-subject normalisation, averaging, top-fraction maps (METHODS §9).

All maps handled here already live in template space (``MNI152NLin2009aSym``) on one voxel grid:
subject maps are brought there by the explain stage (identity when the model input was registered,
otherwise the subject's saved transform). Nothing here resamples; shapes must match exactly.

References
----------
- Paper 000 (multi-seed Guided Backpropagation): maps z-normalised per subject before averaging.
- Paper 002 (3D U-Noise): thresholded population map — keep the top 10 % voxels, then Gaussian
  smoothing with sigma = 1 voxel.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from brainage.errors import ConfigError, DimensionError, SpaceMismatchError
from brainage.space import TEMPLATE_SPACE, Grid

#: Per-subject normalisations understood by :func:`normalise_maps`.
NORMALISATIONS = ("zscore", "abs", "sum", "none")

_EPS = 1e-12


def _check_mask(mask, shape, name: str = "mask") -> np.ndarray:
    mask = np.asarray(mask)
    if mask.shape != tuple(shape):
        raise SpaceMismatchError(
            f"'{name}' has shape {mask.shape}, expected {tuple(shape)} (the maps' voxel grid)",
            "give a brain mask on the same template grid as the maps",
        )
    mask = mask.astype(bool)
    if not mask.any():
        raise ConfigError(f"'{name}' is empty (no voxel inside the brain); got an all-zero mask")
    return mask


def _check_maps(maps) -> np.ndarray:
    maps = np.asarray(maps)
    if maps.ndim != 4:
        raise DimensionError(
            f"'maps' must have shape (n_subjects, i, j, k); got an array of shape {maps.shape}",
            "stack the subjects' 3D relevance maps along a first axis",
        )
    if maps.shape[0] == 0:
        raise DimensionError("'maps' holds no subject (first axis has length 0)")
    if not np.issubdtype(maps.dtype, np.number):
        raise ConfigError(f"'maps' must be numeric; got dtype {maps.dtype}")
    if not np.all(np.isfinite(maps)):
        raise ConfigError("'maps' contains NaN or infinite values; fix the relevance maps first")
    return maps


def _check_method(method: str | None) -> str:
    method = "none" if method is None else str(method)
    if method not in NORMALISATIONS:
        from brainage.errors import did_you_mean

        raise ConfigError(
            f"'normalise' must be one of {', '.join(NORMALISATIONS)}; got {method!r} "
            f"({did_you_mean(method, NORMALISATIONS)})"
        )
    return method


def normalise_maps(maps, mask, method: str = "zscore") -> np.ndarray:
    """Normalise each subject's relevance map within the brain mask.

    Parameters
    ----------
    maps : ndarray, shape (n_subjects, i, j, k)
        Relevance maps in template space, one per subject (any unit; signed or not).
    mask : ndarray of bool, shape (i, j, k)
        Brain mask on the same grid. Only voxels inside it enter the statistics.
    method : {"zscore", "abs", "sum", "none"}
        - ``"zscore"``: ``(x - mean) / sd`` of the subject's in-mask voxels (paper 000); a subject
          whose map is constant inside the mask gets zeros.
        - ``"abs"``: ``|x|`` then z-score (for signed maps where only magnitude matters).
        - ``"sum"``: ``|x| / sum(|x|)`` inside the mask (sum-to-one; an all-zero map stays 0).
        - ``"none"``: values unchanged inside the mask.

    Returns
    -------
    ndarray of float64, shape (n_subjects, i, j, k)
        Normalised maps; 0 outside the mask. The standard deviation uses ``ddof=0``.

    Raises
    ------
    DimensionError
        ``maps`` is not 4D or holds no subject.
    SpaceMismatchError
        ``mask`` does not have the maps' spatial shape.
    ConfigError
        Unknown ``method``, an empty mask or non-finite values.
    """
    maps = _check_maps(maps)
    mask = _check_mask(mask, maps.shape[1:])
    method = _check_method(method)
    inside = maps[:, mask].astype(np.float64)  # (n_subjects, n_mask)
    if method in ("abs", "sum"):
        inside = np.abs(inside)
    if method in ("zscore", "abs"):
        mean = inside.mean(axis=1, keepdims=True)
        sd = inside.std(axis=1, keepdims=True)
        safe = np.where(sd > _EPS * np.maximum(1.0, np.abs(mean)), sd, np.inf)
        inside = (inside - mean) / safe
    elif method == "sum":
        total = inside.sum(axis=1, keepdims=True)
        inside = inside / np.where(total > 0, total, np.inf)
    out = np.zeros(maps.shape, dtype=np.float64)
    out[:, mask] = inside
    return out


def population_mean_map(maps, mask, normalise: str | None = "zscore") -> np.ndarray:
    """Average subjects' relevance maps after per-subject normalisation.

    Parameters
    ----------
    maps : ndarray, shape (n_subjects, i, j, k)
        Relevance maps in template space. To average over the base models of an ensemble or over
        seeds too, stack all (subject, model) maps along the first axis.
    mask : ndarray of bool, shape (i, j, k)
        Brain mask on the maps' grid.
    normalise : {"zscore", "abs", "sum", "none"} or None
        Per-subject normalisation applied first (see :func:`normalise_maps`).

    Returns
    -------
    ndarray of float64, shape (i, j, k)
        Voxelwise mean across subjects, 0 outside the mask.
    """
    return normalise_maps(maps, mask, normalise).mean(axis=0)


def top_fraction_mask(stat_map, mask, fraction: float = 0.10, absolute: bool = False) -> np.ndarray:
    """Select the top ``fraction`` of the in-mask voxels of a map.

    Parameters
    ----------
    stat_map : ndarray, shape (i, j, k)
        Map in template space (e.g. a population mean map).
    mask : ndarray of bool, shape (i, j, k)
        Voxels eligible for selection.
    fraction : float
        Fraction in (0, 1]; exactly ``ceil(fraction * n_mask)`` voxels are selected.
    absolute : bool
        Rank by ``|value|`` instead of the signed value.

    Returns
    -------
    ndarray of bool, shape (i, j, k)
        True for the selected voxels. Ties at the threshold are broken by voxel order (C order),
        so that the count is always exact.
    """
    stat_map = np.asarray(stat_map, dtype=np.float64)
    if stat_map.ndim != 3:
        raise DimensionError(f"'stat_map' must be 3D (i, j, k); got shape {stat_map.shape}")
    mask = _check_mask(mask, stat_map.shape)
    if not np.all(np.isfinite(stat_map[mask])):
        raise ConfigError("'stat_map' contains NaN or infinite values inside the mask")
    fraction = float(fraction)
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"'fraction' must be in (0, 1]; got {fraction}")
    values = stat_map[mask]
    if absolute:
        values = np.abs(values)
    n_keep = math.ceil(fraction * values.size - 1e-9)
    order = np.argsort(-values, kind="stable")[:n_keep]
    keep_inside = np.zeros(values.size, dtype=bool)
    keep_inside[order] = True
    out = np.zeros(stat_map.shape, dtype=bool)
    out[mask] = keep_inside
    return out


def top_fraction_map(
    stat_map, mask, fraction: float = 0.10, sigma_vox: float = 1.0, absolute: bool = False
) -> np.ndarray:
    """Thresholded population map: keep the top voxels, then smooth (paper 002).

    Parameters
    ----------
    stat_map : ndarray, shape (i, j, k)
        Map in template space (e.g. from :func:`population_mean_map`).
    mask : ndarray of bool, shape (i, j, k)
        Brain mask; only voxels inside it can be kept.
    fraction : float
        Fraction of in-mask voxels kept (paper 002: 0.10); exactly ``ceil(fraction * n_mask)``.
    sigma_vox : float
        Standard deviation of the Gaussian smoothing kernel in voxels (paper 002: 1); 0 = none.
        Smoothing uses zero padding (``mode="constant"``, truncated at 4 sigma), so it preserves
        the sum of the map up to mass leaving the array; it may spread values slightly outside
        the mask.
    absolute : bool
        Rank voxels by ``|value|`` (for signed maps) instead of the signed value.

    Returns
    -------
    ndarray of float64, shape (i, j, k)
        The kept voxels' values (others 0), smoothed.
    """
    from scipy.ndimage import gaussian_filter

    sigma_vox = float(sigma_vox)
    if not (np.isfinite(sigma_vox) and sigma_vox >= 0):
        raise ConfigError(f"'sigma_vox' must be >= 0 (voxels); got {sigma_vox}")
    stat_map = np.asarray(stat_map, dtype=np.float64)
    keep = top_fraction_mask(stat_map, mask, fraction, absolute)
    out = np.where(keep, stat_map, 0.0)
    if sigma_vox > 0:
        out = gaussian_filter(out, sigma=sigma_vox, mode="constant", cval=0.0, truncate=4.0)
    return out


def population_map_path(out_dir, method: str, resolution_mm: float, kind: str = "mean") -> Path:
    """Path of a population map in a run folder.

    Parameters
    ----------
    out_dir : str or Path
        The run folder ``OUT``.
    method : str
        Explanation method name, e.g. ``"guided_backprop"``.
    resolution_mm : float
        Grid resolution in mm (written as BIDS ``res-<r>``, ``1.5`` → ``1p5``).
    kind : {"mean", "top10"}
        ``"mean"`` → ``…_stat-mean_relevance.nii.gz``;
        ``"top10"`` → ``…_desc-top10_relevance.nii.gz``.

    Returns
    -------
    Path
        ``OUT/population/method-<m>_space-MNI152NLin2009aSym_res-<r>_<entity>_relevance.nii.gz``
        (:meth:`brainage.io.layout.RunLayout.population`; ``<m>`` is the method's BIDS label).
    """
    from brainage.io.layout import RunLayout

    _check_label(method, "method")
    return RunLayout(Path(out_dir), resolution_mm).population(method, kind)


def _check_label(value: str, name: str) -> None:
    if not value or not all(c.isalnum() or c in "-" for c in str(value).replace("_", "")):
        raise ConfigError(
            f"'{name}' must be a non-empty name of letters, digits, '_' or '-' (it is used in "
            f"file names); got {value!r}"
        )


def write_population_maps(
    maps,
    mask,
    grid: Grid,
    out_dir,
    method: str,
    normalise: str | None = "zscore",
    fraction: float = 0.10,
    sigma_vox: float = 1.0,
) -> dict[str, Path]:
    """Compute and write the population mean map and its top-fraction map for one method.

    Parameters
    ----------
    maps : ndarray, shape (n_subjects, *grid.shape)
        Subjects' relevance maps in template space on ``grid``.
    mask : ndarray of bool, shape grid.shape
        Brain mask on ``grid`` (e.g. ``space.template_array("mask", res)``).
    grid : brainage.space.Grid
        The voxel grid of the maps; its affine (voxel → MNI152NLin2009aSym mm) is written.
    out_dir : str or Path
        Run folder ``OUT``; files go to ``OUT/population/``.
    method : str
        Explanation method name used in the file names.
    normalise : {"zscore", "abs", "sum", "none"} or None
        Per-subject normalisation (see :func:`normalise_maps`).
    fraction, sigma_vox : float
        Parameters of :func:`top_fraction_map` (paper 002: 0.10 and 1 voxel).

    Returns
    -------
    dict of str to Path
        ``{"mean": …_stat-mean_relevance.nii.gz, "top10": …_desc-top10_relevance.nii.gz}``. Each
        NIfTI gets a JSON sidecar (same name, ``.json``) with the number of subjects and the
        parameters. Files are written atomically.

    Raises
    ------
    SpaceMismatchError
        ``maps`` or ``mask`` do not have ``grid.shape``.
    """
    from brainage.io import save_nifti, write_json

    if not isinstance(grid, Grid):
        raise ConfigError(f"'grid' must be a brainage.space.Grid; got {type(grid).__name__}")
    maps = _check_maps(maps)
    if tuple(maps.shape[1:]) != tuple(grid.shape):
        raise SpaceMismatchError(
            f"'maps' have spatial shape {maps.shape[1:]}, expected the grid's {grid.shape}",
            "resample the relevance maps to the template grid first",
        )
    _check_label(method, "method")
    mean = population_mean_map(maps, mask, normalise)
    top = top_fraction_map(mean, mask, fraction, sigma_vox)
    paths = {
        "mean": population_map_path(out_dir, method, grid.resolution, "mean"),
        "top10": population_map_path(out_dir, method, grid.resolution, "top10"),
    }
    common = {
        "Space": TEMPLATE_SPACE,
        "Resolution_mm": grid.resolution,
        "Method": method,
        "NSubjects": int(maps.shape[0]),
        "Normalisation": "none" if normalise is None else normalise,
    }
    save_nifti(mean, grid.affine, paths["mean"], metadata={"space": TEMPLATE_SPACE, "stat": "mean"})
    save_nifti(top, grid.affine, paths["top10"], metadata={"space": TEMPLATE_SPACE, "desc": "top"})
    write_json(
        _sidecar(paths["mean"]),
        {**common, "Description": "voxelwise mean of per-subject normalised relevance maps"},
    )
    write_json(
        _sidecar(paths["top10"]),
        {
            **common,
            "Description": "top fraction of the mean map's in-mask voxels, then Gaussian smoothing",
            "TopFraction": float(fraction),
            "SmoothingSigma_vox": float(sigma_vox),
        },
    )
    return paths


def _sidecar(path: Path) -> Path:
    return path.with_name(path.name.replace(".nii.gz", ".json"))


def read_sidecar(path) -> dict:
    """Read the JSON sidecar of a population map (empty dict when absent)."""
    side = _sidecar(Path(path))
    if not side.exists():
        return {}
    return json.loads(side.read_text(encoding="utf-8"))
