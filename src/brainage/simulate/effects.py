"""The age effects of the brain phantoms and their ground truth (METHODS §11).

:func:`brainage.simulate.make_phantom` ages a subject by three effects whose voxels are known:
ventricle enlargement (:func:`ventricle_growth`), cortical thinning (:func:`cortical_thinning`)
and white-matter lesions (:func:`expected_lesion_count`). This module holds their curves over
age, the partial-volume fractions they change, the placement of the lesions and the ground-truth
masks (:data:`MASK_NAMES`) of the voxels where age acts.
"""

from __future__ import annotations

import numpy as np

#: Age (years) at which ventricle enlargement and cortical thinning start.
ATROPHY_ONSET_AGE = 20.0
#: Age (years) at which ``ventricle_growth_mm`` and ``cortical_thinning_mm`` are reached.
REFERENCE_AGE = 85.0
#: Age (years) before which no lesion appears.
LESION_ONSET_AGE = 40.0
#: A voxel belongs to a ground-truth mask when at least this fraction of its tissue changes.
MIN_CHANGE = 0.05
#: Cortical thinning acts only this deep (mm) below the surface of the template brain mask: the
#: cortex, not the grey matter around the third ventricle and the basal cisterns.
CORTEX_MAX_HULL_DEPTH_MM = 30.0
MASK_NAMES = ("brain", "ventricles", "cortex", "lesions", "regions", "ageeffect")

#: Atlas whose regions the region-truth design (:data:`REGIONAL_ATROPHY`) acts in.
REGION_ATLAS = "harvard_oxford"

#: The region-truth phantom design (issue 11, METHODS §11): fraction of a region's grey matter
#: turned into CSF by age 85 (linear from 20), by groups of Harvard-Oxford regions (a region
#: belongs to a group when its name contains one of the group's patterns, both hemispheres).
#: Medial-temporal and frontal atrophy are steeper than parietal and occipital; every region not
#: listed (sensorimotor and lateral temporal cortex, posterior cingulate, opercula, basal
#: ganglia, brain stem, …) is age-invariant. The ventricles still enlarge and lesions still appear
#: after 40; cortical thinning is off, so the regions carry the cortical age effect.
REGIONAL_ATROPHY = {
    "medial temporal": (
        0.45,
        ("Hippocampus", "Amygdala", "Parahippocampal_Gyrus", "Temporal_Pole",
         "Temporal_Fusiform_Cortex_anterior"),
    ),
    "frontal": (
        0.35,
        ("Frontal_Pole", "Superior_Frontal_Gyrus", "Middle_Frontal_Gyrus",
         "Inferior_Frontal_Gyrus", "Frontal_Orbital_Cortex", "Frontal_Medial_Cortex"),
    ),
    "insula and anterior cingulate": (0.25, ("Insular_Cortex", "Cingulate_Gyrus_anterior")),
    "thalamus": (0.2, ("Thalamus",)),
    "parietal": (
        0.2,
        ("Superior_Parietal_Lobule", "Supramarginal_Gyrus", "Angular_Gyrus", "Precuneous_Cortex"),
    ),
    "occipital": (
        0.12, ("Occipital_Pole", "Lateral_Occipital_Cortex", "Cuneal_Cortex", "Lingual_Gyrus")
    ),
}  # fmt: skip


def design_rates(names) -> dict:
    """Expand :data:`REGIONAL_ATROPHY` over atlas region names.

    Parameters
    ----------
    names : iterable of str
        Region names of :data:`REGION_ATLAS` (e.g. ``load_atlas(...).names.values()``).

    Returns
    -------
    dict of str to float
        Region name → grey-matter fraction lost by age 85, for the regions of the design only
        (every other region has rate 0).
    """
    out = {}
    for name in sorted(names):
        for rate, patterns in REGIONAL_ATROPHY.values():
            if any(p in name for p in patterns):
                out[name] = float(rate)
                break
    return out


# --------------------------------------------------------------------------------------------
# effect sizes as functions of age


def ventricle_growth(age: float, growth_mm: float = 3.0, exponent: float = 1.5) -> float:
    """Distance (mm) the lateral ventricles have grown at ``age`` (years); 0 up to age 20."""
    t = max(float(age) - ATROPHY_ONSET_AGE, 0.0) / (REFERENCE_AGE - ATROPHY_ONSET_AGE)
    return float(growth_mm) * t ** float(exponent)


def cortical_thinning(age: float, thinning_mm: float = 2.5) -> float:
    """Depth (mm) of outer cortex turned into CSF at ``age`` (years); linear from age 20."""
    t = max(float(age) - ATROPHY_ONSET_AGE, 0.0) / (REFERENCE_AGE - ATROPHY_ONSET_AGE)
    return float(thinning_mm) * t


