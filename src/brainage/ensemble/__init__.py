"""Ensembles: ridge heads, uncertainty, age-bias correction, brain-age gap, metrics."""

from brainage.ensemble.core import (
    AgeBiasCorrection,
    RidgeHead,
    ensemble_uncertainty,
    fit_ensemble_head,
    regression_metrics,
    residualize_gap,
)

__all__ = [
    "AgeBiasCorrection",
    "RidgeHead",
    "ensemble_uncertainty",
    "fit_ensemble_head",
    "regression_metrics",
    "residualize_gap",
]
