"""Two-channel input (T1w + FLAIR, issue 11 item 5): configuration, cohorts, preprocessing of a
further modality through its T1w, and a two-channel run through training, per-channel relevance
and the lesion test of paper 003 on the FLAIR channel."""

from __future__ import annotations

import json

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
from conftest import make_bids, write_volume

from brainage.errors import InputError
from brainage.io import read_bids, read_table
from brainage.preprocess import PreprocessConfig, preprocess_subject
from brainage.preprocess.steps import scale_intensity
from brainage.space import load_template, template_grid


# ----------------------------------------------------------------------------- configuration
def test_modalities_default_to_t1w_and_keep_old_preprocessing_keys():
    cfg = PreprocessConfig()
    assert cfg.modalities == ["T1w"] and cfg.extra_modalities == []
    assert "modalities" not in cfg.key_dict()  # T1w-only runs key as before
    two = PreprocessConfig(modalities=["T1w", "FLAIR"])
    assert two.extra_modalities == ["FLAIR"] and two.key_dict()["modalities"] == ["T1w", "FLAIR"]
    assert PreprocessConfig(modalities=["t1w", "flair"]).modalities == ["T1w", "FLAIR"]


@pytest.mark.parametrize(
    "value, match",
    [
        (["FLAIR"], "must start with T1w"),
        ([], "must start with T1w"),
        (["T1w", "FLAR"], "did you mean 'FLAIR'"),
        (["T1w", "FLAIR", "FLAIR"], "twice"),
    ],
)
def test_bad_modalities_are_refused_with_the_fix(value, match):
    with pytest.raises(ValueError, match=match):
        PreprocessConfig(modalities=value)