def regional_atrophy(age: float, rate) -> np.ndarray:
    """Fraction of grey matter lost at ``age`` (years) for regions of ``rate`` (loss at 85).

    ``rate · (age − 20) / 65``, 0 before 20, clipped to [0, 1]; ``rate`` may be an array (a
    voxelwise rate map) or a float.
    """
    t = max(float(age) - ATROPHY_ONSET_AGE, 0.0) / (REFERENCE_AGE - ATROPHY_ONSET_AGE)
    return np.clip(np.asarray(rate, dtype=np.float32) * np.float32(t), 0.0, 1.0)


def expected_lesion_count(age: float, lesion_rate: float = 0.03) -> float:
    """Poisson mean of the lesion count at ``age`` (years): ``lesion_rate · (age − 40) ** 1.5``."""
    return float(lesion_rate) * max(float(age) - LESION_ONSET_AGE, 0.0) ** 1.5


# --------------------------------------------------------------------------------------------
# partial volumes, lesions and ground truth on the grid


def _subject_curves(rng, params):
    """One subject's ventricle-growth and cortical-thinning curves, each age → mm.

    Parameters
    ----------
    rng : numpy.random.Generator
        The phantom's effect stream; draws the two standard-normal ``z``.
    params : dict
        Validated phantom parameters (``effect_sd``, ``ventricle_growth_mm``,
        ``ventricle_exponent``, ``cortical_thinning_mm``).

    Returns
    -------
    growth, thinning : callable
        :func:`ventricle_growth` and :func:`cortical_thinning` with the subject's parameters,
        times its own rate factor ``max(1 + effect_sd · z, 0)``.
    """
    z = rng.standard_normal(2)
    vent_factor = max(1.0 + params["effect_sd"] * z[0], 0.0)
    cortex_factor = max(1.0 + params["effect_sd"] * z[1], 0.0)

    def growth(a):
        return vent_factor * ventricle_growth(
            a, params["ventricle_growth_mm"], params["ventricle_exponent"]
        )

    def thinning(a):
        return cortex_factor * cortical_thinning(a, params["cortical_thinning_mm"])

    return growth, thinning


def _subject_atrophy_factor(rng, params) -> float:
    """Draw the subject's own rate factor ``max(1 + effect_sd · z, 0)`` of regional atrophy."""
    return max(1.0 + params["effect_sd"] * float(rng.standard_normal()), 0.0)


def _partial(level_mm, distance, voxel_mm):
    """Fraction of a voxel (centre at ``distance`` mm) lying below ``level_mm``: a soft step."""
    return np.clip((level_mm - distance) / voxel_mm + 0.5, 0.0, 1.0).astype(np.float32)


def _eroded(thinning_mm, depth, voxel_mm):
    """Fraction of the inside part of a voxel lying within ``thinning_mm`` of the outer surface.

    ``depth`` is the voxel centre's depth below the surface (mm, negative outside). 0 for every
    voxel when ``thinning_mm`` is 0; the outermost inside voxel (depth = voxel/2) loses
    ``thinning_mm / voxel_mm`` of its grey matter.
    """
    outside = _partial(0.0, depth, voxel_mm)
    within = _partial(thinning_mm, depth, voxel_mm) - outside
    inside = 1.0 - outside
    return np.where(inside > 1e-6, within / np.maximum(inside, 1e-6), 0.0).astype(np.float32)


