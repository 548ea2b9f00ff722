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
  FLAIR.

Each voxel holds partial-volume fractions of CSF, GM, WM and lesion, so every effect grows
continuously with age even on a 4 mm grid. Images are the fractions times per-contrast tissue
intensities (T1w also keeps the template's texture), times a smooth multiplicative bias field,
with Rician noise; outside the brain they are 0 (skull-stripped, already in template space).
"""

from __future__ import annotations

import functools
import inspect
import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage as ndi

from brainage.errors import ConfigError, did_you_mean
from brainage.simulate._anatomy import template_anatomy
from brainage.space import BOX_ORIGIN_MM, BOX_SIZE_MM, template_grid

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
#: Spacing (mm) of the control grid on which the random deformation and bias field are drawn;
#: fixed in mm, so one seed gives the same anatomy at every resolution.
CONTROL_SPACING_MM = 8.0

#: Tissue intensities per contrast (T1w values are the MNI152 template's own tissue means).
TISSUE_INTENSITIES = {
    "T1w": {"csf": 0.28, "gm": 0.66, "wm": 0.88, "lesion": 0.45},
    "FLAIR": {"csf": 0.10, "gm": 0.70, "wm": 0.50, "lesion": 1.00},
}
CONTRASTS = tuple(TISSUE_INTENSITIES)
MASK_NAMES = ("brain", "ventricles", "cortex", "lesions", "ageeffect")

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
        ``"lesions"`` (this subject's lesion voxels); ``"ageeffect"`` (their union: every voxel
        where age acts on this subject's anatomy).
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
        for name in ("ventricles", "cortex", "ageeffect"):
            row[f"{name}_voxels"] = int(self.masks[name].sum())
        return row


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


def expected_lesion_count(age: float, lesion_rate: float = 0.03) -> float:
    """Poisson mean of the lesion count at ``age`` (years): ``lesion_rate · (age − 40) ** 1.5``."""
    return float(lesion_rate) * max(float(age) - LESION_ONSET_AGE, 0.0) ** 1.5


# --------------------------------------------------------------------------------------------
# validation


def _check_number(name, value, low=None, high=None, integer=False):
    ok_type = (
        isinstance(value, (int, np.integer))
        if integer
        else isinstance(value, (int, float, np.integer, np.floating))
    )
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"'{name}' must be {kind}; got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"'{name}' must be between {low} and {high}; got {value!r}")
    return int(value) if integer else float(value)


def _check_range(name, value, low, high):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"'{name}' must be a pair (low, high); got {value!r}") from None
    if not (low <= lo < hi <= high):
        raise ConfigError(f"'{name}' must satisfy {low} <= low < high <= {high}; got {value!r}")
    return lo, hi


def check_contrasts(contrasts) -> tuple:
    """Validate contrast names (case-insensitive) and return them canonical, e.g. ``("T1w",)``."""
    if isinstance(contrasts, str):
        contrasts = (contrasts,)
    try:
        contrasts = tuple(contrasts)
    except TypeError:
        raise ConfigError(f"'contrasts' must be a list of names; got {contrasts!r}") from None
    canonical = {c.lower(): c for c in CONTRASTS}
    out = []
    for c in contrasts:
        key = str(c).lower()
        if key not in canonical:
            raise ConfigError(f"unknown contrast {c!r}; {did_you_mean(str(c), CONTRASTS)}")
        if canonical[key] not in out:
            out.append(canonical[key])
    if not out:
        raise ConfigError("'contrasts' must name at least one contrast; got none")
    return tuple(out)


def _check_intensities(intensities):
    table = {c: dict(v) for c, v in TISSUE_INTENSITIES.items()}
    if intensities is None:
        return table
    if not isinstance(intensities, dict):
        raise ConfigError(
            f"'intensities' must be a dict contrast -> tissue -> value; got {intensities!r}"
        )
    for contrast, values in intensities.items():
        name = check_contrasts((contrast,))[0]
        for tissue, value in dict(values).items():
            if tissue not in table[name]:
                hint = did_you_mean(tissue, table[name])
                raise ConfigError(f"unknown tissue {tissue!r} in 'intensities'; {hint}")
            table[name][tissue] = _check_number(f"intensities[{contrast}][{tissue}]", value, 0, 10)
    return table


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
    return out


# --------------------------------------------------------------------------------------------
# random fields on the control grid (resolution-independent)


def _control_shape():
    return tuple(int(np.ceil(s / CONTROL_SPACING_MM)) + 1 for s in BOX_SIZE_MM)


@functools.lru_cache(maxsize=16)
def _control_weights(n_target: int, spacing_mm: float, n_control: int) -> np.ndarray:
    """Cubic-spline interpolation matrix, shape (n_target, n_control), from the control grid.

    Target voxel ``i`` lies at ``i · spacing_mm`` from the box origin, control point ``j`` at
    ``j · CONTROL_SPACING_MM``; spline interpolation is linear and separable, so a 3D field is
    interpolated by applying one such matrix per axis.
    """
    coords = np.arange(n_target, dtype=float)[None] * spacing_mm / CONTROL_SPACING_MM
    eye = np.eye(n_control)
    weights = np.stack(
        [ndi.map_coordinates(eye[j], coords, order=3, mode="nearest") for j in range(n_control)],
        axis=1,
    )
    weights.setflags(write=False)
    return weights


def _sample_control(field_, shape, spacing_mm):
    """Interpolate a control-grid field onto the target grid ``shape`` (voxel size in mm)."""
    mats = [_control_weights(n, spacing_mm, m) for n, m in zip(shape, field_.shape, strict=True)]
    return np.einsum("ia,jb,kc,abc->ijk", *mats, field_, optimize=True).astype(np.float32)


def _displacement(rng, shape, spacing_mm, amplitude_mm, smoothness_mm):
    """Gaussian-smoothed random displacement (mm), shape (3, *shape), RMS length ``amplitude_mm``.

    Drawn on the control grid (fixed in mm), so a seed gives the same field at every resolution.
    """
    noise = rng.standard_normal((3, *_control_shape()))
    sigma = smoothness_mm / CONTROL_SPACING_MM
    smooth = np.stack([ndi.gaussian_filter(n, sigma, mode="wrap") for n in noise])
    rms = np.sqrt(np.mean(np.sum(smooth**2, axis=0)))
    smooth *= amplitude_mm / max(rms, 1e-12)
    return np.stack([_sample_control(c, shape, spacing_mm) for c in smooth])


def _bias(rng, world, strength):
    """Smooth multiplicative field ``exp(strength · p)``, p a random quadratic with max |p| = 1."""
    centre = np.asarray(BOX_ORIGIN_MM) + np.asarray(BOX_SIZE_MM) / 2
    half = np.asarray(BOX_SIZE_MM) / 2
    x, y, z = ((world[i] - centre[i]) / half[i] for i in range(3))
    terms = [x, y, z, x * x, y * y, z * z, x * y, x * z, y * z]
    coef = rng.standard_normal(len(terms))
    p = sum(c * t for c, t in zip(coef, terms, strict=True))
    p = p - p.mean()
    p = p / max(float(np.abs(p).max()), 1e-12)
    return np.exp(strength * p).astype(np.float32)


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


# --------------------------------------------------------------------------------------------


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
    )
    r = params["resolution_mm"]
    contrasts = tuple(params["contrasts"])
    rad_lo, rad_hi = params["lesion_radius_mm"]
    table = params["intensities"]
    age_lo, age_hi = min(params["age_range"][0], age), max(params["age_range"][1], age)

    def stream(name):
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[name],)))

    anat = template_anatomy(r)
    voxel_ml = r**3 / 1000.0
    world = anat.world_coordinates()

    # individual anatomy: backward warp of every template field
    disp = _displacement(
        stream("deformation"),
        anat.shape,
        r,
        params["deformation_mm"],
        params["deformation_smoothness_mm"],
    )
    warped = world + disp
    coords_t = (warped - np.asarray(BOX_ORIGIN_MM)[:, None, None, None]) / r
    coords_a = (
        warped - np.asarray(BOX_ORIGIN_MM)[:, None, None, None]
    ) / anat.analysis_resolution_mm

    def on_target(name):
        return ndi.map_coordinates(anat.fields[name], coords_t, order=1, mode="constant", cval=0.0)

    def on_analysis(name):
        return ndi.map_coordinates(anat.distances[name], coords_a, order=1, mode="nearest")

    brain = on_target("mask") >= 0.5
    gm0 = np.where(brain, np.clip(on_target("gm"), 0, 1), 0).astype(np.float32)
    wm0 = np.where(brain, np.clip(on_target("wm"), 0, 1), 0).astype(np.float32)
    scale = np.minimum(1.0, 1.0 / np.maximum(gm0 + wm0, 1e-6))
    gm0, wm0 = gm0 * scale, wm0 * scale
    vent_sd = on_analysis("ventricle")
    depth = on_analysis("depth")

    # individual effect rates
    z = stream("effects").standard_normal(2)
    vent_factor = max(1.0 + params["effect_sd"] * z[0], 0.0)
    cortex_factor = max(1.0 + params["effect_sd"] * z[1], 0.0)

    def growth(a):
        return vent_factor * ventricle_growth(
            a, params["ventricle_growth_mm"], params["ventricle_exponent"]
        )

    def thinning(a):
        return cortex_factor * cortical_thinning(a, params["cortical_thinning_mm"])

    # ventricles
    tissue0 = gm0 + wm0
    f_vent = np.where(brain, _partial(growth(age), vent_sd, r), 0)
    gm1, wm1 = gm0 * (1 - f_vent), wm0 * (1 - f_vent)
    vent_change = tissue0 * (
        _partial(growth(age_hi), vent_sd, r) - _partial(growth(age_lo), vent_sd, r)
    )

    # cortical thinning (GM only), restricted to the cortex: within CORTEX_MAX_HULL_DEPTH_MM of
    # the brain's outer hull (excludes the third ventricle and the basal cisterns)
    cortical = brain & (on_analysis("hull") <= CORTEX_MAX_HULL_DEPTH_MM)
    erode = np.where(cortical, _eroded(thinning(age), depth, r), 0)
    gm2 = gm1 * (1 - erode)
    cortex_change = gm1 * np.where(
        cortical, _eroded(thinning(age_hi), depth, r) - _eroded(thinning(age_lo), depth, r), 0
    )

    # lesions in periventricular / deep white matter
    lesion_frac = np.zeros(anat.shape, dtype=np.float32)
    n_lesions = 0
    if params["lesions"]:
        rng = stream("lesions")
        n_lesions = int(rng.poisson(expected_lesion_count(age, params["lesion_rate"])))
        grown = vent_sd - growth(age)
        candidates = brain & (wm1 >= 0.5) & (depth >= 8.0) & (grown >= r / 2)
        idx = np.flatnonzero(candidates)
        if n_lesions and idx.size:
            weight = wm1.ravel()[idx] * np.exp(-grown.ravel()[idx] / 15.0)
            picks = rng.choice(idx, size=n_lesions, p=weight / weight.sum())
            radii = rng.uniform(rad_lo, rad_hi, size=n_lesions)
            jitter = rng.uniform(-0.5, 0.5, size=(n_lesions, 3))
            for pick, radius, jit in zip(picks, radii, jitter, strict=True):
                centre = np.array(np.unravel_index(pick, anat.shape), dtype=float) + jit
                reach = (radius + r) / r
                lo = np.maximum(np.floor(centre - reach).astype(int), 0)
                hi = np.minimum(np.ceil(centre + reach).astype(int) + 1, anat.shape)
                box = tuple(slice(a, b) for a, b in zip(lo, hi, strict=True))
                grid = np.indices(hi - lo, dtype=float) + lo[:, None, None, None]
                dist = np.sqrt(np.sum((grid - centre[:, None, None, None]) ** 2, axis=0)) * r
                lesion_frac[box] = np.maximum(lesion_frac[box], _partial(radius, dist, r))
        elif n_lesions:
            n_lesions = 0
    les = wm1 * lesion_frac
    wm2 = wm1 - les
    csf2 = np.where(brain, np.clip(1 - gm2 - wm2 - les, 0, 1), 0)
    tissues = {"csf": csf2, "gm": gm2, "wm": wm2, "lesion": les}
    tissues = {k: v.astype(np.float32) for k, v in tissues.items()}

    masks = {
        "brain": brain,
        "ventricles": brain & (vent_change >= MIN_CHANGE),
        "cortex": brain & (cortex_change >= MIN_CHANGE),
        "lesions": brain & (les >= MIN_CHANGE),
    }
    masks["ageeffect"] = masks["ventricles"] | masks["cortex"] | masks["lesions"]

    # images
    unchanged = np.clip(1 - tissue0 * f_vent - gm1 * erode - les, 0, 1)
    texture_map = on_target("texture") * unchanged * params["texture"]
    bias = _bias(stream("bias"), world, params["bias_field"]) if params["bias_field"] > 0 else None
    images, cortex_intensity = {}, {}
    for contrast in contrasts:
        mu = table[contrast]
        clean = sum(mu[t] * tissues[t] for t in ("csf", "gm", "wm", "lesion"))
        if contrast == "T1w":
            clean = clean + texture_map
        clean = np.where(brain, clean, 0).astype(np.float32)
        cortex_intensity[contrast] = (
            float(clean[masks["cortex"]].mean()) if masks["cortex"].any() else float("nan")
        )
        img = clean * bias if bias is not None else clean
        if params["noise"] > 0:
            rng = stream(contrast)
            real = img + rng.normal(0.0, params["noise"], size=img.shape)
            imag = rng.normal(0.0, params["noise"], size=img.shape)
            img = np.sqrt(real**2 + imag**2)
        images[contrast] = np.where(brain, img, 0).astype(np.float32)

    # thickness proxy: cortical GM volume / outer surface area
    parenchyma = brain & (depth > 0)
    faces = sum(
        int(np.count_nonzero(np.diff(parenchyma.astype(np.int8), axis=ax))) for ax in range(3)
    )
    area_mm2 = max(faces, 1) * r * r
    thickness = float(gm2[masks["cortex"]].sum() * r**3 / area_mm2)

    return Phantom(
        images=images,
        masks=masks,
        tissues=tissues,
        age=age,
        affine=template_grid(r).affine,
        seed=seed,
        lesion_count=n_lesions,
        lesion_voxels=int(masks["lesions"].sum()),
        lesion_volume_ml=float(les.sum() * voxel_ml),
        ventricle_volume_ml=float(f_vent.sum() * voxel_ml),
        ventricle_growth_mm=float(growth(age)),
        cortical_thinning_mm=float(thinning(age)),
        cortical_thickness_mm=thickness,
        cortex_intensity=cortex_intensity,
        params=params,
    )
