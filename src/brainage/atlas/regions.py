"""Atlases on the template grid and region tables of relevance maps (METHODS §9).

A region table summarises a map in template space per atlas region: mean, mean absolute and summed
relevance, and the fraction of the region's voxels that are among the map's top 10 % (the
aggregation of paper 000 with top 1 %, and of paper 002's thresholded maps with top 10 %).
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.errors import ConfigError, DimensionError, SpaceMismatchError
from brainage.space import Grid, resample_to_grid, template_grid

#: Columns of a region table, in order.
REGION_COLUMNS = (
    "rank",
    "region",
    "label",
    "n_voxels",
    "mean_relevance",
    "mean_abs_relevance",
    "sum_relevance",
    "top10_fraction",
)


@dataclass(frozen=True, eq=False)
class Atlas:
    """A label image on a template grid.

    Attributes
    ----------
    name : str
        Atlas name (registry key, or a user-given name).
    labels : ndarray of int32, shape grid.shape
        Region label of every voxel, 0 = background. Read-only.
    names : dict of int to str
        Label value → region name, for every label that can occur.
    grid : brainage.space.Grid
        The voxel grid (voxel → MNI152NLin2009aSym mm) the labels live on.
    info : dict of str to str
        Title, kind, space, licence, citation and source (see ``ATLAS_INFO``).
    """

    name: str
    labels: np.ndarray
    names: dict[int, str]
    grid: Grid
    info: dict[str, str] = field(default_factory=dict)

    @property
    def present_labels(self) -> np.ndarray:
        """Sorted label values (> 0) with at least one voxel on the grid, shape (n_present,)."""
        values = np.unique(self.labels)
        return values[values > 0]

    def image(self) -> nib.Nifti1Image:
        """Return the labels as an int32 NIfTI image with the grid's affine."""
        return nib.Nifti1Image(np.asarray(self.labels, dtype=np.int32), self.grid.affine)


def _as_grid(grid) -> Grid:
    if isinstance(grid, Grid):
        return grid
    if isinstance(grid, (int, float)) and not isinstance(grid, bool):
        return template_grid(float(grid))
    raise ConfigError(
        f"'grid' must be a brainage.space.Grid or a resolution in mm; got {type(grid).__name__}"
    )


