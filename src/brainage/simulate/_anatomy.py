"""The template anatomy the phantoms are made from (MNI152 2009a and its tissue maps).

Computed once per grid resolution and cached: tissue fractions and the T1w texture on the
target grid, and two signed-distance maps (lateral ventricles, outer brain surface) on a finer
analysis grid (2 mm, or the target resolution when it is finer) from which every subject samples
through its own random deformation.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from brainage.errors import BrainageError
from brainage.space import BOX_ORIGIN_MM, template_array, template_grid

#: Approximate centres of the left and right lateral ventricles in MNI152 2009a (mm, RAS).
#: Connected components of CSF-dark template voxels within 10 mm of these points are taken as
#: the lateral ventricles.
LATERAL_VENTRICLE_SEEDS_MM = ((-14.0, -14.0, 15.0), (14.0, -14.0, 15.0))

#: GM + WM probability above which a template voxel is brain parenchyma (outer surface for the
#: cortical depth); at 0.2 only ~4 mL of the template's ~1000 mL of GM lies outside it.
PARENCHYMA_THRESHOLD = 0.2

#: Finest resolution (mm) at which the distance maps are computed for grids coarser than it.
ANALYSIS_RESOLUTION_MM = 2.0


@dataclass(frozen=True)
class TemplateAnatomy:
    """Template fields on a target grid and distance maps on an analysis grid.

    Attributes
    ----------
    resolution_mm : float
        Voxel size of the target grid (mm).
    shape : tuple of int
        Target grid shape, ``template_grid(resolution_mm).shape``.
    affine : ndarray, shape (4, 4)
        Target grid voxel → MNI mm.
    fields : dict of str to ndarray
        On the target grid, float32: ``"gm"``, ``"wm"`` (tissue probabilities in [0, 1]),
        ``"mask"`` (brain mask as 0/1 float) and ``"texture"`` (template T1w minus its tissue
        model, i.e. the detail the three-tissue model does not explain).
    analysis_resolution_mm : float
        Voxel size of the analysis grid (mm); the grid shares the box origin.
    distances : dict of str to ndarray
        On the analysis grid, float32, mm: ``"ventricle"`` (signed distance to the lateral
        ventricle surface, negative inside), ``"depth"`` (signed depth below the surface of the
        parenchyma, GM + WM > :data:`PARENCHYMA_THRESHOLD` with its holes filled, positive inside)
        and ``"hull"`` (signed depth below the surface of the template brain mask, which is closed
        over the sulci and cisterns).
    tissue_t1w : dict of str to float
        Mean template T1w intensity of ``"csf"``, ``"gm"`` and ``"wm"`` (least-squares fit).
    ventricle_volume_ml : float
        Volume of the template's lateral ventricles (mL).
    """

    resolution_mm: float
    shape: tuple
    affine: np.ndarray
    fields: dict
    analysis_resolution_mm: float
    distances: dict
    tissue_t1w: dict
    ventricle_volume_ml: float

    def world_coordinates(self) -> np.ndarray:
        """Voxel-centre MNI coordinates of the target grid, shape (3, *shape), mm."""
        idx = np.indices(self.shape, dtype=np.float64)
        return idx * self.resolution_mm + np.asarray(BOX_ORIGIN_MM)[:, None, None, None]


def _tissue_means(t1, mask, gm, wm) -> dict:
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    design = np.stack([csf[mask], gm[mask], wm[mask]], axis=1).astype(np.float64)
    coef, *_ = np.linalg.lstsq(design, t1[mask].astype(np.float64), rcond=None)
    return {"csf": float(coef[0]), "gm": float(coef[1]), "wm": float(coef[2])}


def _signed_distance(region: np.ndarray, spacing: float) -> np.ndarray:
    """Signed distance (mm) to the surface of ``region``: negative inside, positive outside.

    Voxels are cubes: the surface lies half a voxel beyond the centres of the boundary voxels,
    so a boundary voxel inside reads ``-spacing / 2`` and its outside neighbour ``+spacing / 2``.
    """
    inside = ndi.distance_transform_edt(region) * spacing
    outside = ndi.distance_transform_edt(~region) * spacing
    return np.where(region, -(inside - spacing / 2), outside - spacing / 2).astype(np.float32)


def lateral_ventricles(resolution_mm: float) -> np.ndarray:
    """Lateral-ventricle region of the MNI152 template on ``template_grid(resolution_mm)``.

    CSF-dark template voxels inside the brain mask (T1w below 40 % of the way from the CSF to the
    GM intensity, GM and WM probability below 0.3), the connected components (26-connectivity)
    that reach within 10 mm of :data:`LATERAL_VENTRICLE_SEEDS_MM`.

    Returns
    -------
    ndarray of bool, shape ``template_grid(resolution_mm).shape``
    """
    t1 = template_array("t1w", resolution_mm)
    mask = template_array("mask", resolution_mm)
    gm = template_array("gm", resolution_mm)
    wm = template_array("wm", resolution_mm)
    means = _tissue_means(t1, mask, gm, wm)
    threshold = means["csf"] + 0.4 * (means["gm"] - means["csf"])
    dark = mask & (t1 < threshold) & (gm < 0.3) & (wm < 0.3)
    labels, _ = ndi.label(dark, structure=np.ones((3, 3, 3), dtype=bool))
    grid = template_grid(resolution_mm)
    world = np.indices(grid.shape).reshape(3, -1).T * float(resolution_mm) + np.asarray(
        BOX_ORIGIN_MM
    )
    near = np.zeros(labels.size, dtype=bool)
    for seed in LATERAL_VENTRICLE_SEEDS_MM:
        near |= np.linalg.norm(world - np.asarray(seed), axis=1) <= 10.0
    keep = np.unique(labels.ravel()[near & (labels.ravel() > 0)])
    if keep.size == 0:
        raise BrainageError(
            "found no lateral ventricles in the MNI152 template (nilearn's template changed?)"
        )
    return np.isin(labels, keep)


def _compute(resolution_mm: float) -> TemplateAnatomy:
    r = float(resolution_mm)
    grid = template_grid(r)
    t1 = template_array("t1w", r)
    mask = template_array("mask", r)
    gm = template_array("gm", r)
    wm = template_array("wm", r)
    means = _tissue_means(t1, mask, gm, wm)
    csf = np.clip(1.0 - gm - wm, 0.0, 1.0)
    model = means["csf"] * csf + means["gm"] * gm + means["wm"] * wm
    texture = np.where(mask, t1 - model, 0.0).astype(np.float32)

    ra = min(r, ANALYSIS_RESOLUTION_MM)
    vent = lateral_ventricles(ra)
    mask_a = template_array("mask", ra)
    par = mask_a & (template_array("gm", ra) + template_array("wm", ra) > PARENCHYMA_THRESHOLD)
    par = ndi.binary_fill_holes(par)
    labels, n = ndi.label(par)
    if n > 1:  # drop specks outside the brain
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        par = sizes[labels] >= 0.05 * sizes.max()
    distances = {
        "ventricle": _signed_distance(vent, ra),
        "depth": -_signed_distance(par, ra),
        "hull": -_signed_distance(mask_a, ra),
    }
    fields = {
        "gm": gm.astype(np.float32),
        "wm": wm.astype(np.float32),
        "mask": mask.astype(np.float32),
        "texture": texture,
    }
    for arr in (*fields.values(), *distances.values()):
        arr.setflags(write=False)
    return TemplateAnatomy(
        resolution_mm=r,
        shape=grid.shape,
        affine=grid.affine,
        fields=fields,
        analysis_resolution_mm=ra,
        distances=distances,
        tissue_t1w=means,
        ventricle_volume_ml=float(vent.sum() * ra**3 / 1000.0),
    )


_CACHE: dict[float, TemplateAnatomy] = {}


def template_anatomy(resolution_mm: float) -> TemplateAnatomy:
    """Return the (cached) :class:`TemplateAnatomy` for a grid resolution in mm."""
    key = float(resolution_mm)
    if key not in _CACHE:
        _CACHE[key] = _compute(key)
    return _CACHE[key]


def _install(anatomy: TemplateAnatomy) -> None:
    """Put a precomputed anatomy into this process's cache (worker initialiser)."""
    _CACHE[anatomy.resolution_mm] = anatomy