def _place_lesions(rng, age, rate, radius_mm, brain, wm, ventricle_mm, depth, voxel_mm):
    """Draw white-matter lesions in periventricular and deep white matter.

    Parameters
    ----------
    rng : numpy.random.Generator
        The phantom's lesion stream; draws the count, then the centres, radii and sub-voxel
        offsets, in that order.
    age : float
        Years; the count is ``Poisson(expected_lesion_count(age, rate))``.
    rate : float
        ``lesion_rate`` of :func:`expected_lesion_count`.
    radius_mm : (float, float)
        Range of the uniform lesion radius (mm).
    brain : ndarray of bool
        Brain mask on the target grid.
    wm : ndarray, float32
        White-matter fraction after ventricle enlargement; centres need ``wm ≥ 0.5`` and are
        weighted by ``wm · exp(−distance to the grown ventricles / 15 mm)``.
    ventricle_mm : ndarray
        Signed distance (mm) of each voxel from the grown ventricle surface (positive outside);
        centres need at least half a voxel.
    depth : ndarray
        Depth (mm) below the outer brain surface; centres need at least 8 mm.
    voxel_mm : float
        Voxel size (mm).

    Returns
    -------
    fraction : ndarray, float32, shape ``brain.shape``
        Part of each voxel inside a lesion (spheres' partial volumes, the maximum where they
        overlap).
    count : int
        Number of lesions placed (0 when no voxel qualifies as a centre).
    """
    r = voxel_mm
    fraction = np.zeros(brain.shape, dtype=np.float32)
    count = int(rng.poisson(expected_lesion_count(age, rate)))
    candidates = brain & (wm >= 0.5) & (depth >= 8.0) & (ventricle_mm >= r / 2)
    idx = np.flatnonzero(candidates)
    if not (count and idx.size):
        return fraction, 0
    weight = wm.ravel()[idx] * np.exp(-ventricle_mm.ravel()[idx] / 15.0)
    picks = rng.choice(idx, size=count, p=weight / weight.sum())
    radii = rng.uniform(radius_mm[0], radius_mm[1], size=count)
    jitter = rng.uniform(-0.5, 0.5, size=(count, 3))
    for pick, radius, jit in zip(picks, radii, jitter, strict=True):
        centre = np.array(np.unravel_index(pick, brain.shape), dtype=float) + jit
        reach = (radius + r) / r
        lo = np.maximum(np.floor(centre - reach).astype(int), 0)
        hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, brain.shape)
        box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
        grid = np.indices(hi - lo, dtype=float) + lo[:, None, None, None]
        dist = np.sqrt(np.sum((grid - centre[:, None, None, None]) ** 2, axis=0)) * r
        fraction[box] = np.maximum(fraction[box], _partial(radius, dist, r))
    return fraction, count


def _truth_masks(brain, ventricle_change, cortex_change, lesion, region_change=None):
    """Ground-truth masks (:data:`MASK_NAMES`): voxels whose tissue changes by ≥ :data:`MIN_CHANGE`.

    Parameters
    ----------
    brain : ndarray of bool
        Brain mask.
    ventricle_change, cortex_change : ndarray
        Fraction of each voxel that ventricle enlargement and cortical thinning change over the
        mask's age range.
    lesion : ndarray
        Lesion fraction of each voxel.
    region_change : ndarray, optional
        Fraction of each voxel that regional atrophy changes over the age range (``None``: no
        regional atrophy, an empty ``"regions"`` mask).

    Returns
    -------
    dict of str to ndarray of bool
        ``"brain"``, ``"ventricles"``, ``"cortex"``, ``"lesions"``, ``"regions"`` and
        ``"ageeffect"`` (the union of the effects).
    """
    masks = {
        "brain": brain,
        "ventricles": brain & (ventricle_change >= MIN_CHANGE),
        "cortex": brain & (cortex_change >= MIN_CHANGE),
        "lesions": brain & (lesion >= MIN_CHANGE),
        "regions": brain & (region_change >= MIN_CHANGE)
        if region_change is not None
        else np.zeros_like(brain),
    }
    masks["ageeffect"] = masks["ventricles"] | masks["cortex"] | masks["lesions"] | masks["regions"]
    return masks


def _cortical_thickness(brain, depth, gm, cortex, voxel_mm):
    """Thickness proxy (mm): grey-matter volume in ``cortex`` over the outer brain surface area.

    The surface is the faces between parenchyma (``brain`` with ``depth > 0``) and the rest.
    """
    parenchyma = brain & (depth > 0)
    faces = sum(
        int(np.count_nonzero(np.diff(parenchyma.astype(np.int8), axis=ax))) for ax in range(3)
    )
    area_mm2 = max(faces, 1) * voxel_mm * voxel_mm
    return float(gm[cortex].sum() * voxel_mm**3 / area_mm2)


