"""Ensembles: ridge heads, uncertainty, age-bias correction, brain-age gap, metrics."""

from brainage.ensemble.conformal import (
    ConformalInterval,
    base_spread,
    conformal_quantile,
    cross_conformal_interval,
    interval_scores,
)
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
    "ConformalInterval",
    "base_spread",
    "conformal_quantile",
    "cross_conformal_interval",
    "interval_scores",
    "RidgeHead",
    "ensemble_uncertainty",
    "fit_ensemble_head",
    "regression_metrics",
    "residualize_gap",
]
