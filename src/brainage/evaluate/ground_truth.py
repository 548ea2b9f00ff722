"""Scoring relevance maps against known ground truth (METHODS §11; paper 001's simulation).

A simulated cohort (``brainage.simulate``) knows where age acts: a boolean mask of the voxels whose
intensities change with age (ventricles, cortex, lesions). An explanation method is good when its
relevance falls on those voxels. All maps and masks lie on one voxel grid (the template grid of the
run, e.g. the 2 mm MNI152NLin2009aSym crop box, 80 × 96 × 80); every metric is computed inside the
brain mask only, and truth voxels outside the brain are ignored.

Metrics per subject map (relevance ``r``, truth mask ``t``, brain mask ``b``):

* :func:`mass_accuracy` — share of the positive relevance mass that lies inside ``t``
  ("relevance mass accuracy", Arras et al. 2022, CLEVR-XAI);
* :func:`mask_fraction` — ``|t ∩ b| / |b|``, the chance level of the mass accuracy (a map that
  spreads relevance uniformly over the brain scores exactly this);
* :func:`roc_auc` — ROC AUC of ``|r|`` as a voxel score for ``t`` (chance 0.5);
* :func:`topk_precision` — share of the ``k`` voxels with the largest ``|r|`` that lie in ``t``
  ("relevance rank accuracy", chance ``mask_fraction``);
* :func:`effect_roc_auc` — ROC AUC of ``|r|`` for the voxels of one effect ``e ⊂ t`` (e.g. the
  ventricles) against the brain voxels outside ``t``: which of the simulated effects a method
  finds.

:func:`score_maps` computes the first four for a stack of subjects and returns one row per subject.
:func:`population_scores` scores the cohort's mean map (METHODS §9: absolute value, sum-to-mean
normalisation, average over subjects) against the voxels where age acts in most subjects.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from brainage.errors import ConfigError, DimensionError, InputError
from brainage.evaluate._checks import (
    as_map,
    as_mask,
    as_subject_maps,
    brain_voxels,
    check_same_shape,
    participant_ids_or_default,
)

#: Metric columns of :func:`score_maps`, in order.
METRICS = ("mass_accuracy", "mask_fraction", "roc_auc", "topk_precision")


def _prepare(relevance, truth, brain) -> tuple[np.ndarray, np.ndarray]:
    """Validate one subject's map and masks; return (relevance, truth) inside the brain, 1D."""
    r = as_map("relevance", relevance, 3)
    t = as_mask("truth", truth, 3)
    b = as_mask("brain", brain, 3)
    check_same_shape(relevance=r, truth=t, brain=b)
    brain_voxels(b)
    return r[b], t[b]


def mass_accuracy(relevance, truth, brain) -> float:
    """Share of the positive relevance mass that lies inside the truth mask.

    ``Σ_{v ∈ t ∩ b} max(r_v, 0) / Σ_{v ∈ b} max(r_v, 0)``. Only positive relevance counts
    (evidence *for* a higher predicted age under the sign conventions of LRP and gradients);
    use ``np.abs(relevance)`` to score unsigned maps (Guided Backprop magnitudes, U-Noise
    importance, which are non-negative anyway).

    Parameters
    ----------
    relevance : ndarray, shape (i, j, k)
        One subject's relevance map on the template grid (any units).
    truth : ndarray of bool, shape (i, j, k)
        Where age acts (ground truth); voxels outside ``brain`` are ignored.
    brain : ndarray of bool, shape (i, j, k)
        Brain mask of the grid.

    Returns
    -------
    float
        In [0, 1]; 1 = all positive relevance inside the truth; ``mask_fraction`` = chance.
        NaN when the map has no positive relevance inside the brain.

    Raises
    ------
    DimensionError
        An input is not 3D or the shapes differ.
    InputError
        Non-finite relevance, non-binary masks, or an empty brain mask.
    """
    r, t = _prepare(relevance, truth, brain)
    pos = np.maximum(r, 0.0)
    total = pos.sum()
    if total <= 0:
        return float("nan")
    return float(pos[t].sum() / total)


