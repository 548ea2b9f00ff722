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
from brainage.ensemble.mlens import MultiLevelHead, fit_multilevel_head, head_from_dict

__all__ = [
    "AgeBiasCorrection",
    "ConformalInterval",
    "base_spread",
    "conformal_quantile",
    "cross_conformal_interval",
    "interval_scores",
    "MultiLevelHead",
    "fit_multilevel_head",
    "head_from_dict",
    "RidgeHead",
    "ensemble_uncertainty",
    "fit_ensemble_head",
    "regression_metrics",
    "residualize_gap",
]
