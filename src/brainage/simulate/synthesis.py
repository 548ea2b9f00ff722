"""Synthesis of a phantom subject's anatomy and images (METHODS §11).

A subject of :func:`brainage.simulate.make_phantom` is the template warped by a random smooth
displacement; its images are its tissue fractions times per-contrast tissue intensities
(:data:`TISSUE_INTENSITIES`; T1w also keeps the template's texture), times a smooth multiplicative
bias field, with Rician noise. The displacement and the bias field are drawn on a control grid
fixed in mm (:data:`CONTROL_SPACING_MM`), so one seed gives the same subject at every resolution.
"""

from __future__ import annotations

import functools

import numpy as np
from scipy import ndimage as ndi

from brainage.errors import ConfigError, did_you_mean
from brainage.simulate._checks import _check_number
from brainage.space import BOX_ORIGIN_MM, BOX_SIZE_MM

#: Spacing (mm) of the control grid on which the random deformation and bias field are drawn;
#: fixed in mm, so one seed gives the same anatomy at every resolution.
CONTROL_SPACING_MM = 8.0

#: Tissue intensities per contrast (T1w values are the MNI152 template's own tissue means).
TISSUE_INTENSITIES = {
    "T1w": {"csf": 0.28, "gm": 0.66, "wm": 0.88, "lesion": 0.45},
    "FLAIR": {"csf": 0.10, "gm": 0.70, "wm": 0.50, "lesion": 1.00},
}
CONTRASTS = tuple(TISSUE_INTENSITIES)


# --------------------------------------------------------------------------------------------
# contrasts and their tissue intensities


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


# --------------------------------------------------------------------------------------------
# the subject: warped template and its images


def _warp(anat, warped, voxel_mm):
    """Samplers of the template's maps at the warped positions of the target voxels.

    Parameters
    ----------
    anat : brainage.simulate._anatomy.TemplateAnatomy
        ``template_anatomy(voxel_mm)``.
    warped : ndarray, shape (3, *anat.shape)
        MNI position (mm) each target voxel takes its template values from (voxel centres plus
        the subject's displacement: a backward warp).
    voxel_mm : float
        Voxel size (mm) of the target grid.

    Returns
    -------
    on_target : callable
        Name of one of ``anat.fields`` → that map at ``warped`` (linear, 0 outside the grid).
    on_analysis : callable
        Name of one of ``anat.distances``, or any array on the analysis grid → that map at
        ``warped`` (linear, from the analysis grid, nearest value outside it).
    """
    offset = warped - np.asarray(BOX_ORIGIN_MM)[:, None, None, None]
    coords_t = offset / voxel_mm
    coords_a = offset / anat.analysis_resolution_mm

    def on_target(name):
        return ndi.map_coordinates(anat.fields[name], coords_t, order=1, mode="constant", cval=0.0)

    def on_analysis(name):
        field = anat.distances[name] if isinstance(name, str) else name
        return ndi.map_coordinates(field, coords_a, order=1, mode="nearest")

    return on_target, on_analysis


def _young_tissue(on_target):
    """Brain mask and GM/WM fractions of a subject before ageing (CSF: the rest of the brain).

    ``on_target`` is the first sampler of :func:`_warp`; the fractions are clipped to [0, 1],
    0 outside the brain and scaled down where GM + WM exceeds 1.
    """
    brain = on_target("mask") >= 0.5
    gm = np.where(brain, np.clip(on_target("gm"), 0, 1), 0).astype(np.float32)
    wm = np.where(brain, np.clip(on_target("wm"), 0, 1), 0).astype(np.float32)
    scale = np.minimum(1.0, 1.0 / np.maximum(gm + wm, 1e-6))
    return brain, gm * scale, wm * scale


def _images(contrasts, intensities, tissues, brain, cortex, texture, bias, noise, stream):
    """Images of a subject's tissue fractions, and their noise- and bias-free cortex means.

    Parameters
    ----------
    contrasts : tuple of str
        Canonical contrast names (:func:`check_contrasts`), in the order of the result.
    intensities : dict of str to dict of str to float
        Contrast → tissue → intensity, for every name in ``contrasts``.
    tissues : dict of str to ndarray
        Partial-volume fractions ``"csf"``, ``"gm"``, ``"wm"``, ``"lesion"``.
    brain, cortex : ndarray of bool
        Brain mask (images are 0 outside it) and the mask the cortex means are taken over.
    texture : ndarray
        Added to the T1w image only (the template's detail the tissue model does not explain).
    bias : ndarray or None
        Multiplicative bias field (:func:`_bias`); ``None`` for none.
    noise : float
        Standard deviation of each channel of the Rician noise (0 = none).
    stream : callable
        Contrast name → its random generator, used only when ``noise > 0``.

    Returns
    -------
    images : dict of str to ndarray, float32
        Contrast → image.
    cortex_intensity : dict of str to float
        Contrast → mean clean intensity in ``cortex`` (NaN when ``cortex`` is empty).
    """
    images, cortex_intensity = {}, {}
    for contrast in contrasts:
        mu = intensities[contrast]
        clean = sum(mu[t] * tissues[t] for t in ("csf", "gm", "wm", "lesion"))
        if contrast == "T1w":
            clean = clean + texture
        clean = np.where(brain, clean, 0).astype(np.float32)
        cortex_intensity[contrast] = float(clean[cortex].mean()) if cortex.any() else float("nan")
        img = clean * bias if bias is not None else clean
        if noise > 0:
            rng = stream(contrast)
            real = img + rng.normal(0.0, noise, size=img.shape)
            imag = rng.normal(0.0, noise, size=img.shape)
            img = np.sqrt(real**2 + imag**2)
        images[contrast] = np.where(brain, img, 0).astype(np.float32)
    return images, cortex_intensity