def mask_fraction(truth, brain) -> float:
    """Fraction of the brain covered by the truth mask, ``|t ∩ b| / |b|``.

    The chance level of :func:`mass_accuracy` and :func:`topk_precision`.

    Parameters
    ----------
    truth : ndarray of bool, shape (i, j, k)
        Ground-truth mask.
    brain : ndarray of bool, shape (i, j, k)
        Brain mask.

    Returns
    -------
    float
        In [0, 1].

    Raises
    ------
    DimensionError
        Not 3D or shapes differ.
    InputError
        Non-binary masks or an empty brain mask.
    """
    t = as_mask("truth", truth, 3)
    b = as_mask("brain", brain, 3)
    check_same_shape(truth=t, brain=b)
    n_brain = brain_voxels(b)
    return float((t & b).sum() / n_brain)


def _auc_from_scores(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney ROC AUC of ``scores`` for boolean ``labels`` (ties count one half)."""
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = rankdata(scores)  # average ranks: ties contribute 1/2, as in sklearn
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def roc_auc(relevance, truth, brain) -> float:
    """ROC AUC of the relevance magnitude ``|r|`` as a score for the truth mask, inside the brain.

    The probability that a random truth voxel has larger ``|r|`` than a random non-truth brain
    voxel (ties count one half), computed with the Mann–Whitney rank formula
    ``AUC = (Σ_{v ∈ t} rank_v − n_t (n_t + 1) / 2) / (n_t · n_¬t)``; identical to
    :func:`sklearn.metrics.roc_auc_score` on ``(t[b], |r|[b])``.

    Parameters
    ----------
    relevance : ndarray, shape (i, j, k)
        One subject's relevance map (signed or not; the magnitude is scored).
    truth : ndarray of bool, shape (i, j, k)
        Ground-truth mask.
    brain : ndarray of bool, shape (i, j, k)
        Brain mask.

    Returns
    -------
    float
        In [0, 1]; 0.5 = chance. NaN when the truth mask covers none or all of the brain.

    Raises
    ------
    DimensionError, InputError
        As for :func:`mass_accuracy`.
    """
    r, t = _prepare(relevance, truth, brain)
    return _auc_from_scores(np.abs(r), t)


def effect_roc_auc(relevance, effect, truth, brain) -> float:
    """ROC AUC of ``|r|`` for one effect's voxels against the brain voxels where age does not act.

    Positives are ``e ∩ b``, negatives ``b ∩ ¬t``; voxels of the other effects (``t ∩ ¬e``) are
    left out, so the value says whether the method finds this effect whatever it does with the
    others. With ``e = t`` it equals :func:`roc_auc`.

    Parameters
    ----------
    relevance : ndarray, shape (i, j, k)
        One subject's relevance map (the magnitude is scored).
    effect : ndarray of bool, shape (i, j, k)
        Voxels of one effect (e.g. ``ventricles`` of :mod:`brainage.simulate`).
    truth : ndarray of bool, shape (i, j, k)
        All voxels where age acts (``ageeffect``); must contain ``effect`` inside the brain.
    brain : ndarray of bool, shape (i, j, k)
        Brain mask.

    Returns
    -------
    float
        In [0, 1]; 0.5 = chance. NaN when the effect has no voxel in the brain (e.g. a subject
        without lesions) or every brain voxel lies in ``truth``.

    Raises
    ------
    DimensionError
        Not 3D or shapes differ.
    InputError
        Non-finite relevance, non-binary masks, an empty brain mask, or effect voxels outside
        ``truth``.
    """
    r, t = _prepare(relevance, truth, brain)
    e = as_mask("effect", effect, 3)
    b = as_mask("brain", brain, 3)
    check_same_shape(brain=b, effect=e)
    e = e[b]
    if bool((e & ~t).any()):
        raise InputError(
            f"{int((e & ~t).sum())} voxels of 'effect' lie outside 'truth'",
            fix="pass the union of all effects (the 'ageeffect' mask) as 'truth'",
        )
    keep = e | ~t
    return _auc_from_scores(np.abs(r[keep]), e[keep])


def population_scores(maps, truths, brain, min_share: float = 0.5) -> dict:
    """Score the population relevance map of a cohort against where age acts in most subjects.

    The population map is ``P = mean_s |r_s| / mean_{v ∈ b} |r_s(v)|`` (absolute value, each
    subject scaled to mean 1 in the brain, then averaged: METHODS §9), and the population truth
    is ``T = {v : share of subjects with v ∈ t_s ≥ min_share}``. Averaging removes what differs
    between subjects (individual anatomy, noise), so these scores tell whether the *population*
    map that a study reports lies where age acts.

    Parameters
    ----------
    maps : ndarray, shape (n, i, j, k) or (n, 1, i, j, k)
        Relevance maps of n subjects on one template grid.
    truths : ndarray of bool, shape (n, i, j, k) or (i, j, k)
        Ground-truth masks per subject, or one shared mask.
    brain : ndarray of bool, shape (i, j, k)
        Brain mask of the grid.
    min_share : float
        In (0, 1]: a voxel belongs to ``T`` when it is a truth voxel in at least this share of
        the subjects.

    Returns
    -------
    dict
        ``population_mass_accuracy`` (share of ``P``'s mass in ``T``), ``population_mask_fraction``
        (``|T ∩ b| / |b|``, its chance level) and ``population_roc_auc`` (ROC AUC of ``P`` for
        ``T``); NaN where undefined.

    Raises
    ------
    ConfigError
        ``min_share`` outside (0, 1].
    DimensionError, InputError
        As for :func:`score_maps`.
    """
    if (
        isinstance(min_share, bool)
        or not isinstance(min_share, (int, float))
        or not (0 < min_share <= 1)
    ):
        raise ConfigError(f"'min_share' must be a number in (0, 1]; got {min_share!r}")
    r = as_subject_maps("maps", maps)
    t = as_mask("truths", truths, (3, 4))
    b = as_mask("brain", brain, 3)
    check_same_shape(maps=r[0], brain=b)
    if t.shape[-3:] != b.shape or (t.ndim == 4 and t.shape[0] != r.shape[0]):
        raise DimensionError(
            f"'truths' has shape {t.shape}; expected {b.shape} or {(r.shape[0], *b.shape)}"
        )
    brain_voxels(b)
    a = np.abs(r[:, b]).astype(np.float64)
    scale = a.mean(axis=1, keepdims=True)
    a = np.divide(a, scale, out=np.zeros_like(a), where=scale > 0)
    pop = a.mean(axis=0)
    share = t[:, b].mean(axis=0) if t.ndim == 4 else t[b].astype(float)
    tp = share >= min_share
    total = pop.sum()
    return {
        "population_mass_accuracy": float(pop[tp].sum() / total) if total > 0 else float("nan"),
        "population_mask_fraction": float(tp.mean()),
        "population_roc_auc": _auc_from_scores(pop, tp),
    }


def _topk_hits(scores: np.ndarray, labels: np.ndarray, k: int) -> float:
    """Return the expected count of truth voxels in the top-k ``scores`` (random tie-breaking)."""
    kth = np.partition(scores, scores.size - k)[scores.size - k]  # k-th largest value
    above = scores > kth
    tied = scores == kth
    hits = labels[above].sum()
    needed = k - int(above.sum())
    if needed > 0:
        hits = hits + needed * labels[tied].mean()
    return float(hits)


def topk_precision(relevance, truth, brain, k: int | None = None) -> float:
    """Share of the ``k`` brain voxels with the largest ``|r|`` that lie inside the truth mask.

    Ties at the k-th value are broken at random *in expectation*: the tied voxels contribute
    the number still needed times their share of truth voxels. So the result does not depend on
    voxel order, and a constant map scores the chance level ``mask_fraction``.

    Parameters
    ----------
    relevance : ndarray, shape (i, j, k)
        One subject's relevance map (the magnitude is ranked).
    truth : ndarray of bool, shape (i, j, k)
        Ground-truth mask.
    brain : ndarray of bool, shape (i, j, k)
        Brain mask.
    k : int or None
        Number of top voxels, 1 ≤ k ≤ |b|; None (default): ``|t ∩ b|``, which makes the value
        the "relevance rank accuracy" (precision = recall).

    Returns
    -------
    float
        In [0, 1]; 1 = the k most relevant voxels are all truth voxels. NaN when ``k`` is None and
        the truth mask has no voxel inside the brain.

    Raises
    ------
    ConfigError
        ``k`` not an integer in [1, |b|].
    DimensionError, InputError
        As for :func:`mass_accuracy`.
    """
    r, t = _prepare(relevance, truth, brain)
    if k is None:
        k = int(t.sum())
        if k == 0:
            return float("nan")
    elif isinstance(k, bool) or not isinstance(k, (int, np.integer)) or not 1 <= k <= r.size:
        raise ConfigError(f"'k' must be an integer in [1, {r.size}] (brain voxels); got {k!r}")
    return _topk_hits(np.abs(r), t, int(k)) / int(k)


def score_maps(maps, truths, brain, participant_ids=None, k: int | None = None) -> pd.DataFrame:
    """Score a stack of subject maps against ground truth: one row per subject.

    Parameters
    ----------
    maps : ndarray, shape (n, i, j, k) or (n, 1, i, j, k)
        Relevance maps of n subjects on the template grid (the output of
        :func:`brainage.explain.explain` for one-channel inputs is accepted as is).
    truths : ndarray of bool, shape (n, i, j, k) or (i, j, k)
        Ground-truth masks per subject, or one mask shared by all subjects.
    brain : ndarray of bool, shape (i, j, k) or (n, i, j, k)
        Brain mask (shared or per subject).
    participant_ids : sequence of str, optional
        Subject labels (default "0", "1", …).
    k : int or None
        Passed to :func:`topk_precision`.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id``, ``mass_accuracy``, ``mask_fraction``, ``roc_auc``,
        ``topk_precision``, ``n_truth_voxels`` (|t ∩ b|), ``n_brain_voxels``; n rows.

    Raises
    ------
    DimensionError
        Shapes that do not match (the message names the parameters).
    InputError
        Non-finite maps, non-binary masks, an empty brain mask, or a wrong number of ids.
    """
    r = as_subject_maps("maps", maps)
    n = r.shape[0]
    t = as_mask("truths", truths, (3, 4))
    b = as_mask("brain", brain, (3, 4))
    grid = r.shape[1:]
    for name, arr in (("truths", t), ("brain", b)):
        if arr.shape[-3:] != grid or (arr.ndim == 4 and arr.shape[0] != n):
            raise DimensionError(
                f"'{name}' has shape {arr.shape}; expected {grid} or {(n, *grid)} to match "
                f"'maps' of shape {r.shape}"
            )
    ids = participant_ids_or_default(participant_ids, n)
    rows = []
    for s in range(n):
        ts = t[s] if t.ndim == 4 else t
        bs = b[s] if b.ndim == 4 else b
        rows.append(
            {
                "participant_id": ids[s],
                "mass_accuracy": mass_accuracy(r[s], ts, bs),
                "mask_fraction": mask_fraction(ts, bs),
                "roc_auc": roc_auc(r[s], ts, bs),
                "topk_precision": topk_precision(r[s], ts, bs, k=k),
                "n_truth_voxels": int((ts & bs).sum()),
                "n_brain_voxels": int(bs.sum()),
            }
        )
    return pd.DataFrame(rows)
