"""Evaluating explanations: ground-truth scores, sanity checks and agreement (METHODS §7, §11).

* Ground truth (simulated cohorts): :func:`mass_accuracy`, :func:`mask_fraction`,
  :func:`roc_auc`, :func:`topk_precision`, :func:`score_maps` (one row per subject),
  :func:`effect_roc_auc` (one simulated effect at a time), :func:`population_scores` (the
  cohort's mean map).
* Model-randomisation sanity check (Adebayo et al. 2018): :func:`cascading_randomisation`,
  :func:`randomisation_summary`.
* Agreement across seeds (paper 000): :func:`topk_dice`, :func:`seed_agreement`,
  :func:`voxel_agreement_map`, :func:`agreeing_voxels`.
* One row per method: :func:`evaluate_explanations`, written by :func:`write_xai_table` to
  ``OUT/evaluation/xai.tsv``.

The lesion analysis of paper 003 lives in :mod:`brainage.stats`.
"""

from brainage.evaluate.agreement import (
    agreeing_voxels,
    seed_agreement,
    topk_dice,
    voxel_agreement_map,
)
from brainage.evaluate.ground_truth import (
    METRICS,
    effect_roc_auc,
    mask_fraction,
    mass_accuracy,
    population_scores,
    roc_auc,
    score_maps,
    topk_precision,
)
from brainage.evaluate.randomisation import (
    PASS_THRESHOLD,
    cascading_randomisation,
    randomisation_summary,
    spearman,
)
from brainage.evaluate.tables import XAI_COLUMNS, evaluate_explanations, write_xai_table

__all__ = [
    "METRICS",
    "PASS_THRESHOLD",
    "XAI_COLUMNS",
    "agreeing_voxels",
    "cascading_randomisation",
    "effect_roc_auc",
    "evaluate_explanations",
    "mask_fraction",
    "mass_accuracy",
    "population_scores",
    "randomisation_summary",
    "roc_auc",
    "score_maps",
    "seed_agreement",
    "spearman",
    "topk_dice",
    "topk_precision",
    "voxel_agreement_map",
    "write_xai_table",
]
