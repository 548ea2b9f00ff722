"""2D "tori": ring-shaped heads with simulated ageing (paper 001, METHODS §11).

Hofmann et al. (2021) checked LRP for regression on 2000 synthetic 2D images before trusting it on
MRI: elliptic rings at a T1-like intensity whose inner and outer borders lose pixels
("atrophies") in proportion to age, and whose body gains small hyperintense "lesions" from age 40
on, the number growing linearly after that onset (a non-linear function of age overall), both with
normally distributed variance. Where atrophies and lesions were put is known, so relevance maps
can be scored against it. This module re-implements that simulation (after the authors' XDLreg
code, written anew) with explicit seeds and ground-truth masks.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

from brainage.errors import ConfigError, did_you_mean
from brainage.simulate._checks import _check_number, _check_range

#: Age (years) from which lesions appear.
TORUS_LESION_ONSET_AGE = 40.0
#: Intensity of intact torus tissue (before noise), as in the original simulation.
TORUS_INTENSITY = 0.8
TORUS_MASKS = ("torus", "atrophy", "lesions", "ageeffect")

_STREAMS = {"shape": 0, "atrophy": 1, "lesions": 2, "noise": 3}
_NEIGHBOURS = np.ones((3, 3), dtype=np.int16)


@dataclass
class Torus:
    """One simulated 2D head.

    Attributes
    ----------
    image : ndarray, float32, shape (size, size)
        Intensities in [0, 1]; background 0.
    masks : dict of str to ndarray of bool, shape (size, size)
        ``"torus"`` (pixels of the head after atrophy), ``"atrophy"`` (pixels removed by atrophy),
        ``"lesions"`` (lesion pixels), ``"ageeffect"`` (atrophy ∪ lesions).
    age : float
        Years.
    seed : int
    atrophy_pixels : int
        Pixels removed from the borders.
    lesion_count : int
        Lesions placed (they may overlap).
    """

    image: np.ndarray
    masks: dict
    age: float
    seed: int
    atrophy_pixels: int
    lesion_count: int


@dataclass
class ToriSet:
    """A set of tori, stacked along the first axis.

    Attributes
    ----------
    images : ndarray, float32, shape (n, size, size)
    ages : ndarray, float64, shape (n,)
        Years.
    masks : dict of str to ndarray of bool, shape (n, size, size)
        As :attr:`Torus.masks`.
    atrophy_pixels, lesion_count, seeds : ndarray of int, shape (n,)
    """

    images: np.ndarray
    ages: np.ndarray
    masks: dict
    atrophy_pixels: np.ndarray
    lesion_count: np.ndarray
    seeds: np.ndarray

    def __len__(self) -> int:
        return len(self.ages)


def _ring(rng, size):
    """Binary elliptic ring with random size (outer semi-axes ≈ 0.40 and 0.33 of the image)."""
    outer = np.array([0.40, 0.33]) * size * (1 + 0.05 * rng.standard_normal(2))
    outer = np.minimum(outer, size / 2 - 2)
    inner = outer * 0.4
    centre = (size - 1) / 2 + rng.uniform(-0.5, 0.5, size=2)
    rows, cols = np.indices((size, size), dtype=float)
    dr, dc = rows - centre[0], cols - centre[1]

    def inside(axes):
        return (dr / axes[0]) ** 2 + (dc / axes[1]) ** 2 <= 1.0

    return inside(outer) & ~inside(inner)


def _atrophy(rng, torus, n_pixels):
    """Remove ``n_pixels`` border pixels, preferring those with more empty neighbours."""
    torus = torus.copy()
    removed = np.zeros_like(torus)
    left = int(n_pixels)
    while left > 0 and torus.any():
        empty = ndi.convolve((~torus).astype(np.int16), _NEIGHBOURS, mode="constant", cval=1)
        weight = np.where(torus, empty, 0).ravel().astype(float)
        border = np.flatnonzero(weight)
        if border.size == 0:
            break
        k = min(left, max(1, border.size // 10))
        picks = rng.choice(border, size=k, replace=False, p=weight[border] / weight[border].sum())
        torus.ravel()[picks] = False
        removed.ravel()[picks] = True
        left -= k
    return torus, removed


def make_torus(
    age: float,
    size: int = 64,
    seed: int = 0,
    lesions: bool = True,
    atrophy_rate: float = 0.0015,
    atrophy_sd: float = 0.005,
    lesion_rate: float = 0.5,
    lesion_sd: float = 1.0,
    lesion_intensity: float = 0.2,
    noise: float = 0.05,
) -> Torus:
    """Make one 2D torus of a given age (paper 001's simulation study, METHODS §11).

    Parameters
    ----------
    age : float
        Years, 0–130 (the paper uses 20–80).
    size : int
        Image side in pixels (≥ 16).
    seed : int
        Non-negative; fixes shape, atrophy, lesions and noise (each its own random stream).
    lesions : bool
        Whether lesions are added.
    atrophy_rate : float
        Expected fraction of the torus's pixels lost per year of age: atrophy removes
        ``round(N(atrophy_rate · age, atrophy_sd) · area)`` pixels (at least 0) from the inner and
        outer borders, a pixel with more empty neighbours being more likely to go.
    atrophy_sd : float
        Standard deviation of that fraction.
    lesion_rate : float
        Lesions per year after age 40: the count is
        ``round(N(lesion_rate · (age − 40), lesion_sd))``
        (at least 0), and exactly 0 up to age 40.
    lesion_sd : float
        Standard deviation of the lesion count.
    lesion_intensity : float
        Intensity added by a lesion (3 × 3 pixels, placed where the 5 × 5 neighbourhood is tissue).
    noise : float
        Relative standard deviation of the multiplicative Gaussian noise on the tissue.

    Returns
    -------
    Torus
        Image of shape ``(size, size)`` with its masks.

    Raises
    ------
    ConfigError
        A parameter is out of range.
    """
    age = _check_number("age", age, 0, 130)
    size = _check_number("size", size, 16, 4096, integer=True)
    seed = _check_number("seed", seed, 0, 2**63 - 1, integer=True)
    for name, value, high in (
        ("atrophy_rate", atrophy_rate, 0.01),
        ("atrophy_sd", atrophy_sd, 1.0),
        ("lesion_rate", lesion_rate, 100.0),
        ("lesion_sd", lesion_sd, 100.0),
        ("lesion_intensity", lesion_intensity, 1.0),
        ("noise", noise, 1.0),
    ):
        _check_number(name, value, 0.0, high)

    def stream(name):
        return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_STREAMS[name],)))

    ring = _ring(stream("shape"), size)
    area = int(ring.sum())
    rng = stream("atrophy")
    n_atrophy = max(0, round(rng.normal(atrophy_rate * age, atrophy_sd) * area))
    torus, removed = _atrophy(rng, ring, min(n_atrophy, area // 2))

    rng = stream("noise")
    image = np.where(torus, TORUS_INTENSITY * (1 - noise * rng.standard_normal(torus.shape)), 0)

    lesion_mask = np.zeros_like(torus)
    n_lesions = 0
    if lesions and age > TORUS_LESION_ONSET_AGE:
        rng = stream("lesions")
        n_lesions = max(
            0, round(rng.normal(lesion_rate * (age - TORUS_LESION_ONSET_AGE), lesion_sd))
        )
        interior = np.flatnonzero(ndi.binary_erosion(torus, np.ones((5, 5), dtype=bool)))
        if interior.size == 0:
            n_lesions = 0
        for centre in rng.choice(interior, size=n_lesions) if n_lesions else ():
            r, c = np.unravel_index(centre, torus.shape)
            patch = (slice(r - 1, r + 2), slice(c - 1, c + 2))
            image[patch] = image[patch] + lesion_intensity + 0.025 * rng.standard_normal()
            lesion_mask[patch] = True
    image = np.clip(image, 0, 1).astype(np.float32)
    masks = {
        "torus": torus,
        "atrophy": removed,
        "lesions": lesion_mask,
        "ageeffect": removed | lesion_mask,
    }
    return Torus(image, masks, age, seed, int(removed.sum()), int(n_lesions))


def simulate_tori(
    n: int, seed: int = 0, size: int = 64, age_range=(20.0, 80.0), **params
) -> ToriSet:
    """Make ``n`` tori with ages uniform in ``age_range`` (paper 001: 2000 tori, ages 20–80).

    Parameters
    ----------
    n : int
        Number of tori (≥ 1).
    seed : int
        Torus ``i`` (0-based) depends only on ``(seed, i)``: its age and torus seed come from
        ``SeedSequence([seed, i])``, so the first tori of a larger set are the same.
    size : int
        Image side in pixels.
    age_range : (float, float)
        Years; ages are uniform in it, rounded to 2 decimals.
    **params
        Further keyword arguments of :func:`make_torus`.

    Returns
    -------
    ToriSet
        ``images`` of shape ``(n, size, size)``, ``ages`` of shape ``(n,)`` and the masks.

    Raises
    ------
    ConfigError
        A parameter is out of range or unknown.
    """
    n = _check_number("n", n, 1, 10_000_000, integer=True)
    seed = _check_number("seed", seed, 0, 2**63 - 1, integer=True)
    lo, hi = _check_range("age_range", age_range, 0.0, 130.0)
    allowed = sorted(set(inspect.signature(make_torus).parameters) - {"age", "size", "seed"})
    for name in params:
        if name not in allowed:
            raise ConfigError(f"unknown torus parameter {name!r}; {did_you_mean(name, allowed)}")
    tori = []
    for i in range(n):
        rng = np.random.default_rng(np.random.SeedSequence([seed, i]))
        age = round(float(rng.uniform(lo, hi)), 2)
        tori.append(make_torus(age, size=size, seed=int(rng.integers(0, 2**31 - 1)), **params))
    return ToriSet(
        images=np.stack([t.image for t in tori]),
        ages=np.array([t.age for t in tori], dtype=np.float64),
        masks={name: np.stack([t.masks[name] for t in tori]) for name in TORUS_MASKS},
        atrophy_pixels=np.array([t.atrophy_pixels for t in tori]),
        lesion_count=np.array([t.lesion_count for t in tori]),
        seeds=np.array([t.seed for t in tori]),
    )
