"""Region-truth phantoms (issue 11, item 3) and the region-level scores against them."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from brainage.atlas import load_atlas
from brainage.errors import ConfigError
from brainage.evaluate.region_truth import (
    EFFECT_MIN,
    region_means,
    region_roc_auc,
    region_truth_scores,
)
from brainage.simulate import make_phantom, simulate_cohort
from brainage.simulate._anatomy import region_names
from brainage.simulate.effects import REGION_ATLAS, REGIONAL_ATROPHY, design_rates
from brainage.space import template_array, template_grid

RES = 4.0
CLEAN = {"noise": 0.0, "bias_field": 0.0, "lesions": False, "effect_sd": 0.0}


@pytest.fixture(scope="module")
def rates():
    return design_rates(region_names())


@pytest.fixture(scope="module")
def labels():
    atlas = load_atlas(REGION_ATLAS, template_grid(RES))
    return np.where(template_array("mask", RES) > 0, atlas.labels, 0), atlas.names


def test_the_design_covers_its_groups_and_leaves_regions_age_invariant(rates):
    names = region_names()
    for group, (rate, patterns) in REGIONAL_ATROPHY.items():
        hits = [n for n in names if any(p in n for p in patterns)]
        assert hits, group
        assert all(rates[n] == rate for n in hits)
    assert rates["Left_Hippocampus"] > rates["Left_Frontal_Pole"] > rates["Left_Occipital_Pole"]
    assert not any("Precentral" in n or "Putamen" in n for n in rates)  # age-invariant


def test_regional_atrophy_moves_only_the_designed_regions_grey_matter(rates, labels):
    """Oracle: with no deformation the GM lost in a region is its rate × its young GM."""
    lab, names = labels
    kw = {"resolution_mm": RES, "seed": 2, "deformation_mm": 0.0, "cortical_thinning_mm": 0.0,
          "ventricle_growth_mm": 0.0, **CLEAN}  # fmt: skip
    young = make_phantom(20.0, regional_atrophy=rates, **kw)
    plain = make_phantom(20.0, **kw)
    # at onset age the design changes nothing
    np.testing.assert_allclose(young.images["T1w"], plain.images["T1w"], atol=1e-6)
    old = make_phantom(85.0, regional_atrophy=rates, **kw)
    lost = young.tissues["gm"] - old.tissues["gm"]
    np.testing.assert_allclose(old.tissues["csf"] - young.tissues["csf"], lost, atol=1e-5)
    by_name = {v: k for k, v in names.items()}
    for name in ("Left_Hippocampus", "Right_Frontal_Pole", "Left_Occipital_Pole"):
        inside = lab == by_name[name]
        share = lost[inside].sum() / young.tissues["gm"][inside].sum()
        assert share == pytest.approx(rates[name], abs=0.05), name  # partial-volume edges
    for name in ("Left_Precentral_Gyrus", "Right_Putamen", "Brain-Stem"):
        inside = lab == by_name[name]
        assert lost[inside].sum() < 0.02 * young.tissues["gm"][inside].sum(), name
    # the change map is the lost fraction over the age range; the masks threshold it
    np.testing.assert_allclose(old.change, np.clip(lost, 0, 1), atol=1e-5)
    assert np.array_equal(old.masks["regions"], old.change >= EFFECT_MIN)


def test_bad_atrophy_design_is_refused_with_a_hint(rates):
    with pytest.raises(ConfigError, match="Left_Hippocampus"):
        make_phantom(50.0, resolution_mm=RES, regional_atrophy={"Left_Hipocampus": 0.3})
    with pytest.raises(ConfigError, match="regional_atrophy"):
        make_phantom(50.0, resolution_mm=RES, regional_atrophy={"Left_Hippocampus": 1.5})


def test_region_cohort_writes_the_design_and_change_maps(tmp_path, rates):
    root = simulate_cohort(tmp_path / "simr", n_subjects=2, design="regions", progress=False)
    table = pd.read_csv(root / "derivatives" / "truth" / "regions.tsv", sep="\t")
    assert set(table["atlas"]) == {REGION_ATLAS}
    designed = table.set_index("region")["atrophy_rate"]
    assert designed["Left_Amygdala"] == rates["Left_Amygdala"]
    assert designed["Left_Precentral_Gyrus"] == 0
    assert set(table.loc[table["atrophy_rate"] == 0, "group"]) == {"age-invariant"}
    maps = sorted((root / "derivatives" / "truth").glob("sub-*/anat/*desc-change_map.nii.gz"))
    assert len(maps) == 2
    with pytest.raises(ConfigError, match="design"):
        simulate_cohort(tmp_path / "x", n_subjects=1, design="region", progress=False)


def test_region_means_and_auc_have_known_answers():
    lab = np.zeros((4, 4, 4), int)
    lab[0], lab[1], lab[2] = 1, 2, 3
    maps = np.stack([lab * 1.0, -lab * 1.0])
    np.testing.assert_allclose(region_means(maps, lab), [[1, 2, 3], [-1, -2, -3]])
    effect = np.array([0.0, 0.03, 0.2, 0.3, 0.001])  # one "partial" region, left out
    assert region_roc_auc(np.array([0.1, 9.0, 0.5, 0.6, 0.2]), effect) == 1.0
    assert region_roc_auc(np.array([0.9, 0.0, 0.5, 0.6, 0.7]), effect) == 0.0
    assert np.isnan(region_roc_auc(np.ones(3), np.full(3, 0.2)))  # no region without effect


def test_a_map_equal_to_the_truth_scores_one_and_noise_scores_chance(labels):
    lab, names = labels
    brain = template_array("mask", RES) > 0
    rng = np.random.default_rng(0)
    effect = rng.uniform(0, 0.3, lab.max() + 1)
    effect[rng.random(effect.size) < 0.4] = 0.0  # regions without effect
    change = np.stack([np.where(brain, effect[lab], 0)] * 3)
    scores, table = region_truth_scores(change, change, lab, brain, names)
    assert scores["region_roc_auc"] == scores["population_region_roc_auc"] == 1.0
    assert scores["region_effect_spearman"] == pytest.approx(1.0)
    assert table["relevance_rank"].iloc[0] == 1 and table["true_effect"].is_monotonic_decreasing
    noise = rng.normal(size=(12, *brain.shape))
    null, _ = region_truth_scores(noise, np.stack([change[0]] * 12), lab, brain, names)
    assert abs(null["region_roc_auc"] - 0.5) < 0.12
    assert abs(null["region_effect_spearman"]) < 0.15
    with pytest.raises(ConfigError, match="match"):
        region_truth_scores(noise, change, lab, brain)