@functools.lru_cache(maxsize=2)
def _region_labels(resolution_mm: float):
    from brainage.atlas import load_atlas
    from brainage.simulate.effects import REGION_ATLAS

    atlas = load_atlas(REGION_ATLAS, template_grid(resolution_mm))
    return atlas.labels, atlas.names


def region_names() -> set:
    """Region names of the region-truth design's atlas (:data:`effects.REGION_ATLAS`)."""
    return set(_region_labels(ANALYSIS_RESOLUTION_MM)[1].values())


def atrophy_rate_map(resolution_mm: float, rates: dict) -> np.ndarray:
    """Regional-atrophy rate of every voxel of ``template_grid(resolution_mm)``.

    Parameters
    ----------
    resolution_mm : float
        Grid resolution (mm), usually the analysis grid's.
    rates : dict of str to float
        Region name of :data:`brainage.simulate.effects.REGION_ATLAS` → rate (validated).

    Returns
    -------
    ndarray, float32, shape ``template_grid(resolution_mm).shape``
        The rate of each voxel's region, 0 in unlisted regions and outside the atlas.
    """
    key = (float(resolution_mm), tuple(sorted(rates.items())))
    if key not in _RATE_MAPS:
        labels, names = _region_labels(float(resolution_mm))
        table = np.zeros(int(labels.max()) + 1, dtype=np.float32)
        for label, name in names.items():
            if name in rates and 0 < label < table.size:
                table[label] = rates[name]
        out = table[labels]
        out.setflags(write=False)
        _RATE_MAPS.clear()
        _RATE_MAPS[key] = out
    return _RATE_MAPS[key]


_RATE_MAPS: dict = {}
