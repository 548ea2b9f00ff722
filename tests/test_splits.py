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


# ---------------------------------------------------------------------------- cross-fitting
def test_folds_partition_the_subjects_with_age_and_are_age_stratified():
    from brainage.data import make_folds

    t = _table()
    f = make_folds(t, n_folds=5, validation_fraction=0.15, seed=2)
    known = t["age"].notna().to_numpy()
    # every subject with age is held out by exactly one fold; the others by none
    assert set(f.loc[~known, "fold"]) == {0} and set(f.loc[known, "fold"]) == {1, 2, 3, 4, 5}
    roles = f[[f"fold-{k}" for k in range(1, 6)]].to_numpy()
    assert ((roles == "test").sum(axis=1) == known.astype(int)).all()
    assert (roles[~known] == "predict").all()
    for k in range(1, 6):
        assert ((f["fold"] == k) == (f[f"fold-{k}"] == "test")).all()
    sizes = f.loc[known, "fold"].value_counts()
    assert sizes.max() - sizes.min() <= 1
    # stratified: in each run of 5 consecutive ages every fold appears once
    order = np.argsort(t.loc[known, "age"].to_numpy(), kind="stable")
    folds_by_age = f.loc[known, "fold"].to_numpy()[order]
    for start in range(0, len(order) - len(order) % 5, 5):
        assert sorted(folds_by_age[start : start + 5]) == [1, 2, 3, 4, 5]
    # so the folds' age distributions agree far better than random folds would
    means = t.loc[known].groupby(f.loc[known, "fold"].to_numpy())["age"].mean()
    assert means.max() - means.min() < 3.0
    # validation: ~15 % of each fold's non-test subjects, age-stratified too
    for k in range(1, 6):
        rest = known & (f["fold"] != k).to_numpy()
        n_val = int((f[f"fold-{k}"] == "validation").sum())
        assert n_val == round(0.15 * rest.sum())


def test_folds_are_seeded():
    from brainage.data import make_folds

    t = _table()
    a, b = make_folds(t, 5, 0.15, seed=1), make_folds(t, 5, 0.15, seed=1)
    c = make_folds(t, 5, 0.15, seed=2)
    pd.testing.assert_frame_equal(a, b)
    assert (a["fold"] != c["fold"]).any()


def test_fold_errors_are_clear():
    from brainage.data import make_folds

    with pytest.raises(ConfigError, match="'n_folds' must be an integer >= 2"):
        make_folds(_table(), n_folds=1)
    with pytest.raises(InputError, match="10-fold cross-fitting needs at least 20"):
        make_folds(_table(n=12, n_unknown=0), n_folds=10)
