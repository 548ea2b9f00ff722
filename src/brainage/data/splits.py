"""Age-stratified, seeded subject splits (METHODS §1)."""

from __future__ import annotations

import functools

import numpy as np
import pandas as pd

from brainage.errors import ConfigError, InputError
from brainage.io.scans import group_by_subject, has_sessions
from brainage.utils import check_random_state

#: Split names, in report order. ``predict`` = subjects without age (predicted, never scored).
SPLITS = ("train", "validation", "test", "predict")


def _stratified_pick(ages: np.ndarray, fraction: float, rng: np.random.Generator) -> np.ndarray:
    """Pick ``round(fraction · n)`` indices spread over the age distribution.

    Subjects are sorted by age and cut into consecutive strata of ``1 / fraction`` subjects; one
    subject is drawn at random from each stratum (so the picked ages follow the cohort's age
    distribution), and the remainder is drawn at random from the leftovers.
    """
    n = len(ages)
    k = int(round(fraction * n))
    if k == 0:
        return np.array([], dtype=int)
    order = np.argsort(ages, kind="stable")
    strata = np.array_split(order, k)
    picked = np.array([rng.choice(s) for s in strata if len(s)], dtype=int)
    return np.sort(picked)


def by_subject(split):
    """Make a split function group the scans of one subject (longitudinal BIDS cohorts).

    When ``participant_id`` holds scan keys with sessions (:mod:`brainage.io.scans`), the split
    is drawn over subjects (age: the mean of the subject's known scan ages) and every scan of a
    subject gets its subject's assignment, so no subject's sessions straddle splits or folds. A
    scan without age is ``predict`` (fold 0) even when its subject's other scans are assigned.
    """

    @functools.wraps(split)
    def wrapper(table: pd.DataFrame, *args, **kwargs):
        keys = table["participant_id"].astype(str).tolist()
        if not has_sessions(keys):
            return split(table, *args, **kwargs)
        subjects, subject_of = group_by_subject(keys, table["age"])
        assigned = split(subjects, *args, **kwargs)
        out = assigned.reindex(subject_of)
        out.index = pd.Index(keys, name="participant_id")
        no_age = ~np.isfinite(table["age"].to_numpy(dtype=float))
        if isinstance(out, pd.Series):
            out = out.where(~no_age, "predict")
        else:
            out = out.copy()
            for col in out.columns:
                out.loc[no_age, col] = 0 if col == "fold" else "predict"
        return out

    return wrapper


@by_subject
def make_splits(
    table: pd.DataFrame,
    test_fraction: float = 0.1,
    validation_fraction: float = 0.15,
    seed: int = 0,
) -> pd.Series:
    """Assign every subject to ``train``, ``validation``, ``test`` or ``predict``.

    The test set is a fixed hold-out drawn first (age-stratified, seeded); the validation set is
    then drawn from the rest the same way. Subjects without age go to ``predict``. All base models
    of an ensemble share the validation set, because the ridge head and the age-bias correction
    are fitted on the base models' predictions for the same validation subjects (paper 001); each
    base model's seed changes its initialisation, data order, dropout and augmentation.

    Parameters
    ----------
    table : pandas.DataFrame
        Cohort table with ``participant_id`` and ``age`` (years, NaN = unknown).
    test_fraction, validation_fraction : float
        Fractions of the subjects with age (test) and of the remaining ones (validation), each
        in [0, 0.5].
    seed : int
        Split seed; the same seed and table give the same split.

    Returns
    -------
    pandas.Series
        Split name per subject, index = ``participant_id``. The scans of one subject
        (sessions, :mod:`brainage.io.scans`) share their split (:func:`by_subject`).

    Raises
    ------
    ConfigError
        A fraction outside [0, 0.5].
    InputError
        Fewer than 10 subjects with age.
    """
    for name, value in (
        ("test_fraction", test_fraction),
        ("validation_fraction", validation_fraction),
    ):
        if not 0 <= value <= 0.5:
            raise ConfigError(f"'{name}' must be in [0, 0.5]; got {value}")
    rng = check_random_state(seed)
    ids = table["participant_id"].to_numpy()
    ages = table["age"].to_numpy(dtype=float)
    split = np.full(len(ids), "predict", dtype=object)
    known = np.flatnonzero(np.isfinite(ages))
    if len(known) < 10:
        raise InputError(
            f"only {len(known)} subjects have an age; training needs at least 10",
            "add ages to participants.tsv or the cohort table",
        )
    test = known[_stratified_pick(ages[known], test_fraction, rng)]
    rest = np.setdiff1d(known, test)
    val = rest[_stratified_pick(ages[rest], validation_fraction, rng)]
    split[known] = "train"
    split[test] = "test"
    split[val] = "validation"
    return pd.Series(split, index=pd.Index(ids, name="participant_id"), name="split")


