"""Study design and analyses (paper 000, METHODS §7): expansion, phases, agreement, t-tests."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from brainage.config import DEMO_OVERRIDES
from brainage.errors import ConfigError
from brainage.study import (
    StudyConfig,
    condition_ttests,
    expand_study,
    phase_summary,
    phase_table,
    read_study,
    voxel_agreement,
)

STUDY = {
    "name": "reg-x-aug",
    "base": {"train": {"epochs": 5}},
    "conditions": {
        "augmented": {"train": {"augment": ["flip", "affine", "elastic"]}},
        "plain": {"train": {"augment": []}},
    },
    "seeds": 3,
    "phases": [32, 22, 7.3],
}


def test_study_expands_into_one_validated_run_per_condition_and_seed(tmp_path):
    import yaml

    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    study = read_study(path)
    runs = expand_study(study, DEMO_OVERRIDES)
    assert [r.name for r in runs] == [
        f"cond-{c}_seed-{s}" for c in ("augmented", "plain") for s in (1, 2, 3)
    ]
    for r in runs:
        assert r.config.seed == r.seed and r.config.ensemble.n_seeds == 1
        assert r.config.train.epochs == 5  # the study's base
        assert r.config.preprocess.register == "none"  # the caller's base (demo)
    assert runs[0].config.train.augment == ["flip", "affine", "elastic"]
    assert runs[-1].config.train.augment == []
    assert StudyConfig(**{**STUDY, "seeds": [0, 7]}).seed_list() == [0, 7]


def test_study_errors_name_the_condition_and_the_key():
    bad = {**STUDY, "conditions": {"typo": {"train": {"epoch": 3}}}}
    with pytest.raises(ConfigError, match=r"study condition 'typo'.*train\.epoch"):
        expand_study(StudyConfig(**bad))
    with pytest.raises(ConfigError, match="decreasing"):
        StudyConfig(**{**STUDY, "phases": [22, 32]})
    with pytest.raises(ConfigError, match="condition names"):
        StudyConfig(**{**STUDY, "conditions": {"a b": {}}})


def _log(maes):
    return pd.DataFrame({"epoch": np.arange(1, len(maes) + 1), "val_mae": maes})


def test_phases_are_the_first_checkpoint_reaching_each_threshold():
    logs = {
        ("a", 1): _log([40, 30, 25, 21, 23, 7.0]),
        ("a", 2): _log([35, 31.9, 22.0, 10, 9]),
        ("b", 1): _log([50, 45, 40]),  # never reaches 32
    }
    table = phase_table(logs, [32, 22, 7.3])
    a1 = table[(table.condition == "a") & (table.seed == 1)].set_index("phase")
    assert list(a1.epoch) == [2, 4, 6] and list(a1.val_mae) == [30, 21, 7.0]
    a2 = table[(table.condition == "a") & (table.seed == 2)].set_index("phase")
    assert list(a2.epoch[:2]) == [2, 3] and not a2.loc[3, "reached"]  # ≤ is inclusive
    assert not table[table.condition == "b"].reached.any() and len(table) == 9
    summary = phase_summary(table).set_index(["condition", "phase"])
    assert summary.loc[("a", 1), "n_reached"] == 2 and summary.loc[("a", 1), "mean_epoch"] == 2
    assert summary.loc[("a", 2), "mean_val_mae"] == pytest.approx(21.5)
    assert summary.loc[("a", 3), "n_reached"] == 1 and np.isnan(summary.loc[("a", 3), "sd_epoch"])
    assert summary.loc[("b", 1), "n_reached"] == 0 and np.isnan(summary.loc[("b", 1), "mean_epoch"])


def test_voxel_agreement_counts_voxels_kept_in_most_seeds():
    rng = np.random.default_rng(0)
    n = 1000
    maps = rng.normal(size=(5, n))
    low = np.arange(100)  # voxels low in 3 of 5 seeds, so discarded by a majority
    maps[:3, low] = -100
    res = voxel_agreement(maps, quantile=0.10)
    # in each of seeds 0-2 exactly the 100 planted voxels are discarded (the 10 % quantile)
    assert not res["agree"][low].any()
    assert res["kept_per_voxel"][low].max() <= 2
    # every other voxel is discarded in at most 2 seeds (3 and 4, at random): it agrees
    assert res["n_agree"] == n - 100 and res["fraction"] == pytest.approx(0.9)
    mask = np.zeros(n, bool)
    mask[:500] = True
    assert voxel_agreement(maps, mask, 0.10)["n_voxels"] == 500


def test_condition_ttests_equal_scipy_welch():
    rng = np.random.default_rng(1)
    res = pd.DataFrame({
        "condition": ["a"] * 5 + ["b"] * 4,
        "seed": list(range(5)) + list(range(4)),
        "best_mae": np.r_[rng.normal(6, 0.3, 5), rng.normal(7, 0.5, 4)],
        "last_mae": rng.normal(7, 0.4, 9),
    })  # fmt: skip
    table = condition_ttests(res).set_index("metric")
    ref = stats.ttest_ind(res.best_mae[:5], res.best_mae[5:], equal_var=False)
    assert table.loc["best_mae", "t"] == pytest.approx(ref.statistic)
    assert table.loc["best_mae", "p"] == pytest.approx(ref.pvalue)
    assert table.loc["best_mae", "diff"] == pytest.approx(res.best_mae[:5].mean() -
                                                          res.best_mae[5:].mean())  # fmt: skip


STUDIES = sorted((Path(__file__).resolve().parents[1] / "configs" / "studies").glob("*.yaml"))


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_example_study_files_expand(path):
    study = read_study(path)
    runs = expand_study(study)
    assert len(runs) == len(study.conditions) * len(study.seed_list())
    for r in runs:  # the study's phases, split seed and monitored test MAE reach every run
        assert r.config.train.phases == study.phases and r.config.train.log_test_mae
        assert r.config.split_seed == study.split_seed


def test_study_validation_catches_colliding_names_missing_targets_and_incomparable_conditions(
    tmp_path,
):
    from brainage.study.runner import _check_comparable

    with pytest.raises(ConfigError, match="differ only in '_'"):
        StudyConfig(**{**STUDY, "conditions": {"no_aug": {}, "noaug": {}}})
    with pytest.raises(ConfigError, match="must include"):
        StudyConfig(**{**STUDY, "targets": ["predict"]})
    mixed = StudyConfig(**{**STUDY, "conditions": {"a": {}, "b": {"train": {"resolution_mm": 3}}}})
    with pytest.raises(ConfigError, match=r"condition 'b' has train\.resolution_mm"):
        _check_comparable(expand_study(mixed, DEMO_OVERRIDES))
    _check_comparable(expand_study(StudyConfig(**STUDY), DEMO_OVERRIDES))  # comparable: passes