def _age_tissue(
    age, ages, growth, thinning, brain, gm, wm, distances, voxel_mm, lesions=None, atrophy=None
):
    """Age a subject's tissue fractions by its three effects and mark where they act.

    Parameters
    ----------
    age : float
        Years.
    ages : (float, float)
        Ages over which ``masks["ventricles"]`` and ``masks["cortex"]`` mark the effects.
    growth, thinning : callable
        Age → the subject's ventricle growth and cortical thinning (mm).
    brain : ndarray of bool
        Brain mask on the target grid.
    gm, wm : ndarray, float32
        The subject's young grey- and white-matter fractions (0 outside ``brain``).
    distances : dict of str to ndarray
        On the target grid (mm): ``"ventricle"`` (signed distance from the template's lateral
        ventricles), ``"depth"`` (below the outer parenchyma surface), ``"hull"`` (below the
        brain mask's surface; thinning acts only within :data:`CORTEX_MAX_HULL_DEPTH_MM`).
    voxel_mm : float
        Voxel size (mm).
    lesions : (numpy.random.Generator, float, (float, float)), optional
        Random stream, ``lesion_rate`` and radius range of :func:`_place_lesions`; ``None`` for
        no lesions.
    atrophy : ndarray, optional
        Regional-atrophy rate of every voxel (grey-matter fraction lost by age 85, the subject's
        rate factor included; :func:`regional_atrophy`); ``None`` for none.

    Returns
    -------
    tissues : dict of str to ndarray, float32
        Fractions ``"csf"``, ``"gm"``, ``"wm"``, ``"lesion"`` at ``age``.
    masks : dict of str to ndarray of bool
        :func:`_truth_masks`.
    unchanged : ndarray
        Fraction of each voxel that age has left as it was.
    change : ndarray, float32
        Fraction of each voxel's tissue that the effects change over ``ages`` (ventricles,
        thinning and regional atrophy; lesions: this subject's lesion fraction): the continuous
        ground truth that the masks threshold at :data:`MIN_CHANGE`.
    sizes : dict
        ``lesion_count``, ``lesion_voxels``, ``lesion_volume_ml``, ``ventricle_volume_ml`` and
        ``cortical_thickness_mm`` (:func:`_cortical_thickness`): fields of
        :class:`brainage.simulate.Phantom`.
    """
    r = voxel_mm
    vent_sd, depth = distances["ventricle"], distances["depth"]

    # ventricles
    tissue0 = gm + wm
    f_vent = np.where(brain, _partial(growth(age), vent_sd, r), 0)
    gm1, wm1 = gm * (1 - f_vent), wm * (1 - f_vent)
    vent_change = tissue0 * (
        _partial(growth(ages[1]), vent_sd, r) - _partial(growth(ages[0]), vent_sd, r)
    )

    # cortical thinning (GM only), restricted to the cortex: within CORTEX_MAX_HULL_DEPTH_MM of
    # the brain's outer hull (excludes the third ventricle and the basal cisterns)
    cortical = brain & (distances["hull"] <= CORTEX_MAX_HULL_DEPTH_MM)
    erode = np.where(cortical, _eroded(thinning(age), depth, r), 0)
    gm2 = gm1 * (1 - erode)
    cortex_change = gm1 * np.where(
        cortical, _eroded(thinning(ages[1]), depth, r) - _eroded(thinning(ages[0]), depth, r), 0
    )

    # regional atrophy: a share of the grey matter of the design's regions turns into CSF
    region_change, atrophied = None, np.zeros_like(gm2)
    if atrophy is not None:
        atrophy = np.where(brain, atrophy, 0).astype(np.float32)
        atrophied = gm2 * regional_atrophy(age, atrophy)
        loss = regional_atrophy(ages[1], atrophy) - regional_atrophy(ages[0], atrophy)
        region_change = gm2 * loss
        gm2 = gm2 - atrophied

    # lesions in periventricular / deep white matter
    lesion_frac, n_lesions = np.zeros(brain.shape, dtype=np.float32), 0
    if lesions is not None:
        rng, rate, radius_mm = lesions
        lesion_frac, n_lesions = _place_lesions(
            rng, age, rate, radius_mm, brain, wm1, vent_sd - growth(age), depth, r
        )
    les = wm1 * lesion_frac
    wm2 = wm1 - les
    csf2 = np.where(brain, np.clip(1 - gm2 - wm2 - les, 0, 1), 0)
    tissues = {"csf": csf2, "gm": gm2, "wm": wm2, "lesion": les}
    tissues = {k: v.astype(np.float32) for k, v in tissues.items()}
    masks = _truth_masks(brain, vent_change, cortex_change, les, region_change)
    change = vent_change + cortex_change + les
    if region_change is not None:
        change = change + region_change
    change = np.where(brain, np.clip(change, 0, 1), 0).astype(np.float32)

    unchanged = np.clip(1 - tissue0 * f_vent - gm1 * erode - atrophied - les, 0, 1)
    voxel_ml = r**3 / 1000.0
    sizes = {
        "lesion_count": n_lesions,
        "lesion_voxels": int(masks["lesions"].sum()),
        "lesion_volume_ml": float(les.sum() * voxel_ml),
        "ventricle_volume_ml": float(f_vent.sum() * voxel_ml),
        "cortical_thickness_mm": _cortical_thickness(brain, depth, gm2, masks["cortex"], r),
    }
    return tissues, masks, unchanged, change, sizes
