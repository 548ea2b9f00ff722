"""Tests of brainage.simulate: phantoms, cohorts and tori with ground truth (METHODS §11)."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.errors import ConfigError, InputError
from brainage.io import read_bids
from brainage.simulate import (
    expected_lesion_count,
    make_phantom,
    make_torus,
    simulate_cohort,
    simulate_tori,
    subject_draws,
)
from brainage.space import template_grid

RES = 4.0
FAST = {"noise": 0.0, "bias_field": 0.0}  # noise-free phantoms where noise is not the point


# ---------------------------------------------------------------------------------- phantoms


def test_phantom_on_template_grid():
    p = make_phantom(50.0, resolution_mm=RES, seed=1, contrasts=("T1w", "flair"))
    grid = template_grid(RES)
    assert set(p.images) == {"T1w", "FLAIR"}
    np.testing.assert_array_equal(p.affine, grid.affine)
    for arr in (*p.images.values(), *p.masks.values(), *p.tissues.values()):
        assert arr.shape == grid.shape == (40, 48, 40)
    assert all(img.dtype == np.float32 for img in p.images.values())
    assert all(m.dtype == bool for m in p.masks.values())
    brain = p.masks["brain"]
    for img in p.images.values():
        assert np.all(img[~brain] == 0)  # skull-stripped: background exactly 0
        assert np.all(img[brain] > 0)
    # partial-volume fractions sum to 1 inside the brain
    total = sum(p.tissues.values())
    np.testing.assert_allclose(total[brain], 1.0, atol=1e-5)
    assert np.all(total[~brain] == 0)


def test_phantom_reproducible_and_seed_dependent():
    a = make_phantom(63.0, resolution_mm=RES, seed=7, contrasts=("T1w", "FLAIR"))
    b = make_phantom(63.0, resolution_mm=RES, seed=7, contrasts=("T1w", "FLAIR"))
    c = make_phantom(63.0, resolution_mm=RES, seed=8, contrasts=("T1w", "FLAIR"))
    for name in a.images:
        np.testing.assert_array_equal(a.images[name], b.images[name])
        assert not np.array_equal(a.images[name], c.images[name])
    for name in a.masks:
        np.testing.assert_array_equal(a.masks[name], b.masks[name])
    # the random anatomy makes subjects distinct, not only their noise
    assert not np.array_equal(a.masks["brain"], c.masks["brain"])
    assert not np.array_equal(a.tissues["gm"], c.tissues["gm"])
    # ... but they remain the same brain: images strongly correlated
    brain = a.masks["brain"] & c.masks["brain"]
    r = np.corrcoef(a.images["T1w"][brain], c.images["T1w"][brain])[0, 1]
    assert 0.6 < r < 0.99


def test_anatomy_independent_of_age_and_contrasts():
    """One seed fixes the anatomy: brain mask identical at every age and for every contrast."""
    young = make_phantom(25.0, resolution_mm=RES, seed=4, **FAST)
    old = make_phantom(80.0, resolution_mm=RES, seed=4, contrasts=("FLAIR",), **FAST)
    np.testing.assert_array_equal(young.masks["brain"], old.masks["brain"])
    np.testing.assert_array_equal(young.masks["ventricles"], old.masks["ventricles"])


def test_no_deformation_gives_template_brain():
    from brainage.space import template_array

    p = make_phantom(30.0, resolution_mm=RES, seed=0, deformation_mm=0.0, **FAST)
    np.testing.assert_array_equal(p.masks["brain"], template_array("mask", RES))


def test_effects_monotone_in_age_for_fixed_anatomy():
    ages = [20.0, 30.0, 45.0, 60.0, 72.0, 85.0]
    ps = [make_phantom(a, resolution_mm=RES, seed=11, lesions=False, **FAST) for a in ages]
    vent = np.array([p.ventricle_volume_ml for p in ps])
    cortex = np.array([p.cortex_intensity["T1w"] for p in ps])
    thick = np.array([p.cortical_thickness_mm for p in ps])
    assert np.all(np.diff(vent) > 0), vent
    assert np.all(np.diff(cortex) < 0), cortex
    assert np.all(np.diff(thick) < 0), thick
    assert vent[-1] > 2 * vent[0]  # the ventricles at least double between 20 and 85
    # the measured (noise-free) image agrees with the reported band intensity
    band = ps[-1].masks["cortex"]
    np.testing.assert_allclose(ps[-1].images["T1w"][band].mean(), cortex[-1], rtol=1e-5)
    # age 20 is the onset: no growth, no thinning
    assert ps[0].ventricle_growth_mm == 0 and ps[0].cortical_thinning_mm == 0


def test_effect_switches():
    """With every effect set to 0, age changes nothing at all."""
    off = dict(ventricle_growth_mm=0.0, cortical_thinning_mm=0.0, lesions=False)
    a = make_phantom(22.0, resolution_mm=RES, seed=2, **off)
    b = make_phantom(84.0, resolution_mm=RES, seed=2, **off)
    np.testing.assert_array_equal(a.images["T1w"], b.images["T1w"])
    assert not a.masks["ageeffect"].any() and not b.masks["ageeffect"].any()


def test_lesion_counts_follow_age():
    young = [make_phantom(39.9, resolution_mm=RES, seed=s, **FAST) for s in range(4)]
    assert all(p.lesion_count == 0 and not p.masks["lesions"].any() for p in young)
    old = [make_phantom(80.0, resolution_mm=RES, seed=s, **FAST) for s in range(10)]
    counts = np.array([p.lesion_count for p in old])
    lam = expected_lesion_count(80.0)  # 0.03 · 40^1.5 ≈ 7.6
    assert abs(counts.mean() - lam) < 4 * np.sqrt(lam / len(counts))
    mid = [make_phantom(55.0, resolution_mm=RES, seed=s, **FAST) for s in range(6)]
    assert np.mean([p.lesion_count for p in mid]) < counts.mean()
    assert expected_lesion_count(40.0) == 0 and expected_lesion_count(30.0) == 0


def test_lesion_contrast_and_masks():
    p = make_phantom(85.0, resolution_mm=RES, seed=3, contrasts=("T1w", "FLAIR"), **FAST)
    m = p.masks
    assert p.lesion_count > 0 and p.lesion_voxels == m["lesions"].sum() > 0
    assert not (m["lesions"] & ~m["brain"]).any()
    for name in ("ventricles", "cortex", "lesions"):
        assert not (m[name] & ~m["ageeffect"]).any()
    np.testing.assert_array_equal(m["ageeffect"], m["ventricles"] | m["cortex"] | m["lesions"])
    # the ageeffect mask is a minority of the brain, and it is where the images change with age
    assert 0.05 < m["ageeffect"].sum() / m["brain"].sum() < 0.6
    # lesions are hypointense on T1w, hyperintense on FLAIR relative to white matter
    core = p.tissues["lesion"] > 0.5
    wm = (p.tissues["wm"] > 0.95) & m["brain"]
    assert core.any()
    assert p.images["T1w"][core].mean() < p.images["T1w"][wm].mean() - 0.1
    assert p.images["FLAIR"][core].mean() > p.images["FLAIR"][wm].mean() + 0.1


def test_age_acts_only_inside_ageeffect_mask():
    """Oracle of the masks: two ages of one anatomy differ only inside the ageeffect mask."""
    a = make_phantom(30.0, resolution_mm=RES, seed=5, **FAST)
    b = make_phantom(75.0, resolution_mm=RES, seed=5, **FAST)
    diff = np.abs(a.images["T1w"] - b.images["T1w"])
    outside = ~(a.masks["ageeffect"] | b.masks["ageeffect"])
    inside = b.masks["ageeffect"]
    # outside the masks only sub-threshold partial-volume changes (< 5 % tissue · contrast)
    assert diff[outside].max() < 0.05 * 0.9
    assert diff[inside].mean() > 10 * diff[outside].mean()


def test_oracle_effects_correlate_with_age():
    """Effects are strong: r(age, ventricle volume) and r(age, cortex band intensity) > 0.8."""
    rng = np.random.default_rng(0)
    ages = rng.uniform(20, 85, 16)
    ps = [make_phantom(a, resolution_mm=RES, seed=i, lesions=False) for i, a in enumerate(ages)]
    vent = [p.ventricle_volume_ml for p in ps]
    band = [p.images["T1w"][p.masks["cortex"]].mean() for p in ps]  # noisy images
    assert np.corrcoef(ages, vent)[0, 1] > 0.8
    assert np.corrcoef(ages, band)[0, 1] < -0.8


def test_phantom_validation():
    with pytest.raises(ConfigError, match="did you mean 'FLAIR'"):
        make_phantom(40.0, contrasts=("FLAIRR",))
    with pytest.raises(ConfigError, match="'age'"):
        make_phantom(-3.0)
    with pytest.raises(ConfigError, match="'noise'"):
        make_phantom(40.0, noise=-0.1)
    with pytest.raises(ConfigError, match="'age_range'"):
        make_phantom(40.0, age_range=(60, 20))
    with pytest.raises(ConfigError, match="'seed'"):
        make_phantom(40.0, seed=1.5)
    with pytest.raises(ConfigError, match="resolution_mm"):
        make_phantom(40.0, resolution_mm=0.1)


# ---------------------------------------------------------------------------------- cohorts


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    out = tmp_path_factory.mktemp("sim") / "bids"
    simulate_cohort(out, n_subjects=4, seed=3, contrasts=("T1w", "FLAIR"), progress=False)
    return out


def test_cohort_is_bids_with_truth(cohort):
    c = read_bids(cohort)
    assert c.participant_ids == ["sub-0001", "sub-0002", "sub-0003", "sub-0004"]
    assert c.truth_dir == cohort / "derivatives" / "truth"
    assert not c.failures
    expected = [subject_draws(3, i)["age"] for i in range(1, 5)]
    np.testing.assert_array_equal(c.table["age"].to_numpy(), expected)
    assert all(20 <= a <= 85 for a in expected)
    text = (cohort / "participants.tsv").read_text().splitlines()
    assert text[0].split("\t") == ["participant_id", "age", "sex"]
    assert all(len(line.split("\t")[1].split(".")[1]) == 2 for line in text[1:])  # 2 decimals
    desc = json.loads((cohort / "dataset_description.json").read_text())
    gen = desc["GeneratedBy"][0]
    assert gen["Name"] == "brainage simulate" and gen["Seed"] == 3
    assert gen["Parameters"]["phantom"]["noise"] == 0.03
    truth_desc = json.loads((c.truth_dir / "dataset_description.json").read_text())
    assert truth_desc["DatasetType"] == "derivative"
    grid = template_grid(RES)
    for pid in c.participant_ids:
        for contrast in ("T1w", "FLAIR"):
            img = nib.load(cohort / pid / "anat" / f"{pid}_{contrast}.nii.gz")
            np.testing.assert_allclose(img.affine, grid.affine)
            assert img.shape == grid.shape
        for mask in ("ventricles", "cortex", "lesions", "ageeffect"):
            path = (
                c.truth_dir
                / pid
                / "anat"
                / f"{pid}_space-MNI152NLin2009aSym_res-4_desc-{mask}_mask.nii.gz"
            )
            m = nib.load(path)
            np.testing.assert_allclose(m.affine, grid.affine)
            assert set(np.unique(np.asarray(m.dataobj))) <= {0, 1}


def test_cohort_truth_matches_phantoms(cohort):
    truth = pd.read_csv(cohort / "derivatives" / "truth" / "truth.tsv", sep="\t")
    assert list(truth["participant_id"]) == [f"sub-{i:04d}" for i in range(1, 5)]
    for col in ("ventricle_volume_ml", "cortex_T1w_mean", "lesion_count", "lesion_voxels"):
        assert col in truth
    # subject 2 remade from its recorded seed equals the file on disk
    row = truth.iloc[1]
    draw = subject_draws(3, 2)
    assert row["phantom_seed"] == draw["phantom_seed"]
    p = make_phantom(draw["age"], seed=draw["phantom_seed"], contrasts=("T1w", "FLAIR"))
    img = np.asarray(nib.load(cohort / "sub-0002" / "anat" / "sub-0002_FLAIR.nii.gz").dataobj)
    np.testing.assert_array_equal(img, p.images["FLAIR"])
    les = nib.load(
        cohort
        / "derivatives/truth/sub-0002/anat"
        / "sub-0002_space-MNI152NLin2009aSym_res-4_desc-lesions_mask.nii.gz"
    )
    np.testing.assert_array_equal(np.asarray(les.dataobj).astype(bool), p.masks["lesions"])
    assert row["lesion_count"] == p.lesion_count
    assert row["ventricle_volume_ml"] == pytest.approx(p.ventricle_volume_ml, rel=1e-5)


def test_cohort_subject_independent_of_size_and_jobs(cohort, tmp_path):
    small = simulate_cohort(
        tmp_path / "two",
        n_subjects=2,
        seed=3,
        contrasts=("T1w", "FLAIR"),
        n_jobs=2,
        progress=False,
    )
    for pid in ("sub-0001", "sub-0002"):
        for contrast in ("T1w", "FLAIR"):
            a = nib.load(cohort / pid / "anat" / f"{pid}_{contrast}.nii.gz").get_fdata()
            b = nib.load(small / pid / "anat" / f"{pid}_{contrast}.nii.gz").get_fdata()
            np.testing.assert_array_equal(a, b)
    t_big = pd.read_csv(cohort / "derivatives/truth/truth.tsv", sep="\t").iloc[:2]
    t_small = pd.read_csv(small / "derivatives/truth/truth.tsv", sep="\t")
    pd.testing.assert_frame_equal(t_big.reset_index(drop=True), t_small, check_dtype=False)


def test_cohort_rerun_skips_and_replaces(tmp_path):
    out = tmp_path / "c"
    simulate_cohort(out, n_subjects=2, seed=1, progress=False, **FAST)
    first = (out / "sub-0002" / "anat" / "sub-0002_T1w.nii.gz").stat().st_mtime_ns
    simulate_cohort(out, n_subjects=2, seed=1, progress=False, **FAST)  # same cohort: skipped
    assert (out / "sub-0002" / "anat" / "sub-0002_T1w.nii.gz").stat().st_mtime_ns == first
    simulate_cohort(out, n_subjects=1, seed=2, progress=False, **FAST)  # another: replaced
    assert not (out / "sub-0002").exists()
    assert len(read_bids(out)) == 1
    assert read_bids(out).table["age"].iloc[0] == subject_draws(2, 1)["age"]


def test_cohort_refuses_foreign_folder_and_bad_params(tmp_path):
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="not made by brainage simulate"):
        simulate_cohort(foreign, n_subjects=1, progress=False)
    assert (foreign / "notes.txt").read_text() == "keep me"
    with pytest.raises(ConfigError, match="did you mean 'noise'"):
        simulate_cohort(tmp_path / "x", n_subjects=1, nosie=0.1, progress=False)
    with pytest.raises(ConfigError, match="'n_subjects'"):
        simulate_cohort(tmp_path / "x", n_subjects=0, progress=False)
    with pytest.raises(ConfigError, match="'age_range'"):
        simulate_cohort(tmp_path / "x", age_range=(50, 50), progress=False)
    assert not (tmp_path / "x").exists()  # nothing written before validation


# ---------------------------------------------------------------------------------- tori


def test_torus_reproducible_and_masks():
    a = make_torus(70.0, size=48, seed=3)
    b = make_torus(70.0, size=48, seed=3)
    c = make_torus(70.0, size=48, seed=4)
    np.testing.assert_array_equal(a.image, b.image)
    assert not np.array_equal(a.image, c.image)
    m = a.masks
    assert a.image.shape == (48, 48) and a.image.dtype == np.float32
    assert not (m["atrophy"] & m["torus"]).any()
    assert not (m["lesions"] & ~m["torus"]).any()
    np.testing.assert_array_equal(m["ageeffect"], m["atrophy"] | m["lesions"])
    assert np.all(a.image[~m["torus"]] == 0)
    assert a.atrophy_pixels == m["atrophy"].sum() > 0
    assert a.lesion_count > 0
    # lesions are hyperintense
    assert a.image[m["lesions"]].mean() > a.image[m["torus"] & ~m["lesions"]].mean() + 0.1


def test_tori_effects_follow_age():
    s = simulate_tori(80, seed=0, size=48)
    assert s.images.shape == (80, 48, 48) and s.ages.shape == (80,)
    assert s.ages.min() >= 20 and s.ages.max() <= 80
    assert np.all(s.lesion_count[s.ages <= 40] == 0)
    assert np.corrcoef(s.ages, s.atrophy_pixels)[0, 1] > 0.8
    old = s.ages > 60
    assert s.lesion_count[old].mean() > s.lesion_count[(s.ages > 40) & (s.ages < 50)].mean()
    np.testing.assert_array_equal(s.masks["atrophy"].sum(axis=(1, 2)), s.atrophy_pixels)
    # torus i does not depend on how many are made
    head = simulate_tori(5, seed=0, size=48)
    np.testing.assert_array_equal(head.images, s.images[:5])
    np.testing.assert_array_equal(head.ages, s.ages[:5])


def test_tori_validation():
    with pytest.raises(ConfigError, match="did you mean 'lesion_rate'"):
        simulate_tori(3, lesion_rat=1.0)
    with pytest.raises(ConfigError, match="'size'"):
        make_torus(50.0, size=8)
