"""3D brain phantoms with known age effects (METHODS §11; paper 001 extended to 3D).

A phantom is the MNI152 2009a template (its T1w image and GM/WM probability maps, on
:func:`brainage.space.template_grid`) given an individual anatomy by a random smooth deformation,
then aged by three effects whose voxels are known:

* **ventricle enlargement** — the lateral ventricles (derived from the template) grow into the
  surrounding tissue by ``ventricle_growth_mm · ((age − 20) / 65) ** ventricle_exponent``;
* **cortical thinning** — grey matter within ``cortical_thinning_mm · (age − 20) / 65`` of the
  outer brain surface turns into CSF;
* **white-matter lesions** — ``Poisson(lesion_rate · (age − 40) ** 1.5)`` small spheres (none
  before 40) in periventricular and deep white matter, hypointense on T1w and hyperintense on
  FLAIR;
* optionally **regional atrophy** (the region-truth design, ``regional_atrophy``): in chosen
  Harvard-Oxford regions a share ``rate · (age − 20) / 65`` of the grey matter turns into CSF,
  with a known rate per region (:data:`brainage.simulate.effects.REGIONAL_ATROPHY`).

Each voxel holds partial-volume fractions of CSF, GM, WM and lesion, so every effect grows
continuously with age even on a 4 mm grid. Images are the fractions times per-contrast tissue
intensities (T1w also keeps the template's texture), times a smooth multiplicative bias field,
with Rician noise; outside the brain they are 0 (skull-stripped, already in template space).

This module assembles a phantom (:func:`make_phantom`, :class:`Phantom`); the age effects and
their ground-truth masks live in :mod:`brainage.simulate.effects`, the deformation, bias field,
tissue intensities and noise in :mod:`brainage.simulate.synthesis`.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field

import numpy as np

from brainage.errors import ConfigError, did_you_mean
from brainage.simulate._anatomy import template_anatomy
from brainage.simulate._checks import _check_number, _check_range
from brainage.simulate.effects import (
    ATROPHY_ONSET_AGE,
    CORTEX_MAX_HULL_DEPTH_MM,
    LESION_ONSET_AGE,
    MASK_NAMES,
    MIN_CHANGE,
    REFERENCE_AGE,
    REGION_ATLAS,
    _age_tissue,
    _subject_atrophy_factor,
    _subject_curves,
    cortical_thinning,
    expected_lesion_count,
    ventricle_growth,
)
from brainage.simulate.synthesis import (
    CONTRASTS,
    CONTROL_SPACING_MM,
    TISSUE_INTENSITIES,
    _bias,
    _check_intensities,
    _displacement,
    _images,
    _warp,
    _young_tissue,
    check_contrasts,
)
from brainage.space import template_grid

__all__ = [
    "ATROPHY_ONSET_AGE",
    "CONTRASTS",
    "CONTROL_SPACING_MM",
    "CORTEX_MAX_HULL_DEPTH_MM",
    "LESION_ONSET_AGE",
    "MASK_NAMES",
    "MIN_CHANGE",
    "REFERENCE_AGE",
    "TISSUE_INTENSITIES",
    "Phantom",
    "check_contrasts",
    "cortical_thinning",
    "expected_lesion_count",
    "make_phantom",
    "validate_phantom_params",
    "ventricle_growth",
]

# Independent random streams of one phantom (SeedSequence spawn keys): the anatomy of a seed is
# the same whatever the age, the contrasts or the lesion count.
_STREAMS = {"deformation": 0, "effects": 1, "lesions": 2, "bias": 3, "T1w": 4, "FLAIR": 5}


@dataclass
class Phantom:
    """One synthetic subject on the template grid, with the ground truth of its age effects.

    Attributes
    ----------
    images : dict of str to ndarray, float32, shape ``template_grid(resolution_mm).shape``
        Contrast name (``"T1w"``, ``"FLAIR"``) → image; 0 outside the brain.
    masks : dict of str to ndarray of bool, same shape
        ``"brain"``; ``"ventricles"`` (where ventricle enlargement changes the image between
        ``age_range[0]`` and ``age_range[1]``); ``"cortex"`` (the thinning band over the same ages);
        ``"lesions"`` (this subject's lesion voxels); ``"regions"`` (where regional atrophy
        changes the tissue over those ages; empty without it); ``"ageeffect"`` (their union:
        every voxel where age acts on this subject's anatomy).
    change : ndarray, float32, same shape
        Fraction of each voxel's tissue that age changes between ``age_range[0]`` and
        ``age_range[1]`` (all effects; lesions: this subject's lesion fraction), in [0, 1]: the
        continuous truth the masks threshold at :data:`MIN_CHANGE`; its mean over an atlas region
        is that region's true effect.
    tissues : dict of str to ndarray, float32, same shape
        Partial-volume fractions ``"csf"``, ``"gm"``, ``"wm"``, ``"lesion"`` (sum 1 in the brain).
    age : float
        Years.
    affine : ndarray, shape (4, 4)
        Voxel → MNI152NLin2009aSym mm; equals ``template_grid(resolution_mm).affine``.
    seed : int
    lesion_count : int
        Number of lesions placed.
    lesion_voxels : int
        Voxels in ``masks["lesions"]``.
    lesion_volume_ml : float
        Sum of lesion fractions × voxel volume (mL).
    ventricle_volume_ml : float
        Lateral-ventricle volume (mL, partial volumes summed).
    ventricle_growth_mm : float
        Distance the ventricles grew into the surrounding tissue at this age (mm).
    cortical_thinning_mm : float
        Depth of cortical grey matter turned into CSF at this age (mm).
    cortical_thickness_mm : float
        Thickness proxy: grey-matter volume in ``masks["cortex"]`` divided by the area of the
        outer brain surface (mm); decreases with age.
    cortex_intensity : dict of str to float
        Mean noise- and bias-free intensity of each contrast inside ``masks["cortex"]``.
    params : dict
        The parameters the phantom was made with.
    """

    images: dict
    masks: dict
    change: np.ndarray
    tissues: dict
    age: float
    affine: np.ndarray
    seed: int
    lesion_count: int
    lesion_voxels: int
    lesion_volume_ml: float
    ventricle_volume_ml: float
    ventricle_growth_mm: float
    cortical_thinning_mm: float
    cortical_thickness_mm: float
    cortex_intensity: dict
    params: dict = field(default_factory=dict)

    def effects(self) -> dict:
        """Return the per-subject effect sizes as a flat dict (one row of ``truth.tsv``)."""
        row = {
            "age": self.age,
            "phantom_seed": self.seed,
            "ventricle_volume_ml": self.ventricle_volume_ml,
            "ventricle_growth_mm": self.ventricle_growth_mm,
            "cortical_thinning_mm": self.cortical_thinning_mm,
            "cortical_thickness_mm": self.cortical_thickness_mm,
        }
        for contrast, value in self.cortex_intensity.items():
            row[f"cortex_{contrast}_mean"] = value
        row.update(
            lesion_count=self.lesion_count,
            lesion_voxels=self.lesion_voxels,
            lesion_volume_ml=self.lesion_volume_ml,
        )
        for name in ("ventricles", "cortex", "regions", "ageeffect"):
            row[f"{name}_voxels"] = int(self.masks[name].sum())
        return row


# --------------------------------------------------------------------------------------------
# parameters and the phantom


def validate_phantom_params(**params) -> dict:
    """Validate :func:`make_phantom` parameters (all but ``age`` and ``seed``).

    Parameters
    ----------
    **params
        Any keyword arguments of :func:`make_phantom` except ``age`` and ``seed``; missing ones
        take their defaults.

    Returns
    -------
    dict
        Every parameter, validated and JSON-ready (tuples as lists, contrasts canonical,
        ``intensities`` completed for the chosen contrasts).

    Raises
    ------
    ConfigError
        An unknown parameter name (with a "did you mean" hint) or an invalid value.
    """
    signature = inspect.signature(make_phantom)
    names = [n for n in signature.parameters if n not in ("age", "seed")]
    for name in params:
        if name not in names:
            raise ConfigError(f"unknown phantom parameter {name!r}; {did_you_mean(name, names)}")
    p = {n: params.get(n, signature.parameters[n].default) for n in names}
    r = float(template_grid(_check_number("resolution_mm", p["resolution_mm"], 0, 100)).resolution)
    contrasts = check_contrasts(p["contrasts"])
    out = {"resolution_mm": r, "contrasts": list(contrasts), "lesions": bool(p["lesions"])}
    for name, low, high in (
        ("noise", 0.0, 1.0),
        ("bias_field", 0.0, 1.0),
        ("deformation_mm", 0.0, 20.0),
        ("deformation_smoothness_mm", 2.0, 100.0),
        ("ventricle_growth_mm", 0.0, 20.0),
        ("ventricle_exponent", 0.1, 5.0),
        ("cortical_thinning_mm", 0.0, 10.0),
        ("lesion_rate", 0.0, 10.0),
        ("effect_sd", 0.0, 1.0),
        ("texture", 0.0, 5.0),
    ):
        out[name] = _check_number(name, p[name], low, high)
    out["lesion_radius_mm"] = list(
        _check_range("lesion_radius_mm", p["lesion_radius_mm"], 0.5, 20.0)
    )
    table = _check_intensities(p["intensities"])
    out["intensities"] = {c: table[c] for c in contrasts}
    out["age_range"] = list(_check_range("age_range", p["age_range"], 0.0, 130.0))
    out["regional_atrophy"] = _check_atrophy(p["regional_atrophy"])
    return out


def _check_atrophy(rates) -> dict | None:
    """Validate ``regional_atrophy``: ``None`` or region name of :data:`REGION_ATLAS` → rate."""
    if rates is None:
        return None
    if not isinstance(rates, dict) or not rates:
        raise ConfigError(
            "'regional_atrophy' must be a mapping of Harvard-Oxford region names to the fraction "
            "of grey matter lost by age 85 (see brainage.simulate.effects.REGIONAL_ATROPHY)"
        )
    from brainage.simulate._anatomy import region_names

    names = region_names()
    out = {}
    for name, rate in sorted(rates.items()):
        if name not in names:
            raise ConfigError(
                f"'regional_atrophy': {name!r} is not a region of the {REGION_ATLAS} atlas; "
                f"{did_you_mean(str(name), sorted(names))}"
            )
        out[str(name)] = _check_number(f"regional_atrophy[{name!r}]", rate, 0.0, 1.0)
    return out


def make_phantom(
    age: float,
    resolution_mm: float = 4.0,
    seed: int = 0,
    contrasts=("T1w",),
    lesions: bool = True,
    noise: float = 0.03,
    bias_field: float = 0.1,
    deformation_mm: float = 2.0,
    deformation_smoothness_mm: float = 16.0,
    ventricle_growth_mm: float = 3.0,
    ventricle_exponent: float = 1.5,
    cortical_thinning_mm: float = 2.5,
    lesion_rate: float = 0.03,
    lesion_radius_mm=(2.0, 4.0),
    effect_sd: float = 0.1,
    texture: float = 1.0,
    intensities: dict | None = None,
    age_range=(20.0, 85.0),
    regional_atrophy: dict | None = None,
) -> Phantom:
    """Make one 3D brain phantom of a given age with known age effects (METHODS §11).

    Parameters
    ----------
    age : float
        Age in years, 0–130.
    resolution_mm : float
        Grid resolution in mm; the phantom lives on ``template_grid(resolution_mm)`` (4 mm:
        40 × 48 × 40 voxels, 2 mm: 80 × 96 × 80) in MNI152NLin2009aSym.
    seed : int
        Non-negative. Fixes the anatomy (deformation), the individual effect rates, the lesion
        positions, the bias field and the noise; each from its own random stream, so the anatomy of
        a seed is the same at every age and for every contrast.
    contrasts : sequence of {"T1w", "FLAIR"}
        Images to make.
    lesions : bool
        Whether white-matter lesions are added.
    noise : float
        Standard deviation of the Gaussian noise of the two channels of the Rician noise, in
        image units (WM on T1w ≈ 0.88).
    bias_field : float
        Strength of the multiplicative bias field: the field is ``exp(bias_field · p)`` with ``p`` a
        random smooth quadratic in [−1, 1] over the grid box (0 = none).
    deformation_mm : float
        Root-mean-square length (mm) of the random smooth displacement that gives the subject its
        own anatomy (0 = the template).
    deformation_smoothness_mm : float
        Standard deviation (mm) of the Gaussian that smooths the random displacement.
    ventricle_growth_mm : float
        Growth (mm) of the lateral ventricles into the surrounding tissue at age 85; growth is
        ``ventricle_growth_mm · ((age − 20) / 65) ** ventricle_exponent``, 0 before age 20.
    ventricle_exponent : float
        Exponent of that growth curve (> 1: accelerating with age).
    cortical_thinning_mm : float
        Depth (mm) of grey matter below the outer brain surface turned into CSF at age 85,
        linear in age from 0 at 20.
    lesion_rate : float
        Lesion count ~ Poisson(``lesion_rate · (age − 40) ** 1.5``), 0 before 40 (≈ 9 at 85).
    lesion_radius_mm : (float, float)
        Range of the uniform lesion radius (mm).
    effect_sd : float
        Relative standard deviation of the subject's own rates of ventricle growth and cortical
        thinning (normal factor ``1 + effect_sd · z``, clipped at 0).
    texture : float
        Weight of the template's T1w detail not explained by the tissue model (T1w only).
    intensities : dict, optional
        Overrides of :data:`TISSUE_INTENSITIES`, e.g. ``{"FLAIR": {"lesion": 1.2}}``.
    age_range : (float, float)
        Ages (years) over which ``masks["ventricles"]`` and ``masks["cortex"]`` mark where the
        effects act; widened to include ``age``.
    regional_atrophy : dict of str to float, optional
        The region-truth design: Harvard-Oxford region name → fraction of its grey matter turned
        into CSF by age 85 (linear from 20, times the subject's own rate factor). The rate map is
        drawn on the template and deformed with the subject. ``design_rates(names)`` gives the
        design of :data:`brainage.simulate.effects.REGIONAL_ATROPHY`. ``None``: no regional
        atrophy.

    Returns
    -------
    Phantom
        Images, masks and tissue fractions of shape ``template_grid(resolution_mm).shape`` with
        ``affine = template_grid(resolution_mm).affine`` (voxel → MNI mm), and the effect sizes.

    Raises
    ------
    ConfigError
        A parameter is out of range or a contrast name is unknown.

    Notes
    -----
    The tissue fractions start from the deformed template GM/WM maps (CSF = the rest inside the
    brain mask). Ventricles: a voxel's ventricle fraction is the part of it within the grown
    ventricle surface (signed distance from the template's lateral ventricles, CSF-dark template
    voxels with low GM and WM probability connected to the ventricle centres); it replaces GM and
    WM. Cortex: the part of a voxel within the thinning depth below the outer surface (depth
    computed on the template's parenchyma, GM + WM > 0.2 with holes filled; only within
    :data:`CORTEX_MAX_HULL_DEPTH_MM` of the brain mask's surface, which leaves out the grey matter
    around the third ventricle) turns its GM into CSF. Lesion centres are drawn among voxels with
    WM ≥ 0.5, at least 8 mm deep and outside the grown ventricles, with weight
    ``WM · exp(−distance to the ventricles / 15 mm)`` (periventricular and deep white matter);
    lesions replace WM. A voxel belongs to a ground-truth mask when at least 5 % of its tissue
    changes (:data:`MIN_CHANGE`); outside the masks age changes no voxel by more than that.

    Distances are computed once per resolution on a 2 mm analysis grid (or the target grid when
    finer) and sampled through the subject's deformation; the deformation and bias field are drawn
    on an 8 mm control grid, so one seed gives the same anatomy at every resolution.
    """
    age = _check_number("age", age, 0, 130)
    seed = _check_number("seed", seed, 0, 2**63 - 1, integer=True)
    params = validate_phantom_params(
        resolution_mm=resolution_mm,
        contrasts=contrasts,
        lesions=lesions,
        noise=noise,
        bias_field=bias_field,
        deformation_mm=deformation_mm,
        deformation_smoothness_mm=deformation_smoothness_mm,
        ventricle_growth_mm=ventricle_growth_mm,
        ventricle_exponent=ventricle_exponent,
        cortical_thinning_mm=cortical_thinning_mm,
        lesion_rate=lesion_rate,
        lesion_radius_mm=lesion_radius_mm,
        effect_sd=effect_sd,
        texture=texture,
        intensities=intensities,
        age_range=age_range,
        regional_atrophy=regional_atrophy,
    )
    r = params["resolution_mm"]
    age_lo, age_hi = min(params["age_range"][0], age), max(params["age_range"][1], age)

    def stream(name):
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[name],)))

    anat = template_anatomy(r)
    world = anat.world_coordinates()

    # individual anatomy: backward warp of every template field
    disp = _displacement(
        stream("deformation"),
        anat.shape,
        r,
        params["deformation_mm"],
        params["deformation_smoothness_mm"],
    )
    on_target, on_analysis = _warp(anat, world + disp, r)
    brain, gm0, wm0 = _young_tissue(on_target)

    # individual effect rates and the three age effects
    effects_stream = stream("effects")
    growth, thinning = _subject_curves(effects_stream, params)
    atrophy, factor = None, 1.0
    if params["regional_atrophy"]:
        from brainage.simulate._anatomy import atrophy_rate_map

        factor = _subject_atrophy_factor(effects_stream, params)
        rates = atrophy_rate_map(anat.analysis_resolution_mm, params["regional_atrophy"])
        atrophy = factor * on_analysis(rates)
    tissues, masks, unchanged, change, sizes = _age_tissue(
        age,
        (age_lo, age_hi),
        growth,
        thinning,
        brain,
        gm0,
        wm0,
        {name: on_analysis(name) for name in ("ventricle", "depth", "hull")},
        r,
        (stream("lesions"), params["lesion_rate"], params["lesion_radius_mm"])
        if params["lesions"]
        else None,
        atrophy,
    )

    # images
    texture_map = on_target("texture") * unchanged * params["texture"]
    bias = _bias(stream("bias"), world, params["bias_field"]) if params["bias_field"] > 0 else None
    images, cortex_intensity = _images(
        tuple(params["contrasts"]),
        params["intensities"],
        tissues,
        brain,
        masks["cortex"],
        texture_map,
        bias,
        params["noise"],
        stream,
    )

    return Phantom(
        images=images,
        masks=masks,
        change=change,
        tissues=tissues,
        age=age,
        affine=template_grid(r).affine,
        seed=seed,
        ventricle_growth_mm=float(growth(age)),
        cortical_thinning_mm=float(thinning(age)),
        cortex_intensity=cortex_intensity,
        params=params,
        **sizes,
    )
