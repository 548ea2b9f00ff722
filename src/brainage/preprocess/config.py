"""Preprocessing parameters (METHODS §2)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from brainage.errors import ConfigError, did_you_mean

REGISTRATIONS = ("affine", "syn", "none")
INTENSITIES = ("minmax", "zscore")


@dataclass(frozen=True)
class PreprocessConfig:
    """How T1w scans are brought to the model's input space.

    Parameters
    ----------
    resolution_mm : float
        Voxel size of the output grid in mm (isotropic): :func:`brainage.space.template_grid`
        (2 mm: 80 × 96 × 80 voxels over the MNI brain box). Between 0.5 and 16.
    skull_strip : bool
        ``True``: brain mask from deepbet (Fisch et al. 2024) in native space; the output is 0
        outside the (registered) brain mask. ``False``: the input is taken as already
        brain-extracted; its brain mask is its voxels > 0 and nothing is removed.
    bias_correct : bool
        N4 bias-field correction (Tustison et al. 2010, ANTs) inside the brain mask.
    register : {"affine", "syn", "none"}
        Registration of the skull-stripped brain to the skull-stripped MNI152NLin2009aSym
        template (ANTs): ``"affine"`` (12 parameters, mutual information), ``"syn"`` (affine
        followed by symmetric diffeomorphic normalisation), or ``"none"``: the input is already in
        MNI space and is only resampled onto the grid (identity transforms are written).
    intensity : {"minmax", "zscore"}
        ``"minmax"``: robust min-max, the 0.5 and 99.5 percentiles inside the brain mask map to 0
        and 1, clipped to [0, 1]. ``"zscore"``: zero mean and unit variance inside the brain mask.
        Either way 0 outside the mask when ``skull_strip``.
    n4_shrink_factor : int
        Down-sampling of the image while fitting the N4 bias field (1 = full resolution; 4 at a
        2 mm input fits the smooth field on an 8 mm lattice, which is ample and ≈ 4 × faster).
    seed : int
        Seed of the random sampling of the registration metric (ANTs ``--random-seed``, given
        as ``seed + 1`` because ANTs reads 0 as "use the clock"): with one thread per worker,
        the same seed and input give the same transform, bit for bit.
    """

    resolution_mm: float = 2.0
    skull_strip: bool = True
    bias_correct: bool = True
    register: str = "affine"
    intensity: str = "minmax"
    n4_shrink_factor: int = 4
    seed: int = 0

    def __post_init__(self) -> None:
        r = self.resolution_mm
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.5 <= float(r) <= 16:
            raise ConfigError(f"'resolution_mm' must be a number of mm in [0.5, 16]; got {r!r}")
        object.__setattr__(self, "resolution_mm", float(r))
        for name in ("skull_strip", "bias_correct"):
            value = getattr(self, name)
            if not isinstance(value, bool):
                raise ConfigError(f"'{name}' must be true or false; got {value!r}")
        for name, choices in (("register", REGISTRATIONS), ("intensity", INTENSITIES)):
            value = getattr(self, name)
            if value not in choices:
                raise ConfigError(
                    f"'{name}' must be one of {', '.join(choices)}; got {value!r} "
                    f"({did_you_mean(str(value), choices)})"
                )
        for name, low in (("n4_shrink_factor", 1), ("seed", 0)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ConfigError(f"'{name}' must be an integer >= {low}; got {value!r}")

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as a plain dict (JSON/YAML-serialisable)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any] | None) -> PreprocessConfig:
        """Build a config from a dict; missing keys take their defaults.

        Raises
        ------
        ConfigError
            Unknown keys (with a "did you mean" hint) or invalid values.
        """
        values = dict(values or {})
        names = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in names:
                raise ConfigError(
                    f"unknown preprocessing option {key!r} ({did_you_mean(str(key), names)})"
                )
        return cls(**values)
