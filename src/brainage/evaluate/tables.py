"""One table that compares explanation methods: ground truth, sanity check, seed agreement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from brainage.errors import ConfigError, DimensionError, InputError, did_you_mean
from brainage.evaluate._checks import as_mask
from brainage.evaluate.ground_truth import METRICS, effect_roc_auc, population_scores, score_maps
from brainage.evaluate.randomisation import PASS_THRESHOLD, randomisation_summary
from brainage.io import write_tsv

#: Columns of :func:`evaluate_explanations`, in order.
XAI_COLUMNS = (
    "method",
    "n_subjects",
    *METRICS,
    "randomisation_spearman",
    "passes_randomisation",
    "seed_dice",
    "population_mass_accuracy",
    "population_mask_fraction",
    "population_roc_auc",
)


def _check_keys(name: str, given: dict | None, methods) -> dict:
    if given is None:
        return {}
    if not isinstance(given, dict):
        raise TypeError(
            f"'{name}' must be a dict method → value or None; got {type(given).__name__}"
        )
    for key in given:
        if key not in methods:
            raise ConfigError(
                f"'{name}' has an entry for method {key!r}, which is not in 'maps'; "
                f"{did_you_mean(str(key), methods)}"
            )
    return given


def evaluate_explanations(
    maps: dict,
    truths,
    brain,
    randomisation: dict | None = None,
    seed_agreement: dict | None = None,
    threshold: float = PASS_THRESHOLD,
    k: int | None = None,
    effects: dict | None = None,
) -> pd.DataFrame:
    """Score several explanation methods against ground truth: one row per method.

    Parameters
    ----------
    maps : dict of str → ndarray, shape (n, i, j, k) or (n, 1, i, j, k)
        Relevance maps per method, n subjects on the template grid.
    truths : ndarray of bool, shape (n, i, j, k) or (i, j, k)
        Ground-truth masks (where age acts; e.g. from :mod:`brainage.simulate`).
    brain : ndarray of bool, shape (i, j, k)
        Brain mask of the grid.
    randomisation : dict of str → float or DataFrame, optional
        Per method, the mean Spearman correlation after full model randomisation, or the table
        returned by :func:`~brainage.evaluate.cascading_randomisation`. Methods left out get NaN.
    seed_agreement : dict of str → float, optional
        Per method, the mean pairwise top-1 % Dice across seeds
        (:func:`~brainage.evaluate.seed_agreement`). Methods left out get NaN.
    threshold : float
        Pass threshold of the randomisation check (default 0.5; passes when the Spearman
        correlation is below it).
    k : int or None
        Passed to :func:`~brainage.evaluate.topk_precision` (default |truth ∩ brain|).
    effects : dict of str → ndarray of bool, shape (n, i, j, k) or (i, j, k), optional
        Masks of the single effects whose union is ``truths`` (e.g. ``ventricles``, ``cortex``,
        ``lesions``); each adds a column ``roc_auc_<name>``
        (:func:`~brainage.evaluate.effect_roc_auc`, mean over the subjects that have the effect).

    Returns
    -------
    pandas.DataFrame
        Columns ``method``, ``n_subjects``, ``mass_accuracy``, ``mask_fraction``, ``roc_auc``,
        ``topk_precision`` (means over subjects, NaN-skipping), ``randomisation_spearman``,
        ``passes_randomisation`` (bool, or None when not computed), ``seed_dice``, then
        ``population_mass_accuracy``, ``population_mask_fraction``, ``population_roc_auc``
        (:func:`~brainage.evaluate.population_scores`) and one ``roc_auc_<name>`` per effect;
        one row per method in the order of ``maps``.

    Raises
    ------
    ConfigError
        ``maps`` empty, or a key of ``randomisation`` / ``seed_agreement`` that is not a method
        of ``maps`` (with "did you mean …").
    DimensionError, InputError
        As for :func:`~brainage.evaluate.score_maps`.
    """
    if not isinstance(maps, dict) or not maps:
        raise ConfigError(
            "'maps' must be a non-empty dict method name → relevance maps (n, i, j, k)"
        )
    methods = list(maps)
    effects = dict(effects or {})
    for name, masks in effects.items():
        effects[name] = as_mask(f"effects[{name!r}]", masks, (3, 4))
    randomisation = _check_keys("randomisation", randomisation, methods)
    seed_agreement = _check_keys("seed_agreement", seed_agreement, methods)
    rows = []
    for method, method_maps in maps.items():
        scores = score_maps(method_maps, truths, brain, k=k)
        row = {"method": method, "n_subjects": len(scores)}
        for metric in METRICS:
            values = scores[metric].to_numpy(dtype=float)
            row[metric] = float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
        rho = randomisation.get(method)
        if isinstance(rho, pd.DataFrame):
            summary = randomisation_summary(rho, threshold)
        elif rho is None:
            summary = {"randomisation_spearman": float("nan"), "passes_randomisation": None}
        else:
            value = float(rho)
            summary = {
                "randomisation_spearman": value,
                "passes_randomisation": bool(value < threshold) if np.isfinite(value) else None,
            }
        row.update(summary)
        dice = seed_agreement.get(method)
        row["seed_dice"] = float("nan") if dice is None else float(dice)
        row.update(population_scores(method_maps, truths, brain))
        for name, masks in effects.items():
            row[f"roc_auc_{name}"] = _mean_effect_auc(method_maps, masks, truths, brain)
        rows.append(row)
    columns = [*XAI_COLUMNS, *(f"roc_auc_{name}" for name in effects)]
    return pd.DataFrame(rows, columns=columns)


def _mean_effect_auc(maps, effect, truths, brain) -> float:
    """Mean of :func:`effect_roc_auc` over the subjects that have the effect (NaN if none)."""
    maps = np.asarray(maps)
    maps = maps[:, 0] if maps.ndim == 5 else maps
    if effect.ndim == 4 and effect.shape[0] != maps.shape[0]:
        raise DimensionError(
            f"an effect mask stack has {effect.shape[0]} subjects but the maps have "
            f"{maps.shape[0]}; give one mask per subject (n, i, j, k) or one shared (i, j, k)"
        )
    values = []
    for s in range(maps.shape[0]):
        e = effect[s] if effect.ndim == 4 else effect
        t = truths[s] if np.ndim(truths) == 4 else truths
        values.append(effect_roc_auc(maps[s], e, t, brain))
    finite = [v for v in values if np.isfinite(v)]
    return float(np.mean(finite)) if finite else float("nan")


def write_xai_table(table: pd.DataFrame, out_dir) -> Path:
    """Write the method comparison table to ``OUT/evaluation/xai.tsv`` atomically.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`evaluate_explanations` (must have a ``method`` column).
    out_dir : str or Path
        The run's output folder ``OUT``.

    Returns
    -------
    Path
        The written file (missing values as ``n/a``).

    Raises
    ------
    InputError
        ``table`` is not a DataFrame with a ``method`` column.
    """
    if not isinstance(table, pd.DataFrame) or "method" not in table.columns:
        raise InputError(
            "'table' must be a DataFrame with a 'method' column (see evaluate_explanations)"
        )
    from brainage.io.layout import RunLayout

    return write_tsv(RunLayout(Path(out_dir)).xai_table, table)