# ----------------------------------------------------------------------------------- cohorts
def test_read_bids_adds_a_flair_column_only_when_scans_have_one(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": "40", "sub-03": "50"})
    assert "flair" not in read_bids(root).table.columns  # T1w-only dataset: unchanged table
    flair = write_volume(root / "sub-01" / "anat" / "sub-01_FLAIR.nii.gz", seed=9)
    write_volume(root / "sub-03" / "anat" / "sub-03_FLAIR.nii.gz", seed=8)
    table = read_bids(root).table.set_index("participant_id")
    assert table.loc["sub-01", "flair"] == str(flair)
    assert table.loc["sub-02", "flair"] == ""  # no FLAIR: preprocessing says so, if asked
    assert table.loc["sub-03", "flair"].endswith("sub-03_FLAIR.nii.gz")


def test_read_table_resolves_a_flair_column(tmp_path):
    write_volume(tmp_path / "img" / "a_T1w.nii.gz")
    write_volume(tmp_path / "img" / "a_FLAIR.nii.gz", seed=1)
    (tmp_path / "c.tsv").write_text(
        "participant_id\tage\tt1w\tFLAIR\na\t30\timg/a_T1w.nii.gz\timg/a_FLAIR.nii.gz\n"
    )
    table = read_table(tmp_path / "c.tsv").table
    assert "FLAIR" not in table.columns
    assert table.loc[0, "flair"] == str((tmp_path / "img" / "a_FLAIR.nii.gz").resolve())


# ------------------------------------------------------------------------------ preprocessing
def flair_like(t1w: np.ndarray, brain: np.ndarray) -> np.ndarray:
    """A FLAIR-like contrast: dark CSF, bright grey matter, mid white matter (not monotonic)."""
    t = np.clip(t1w / np.percentile(t1w[brain], 99), 0, 1)
    return np.where(brain, 0.05 + np.sin(np.pi * np.clip(t * 0.8 + 0.1, 0, 1)), 0).astype(
        np.float32
    )


def test_flair_in_mni_space_is_resampled_and_scaled_in_the_t1w_mask(tmp_path):
    grid = template_grid(8.0)
    rng = np.random.default_rng(0)
    brain = load_template(8.0)["mask"].get_fdata() > 0.5
    t1w = np.where(brain, 50 + rng.uniform(0, 50, grid.shape), 0).astype(np.float32)
    flair = np.where(brain, 10 + rng.uniform(0, 90, grid.shape), 0).astype(np.float32)
    t1w_path = tmp_path / "in" / "a_T1w.nii.gz"
    flair_path = tmp_path / "in" / "a_FLAIR.nii.gz"
    t1w_path.parent.mkdir()
    nib.save(nib.Nifti1Image(t1w, grid.affine), str(t1w_path))
    nib.save(nib.Nifti1Image(flair, grid.affine), str(flair_path))
    cfg = PreprocessConfig(resolution_mm=8.0, skull_strip=False, bias_correct=False,
                           register="none", modalities=["T1w", "FLAIR"])  # fmt: skip
    row = preprocess_subject("a", t1w_path, tmp_path / "out", cfg,
                             extra={"FLAIR": (str(flair_path), None)})  # fmt: skip
    out = nib.load(row["preproc_FLAIR"])
    mask = nib.load(row["mask"]).get_fdata() > 0
    np.testing.assert_allclose(out.affine, grid.affine)
    np.testing.assert_allclose(
        out.get_fdata(), scale_intensity(flair, mask, "minmax", zero_outside=False), atol=1e-5
    )
    sidecar_path = next((tmp_path / "out" / "sub-a" / "anat").glob("*desc-preproc_FLAIR.json"))
    sidecar = json.loads(sidecar_path.read_text())
    assert sidecar["modality"] == "FLAIR" and sidecar["SpatialReference"] == "MNI152NLin2009aSym"
    assert row["xfm_FLAIR"].endswith("sub-a_from-FLAIR_to-T1w_mode-image_xfm.mat")


def test_flair_rigidly_moved_away_from_its_t1w_comes_back_onto_the_template_grid(tmp_path):
    """A FLAIR-contrast copy of the T1w, rotated 6° and shifted 5 mm, registers back (MI)."""
    tpl = load_template(2.0)
    brain = tpl["mask"].get_fdata() > 0
    t1w = (tpl["t1w"].get_fdata() * brain).astype(np.float32)
    flair = flair_like(t1w, brain)
    angle = np.deg2rad(6.0)
    motion = np.eye(4)
    motion[:3, :3] = [[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                      [0, 0, 1]]  # fmt: skip
    motion[:3, 3] = [5.0, -3.0, 2.0]
    t1w_path, flair_path = tmp_path / "a_T1w.nii.gz", tmp_path / "a_FLAIR.nii.gz"
    nib.save(nib.Nifti1Image(t1w, tpl["t1w"].affine), str(t1w_path))
    nib.save(nib.Nifti1Image(flair, motion @ tpl["t1w"].affine), str(flair_path))
    cfg = PreprocessConfig(resolution_mm=4.0, skull_strip=False, bias_correct=True,
                           register="affine", modalities=["T1w", "FLAIR"])  # fmt: skip
    row = preprocess_subject("a", t1w_path, tmp_path / "out", cfg,
                             extra={"FLAIR": (str(flair_path), None)})  # fmt: skip
    out = nib.load(row["preproc_FLAIR"]).get_fdata()
    mask = nib.load(row["mask"]).get_fdata() > 0
    # the oracle: the unmoved FLAIR on the 4 mm template grid
    expected = load_template(4.0)
    small = flair_like(
        (expected["t1w"].get_fdata() * (expected["mask"].get_fdata() > 0)).astype(np.float32),
        expected["mask"].get_fdata() > 0,
    )
    inside = mask & (small > 0)
    assert np.corrcoef(out[inside], small[inside])[0, 1] > 0.9
    # without the registration (the moved image read on the grid as if aligned) it is far worse
    naive = nib.load(str(flair_path))
    from brainage.space import resample_to_grid

    unregistered = resample_to_grid(naive, template_grid(4.0), "linear").get_fdata()
    assert np.corrcoef(unregistered[inside], small[inside])[0, 1] < 0.85


def test_missing_flair_fails_the_subject_with_the_fix(tmp_path):
    grid = template_grid(8.0)
    brain = load_template(8.0)["mask"].get_fdata() > 0.5
    path = tmp_path / "a_T1w.nii.gz"
    nib.save(nib.Nifti1Image(np.where(brain, 80.0, 0).astype(np.float32), grid.affine), str(path))
    cfg = PreprocessConfig(resolution_mm=8.0, skull_strip=False, bias_correct=False,
                           register="none", modalities=["T1w", "FLAIR"])  # fmt: skip
    with pytest.raises(InputError) as err:
        preprocess_subject("a", path, tmp_path / "out", cfg, extra={"FLAIR": ("", None)})
    text = str(err.value)
    assert "a" in text and "FLAIR" in text and "preprocess.modalities" in text


def test_flat_first_layer_lrp_gives_every_channel_the_same_relevance():
    """Why default LRP has no channel maps: the Flat rule ignores the input's values."""
    import torch

    from brainage.explain import explain
    from brainage.models.hofmann import HofmannCNN

    torch.manual_seed(0)
    model = HofmannCNN(input_shape=(16, 16, 16), in_channels=2, filters=[4, 4, 4, 4, 4], dense=8)
    x = torch.rand(2, 2, 16, 16, 16)
    flat = explain(model, x, "lrp")
    np.testing.assert_array_equal(flat[:, 0], flat[:, 1])
    resolved = explain(model, x, "lrp_alpha1_beta0")
    assert not np.allclose(resolved[:, 0], resolved[:, 1])


def test_preprocess_cohort_takes_the_flair_column_and_fails_a_scan_without_one(tmp_path):
    from brainage.preprocess import preprocess_cohort

    grid = template_grid(8.0)
    brain = load_template(8.0)["mask"].get_fdata() > 0.5
    rng = np.random.default_rng(3)
    paths = {}
    for name in ("a_T1w", "a_FLAIR", "b_T1w"):
        data = np.where(brain, 20 + rng.uniform(0, 80, grid.shape), 0).astype(np.float32)
        paths[name] = tmp_path / f"{name}.nii.gz"
        nib.save(nib.Nifti1Image(data, grid.affine), str(paths[name]))
    table = pd.DataFrame({
        "participant_id": ["a", "b"], "t1w": [str(paths["a_T1w"]), str(paths["b_T1w"])],
        "flair": [str(paths["a_FLAIR"]), np.nan],
    })  # fmt: skip
    cfg = PreprocessConfig(resolution_mm=8.0, skull_strip=False, bias_correct=False,
                           register="none", modalities=["T1w", "FLAIR"])  # fmt: skip
    res = preprocess_cohort(table, tmp_path / "out", cfg, backend="serial", progress=False)
    assert res.table["participant_id"].tolist() == ["a"]
    assert next((tmp_path / "out" / "sub-a" / "anat").glob("*desc-preproc_FLAIR.nii.gz"))
    (err,) = res.failures
    assert err.participant_id == "b" and "no FLAIR image" in str(err)


# --------------------------------------------------------------------------- two-channel run
@pytest.mark.integration
def test_two_channel_run_explains_each_channel_and_tests_lesions_on_flair(tmp_path):
    from brainage.config import DEMO_OVERRIDES, load_config, merge
    from brainage.io.layout import RunLayout
    from brainage.simulate import simulate_cohort
    from brainage.workflow import run

    bids = simulate_cohort(tmp_path / "bids", n_subjects=24, resolution_mm=4.0, seed=1,
                           progress=False, contrasts=("T1w", "FLAIR"))  # fmt: skip
    cfg = load_config(base=merge(DEMO_OVERRIDES, {
        "seed": 0, "split": {"scheme": "holdout"}, "ensemble": {"n_seeds": 1},
        "preprocess": {"modalities": ["T1w", "FLAIR"]},
        "train": {"epochs": 2, "patience": 3, "batch_size": 8,
                  "model_params": {"filters": [8, 8, 16, 16, 8], "dense": 16}},
        "explain": {"methods": ["lrp_alpha1_beta0", "lrp", "gradcam"], "subjects": "all"},
        "evaluate": {"n_subjects": 2, "faithfulness_subjects": 3, "sensitivity_subjects": 2,
                     "sensitivity_samples": 2},
        "population": {"atlases": ["aal"]}, "run": {"n_jobs": 1, "backend": "serial"},
    }))  # fmt: skip
    out = tmp_path / "out"
    run(read_bids(bids), out, cfg, progress=False, targets=("evaluate",))
    layout = RunLayout(out, 4.0)
    pid = "sub-0003"
    # the model input: channel 0 the T1w, channel 1 the FLAIR, both as preprocessed
    stack = np.load(layout_volumes(out), mmap_mode="r")
    assert stack.shape[1:] == (2, 40, 48, 40)
    flair_file = next((out / pid / "anat").glob("*desc-preproc_FLAIR.nii.gz"))
    channels = {
        np.allclose(stack[i, 1], nib.load(str(flair_file)).get_fdata()) for i in range(len(stack))
    }
    assert True in channels
    # the CNNs take two channels; the mean training image has two
    meta = json.loads(next((out / "models").rglob("model.json")).read_text())
    assert meta["model_params"]["in_channels"] == 2
    ref = nib.load(str(next((out / "models").rglob("*desc-trainingmean*.nii.gz"))))
    assert ref.shape == (40, 48, 40, 2)
    # LRP α1β0 (z⁺ in the first layer too): one map per channel, which differ, and the voxel
    # map is their sum (conservation over the channels)
    method = "lrp_alpha1_beta0"
    t1w_map = nib.load(str(layout.relevance(method, pid, modality="T1w"))).get_fdata()
    flair_map = nib.load(str(layout.relevance(method, pid, modality="FLAIR"))).get_fdata()
    total = nib.load(str(layout.relevance(method, pid))).get_fdata()
    np.testing.assert_allclose(t1w_map + flair_map, total, rtol=1e-4, atol=1e-7)
    assert np.abs(flair_map).sum() > 0 and not np.allclose(t1w_map, flair_map)
    # the Flat first-layer rule of the default LRP gives both channels the same relevance, and
    # Grad-CAM has no channels of its own: one voxel map each, no channel maps
    for method in ("lrp", "gradcam"):
        assert layout.relevance(method, pid).exists()
        assert not layout.relevance(method, pid, modality="FLAIR").exists()
    lesions = pd.read_csv(out / "evaluation" / "lesions.tsv", sep="\t").set_index("method")
    assert lesions.loc["lrp_alpha1_beta0", "channel"] == "FLAIR"
    assert set(lesions.loc[["lrp", "gradcam"], "channel"]) == {"all"}
    # explaining the finished run again reads its FLAIRs from the run's cohort.tsv
    from brainage.workflow import explain_run

    more = explain_run(out, methods=["lrp_epsilon_gamma_box"], progress=False, report=False)
    assert more.computed["preprocess"] == 0 and more.computed["train"] == 0
    assert layout.relevance("lrp_epsilon_gamma_box", pid, modality="FLAIR").exists()
    # the FLAIR's bytes key its subject's preprocessing: changing it redoes that subject only
    flair_in = next((bids / pid / "anat").glob("*_FLAIR.nii.gz"))
    img = nib.load(str(flair_in))
    data = np.asarray(img.dataobj, np.float32) * 1.1
    nib.save(nib.Nifti1Image(data, img.affine), str(flair_in))
    again = run(read_bids(bids), out, cfg, progress=False, targets=("volumes",))
    assert again.computed["preprocess"] == 1 and again.computed["volumes"] == 1


def layout_volumes(out):
    return next((out.parent / f"{out.name}_work").rglob("*.npy"))
