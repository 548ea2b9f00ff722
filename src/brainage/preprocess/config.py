"""Preprocessing parameters (METHODS §2)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field, field_validator

from brainage.io.scans import EXTRA_MODALITIES
from brainage.schema import Section

REGISTRATIONS = ("affine", "syn", "none")
INTENSITIES = ("minmax", "zscore")


class PreprocessConfig(Section):
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
    register : {"affine", "syn", "rigid", "none"}
        Registration of the skull-stripped brain to the skull-stripped MNI152NLin2009aSym
        template (ANTs): ``"affine"`` (12 parameters, mutual information), ``"syn"`` (affine
        followed by symmetric diffeomorphic normalisation), ``"rigid"`` (6 parameters: the brain
        is moved onto the template grid but keeps its own size and shape — paper 000's
        "non-registered" condition), or ``"none"``: the input is already in MNI space and is only
        resampled onto the grid (identity transforms are written).
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
    modalities : list of str
        Input channels, in order: ``["T1w"]`` (default) or the T1w followed by any of
        :data:`EXTRA_MODALITIES` (BIDS suffixes, e.g. ``["T1w", "FLAIR"]``; any case is read as
        the BIDS spelling). Each further image
        of a scan is rigidly registered to its T1w (mutual information; identity with
        ``register: none``, where every image is already in MNI space), N4-corrected inside the
        T1w brain mask, brought onto the template grid through the T1w's transform, masked and
        scaled like the T1w (:mod:`brainage.preprocess.modalities`). The models then see one
        channel per modality, and each explanation method writes one relevance map per channel
        besides their sum.
    """

    section_path: ClassVar[str] = "preprocess"

    resolution_mm: Annotated[float, Field(ge=0.5, le=16)] = 2.0
    skull_strip: bool = True
    bias_correct: bool = True
    register: Literal["affine", "syn", "rigid", "none"] = "affine"
    intensity: Literal["minmax", "zscore"] = "minmax"
    n4_shrink_factor: Annotated[int, Field(ge=1)] = 4
    seed: Annotated[int, Field(ge=0)] = 0
    modalities: list[str] = Field(default_factory=lambda: ["T1w"])

    @field_validator("modalities")
    @classmethod
    def _check_modalities(cls, value: list[str]) -> list[str]:
        from brainage.errors import did_you_mean

        spelled = {m.lower(): m for m in ("T1w", *EXTRA_MODALITIES)}  # BIDS spelling, any case
        value = [spelled.get(str(m).lower(), str(m)) for m in value]
        if not value or value[0] != "T1w":
            raise ValueError(
                f"'preprocess.modalities' must start with T1w (the image that is skull-stripped "
                f"and registered); got {value}, e.g. [T1w, FLAIR]"
            )
        for m in value[1:]:
            if m not in EXTRA_MODALITIES:
                raise ValueError(
                    f"'preprocess.modalities': unknown modality {m!r}; use BIDS suffixes "
                    f"{', '.join(EXTRA_MODALITIES)}; {did_you_mean(m, EXTRA_MODALITIES)}"
                )
        if len(set(value)) != len(value):
            raise ValueError(f"'preprocess.modalities' lists a modality twice: {value}")
        return value

    @property
    def extra_modalities(self) -> list[str]:
        """The modalities after the T1w (empty for a T1w-only run)."""
        return list(self.modalities[1:])

    def key_dict(self) -> dict:
        """Parameters that key a preprocessing: :meth:`to_dict`, ``modalities`` only when set.

        A T1w-only configuration keys as before ``modalities`` existed, so finished runs keep
        their preprocessed subjects.
        """
        out = self.to_dict()
        if out["modalities"] == ["T1w"]:
            del out["modalities"]
        return out