def atlas_from_image(
    label_img: nib.Nifti1Image,
    names: dict[int, str],
    grid,
    name: str = "custom",
    info: dict[str, str] | None = None,
) -> Atlas:
    """Put any integer label image (registered to MNI) on a template grid.

    Parameters
    ----------
    label_img : nibabel.Nifti1Image
        3D integer labels, 0 = background; its affine maps voxels to MNI mm.
    names : dict of int to str
        Label value → region name. Voxels whose label is not in ``names`` become background.
    grid : brainage.space.Grid or float
        Target grid (or a resolution in mm for :func:`brainage.space.template_grid`).
    name : str
        Name of the atlas, used in file names.
    info : dict, optional
        Documentation (licence, citation, …).

    Returns
    -------
    Atlas
        Labels resampled by **nearest neighbour** (never interpolated), outside the atlas's field
        of view 0.

    Raises
    ------
    DimensionError
        ``label_img`` is not 3D.
    """
    grid = _as_grid(grid)
    if len(label_img.shape) != 3:
        raise DimensionError(f"atlas label image must be 3D; got shape {label_img.shape}")
    data = np.asarray(label_img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.allclose(rounded, data):
            raise ConfigError("atlas label image holds non-integer values; give integer labels")
        data = rounded
    img = nib.Nifti1Image(data.astype(np.int32), label_img.affine)
    res = resample_to_grid(img, grid, interpolation="nearest")
    labels = np.rint(np.asarray(res.dataobj)).astype(np.int32)
    valid = np.array(sorted(int(k) for k in names if int(k) > 0), dtype=np.int32)
    labels[~np.isin(labels, valid)] = 0
    labels.setflags(write=False)
    names = {int(k): str(v) for k, v in names.items() if int(k) > 0}
    return Atlas(name, labels, names, grid, dict(info or {}))


def load_atlas(name: str, grid, min_probability: float = 25.0) -> Atlas:
    """Load a registered atlas onto a template grid.

    Parameters
    ----------
    name : str
        Registered atlas, e.g. ``"aal"`` or ``"harvard_oxford"`` (see
        :func:`brainage.atlas.available_atlases` and ``ATLAS_INFO``).
    grid : brainage.space.Grid or float
        Target grid in ``MNI152NLin2009aSym`` (or a resolution in mm).
    min_probability : float
        Probabilistic atlases only: percent probability a voxel needs to get a label (default
        25, as FSL's ``maxprob-thr25``).

    Returns
    -------
    Atlas
        Labels on ``grid`` (nearest-neighbour resampling of the native label image; the atlas's
        own MNI variant is taken as equal to the template's, see :mod:`brainage.atlas.registry`).
        Cached per (name, grid, min_probability).

    Raises
    ------
    ConfigError
        Unknown atlas name (with a "did you mean" hint).
    InputError
        The atlas files are missing.
    """
    from brainage.atlas.registry import get_atlas_spec

    spec = get_atlas_spec(name)
    return _load_atlas_cached(spec.name, _as_grid(grid), float(min_probability))


@functools.lru_cache(maxsize=8)
def _load_atlas_cached(name: str, grid: Grid, min_probability: float) -> Atlas:
    from brainage.atlas.registry import get_atlas_spec, load_native

    img, names = load_native(name, min_probability)
    return atlas_from_image(img, names, grid, name=name, info=get_atlas_spec(name).info())


def _stat_array(stat_map, grid: Grid) -> np.ndarray:
    if isinstance(stat_map, nib.spatialimages.SpatialImage):
        grid.check(stat_map, "stat_map")
        data = np.asarray(stat_map.dataobj, dtype=np.float64)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
    else:
        data = np.asarray(stat_map, dtype=np.float64)
    if data.shape != tuple(grid.shape):
        raise SpaceMismatchError(
            f"'stat_map' has shape {data.shape}, expected the atlas grid's {grid.shape}",
            "load the atlas on the map's grid (load_atlas(name, grid))",
        )
    return data


def region_table(stat_map, atlas: Atlas, mask=None, top_fraction: float = 0.10) -> pd.DataFrame:
    """Summarise a map per atlas region and rank the regions.

    Parameters
    ----------
    stat_map : ndarray or nibabel.Nifti1Image, shape atlas.grid.shape
        A map in template space on the atlas's grid (e.g. a population mean relevance map). An
        image is checked against the grid (shape and affine).
    atlas : Atlas
        From :func:`load_atlas` or :func:`atlas_from_image`.
    mask : ndarray of bool, shape atlas.grid.shape, optional
        Brain mask: only voxels inside it count, for the regions and for the top fraction. Without
        it, all labelled voxels count.
    top_fraction : float
        Fraction in (0, 1] defining the map's top voxels among the counted voxels (default 0.10;
        the column keeps the name ``top10_fraction`` whatever the value).

    Returns
    -------
    pandas.DataFrame
        One row per region with at least one counted voxel, columns ``rank`` (1 = highest mean
        relevance), ``region``, ``label``, ``n_voxels``, ``mean_relevance``,
        ``mean_abs_relevance``, ``sum_relevance`` and ``top10_fraction`` (fraction of the region's
        voxels among the map's top voxels, ranked by signed value), sorted by ``mean_relevance``
        descending (ties by label).

    Raises
    ------
    SpaceMismatchError
        ``stat_map`` or ``mask`` is not on the atlas's grid.
    ConfigError
        Non-finite map values inside the counted voxels, or no counted voxel at all.
    """
    from brainage.population import top_fraction_mask

    if not isinstance(atlas, Atlas):
        raise ConfigError(f"'atlas' must be an Atlas (see load_atlas); got {type(atlas).__name__}")
    data = _stat_array(stat_map, atlas.grid)
    labels = np.asarray(atlas.labels)
    counted = labels > 0
    if mask is not None:
        mask = np.asarray(mask)
        if mask.shape != labels.shape:
            raise SpaceMismatchError(
                f"'mask' has shape {mask.shape}, expected the atlas grid's {labels.shape}"
            )
        counted &= mask.astype(bool)
    if not counted.any():
        raise ConfigError("no voxel is both labelled by the atlas and inside the mask")
    if not np.all(np.isfinite(data[counted])):
        raise ConfigError("'stat_map' contains NaN or infinite values inside the atlas regions")
    top = top_fraction_mask(data, counted, top_fraction)
    lab = labels[counted]
    val = data[counted]
    n_bins = int(lab.max()) + 1
    n = np.bincount(lab, minlength=n_bins)
    s = np.bincount(lab, weights=val, minlength=n_bins)
    sa = np.bincount(lab, weights=np.abs(val), minlength=n_bins)
    nt = np.bincount(lab, weights=top[counted].astype(np.float64), minlength=n_bins)
    present = np.flatnonzero(n)
    present = present[present > 0]
    table = pd.DataFrame(
        {
            "region": [atlas.names.get(int(k), f"label_{int(k)}") for k in present],
            "label": present.astype(int),
            "n_voxels": n[present].astype(int),
            "mean_relevance": s[present] / n[present],
            "mean_abs_relevance": sa[present] / n[present],
            "sum_relevance": s[present],
            "top10_fraction": nt[present] / n[present],
        }
    )
    table = table.sort_values(["mean_relevance", "label"], ascending=[False, True], kind="stable")
    table.insert(0, "rank", np.arange(1, len(table) + 1))
    return table.reset_index(drop=True)[list(REGION_COLUMNS)]


def regions_path(out_dir, method: str, atlas_name: str) -> Path:
    """Path of a region table: ``OUT/regions/method-<m>_atlas-<a>_regions.tsv``.

    Built by :meth:`brainage.io.layout.RunLayout.regions` (``<m>``, ``<a>``: BIDS labels).
    """
    for value, what in ((method, "method"), (atlas_name, "atlas_name")):
        if not re.fullmatch(r"[A-Za-z0-9_\-]+", str(value)):
            raise ConfigError(
                f"'{what}' must be letters, digits, '_' or '-' (it is used in a file name); "
                f"got {value!r}"
            )
    from brainage.io.layout import RunLayout

    return RunLayout(Path(out_dir)).regions(method, atlas_name)


def write_region_table(
    stat_map, atlas: Atlas, out_dir, method: str, mask=None, top_fraction: float = 0.10
) -> Path:
    """Compute :func:`region_table` and write it atomically as TSV.

    Parameters
    ----------
    stat_map, atlas, mask, top_fraction
        As in :func:`region_table`.
    out_dir : str or Path
        Run folder ``OUT``.
    method : str
        Explanation method name, used in the file name.

    Returns
    -------
    Path
        ``OUT/regions/method-<m>_atlas-<a>_regions.tsv`` (``n/a`` for missing values).
    """
    from brainage.io import write_tsv

    path = regions_path(out_dir, method, atlas.name)
    return write_tsv(path, region_table(stat_map, atlas, mask=mask, top_fraction=top_fraction))
