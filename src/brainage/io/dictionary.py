"""Data dictionaries of the tables brainage writes (BIDS tabular-file sidecars).

BIDS describes every tabular file ``<name>.tsv`` by a JSON sidecar ``<name>.json`` beside it, the
*data dictionary*: one object per column with a ``Description`` (what the column holds and how it
was computed), ``Units`` where the values have units (``year``, ``mm``, ``mm^3``, ``s``, …) and
``Levels`` (value → meaning) for categorical columns with a fixed set of values (BIDS
specification, "Tabular files"). :func:`brainage.io.atomic.write_tsv` writes that sidecar for every
table of a run or study folder from this module.

The entries live in three places, looked up in this order by :func:`describe_column`:

* :data:`TABLE_COLUMNS` — the meaning a column has in one table (``n``, ``r``, ``p``, ``rank``,
  ``split``, ``model`` … mean different things in different tables), keyed by a regular
  expression fullmatched against the table's file name;
* :data:`COLUMNS` — the general meaning of a column name;
* :data:`PATTERNS` — families of columns named by a pattern (``brain_age_seed-3``,
  ``brain_age_ensemble-cortex``, ``fold-2``, ``roc_auc_lesions``, …).

Relevance values are in the arbitrary units of the method's relevance map (LRP: shares of the
predicted age minus the training mean age; gradient maps: years per unit of input intensity; …),
after the normalisation the table's description names; their ``Units`` are ``arbitrary``. Ages,
MAEs and gaps are in years, coordinates in MNI152NLin2009aSym mm, volumes in mm³.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Callable, Iterable
from pathlib import Path

__all__ = ["COLUMNS", "PATTERNS", "TABLE_COLUMNS", "data_dictionary", "describe_column"]


def _e(description: str, units: str | None = None, levels: dict | None = None) -> dict:
    """One data-dictionary entry."""
    out: dict = {"Description": description}
    if units is not None:
        out["Units"] = units
    if levels is not None:
        out["Levels"] = levels
    return out


def _bool(true: str, false: str) -> dict:
    return {"True": true, "False": false}


_ARB = "arbitrary"
_POP = (
    "the population mean relevance map (the explained subjects' ensemble maps, each normalised "
    "inside the template brain mask by population.normalise, z-scored by default, then averaged; "
    "for a subgroup table the subgroup's mean)"
)
_TOP10 = "Fraction of the top-10 regions (by the ranked value; fewer when fewer are shared)"

#: General entries, by column name.
COLUMNS: dict[str, dict] = {
    # ------------------------------------------------------------ subjects and predictions
    "reliance_spearman": _e(
        "Spearman correlation across atlas regions (the region-truth design's atlas on a "
        "simulated region-truth cohort, else the first of population.atlases) between a "
        "subject's per-region relevance (sum of the first base model's map) and the model's "
        "measured reliance on each region (prediction change when only that region is "
        "replaced by the mean training image), mean over the faithfulness subjects; 1 = the "
        "map ranks regions as the model relies on them."
    ),
    "reliance_spearman_population": _e(
        "The same Spearman correlation between the subject means of per-region relevance and "
        "of reliance."
    ),
    "region_roc_auc": _e(
        "Region-level ROC AUC (simulated cohorts): the mean normalised relevance of each atlas "
        "region (region-truth design's atlas, else the first of population.atlases) as a score "
        "for the regions where age changes at least 5 % of the tissue against those where it "
        "changes less than 1 % (regions in between left out), per subject against its own "
        "change map, mean over the explained subjects; 0.5 = chance."
    ),
    "region_effect_spearman": _e(
        "Spearman correlation across atlas regions between a subject's mean normalised "
        "relevance per region and the region's true effect (mean fraction of tissue that age "
        "changes there, from the simulated change map), mean over the explained subjects."
    ),
    "population_region_roc_auc": _e(
        "region_roc_auc of the mean normalised map of the explained subjects against their "
        "mean true effect per region."
    ),
    "population_region_effect_spearman": _e(
        "region_effect_spearman of the mean normalised map against the mean true effect."
    ),
    "region_n_effect": _e("Atlas regions with an effect (mean true effect >= 5 % of tissue)."),
    "region_n_none": _e("Atlas regions without an effect (mean true effect < 1 % of tissue)."),
    "max_sensitivity": _e(
        "Max-sensitivity (Yeh et al. 2019; captum sensitivity_max): the largest relative change "
        "||map(x + noise) - map(x)|| / ||map(x)|| (Frobenius norms) over "
        "evaluate.sensitivity_samples copies with uniform noise of half-width "
        "evaluate.sensitivity_radius in the brain, the first base model's maps, mean over up to "
        "evaluate.sensitivity_subjects held-out subjects; 0 = the map does not move, about 1.4 "
        "= it changes as much as two unrelated maps."
    ),
    "faithfulness_n": _e(
        "Subjects of the perturbation (faithfulness) test: up to evaluate.faithfulness_subjects "
        "held-out subjects of one base model, explained with that model's own maps."
    ),
    "participant_id": _e(
        "Participant identifier as in the cohort (BIDS participant label sub-<label> for a BIDS "
        "dataset); n/a where a row concerns no single subject."
    ),
    "session_id": _e(
        "BIDS session of the scan (ses-<label>) in a longitudinal dataset: each session is "
        "predicted as a scan of its own, and the sessions of one participant are always in "
        "the same split and fold; n/a for a scan without a session."
    ),
    "age": _e(
        "Chronological age (n/a: unknown; such subjects are predicted, never trained on or "
        "scored).",
        "year",
    ),
    "sex": _e(
        "Sex as given in the cohort table (values as there, e.g. F / M); not seen by the models, "
        "used for subgroup maps and covariate analyses."
    ),
    "site": _e("Acquisition site as given in the cohort table; not seen by the models."),
    "t1w": _e("Path of the subject's T1-weighted input image (absolute, as read from the cohort)."),
    "flair": _e("Path of the scan's FLAIR image (absolute; empty: none), preprocess.modalities."),
    "t2w": _e("Path of the scan's T2-weighted image (absolute; empty: none)."),
    "pdw": _e("Path of the scan's proton-density-weighted image (absolute; empty: none)."),
    "fold": _e(
        "Outer cross-fitting fold that holds the subject out: its brain age, interval and "
        "relevance maps come from that fold's models, ensemble head and bias correction, which "
        "never saw the subject. 0: no age, predicted by every fold (mean)."
    ),
    "split": _e(
        "Role of the subject.",
        levels={
            "train": "hold-out run: training subject (its predictions are fitted)",
            "validation": "hold-out run: validation subject (early stopping, head, correction)",
            "test": "held out: never seen by the models that predict it (with cross-fitting, "
            "every subject with age)",
            "predict": "no age: predicted, never scored",
        },
    ),
    "brain_age": _e(
        "Predicted (brain) age: the ridge head over the base models (paper 001), or their mean "
        "where the head did not beat the mean under cross-validation on the validation subjects.",
        "year",
    ),
    "brain_age_corrected": _e(
        "Age-bias corrected brain age (Smith et al. 2019): (brain_age - b) / a, with brain_age = "
        "a * age + b fitted on the validation subjects of the fold.",
        "year",
    ),
    "brain_age_gap": _e(
        "Brain-age gap: the recommended prediction minus age (brain_age_corrected unless its "
        "guards failed; see bias_correction.json).",
        "year",
    ),
    "uncertainty": _e(
        "Paper 001's uncertainty: width of the 95 % t-interval of the mean of the CNN base models "
        "(2 t s / sqrt(N), N CNNs, s their standard deviation; with region sub-ensembles, of the "
        "G sub-ensembles' predictions instead). It measures how much the base models disagree; "
        "it is not an interval for the age (see brain_age_lower / brain_age_upper).",
        "year",
    ),
    "brain_age_lower": _e(
        "Lower end of the calibrated prediction interval of the age around brain_age (level and "
        "method in ensemble.json 'interval'): cross-conformal on out-of-fold absolute residuals, "
        "each fold calibrated on the other folds (split-conformal on validation residuals in a "
        "hold-out run).",
        "year",
    ),
    "brain_age_upper": _e("Upper end of that interval.", "year"),
    # ------------------------------------------------------------ metrics
    "model": _e(
        "Base model: seed-<n> (whole-brain CNN with that seed), region-<r>_seed-<n> (CNN of one "
        "brain compartment) or a non-CNN learner (voxelridge)."
    ),
    "n": _e("Number of subjects the row's statistic is computed on."),
    "mae": _e("Mean absolute error |prediction - age| over the n subjects.", "year"),
    "rmse": _e("Root mean squared error of prediction - age over the n subjects.", "year"),
    "r": _e("Pearson correlation coefficient (n/a with fewer than 3 subjects or no spread)."),
    # ------------------------------------------------------------ preprocessing, failures
    "reg_quality": _e(
        "Registration quality: Pearson correlation between the preprocessed T1w and the "
        "MNI152NLin2009aSym template T1w inside the template brain mask (typically 0.5-0.65 "
        "after a correct affine registration, about 0.7 after SyN, below 0.3 when it failed)."
    ),
    "qc_png": _e(
        "QC picture (the template brain-mask contour over the registered brain), path relative "
        "to the run folder."
    ),
    "preproc": _e(
        "Preprocessed T1w on the model grid in MNI152NLin2009aSym space (the model input), path "
        "relative to the run folder."
    ),
    "mask": _e(
        "Brain mask (deepbet, resampled to the template grid; uint8), path relative to the run "
        "folder."
    ),
    "stage": _e(
        "Pipeline stage at which the subject failed (cohort: while reading the cohort; "
        "preprocess: its preprocessing; …)."
    ),
    "file": _e("File the error concerns (n/a when none)."),
    "error": _e("Error message: what is wrong and what to do."),
    "preprocessing": _e(
        "Shared preprocessing folder of the study (shared/preproc-<hash>) that reported the "
        "failure: one per distinct preprocess section and model grid."
    ),
    # ------------------------------------------------------------ training logs and phases
    "epoch": _e("Training epoch (1-based)."),
    "train_loss": _e(
        "Mean training loss over the epoch's mini-batches (weighted by batch size), as optimised: "
        "MSE or MAE of the standardised ages with train.standardize_targets (else in years^2 or "
        "years), or the KL divergence of soft labels in nats (loss: kl); in training mode "
        "(augmentation, dropout), weights changing within the epoch."
    ),
    "train_mae": _e(
        "Mean absolute error on the training mini-batches during the epoch (augmented inputs, "
        "training mode, weights changing within the epoch), in years.",
        "year",
    ),
    "val_mae": _e(
        "Mean absolute error on the validation subjects after the epoch (evaluation mode, no "
        "augmentation); early stopping and the best epoch use it.",
        "year",
    ),
    "test_mae": _e(
        "Mean absolute error on the fold's test subjects after the epoch (train.log_test_mae): "
        "monitored only, never used for early stopping or model selection.",
        "year",
    ),
    "lr": _e("Learning rate of the AdamW optimiser at the end of the epoch (after its last step)."),
    "seconds": _e("Wall-clock time.", "s"),
    "phase": _e(
        "Training phase of paper 000: 1-based index of the validation-MAE threshold "
        "(train.phases / the study's phases)."
    ),
    "threshold": _e(
        "Validation-MAE threshold of the phase: a model reaches the phase at the first epoch "
        "whose val_mae is at or below it.",
        "year",
    ),
    "reached": _e(
        "Whether the model's validation MAE ever reached the threshold.",
        levels=_bool("reached (epoch and MAEs of that epoch)", "never reached (they are n/a)"),
    ),
    # ------------------------------------------------------------ region tables
    "rank": _e("Rank of the region, 1 = highest mean_relevance (ties by label)."),
    "region": _e("Region name (the atlas's or the label map's label table)."),
    "label": _e("Integer label value of the region in the atlas or label map."),
    "n_voxels": _e(
        "Voxels of the region inside the template brain mask on the model grid (labelled and "
        "counted voxels)."
    ),
    "mean_relevance": _e(f"Mean over the region's voxels of {_POP}.", _ARB),
    "mean_abs_relevance": _e(
        "Mean of the absolute value over the region's voxels of the same map (the value the "
        "stability tables rank).",
        _ARB,
    ),
    "sum_relevance": _e(
        "Sum over the region's voxels of the same map (mean_relevance * n_voxels; grows with the "
        "region's size).",
        _ARB,
    ),
    "top10_fraction": _e(
        "Fraction of the region's voxels among the map's top voxels: the population.top_fraction "
        "(default 10 %) of all counted voxels with the largest signed value (exactly "
        "ceil(fraction * N), ties by voxel order). The name keeps 'top10' whatever the fraction."
    ),
    "n_subjects": _e("Number of subjects."),
    "sem_relevance": _e(
        "Standard error of mean_relevance over the subjects: sd (ddof 1) / sqrt(n_subjects); n/a "
        "for one subject."
    ),
    "mean_volume_mm3": _e("Mean volume of the region over the subjects' label maps.", "mm^3"),
    "volume_mm3": _e("Volume: n_voxels times the voxel volume.", "mm^3"),
    # ------------------------------------------------------------ stability of rankings
    "factor": _e(
        "What varies between the compared region rankings: model (base models, seed-<n>), fold "
        "(cross-fitting folds, fold-<k>), method (explanation methods), seed or condition (study)."
    ),
    "a": _e("First of the two compared conditions."),
    "b": _e("Second of the two compared conditions."),
    "condition": _e("Study condition (a named configuration of the study file)."),
    "n_regions": _e("Regions present in both compared tables."),
    "spearman": _e(
        "Spearman rank correlation of the ranked value over the regions both tables have (n/a "
        "with fewer than 3 regions or a constant value)."
    ),
    "kendall": _e("Kendall's tau-b of the ranked value over those regions (n/a as spearman)."),
    "top10_overlap": _e(f"{_TOP10} that both rankings share."),
    # ------------------------------------------------------------ voxelwise statistics
    "cluster": _e(
        "Cluster number: 1 = the largest (most voxels), positive and negative clusters numbered "
        "together."
    ),
    "sign": _e(
        "Sign of the cluster's statistic.",
        levels={"positive": "statistic > 0", "negative": "statistic < 0"},
    ),
    "peak_stat": _e(
        "Statistic (t; F for a multi-row contrast) at the peak voxel: the largest value in the "
        "direction of the cluster's sign."
    ),
    "peak_tfce": _e("TFCE value at that peak voxel (not necessarily the cluster's TFCE maximum)."),
    "min_p_fwe": _e(
        "Smallest TFCE FWE-corrected p over the cluster's voxels (maximum TFCE over the brain and "
        "both tails under stats.n_perm Freedman-Lane permutations or sign flips)."
    ),
    "peak_x": _e("x of the peak voxel's centre, MNI152NLin2009aSym (RAS).", "mm"),
    "peak_y": _e("y of the peak voxel's centre, MNI152NLin2009aSym (RAS).", "mm"),
    "peak_z": _e("z of the peak voxel's centre, MNI152NLin2009aSym (RAS).", "mm"),
    "peak_region": _e(
        "Atlas region (stats.atlas, default AAL) at the peak voxel; '(no label)' outside every "
        "region."
    ),
    "regions": _e(
        "Up to three atlas regions holding most of the cluster's voxels with their share "
        "('A 40 %, B 25 %'), plus 'unlabelled x %' when at least 20 % lie in no region."
    ),
    "cluster_mm3": _e(
        "Volume of the cluster the peak belongs to, as nilearn reports it (n/a for a sub-peak).",
        "mm^3",
    ),
    "p_fwe": _e("TFCE FWE-corrected p at the peak voxel."),
    # ------------------------------------------------------------ brain-age gap vs covariates
    "covariate": _e("Cohort column related to the brain-age gap."),
    "coding": _e(
        "How the covariate enters: numeric, or '<level 1> vs <level 0>' for a binary column "
        "coded 0 / 1."
    ),
    "window_start": _e("Youngest age of the window (inclusive).", "year"),
    "window_end": _e("Oldest age of the window (inclusive).", "year"),
    "window_centre": _e("Centre of the age window.", "year"),
    "ci_low": _e("Lower end of the 95 % confidence interval."),
    "ci_high": _e("Upper end of the 95 % confidence interval."),
    "p": _e("p-value."),
    "p_bonferroni": _e(
        "p times the number of correlations computed in the table (all windows of all "
        "covariates), capped at 1: family-wise corrected."
    ),
    "significant": _e(
        "Whether p_bonferroni <= stats.alpha.", levels=_bool("significant", "not significant")
    ),
    "beta": _e(
        "OLS coefficient of the covariate in gap ~ 1 + covariate + age + age^2 (centred age): "
        "years of gap per unit of the covariate (binary: level 1 minus level 0).",
        "year",
    ),
    "se": _e("Standard error of beta.", "year"),
    "t": _e("t statistic."),
    "df": _e("Degrees of freedom."),
    "partial_r": _e(
        "Partial correlation of gap and covariate given age and age^2: t / sqrt(t^2 + df_resid)."
    ),
    # ------------------------------------------------------------ explanation methods
    "method": _e("Explanation method (explain.methods; e.g. lrp, guided_backprop)."),
    "mass_accuracy": _e(
        "Relevance mass accuracy (Arras et al. 2022): share of the positive relevance inside the "
        "brain that lies in the ground-truth mask (the voxels the simulation changes with age), "
        "per subject on its ensemble relevance map, mean over subjects; chance = mask_fraction. "
        "n/a without ground truth."
    ),
    "mask_fraction": _e(
        "Share of the brain covered by the ground-truth mask, |truth & brain| / |brain|, mean "
        "over subjects: the chance level of mass_accuracy and topk_precision."
    ),
    "roc_auc": _e(
        "ROC AUC of |relevance| as a voxel score for the ground-truth mask inside the brain "
        "(Mann-Whitney, ties 1/2), mean over subjects; 0.5 = chance."
    ),
    "topk_precision": _e(
        "Relevance rank accuracy: share of the k = |truth & brain| brain voxels with the largest "
        "|relevance| that lie in the ground truth (ties in expectation), mean over subjects; "
        "chance = mask_fraction."
    ),
    "randomisation_spearman": _e(
        "Cascading model-randomisation check (Adebayo et al. 2018): mean over subjects of the "
        "Spearman correlation, over brain voxels, of |relevance| of the trained model and of the "
        "model with every convolution and dense layer re-initialised (one base model, "
        "evaluate.n_subjects subjects); n/a when not run (U-Noise, evaluate.randomisation off)."
    ),
    "passes_randomisation": _e(
        "Whether randomisation_spearman is below the pass threshold (evaluate.threshold, "
        "default 0.5); n/a when not run.",
        levels=_bool("maps change when the model is destroyed", "maps barely change: fails"),
    ),
    "seed_dice": _e(
        "Mean pairwise Dice, over pairs of CNN seeds, of the top evaluate.top_fraction (default "
        "1 %) brain voxels by |value| of each seed's mean map (its maps of the explained "
        "subjects, z-scored inside the brain, averaged); n/a with fewer than 2 seeds."
    ),
    "population_mass_accuracy": _e(
        "Share of the population map P (mean over subjects of |relevance| scaled to mean 1 in the "
        "brain) that lies in T, the voxels where age acts in at least half of the subjects."
    ),
    "population_mask_fraction": _e("|T & brain| / |brain|: chance level of the above."),
    "population_roc_auc": _e("ROC AUC of P as a voxel score for T inside the brain; 0.5 = chance."),
    "step": _e("Randomisation step: 0 = trained model, s = after re-initialising s layers."),
    "layer": _e("Dotted name of the module re-initialised at this step (empty at step 0)."),
    "n_randomised": _e("Layers re-initialised so far, from the output towards the input."),
    "spearman_sd": _e("Standard deviation (ddof 1) over subjects of the Spearman correlation."),
    "spearman_min": _e("Smallest Spearman correlation over the subjects."),
    "spearman_max": _e("Largest Spearman correlation over the subjects."),
    # ------------------------------------------------------------ lesions (paper 003)
    "n_excluded": _e(
        "Explained subjects left out: too few lesion voxels or no positive relevance in the brain."
    ),
    "min_lesion_voxels": _e("A subject needs more lesion voxels than this (paper 003: 30)."),
    "channel": _e(
        "Input channel whose relevance map is tested: FLAIR when the run has one "
        "(preprocess.modalities), else T1w; all = the voxel map, for a method that does not "
        "resolve channels (Grad-CAM, occlusion, LRP with a Flat first-layer rule)."
    ),
    "mean_lesion_relevance": _e("Mean of lesion_relevance over the included subjects.", _ARB),
    "mean_expected_relevance": _e("Mean of expected_relevance over the included subjects.", _ARB),
    "mean_difference": _e(
        "Mean over the included subjects of lesion_relevance - expected_relevance.", _ARB
    ),
    "d": _e("Cohen's d for paired samples: mean(difference) / sd(difference, ddof 1)."),
    "alternative": _e(
        "Alternative hypothesis of the paired t-test about lesion - expected relevance.",
        levels={"two-sided": "differs", "greater": "higher in lesions", "less": "lower in lesions"},
    ),
    "n_lesion_voxels": _e("Lesion-mask voxels inside the brain mask on the model grid."),
    "lesion_relevance": _e(
        "Mean of the subject's signed ensemble relevance over its lesion voxels (n/a: none).", _ARB
    ),
    "expected_relevance": _e(
        "Expected relevance per voxel (paper 003): mean relevance of the brain voxels with "
        "positive relevance.",
        _ARB,
    ),
    "difference": _e("lesion_relevance - expected_relevance.", _ARB),
    "included": _e(
        "Whether the subject enters the test.",
        levels=_bool(
            "more than min_lesion_voxels lesion voxels and positive relevance in the brain",
            "excluded",
        ),
    ),
    # ------------------------------------------------------------ studies (paper 000)
    "run": _e("Run folder of one (condition, seed) under runs/: cond-<condition>_seed-<n>."),
    "seed": _e("Seed of the run: its CNN's initialisation, data order, dropout, augmentation."),
    "status": _e(
        "Outcome of the run's task.",
        levels={"finished": "finished", "failed": "failed after its retries (see error)"},
    ),
    "max_rss_mb": _e(
        "Peak resident memory of the worker process that ran the task, over every task it ran so "
        "far (an upper bound of this run's); from getrusage ru_maxrss / 1024 (KiB on Linux).",
        "MiB",
    ),
    "best_mae": _e(
        "Test MAE of the run's CNN at its best validation epoch (the model the run uses; column "
        "brain_age_seed-<seed> of predictions.tsv, each subject by its fold's CNN) over the test "
        "subjects with age.",
        "year",
    ),
    "last_mae": _e(
        "Test MAE of the CNN at its last epoch (the training logs' monitored test_mae, pooled "
        "over folds weighted by their test subjects); n/a without train.log_test_mae.",
        "year",
    ),
    "ensemble_mae": _e("Test MAE of the run's uncorrected ensemble brain_age.", "year"),
    "n_test": _e("Test subjects with age that the MAEs are computed on."),
    "best_epoch": _e("Epoch of the lowest validation MAE, mean over the folds' CNNs."),
    "n_epochs": _e("Epochs trained (early stopping), mean over the folds' CNNs."),
    "n_models": _e("Base models of the condition at this phase: seeds x folds."),
    "n_reached": _e("Base models whose validation MAE reached the threshold."),
    "n_seeds": _e("Seeds of the condition."),
    "n_seeds_reached": _e("Seeds whose models reached the phase in every fold."),
    "mean_epoch": _e("Mean first epoch reaching the phase, over the models that reached it."),
    "sd_epoch": _e("Standard deviation (ddof 1) of that epoch; n/a for fewer than 2 models."),
    "mean_val_mae": _e("Mean validation MAE at that epoch over those models.", "year"),
    "mean_train_loss": _e("Mean train_loss at that epoch over those models (loss units)."),
    "mean_test_mae": _e("Mean monitored test MAE at that epoch over those models.", "year"),
    "quantile": _e(
        "Per seed, the voxels at or below this quantile of its map (inside the brain mask) are "
        "discarded before the agreement is counted (paper 000: 0.05)."
    ),
    "n_agree": _e("Brain voxels kept in more than half of the seeds (n/a with fewer than 2)."),
    "fraction": _e("n_agree / n_voxels."),
    "metric": _e(
        "MAE compared between the conditions (a column of runs.tsv).",
        levels={"best_mae": "test MAE at the best validation epoch", "last_mae": "at the last"},
    ),
    "n_a": _e("Seeds of condition a with a value."),
    "n_b": _e("Seeds of condition b with a value."),
    "mean_a": _e("Mean of the metric over the seeds of condition a.", "year"),
    "mean_b": _e("Mean of the metric over the seeds of condition b.", "year"),
    "diff": _e("mean_a - mean_b.", "year"),
    "n_top": _e(
        "Voxels of the region among the map's top 1 % of the labelled brain voxels (first atlas "
        "of population.atlases, run's final population mean map)."
    ),
    "top_share": _e("n_top over all top voxels: the region's share of the top 1 %."),
}


def _base_model(m: re.Match) -> dict:
    """Entry of ``brain_age_<name>``: one base model."""
    name, region, seed = m.group(1), m.group(2) or None, m.group(3) or None
    if seed is None:
        what = (
            "ridge regression on the voxels of the model input (a non-CNN learner)"
            if name == "voxelridge"
            else "a non-CNN learner"
        )
    else:
        what = f"the CNN with seed {seed}" + (
            "" if region is None else f" that sees the {region} compartment only"
        )
    return _e(
        f"Prediction of base model {name}, {what}, of the subject's fold (the mean over folds "
        "for subjects in no fold).",
        "year",
    )


def _where(g: str) -> str:
    return "the whole brain" if g == "brain" else f"the {g} compartment only"


def _sub_ensemble(m: re.Match) -> dict:
    return _e(
        f"Prediction of the sub-ensemble of {_where(m.group(1))}: its base models combined by its "
        "guarded ridge head (ensemble.json), of the subject's fold.",
        "year",
    )


def _sub_uncertainty(m: re.Match) -> dict:
    return _e(
        f"Sub-ensemble-level uncertainty of {_where(m.group(1))}: width of the 95 % t-interval of "
        "the mean of its CNNs (paper 001).",
        "year",
    )


def _fold_role(m: re.Match) -> dict:
    k = m.group(1)
    return _e(
        f"Role of the subject in outer fold {k}: whether fold {k}'s base models, ensemble head "
        "and bias correction train on it, validate on it or predict it.",
        levels={
            "train": f"trains fold {k}'s base models",
            "validation": f"early stopping, ensemble head and bias correction of fold {k}",
            "test": f"held out by fold {k}, which predicts it (its out-of-fold prediction)",
            "predict": "no age: predicted by every fold, never scored",
        },
    )


def _effect_auc(m: re.Match) -> dict:
    return _e(
        f"ROC AUC of |relevance| for the voxels of the simulated effect '{m.group(1)}' against "
        "the brain voxels where age does not act (the other effects' voxels left out), mean over "
        "the subjects that have the effect; 0.5 = chance."
    )


_ORDER_TEXT = {
    "morf": "most relevant voxels first (highest signed relevance)",
    "lerf": "least relevant voxels first (lowest signed relevance)",
    "random": "voxels in a random order (seeded), the control",
    "morf_minus_random": "most relevant first minus random order, paired per subject",
}


def _aopc(m: re.Match) -> dict:
    order, bound = m.group(1), m.group(2)
    what = (
        "Area over the perturbation curve (AOPC, Samek et al. 2017): the mean drop of the "
        "predicted age over the steps of removing brain voxels "
        f"({_ORDER_TEXT[order]}; 0, 1, 2, 5, 10, 20, 30, 50 % of the brain replaced by the mean "
        "training image), mean over the faithfulness subjects; positive = the prediction falls. "
        "A faithful map has aopc_morf well above aopc_random."
    )
    if bound:
        what = f"{'Lower' if bound == 'low' else 'Upper'} bound of the 95 % bootstrap CI " + (
            "across subjects of: " + what
        )
    return _e(what, "year")


#: Families of columns: (regular expression fullmatched against the name, entry of the match).
PATTERNS: list[tuple[str, Callable[[re.Match], dict]]] = [
    (r"brain_age_ensemble-([A-Za-z0-9]+)", _sub_ensemble),
    (r"uncertainty_ensemble-([A-Za-z0-9]+)", _sub_uncertainty),
    (r"brain_age_((?:region-([A-Za-z0-9]+)_)?seed-(\d+))", _base_model),
    (r"brain_age_([A-Za-z0-9]+)()()", _base_model),
    (r"fold-(\d+)", _fold_role),
    (r"aopc_(morf_minus_random|morf|lerf|random)(?:_ci_(low|high))?", _aopc),
    (r"roc_auc_(\w+)", _effect_auc),
]

_L = r"[A-Za-z0-9]+"  # a BIDS label (brainage.io.layout.label)
_RANKED = "Regions ranked by {}; 1 = the largest value in that condition's table (ties: order)."

#: Per-table entries: regular expression fullmatched against the file name → column → entry. The
#: first matching expression with the column wins (native region tables before atlas ones).
TABLE_COLUMNS: dict[str, dict[str, dict]] = {
    r"metrics\.tsv": {
        "model": _e(
            "Predictor scored: a base model (seed-<n>, region-<r>_seed-<n>, voxelridge), a "
            "sub-ensemble (ensemble-<g>), the ensemble (brain_age), ensemble_corrected "
            "(brain_age_corrected) or mean_age_baseline (the training mean age of the fold's "
            "models, a chance-level reference)."
        ),
        "split": _e(
            "Subjects scored (with age).",
            levels={
                "train": "hold-out run: training subjects (in-sample for the base models)",
                "validation": "hold-out run: validation subjects (head and correction fitted)",
                "test": "held-out subjects (with cross-fitting, every subject with age)",
            },
        ),
        "fold": _e(
            "all: every subject of the split; k: the test subjects held out by outer fold k."
        ),
        "n": _e("Subjects with age and a finite prediction."),
        "r": _e("Pearson correlation of prediction and age (n/a below 3 subjects)."),
    },
    r"method-[A-Za-z0-9]+_curves\.tsv": {
        "fraction": _e("Fraction of the brain's voxels removed (replaced) at this step."),
        **{
            o: _e(
                f"Mean change of the predicted age when removing {_ORDER_TEXT[o]}, over the "
                "faithfulness subjects (negative = the prediction falls).",
                "year",
            )
            for o in ("morf", "lerf", "random")
        },
    },
    r"method-[A-Za-z0-9]+_reliance\.tsv": {
        "region": _e("Atlas region (region-truth design's atlas, else population.atlases[0])."),
        "atlas": _e("Atlas of the regions."),
        "relevance": _e(
            "Sum of the first base model's relevance map over the region, mean over the "
            "faithfulness subjects (the method's units).",
            _ARB,
        ),
        "reliance": _e(
            "Reliance of the first base model on the region: its prediction minus its prediction "
            "with only this region replaced by the mean training image, mean over the "
            "faithfulness subjects (positive = the region raises the predicted age).",
            "year",
        ),
    },
    r"method-[A-Za-z0-9]+_truth\.tsv": {
        "label": _e("Label value of the region in the atlas."),
        "region": _e("Atlas region (region-truth design's atlas, else population.atlases[0])."),
        "n_voxels": _e("Brain voxels of the region on the model grid."),
        "true_effect": _e(
            "True effect of the region: mean over its voxels and the explained subjects of the "
            "fraction of tissue that age changes over the cohort's age range (simulated)."
        ),
        "has_effect": _e(
            "Class of the region in region_roc_auc.",
            levels={
                "yes": "true effect >= 5 % of tissue",
                "no": "true effect < 1 % of tissue",
                "partial": "in between; left out of the ROC AUC",
            },
        ),
        "relevance": _e(
            "Mean over the explained subjects of the region's mean normalised relevance "
            "(|r| / sum of |r| in the brain), in parts per million of the map per voxel."
        ),
        "relevance_rank": _e("Rank of the region by relevance, 1 = highest."),
        "atlas": _e("Atlas of the regions."),
    },
    r"method_agreement\.tsv": {
        "method_a": _e("First explanation method of the pair."),
        "method_b": _e("Second explanation method of the pair."),
        "spearman": _e(
            "Spearman correlation of the two methods' population region tables (mean_relevance "
            "of regions/method-<m>_atlas-<a>_regions.tsv) over the regions both have."
        ),
        "n_regions": _e("Regions compared."),
        "atlas": _e("Atlas of the region tables."),
    },
    r"training_log\.tsv": {
        "seconds": _e(
            "Wall-clock time of the epoch: training, validation prediction, test monitoring.", "s"
        ),
    },
    r"phases\.tsv": {
        "model": _e("Base model (a whole-brain CNN, seed-<n>) whose checkpoints are listed."),
        "fold": _e("Outer cross-fitting fold of the base model (n/a: hold-out run)."),
        "epoch": _e("First epoch whose validation MAE was at or below the threshold."),
        "val_mae": _e("Validation MAE at that epoch.", "year"),
        "train_loss": _e("Training loss at that epoch (see training_log.tsv for its units)."),
        "test_mae": _e("Monitored test MAE at that epoch (n/a when not logged).", "year"),
    },
    r"curves\.tsv": {
        "fold": _e("Outer cross-fitting fold of the base model (n/a: hold-out run)."),
    },
    rf"method-{_L}_atlas-{_L}native_regions\.tsv": {
        "rank": _e("Rank of the region, 1 = highest mean_relevance (ties by label)."),
        "label": _e("Label value of the region in the subjects' native label maps (dseg)."),
        "n_subjects": _e("Subjects whose native label map has the region."),
        "mean_relevance": _e(
            "Mean over those subjects of the per-subject region mean of |relevance| pulled onto "
            "the native label map (inverse transform, linear interpolation) and divided by its "
            "mean over all labelled voxels (1 = the subject's average relevance density)."
        ),
    },
    rf"method-{_L}_atlas-{_L}native_subjects\.tsv": {
        "label": _e("Label value of the region in the subject's native label map (dseg)."),
        "n_voxels": _e("Native voxels of the region in the subject's label map."),
        "mean_relevance": _e(
            "Mean over the region's native voxels of the subject's |relevance| pulled onto its "
            "label map (inverse transform, linear interpolation), divided by its mean over all "
            "labelled voxels (1 = the subject's average relevance density)."
        ),
        "sum_relevance": _e(
            "Sum of that normalised relevance over the region's native voxels (depends on the "
            "native voxel size)."
        ),
    },
    rf"method-{_L}_stability\.tsv": {
        "factor": _e(
            "What varies: model (a, b: base models, each a table of its maps), fold (a, b: "
            "fold-<k>, the subjects each outer fold holds out) or method (method-all)."
        ),
        "spearman": _e(
            "Spearman correlation of the regions' mean_abs_relevance between a's and b's tables "
            "(first atlas of population.atlases; n/a below 3 regions)."
        ),
        "top10_overlap": _e(f"{_TOP10} that a and b share."),
    },
    rf"method-{_L}_ranks\.tsv": {
        "condition": _e("Table ranked: a base model, a fold (fold-<k>) or a method."),
        "rank": _e(_RANKED.format("mean_abs_relevance (not the signed mean of the region table)")),
    },
    rf"method-{_L}_test-{_L}_peaks\.tsv": {
        "cluster": _e(
            "nilearn's cluster id (get_clusters_table; '2a': a sub-peak of cluster 2, at least "
            "8 mm from the peak); nilearn's numbering, not that of the clusters table."
        ),
        "peak_x": _e("x of the (sub-)peak, MNI152NLin2009aSym.", "mm"),
        "peak_y": _e("y of the (sub-)peak, MNI152NLin2009aSym.", "mm"),
        "peak_z": _e("z of the (sub-)peak, MNI152NLin2009aSym.", "mm"),
        "peak_stat": _e("Statistic (t or F) at the (sub-)peak."),
        "region": _e("Atlas region at the (sub-)peak; '(no label)' outside every region."),
    },
    rf"method-{_L}_test-{_L}_clusters\.tsv": {
        "n_voxels": _e(
            "Voxels of the cluster: voxels with TFCE FWE p <= stats.alpha and this sign, "
            "connected under stats.connectivity (default 26)."
        ),
    },
    r"gap_windows\.tsv": {
        "n": _e("Subjects in the window with age, brain_age_gap and the covariate."),
        "r": _e(
            "Pearson r of the covariate and brain_age_gap in the window (n/a below "
            "stats.window_min_subjects, a constant covariate or < 2 per binary level)."
        ),
        "ci_low": _e("Lower end of the 95 % confidence interval of r (Fisher z)."),
        "ci_high": _e("Upper end of the 95 % confidence interval of r (Fisher z)."),
        "p": _e("Two-sided p of r (t distribution), uncorrected."),
    },
    r"gap_models\.tsv": {
        "n": _e("Subjects with age, brain_age_gap and the covariate (fitted with >= 6)."),
        "t": _e("t statistic of beta (beta / se)."),
        "p": _e("Two-sided p of t (df = n - 4)."),
        "ci_low": _e("Lower end of the 95 % confidence interval of beta.", "year"),
        "ci_high": _e("Upper end of the 95 % confidence interval of beta.", "year"),
    },
    rf"(?:method-{_L}_)?xai\.tsv": {
        "n_subjects": _e("Explained subjects whose ensemble relevance maps are scored."),
    },
    r"lesions\.tsv": {
        "n_subjects": _e("Included subjects (see lesions_subjects.tsv)."),
        "t": _e("Paired t statistic of lesion vs. expected relevance (scipy ttest_rel)."),
        "df": _e("Degrees of freedom: n_subjects - 1."),
        "p": _e("p of the paired t-test under the alternative."),
    },
    rf"method-{_L}\.tsv": {
        "spearman": _e(
            "Mean over subjects of the Spearman correlation, over the brain voxels, of |relevance| "
            "after this step with |relevance| of the trained model (step 0: 1)."
        ),
        "n_subjects": _e("Subjects with a defined correlation."),
    },
    r"runs\.tsv": {
        "seconds": _e("Wall-clock time of the run's task (its last attempt).", "s"),
        "error": _e("One-line error of a failed run (n/a when finished)."),
    },
    r"agreement\.tsv": {
        "phase": _e("Map compared: final (the runs' population mean maps) or phase k's map."),
        "threshold": _e("Validation-MAE threshold of the phase (n/a for final).", "year"),
        "n_seeds": _e("Seeds of the condition with a map for this phase."),
        "n_voxels": _e("Voxels of the template brain mask."),
    },
    r"ttests\.tsv": {
        "a": _e("First condition."),
        "b": _e("Second condition."),
        "t": _e("Welch's t statistic (unequal variances) of the metric across seeds, a vs. b."),
        "df": _e("Welch-Satterthwaite degrees of freedom."),
        "p": _e("Two-sided p of Welch's t-test (n/a with fewer than 2 seeds per condition)."),
    },
    r"regions_ranks\.tsv": {
        "mean_relevance": _e(
            "Mean over the region's voxels of the run's final population mean map.", _ARB
        ),
        "rank": _e("1 = the most top voxels (n_top), ties by mean_relevance."),
    },
    r"regions_stability\.tsv": {
        "condition": _e("Study condition whose seeds are compared, or all (between conditions)."),
        "factor": _e(
            "seed: a, b are seeds (seed-<n>) of the condition, regions ranked by n_top; "
            "condition: a, b are conditions, ranked by their seed-mean top_share."
        ),
    },
}


def describe_column(name: str, table: str | None = None) -> dict | None:
    """Data-dictionary entry of one column.

    Parameters
    ----------
    name : str
        Column name.
    table : str or Path, optional
        The table's file name (``"metrics.tsv"``, ``"xai.tsv"``,
        ``"method-lrp_atlas-aal_regions.tsv"``; a path is reduced to its name). Columns whose
        meaning differs between tables are looked up in :data:`TABLE_COLUMNS` first.

    Returns
    -------
    dict or None
        A copy of the entry (``Description``, optionally ``Units`` and ``Levels``): the table's,
        else the general one of :data:`COLUMNS`, else that of the first matching
        :data:`PATTERNS`; None when the column is undocumented.
    """
    name = str(name)
    if table is not None:
        file_name = Path(str(table)).name
        for pattern, entries in TABLE_COLUMNS.items():
            if name in entries and re.fullmatch(pattern, file_name):
                return copy.deepcopy(entries[name])
    if name in COLUMNS:
        return copy.deepcopy(COLUMNS[name])
    for pattern, entry in PATTERNS:
        match = re.fullmatch(pattern, name)
        if match:
            return entry(match)
    return None


def data_dictionary(
    columns: Iterable[str], table: str | None = None, specific: dict | None = None
) -> dict:
    """Return the data dictionary of a table: the content of its JSON sidecar.

    Parameters
    ----------
    columns : iterable of str
        The table's columns, in order.
    table : str or Path, optional
        The table's file name (see :func:`describe_column`).
    specific : dict, optional
        Entries of this very table (column → entry) that take precedence over
        :func:`describe_column` (e.g. the predictions' multi-level ensemble columns).

    Returns
    -------
    dict
        Column → entry, in column order; columns without any entry are left out.
    """
    specific = specific or {}
    out = {}
    for column in columns:
        column = str(column)
        if column in specific:
            entry = copy.deepcopy(specific[column])
        else:
            entry = describe_column(column, table)
        if entry is not None:
            out[column] = entry
    return out
