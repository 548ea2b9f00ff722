"""Synthetic data with ground truth (METHODS §11).

* :func:`make_phantom` — one 3D brain phantom from the MNI152 template with known age effects
  (ventricle enlargement, cortical thinning, white-matter lesions) and their voxel masks;
* :func:`simulate_cohort` — a BIDS dataset of phantoms with ``derivatives/truth``;
* :func:`make_torus`, :func:`simulate_tori` — the 2D ring-shaped "heads" of paper 001.
"""

from brainage.simulate.cohort import simulate_cohort, subject_draws
from brainage.simulate.phantom import (
    TISSUE_INTENSITIES,
    Phantom,
    cortical_thinning,
    expected_lesion_count,
    make_phantom,
    validate_phantom_params,
    ventricle_growth,
)
from brainage.simulate.tori import ToriSet, Torus, make_torus, simulate_tori

__all__ = [
    "TISSUE_INTENSITIES",
    "Phantom",
    "ToriSet",
    "Torus",
    "cortical_thinning",
    "expected_lesion_count",
    "make_phantom",
    "make_torus",
    "simulate_cohort",
    "simulate_tori",
    "subject_draws",
    "validate_phantom_params",
    "ventricle_growth",
]