def fold_column(fold: int) -> str:
    """Column of ``splits.tsv`` with every subject's role in outer fold ``fold``: ``fold-<k>``."""
    return f"fold-{int(fold)}"


@by_subject
def make_folds(
    table: pd.DataFrame,
    n_folds: int = 5,
    validation_fraction: float = 0.15,
    seed: int = 0,
) -> pd.DataFrame:
    """Assign every subject with age to one of ``n_folds`` age-stratified outer folds.

    Subjects with age are sorted by age and cut into consecutive groups of ``n_folds``; inside
    each group the folds are dealt out in a seeded random order, so every fold spans the whole age
    range and fold sizes differ by at most one. In outer fold ``k`` the subjects of fold ``k``
    are the test subjects; a validation set is drawn from the others (age-stratified, seeded by
    ``(seed, k)``, as in :func:`make_splits`) and the rest are training subjects. The base models,
    the ensemble head and the age-bias correction of fold ``k`` are fitted on its training and
    validation subjects only, so every subject gets an out-of-fold brain age from models that
    never saw it (paper 001 uses 10 folds). Subjects without age are in no fold (role ``predict``
    everywhere): they are predicted by the models of all folds.

    Parameters
    ----------
    table : pandas.DataFrame
        Cohort table with ``participant_id`` and ``age`` (years, NaN = unknown).
    n_folds : int
        Number of outer folds, ≥ 2.
    validation_fraction : float
        Fraction of each fold's non-test subjects used for validation, in (0, 0.5].
    seed : int
        The same seed and table give the same folds.

    Returns
    -------
    pandas.DataFrame
        Index ``participant_id``; column ``fold`` (1 … ``n_folds``, 0 = no age), ``split``
        (``test`` = out-of-fold, ``predict`` = no age) and one column ``fold-<k>`` per fold with
        the subject's role there (``train``, ``validation``, ``test`` or ``predict``). The
        scans of one subject (sessions) share their fold and roles (:func:`by_subject`).

    Raises
    ------
    ConfigError
        ``n_folds`` < 2 or ``validation_fraction`` outside (0, 0.5].
    InputError
        Fewer than ``max(10, 2 · n_folds)`` subjects with age.
    """
    if isinstance(n_folds, bool) or int(n_folds) != n_folds or n_folds < 2:
        raise ConfigError(f"'n_folds' must be an integer >= 2; got {n_folds!r}")
    if not 0 < validation_fraction <= 0.5:
        raise ConfigError(f"'validation_fraction' must be in (0, 0.5]; got {validation_fraction}")
    n_folds = int(n_folds)
    ids = table["participant_id"].to_numpy()
    ages = table["age"].to_numpy(dtype=float)
    known = np.flatnonzero(np.isfinite(ages))
    need = max(10, 2 * n_folds)
    if len(known) < need:
        raise InputError(
            f"only {len(known)} subjects have an age; {n_folds}-fold cross-fitting needs at "
            f"least {need}",
            "add ages to participants.tsv or the cohort table, or set split.n_folds lower",
        )
    rng = check_random_state(seed)
    fold = np.zeros(len(ids), dtype=int)
    order = known[np.argsort(ages[known], kind="stable")]
    counts = np.zeros(n_folds, dtype=int)
    for start in range(0, len(order), n_folds):
        group = order[start : start + n_folds]
        # the last, partial group goes to the folds that are smallest so far, in random order
        free = np.flatnonzero(counts == counts.min())
        labels = rng.permutation(n_folds if len(group) == n_folds else free)[: len(group)]
        fold[group] = labels + 1
        counts[labels] += 1
    out = pd.DataFrame(
        {"fold": fold, "split": np.where(fold > 0, "test", "predict")},
        index=pd.Index(ids, name="participant_id"),
    )
    for k in range(1, n_folds + 1):
        role = np.full(len(ids), "predict", dtype=object)
        rest = known[fold[known] != k]
        rng_k = check_random_state((seed, k))
        pick = rest[_stratified_pick(ages[rest], validation_fraction, rng_k)]
        role[rest] = "train"
        role[pick] = "validation"
        role[fold == k] = "test"
        out[fold_column(k)] = role
    return out
