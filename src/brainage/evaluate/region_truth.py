"""Scoring relevance maps against region-level ground truth (issue 11, item 3; METHODS §11).

A simulated subject's ``change`` map (:class:`brainage.simulate.Phantom`) holds the fraction of
each voxel's tissue that age changes over the cohort's age range; its mean over an atlas region is
the region's **true effect**. The region-truth design (``brainage simulate --design regions``)
makes these effects act in a known subset of Harvard-Oxford regions with known strengths, but the
scores below work for any simulated cohort and any atlas.

A method's **region relevance** is the mean of its normalised map (``|r| / Σ|r|`` inside the
brain, METHODS §9) over the region's brain voxels: a density, so large regions are not favoured.

* :func:`region_roc_auc` — ROC AUC of region relevance for the regions with an effect (true effect
  ≥ :data:`EFFECT_MIN`, the voxel masks' threshold) against those without one (< :data:`NONE_MAX`);
  regions in between (partly changed, e.g. by a neighbour's atrophy seen through registration) are
  left out. Chance 0.5.
* Spearman correlation of region relevance with the true per-region effect, over all regions.

:func:`region_truth_scores` computes both per subject (mean over subjects) and for the cohort's
mean map (``population_*``), and returns the per-region table.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy import stats

from brainage.errors import ConfigError
from brainage.evaluate.ground_truth import _auc_from_scores

#: A region has an effect when at least this fraction of its tissue changes (as the voxel masks).
EFFECT_MIN = 0.05
#: A region has no effect when less than this fraction of its tissue changes.
NONE_MAX = 0.01


def region_means(maps, labels) -> np.ndarray:
    """Mean of each map over each region.

    Parameters
    ----------
    maps : ndarray, shape (n, i, j, k)
    labels : ndarray of int, shape (i, j, k)
        Region labels on the maps' grid, 0 = not counted (background or outside the brain).

    Returns
    -------
    ndarray, shape (n, n_regions)
        In ``np.unique(labels)`` order, label 0 excluded.

    Raises
    ------
    ConfigError
        Shapes that do not match, or no labelled voxel.
    """
    x = np.asarray(maps, dtype=np.float64)
    lab = np.asarray(labels)
    if x.ndim != 4 or x.shape[1:] != lab.shape:
        raise ConfigError(f"maps {x.shape} and labels {lab.shape} do not match")
    regions = np.array([r for r in np.unique(lab) if r != 0])
    if regions.size == 0:
        raise ConfigError("no labelled voxel: the atlas does not overlap the brain mask")
    inside = lab.ravel() != 0
    index = np.searchsorted(regions, lab.ravel()[inside])
    counts = np.bincount(index, minlength=regions.size)
    flat = x.reshape(x.shape[0], -1)[:, inside]
    sums = np.stack([np.bincount(index, weights=f, minlength=regions.size) for f in flat])
    return sums / counts


def region_roc_auc(relevance, effect) -> float:
    """ROC AUC of per-region relevance for regions with an effect against regions without one.

    Parameters
    ----------
    relevance, effect : ndarray, shape (n_regions,)
        Region relevance and true effect (fraction of tissue changed).

    Returns
    -------
    float
        In [0, 1], 0.5 = chance; NaN when either class is empty. Regions with
        ``NONE_MAX ≤ effect < EFFECT_MIN`` are left out.
    """
    rel, eff = np.asarray(relevance, float), np.asarray(effect, float)
    positive, negative = eff >= EFFECT_MIN, eff < NONE_MAX
    keep = positive | negative
    if not (positive.any() and negative.any()):
        return float("nan")
    return _auc_from_scores(rel[keep], positive[keep])


def _spearman(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(stats.spearmanr(a, b).statistic)


def region_truth_scores(maps, change, labels, brain, names=None) -> tuple[dict, pd.DataFrame]:
    """Region-level ground-truth scores of one method's maps.

    Parameters
    ----------
    maps : ndarray, shape (n, i, j, k)
        Relevance maps on the template grid (any units, signed or not).
    change : ndarray, shape (n, i, j, k)
        The subjects' true ``change`` maps (fraction of tissue age changes) on the same grid.
    labels : ndarray of int, shape (i, j, k)
        Atlas labels on the grid (0 = background).
    brain : ndarray of bool, shape (i, j, k)
        Brain mask; only its voxels count.
    names : dict of int to str, optional
        Label → region name for the table.

    Returns
    -------
    scores : dict
        ``region_roc_auc`` and ``region_effect_spearman`` (means over subjects of each subject's
        score against its own true effects), ``population_region_roc_auc`` and
        ``population_region_effect_spearman`` (the mean normalised map against the mean true
        effect), ``region_n_effect`` and ``region_n_none`` (regions in each class of the mean
        effect).
    table : pandas.DataFrame
        One row per region: ``label``, ``region``, ``n_voxels``, ``true_effect`` (mean over
        subjects), ``has_effect`` (``"yes"``, ``"no"`` or ``"partial"``), ``relevance`` (mean
        normalised relevance, ×1 000 000 for legibility: parts per million of the map per voxel),
        ``relevance_rank`` (1 = highest).

    Raises
    ------
    ConfigError
        Shapes that do not match, or fewer than 3 regions in the brain.
    """
    from brainage.population import normalise_maps

    b = np.asarray(brain, dtype=bool)
    x = np.asarray(maps, dtype=np.float64)
    c = np.asarray(change, dtype=np.float64)
    if x.shape != c.shape:
        raise ConfigError(f"maps {x.shape} and change maps {c.shape} do not match")
    lab = np.where(b, np.asarray(labels), 0)
    ids = [int(r) for r in np.unique(lab) if r != 0]
    if len(ids) < 3:
        raise ConfigError(f"need at least 3 atlas regions inside the brain; found {len(ids)}")
    rel = region_means(normalise_maps(x, b, method="sum"), lab)
    eff = region_means(c, lab)
    pop_rel, pop_eff = rel.mean(axis=0), eff.mean(axis=0)
    per_auc = [region_roc_auc(rel[s], eff[s]) for s in range(len(rel))]
    per_rho = [_spearman(rel[s], eff[s]) for s in range(len(rel))]
    scores = {
        "region_roc_auc": float(np.nanmean(per_auc)) if np.isfinite(per_auc).any() else np.nan,
        "region_effect_spearman": float(np.nanmean(per_rho))
        if np.isfinite(per_rho).any()
        else np.nan,
        "population_region_roc_auc": region_roc_auc(pop_rel, pop_eff),
        "population_region_effect_spearman": _spearman(pop_rel, pop_eff),
        "region_n_effect": int((pop_eff >= EFFECT_MIN).sum()),
        "region_n_none": int((pop_eff < NONE_MAX).sum()),
    }
    counts = np.bincount(lab.ravel())[ids]
    names = names or {}
    table = pd.DataFrame({
        "label": ids,
        "region": [names.get(r, str(r)) for r in ids],
        "n_voxels": counts,
        "true_effect": pop_eff,
        "has_effect": np.where(pop_eff >= EFFECT_MIN, "yes",
                               np.where(pop_eff < NONE_MAX, "no", "partial")),
        "relevance": pop_rel * 1e6,
    })  # fmt: skip
    table["relevance_rank"] = table["relevance"].rank(ascending=False, method="min").astype(int)
    return scores, table.sort_values("relevance_rank", kind="stable").reset_index(drop=True)
