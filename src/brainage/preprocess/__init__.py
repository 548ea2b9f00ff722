"""Preprocessing: skull stripping, N4, registration to MNI152, scaling, cache, QC (METHODS §2)."""

from brainage.preprocess.config import PreprocessConfig
from brainage.preprocess.pipeline import (
    PREPROC_VERSION,
    PreprocessResult,
    bids_subject,
    load_preprocessed,
    preprocess_cohort,
    preprocess_subject,
    subject_files,
)
from brainage.preprocess.qc import qc_figure, registration_quality
from brainage.preprocess.steps import scale_intensity
from brainage.preprocess.transforms import warp_to_native, warp_to_template

__all__ = [
    "PREPROC_VERSION",
    "PreprocessConfig",
    "PreprocessResult",
    "bids_subject",
    "load_preprocessed",
    "preprocess_cohort",
    "preprocess_subject",
    "qc_figure",
    "registration_quality",
    "scale_intensity",
    "subject_files",
    "warp_to_native",
    "warp_to_template",
]
