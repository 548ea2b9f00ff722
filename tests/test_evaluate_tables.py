"""One row per method: ground-truth means, randomisation verdict, seed Dice; the xai.tsv file."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.errors import ConfigError, DimensionError
from brainage.evaluate import XAI_COLUMNS, evaluate_explanations, score_maps, write_xai_table

SHAPE = (10, 12, 9)


@pytest.fixture
def cohort():
    rng = np.random.default_rng(0)
    brain = np.zeros(SHAPE, bool)
    brain[1:9, 1:11, 1:8] = True
    truths = np.zeros((4, *SHAPE), bool)
    for s in range(4):
        truths[s, 2 + s % 2 : 5 + s % 2, 3:7, 2:6] = True
    maps = {
        "perfect": truths.astype(np.float32),
        "random": rng.standard_normal((4, *SHAPE)).astype(np.float32),
    }
    return maps, truths, brain


def test_one_row_per_method_with_means(cohort):
    maps, truths, brain = cohort
    frame = pd.DataFrame({"step": [0, 1, 2], "spearman": [1.0, 0.7, 0.9]})
    table = evaluate_explanations(
        maps,
        truths,
        brain,
        randomisation={"perfect": 0.2, "random": frame},
        seed_agreement={"perfect": 0.8},
    )
    assert list(table.columns) == list(XAI_COLUMNS)
    assert list(table["method"]) == ["perfect", "random"]
    perfect = table.set_index("method").loc["perfect"]
    assert perfect["mass_accuracy"] == 1.0
    assert perfect["roc_auc"] == 1.0
    assert perfect["topk_precision"] == 1.0
    assert perfect["randomisation_spearman"] == 0.2
    assert table["passes_randomisation"].tolist() == [True, False]
    assert perfect["seed_dice"] == 0.8
    random = table.set_index("method").loc["random"]
    per_subject = score_maps(maps["random"], truths, brain)
    assert random["roc_auc"] == pytest.approx(per_subject["roc_auc"].mean())
    assert random["mask_fraction"] == pytest.approx(per_subject["mask_fraction"].mean())
    assert random["randomisation_spearman"] == 0.9  # last step of the table
    assert np.isnan(random["seed_dice"])
    assert (table["n_subjects"] == 4).all()


def test_unknown_method_keys_are_reported(cohort):
    maps, truths, brain = cohort
    with pytest.raises(ConfigError, match="did you mean 'random'"):
        evaluate_explanations(maps, truths, brain, seed_agreement={"randon": 0.5})
    with pytest.raises(ConfigError, match="non-empty"):
        evaluate_explanations({}, truths, brain)


def test_write_xai_table(cohort, tmp_path):
    maps, truths, brain = cohort
    table = evaluate_explanations(maps, truths, brain)
    path = write_xai_table(table, tmp_path)
    assert path == tmp_path / "evaluation" / "xai.tsv"
    text = path.read_text()
    assert "n/a" in text  # missing randomisation / Dice
    back = pd.read_csv(path, sep="\t", na_values="n/a")
    assert list(back.columns) == list(XAI_COLUMNS)
    assert back["roc_auc"].to_numpy() == pytest.approx(table["roc_auc"].to_numpy(), rel=1e-5)
    assert not list((tmp_path / "evaluation").glob(".*tmp*"))  # no temporary file left


def test_effect_columns_and_population_scores(cohort):
    maps, truths, brain = cohort
    first = truths.copy()
    first[:, 3:] = False  # effect "a": the first slab of each subject's truth
    table = evaluate_explanations(maps, truths, brain, effects={"a": first, "b": truths & ~first})
    assert list(table.columns) == [*XAI_COLUMNS, "roc_auc_a", "roc_auc_b"]
    perfect = table.set_index("method").loc["perfect"]
    assert perfect["roc_auc_a"] == 1.0 and perfect["roc_auc_b"] == 1.0
    # the population truth is where at least half of the subjects have truth: the perfect
    # (subject-specific) maps averaged still rank those voxels first
    assert perfect["population_roc_auc"] > 0.9
    assert 0 < perfect["population_mask_fraction"] < 1
    random = table.set_index("method").loc["random"]
    assert 0.2 < random["roc_auc_a"] < 0.8
    with pytest.raises(DimensionError, match="subjects"):
        evaluate_explanations(maps, truths, brain, effects={"a": first[:2]})
