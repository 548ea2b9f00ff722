import numpy as np
import pandas as pd
import pytest

from brainage.data import make_splits
from brainage.errors import ConfigError, InputError


def _table(n=141, n_unknown=4, seed=0):
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 82, n + n_unknown)
    ages[:n_unknown] = np.nan
    return pd.DataFrame(
        {"participant_id": [f"sub-{i:03d}" for i in range(n + n_unknown)], "age": ages}
    )


def test_split_sizes_disjoint_and_unknown_age_predicted():
    t = _table()
    s = make_splits(t, 0.1, 0.15, seed=3)
    assert set(s[t["age"].isna().to_numpy()]) == {"predict"}
    counts = s.value_counts()
    assert counts["test"] == round(0.1 * 141)
    assert counts["validation"] == round(0.15 * (141 - counts["test"]))
    assert counts.sum() == len(t)


def test_split_is_seeded_and_stratified():
    t = _table()
    a, b, c = (
        make_splits(t, 0.1, 0.15, 1),
        make_splits(t, 0.1, 0.15, 1),
        make_splits(t, 0.1, 0.15, 2),
    )
    assert (a == b).all() and not (a == c).all()
    # stratified: test ages span the age range (one pick per age stratum)
    test_ages = np.sort(t["age"].to_numpy()[(a == "test").to_numpy()])
    known = np.sort(t["age"].dropna().to_numpy())
    strata = np.array_split(known, len(test_ages))
    for age, stratum in zip(test_ages, strata, strict=True):
        assert stratum.min() <= age <= stratum.max()


def test_split_validation():
    with pytest.raises(ConfigError, match="'test_fraction' must be in"):
        make_splits(_table(), 0.9, 0.1)
    with pytest.raises(InputError, match="only 3 subjects have an age"):
        make_splits(_table(3, 2), 0.1, 0.1)
