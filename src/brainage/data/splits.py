"""Age-stratified, seeded subject splits (METHODS §1)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from brainage.errors import ConfigError, InputError
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
        Split name per subject, index = ``participant_id``.

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
