"""Preprocessing parameters (METHODS §2)."""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

from pydantic import Field

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
    """

    section_path: ClassVar[str] = "preprocess"

    resolution_mm: Annotated[float, Field(ge=0.5, le=16)] = 2.0
    skull_strip: bool = True
    bias_correct: bool = True
    register: Literal["affine", "syn", "rigid", "none"] = "affine"
    intensity: Literal["minmax", "zscore"] = "minmax"
    n4_shrink_factor: Annotated[int, Field(ge=1)] = 4
    seed: Annotated[int, Field(ge=0)] = 0
