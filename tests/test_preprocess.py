"""Tests of brainage.preprocess on small synthetic volumes (real IXI scans: test_preprocess_ixi)."""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.errors import ConfigError, InputError, SpaceMismatchError
from brainage.preprocess import (
    PreprocessConfig,
    bids_subject,
    load_preprocessed,
    preprocess_cohort,
    preprocess_subject,
    registration_quality,
    scale_intensity,
    steps,
    subject_files,
    warp_to_native,
    warp_to_template,
)
from brainage.space import load_template, template_grid

RES = 8.0  # template_grid(8): 20 x 24 x 20 voxels: small, unequal axes
FAST = PreprocessConfig(
    resolution_mm=RES, skull_strip=False, bias_correct=False, register="none", intensity="minmax"
)


def blob(grid, seed=0):
    """A positive, smooth, brain-like blob centred in the MNI box, 0 outside an ellipsoid."""
    rng = np.random.default_rng(seed)
    ijk = np.indices(grid.shape).reshape(3, -1)
    xyz = (grid.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[:3].T.reshape(*grid.shape, 3)
    r = ((xyz - [0, -18, 6]) / [60, 75, 60]) ** 2
    inside = r.sum(-1) < 1
    data = 100 + 40 * np.sin(xyz[..., 0] / 9) * np.cos(xyz[..., 1] / 13) + 20 * xyz[..., 2] / 80
    data = data + rng.normal(0, 3, grid.shape)
    return np.where(inside, data, 0).astype(np.float32)


def write(path, data, affine):
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def mni_image(tmp_path):
    grid = template_grid(RES)
    data = blob(grid)
    return write(tmp_path / "in" / "s1_T1w.nii.gz", data, grid.affine), data


# ------------------------------------------------------------------------------------- config
def test_config_defaults_and_round_trip():
    cfg = PreprocessConfig()
    assert (cfg.resolution_mm, cfg.skull_strip, cfg.bias_correct) == (2.0, True, True)
    assert (cfg.register, cfg.intensity) == ("affine", "minmax")
    again = PreprocessConfig.from_dict(json.loads(json.dumps(cfg.to_dict())))
    assert again == cfg
    assert PreprocessConfig.from_dict({"resolution_mm": 3}).resolution_mm == 3.0
    with pytest.raises(ValueError, match="frozen"):
        cfg.register = "syn"  # frozen


@pytest.mark.parametrize(
    ("values", "match"),
    [
        ({"register": "afine"}, "did you mean 'affine'"),
        ({"intensity": "z-score"}, "did you mean 'zscore'"),
        ({"resolution_mm": 0.1}, "'preprocess.resolution_mm': input should be greater"),
        ({"resolution_mm": "2"}, "'preprocess.resolution_mm': input should be a valid number"),
        ({"skull_strip": "yes"}, "'preprocess.skull_strip': input should be a valid boolean"),
        ({"n4_shrink_factor": 0}, "'preprocess.n4_shrink_factor'"),
        ({"seed": -1}, "'preprocess.seed'"),
        ({"registration": "affine"}, "unknown configuration key 'preprocess.registration'; did"),
    ],
)
def test_config_validation(values, match):
    with pytest.raises(ConfigError, match=match):
        PreprocessConfig.from_dict(values)


def test_bids_subject():
    assert bids_subject("sub-IXI012") == "sub-IXI012"
    assert bids_subject("IXI_012") == "sub-IXI012"
    with pytest.raises(InputError):
        bids_subject("__")


# ---------------------------------------------------------------------------- intensity scaling
def test_minmax_scaling_invariants():
    rng = np.random.default_rng(1)
    data = rng.gamma(3.0, 20.0, size=(7, 8, 9))
    mask = np.zeros(data.shape, bool)
    mask[1:6, 2:7, 1:8] = True
    out = scale_intensity(data, mask, "minmax")
    assert out.dtype == np.float32 and out.shape == (7, 8, 9)
    assert out.min() == 0.0 and out.max() == 1.0
    assert np.all(out[~mask] == 0)
    inside = out[mask]
    # 0.5 % of the brain voxels are at/below the low percentile, 0.5 % at/above the high one
    assert abs(np.mean(inside == 0) - 0.005) < 0.01 and abs(np.mean(inside == 1) - 0.005) < 0.01
    # invariant to a positive affine change of intensities, monotonic inside the mask
    np.testing.assert_allclose(scale_intensity(3.5 * data + 17, mask, "minmax"), out, atol=1e-5)
    order = np.argsort(data[mask])
    assert np.all(np.diff(inside[order]) >= 0)
    kept = scale_intensity(data, mask, "minmax", zero_outside=False)
    assert np.any(kept[~mask] > 0) and np.all((kept >= 0) & (kept <= 1))


def test_zscore_scaling_invariants():
    rng = np.random.default_rng(2)
    data = rng.normal(50, 10, size=(7, 8, 9))
    mask = rng.random(data.shape) > 0.3
    out = scale_intensity(data, mask, "zscore").astype(np.float64)
    assert abs(out[mask].mean()) < 1e-5 and abs(out[mask].std() - 1) < 1e-5
    assert np.all(out[~mask] == 0)
    np.testing.assert_allclose(scale_intensity(-0 + 2 * data - 5, mask, "zscore"), out, atol=1e-5)


def test_scaling_errors():
    mask = np.ones((7, 8, 9), bool)
    with pytest.raises(ValueError, match="constant"):
        scale_intensity(np.full((7, 8, 9), 3.0), mask, "minmax")
    with pytest.raises(ValueError, match="empty"):
        scale_intensity(np.ones((7, 8, 9)), ~mask, "zscore")
    with pytest.raises(ValueError, match="method"):
        scale_intensity(np.ones((7, 8, 9)), mask, "max")


def test_registration_quality_oracle():
    rng = np.random.default_rng(3)
    a = rng.normal(size=(7, 8, 9))
    mask = np.ones(a.shape, bool)
    assert registration_quality(2 * a + 1, a, mask) == pytest.approx(1.0)
    assert registration_quality(-a, a, mask) == pytest.approx(-1.0)
    b = rng.normal(size=a.shape)
    assert registration_quality(a, b, mask) == pytest.approx(
        np.corrcoef(a.ravel(), b.ravel())[0, 1]
    )
    assert np.isnan(registration_quality(np.ones(a.shape), a, mask))


# ------------------------------------------------------------------------- ANTs <-> NIfTI
def test_ants_conversion_keeps_world_coordinates():
    """Oracle: ITK's physical point of a voxel = the NIfTI affine's point in LPS."""
    import ants

    affine = np.array(
        [[0.0, 0.0, 2.0, -99.7], [-2.0, 0.0, 0.0, 135.0], [0.0, 2.5, 0.0, -97.6], [0, 0, 0, 1]]
    )  # the IXI orientation (PSR), anisotropic
    data = np.random.default_rng(4).random((7, 8, 9)).astype(np.float32)
    img = nib.Nifti1Image(data, affine)
    aimg = steps.to_ants(img)
    for ijk in [(0, 0, 0), (6, 1, 3), (2, 7, 8)]:
        ras = affine @ np.r_[ijk, 1]
        lps = ants.transform_index_to_physical_point(aimg, ijk)
        np.testing.assert_allclose(lps, [-ras[0], -ras[1], ras[2]], atol=1e-4)
        assert aimg.numpy()[ijk] == data[ijk]
    back = steps.from_ants(aimg)
    np.testing.assert_allclose(back.affine, affine, atol=1e-5)
    np.testing.assert_array_equal(back.get_fdata(), data)


def test_sheared_affine_is_refused():
    affine = np.eye(4)
    affine[0, 1] = 0.3
    with pytest.raises(InputError, match="shear"):
        steps.to_ants(nib.Nifti1Image(np.ones((7, 8, 9), np.float32), affine))


# ------------------------------------------------------------------ register="none" identity
def test_register_none_is_identity_up_to_scaling(mni_image, tmp_path):
    path, data = mni_image
    row = preprocess_subject("s1", path, tmp_path / "out", FAST)
    grid = template_grid(RES)
    out = nib.load(row["preproc"])
    mask = nib.load(row["mask"])
    np.testing.assert_allclose(out.affine, grid.affine)
    assert out.shape == grid.shape == (20, 24, 20)
    np.testing.assert_array_equal(np.asarray(mask.dataobj) > 0, data > 0)
    expected = scale_intensity(data, data > 0, "minmax")
    np.testing.assert_allclose(out.get_fdata(), expected, atol=1e-5)
    assert row["participant_id"] == "s1"
    assert (
        Path(row["preproc"]).name == "sub-s1_space-MNI152NLin2009aSym_res-8_desc-preproc_T1w.nii.gz"
    )
    # identity transforms: warping back to the input grid gives the output again
    native = warp_to_native(row["preproc"], row, path)
    np.testing.assert_allclose(native.get_fdata(), expected, atol=1e-5)
    sidecar = json.loads(subject_files(tmp_path / "out", "s1", FAST)["sidecar"].read_text())
    assert sidecar["config"] == FAST.to_dict() and len(sidecar["input_hash"]) == 16
    assert "total" in sidecar["seconds"] and sidecar["versions"]["antspyx"] != "n/a"
    assert Path(row["qc_png"]).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_register_none_outside_mni_box_fails(tmp_path):
    affine = np.diag([8.0, 8.0, 8.0, 1.0])
    affine[:3, 3] = 1000.0  # far away from the MNI box
    data = blob(template_grid(RES))
    path = write(tmp_path / "far.nii.gz", data, affine)
    with pytest.raises(InputError, match="really in MNI space"):
        preprocess_subject("far", path, tmp_path / "out", FAST)


# ------------------------------------------------------------------------------- recompute
def test_preprocess_subject_always_computes_and_is_deterministic(mni_image, tmp_path):
    """Skipping finished subjects is the stage engine's job; the function recomputes."""
    path, _ = mni_image
    out_dir = tmp_path / "out"
    first = preprocess_subject("sub-01", path, out_dir, FAST)
    data = nib.load(first["preproc"]).get_fdata()
    second = preprocess_subject("sub-01", path, out_dir, FAST)
    np.testing.assert_array_equal(nib.load(second["preproc"]).get_fdata(), data)
    files = [p for p in (out_dir / "sub-01").rglob("*") if p.is_file()]
    assert not [p for p in files if p.name.startswith(".")]  # no temporary files left


# ------------------------------------------------------------------------ cohorts and failures
def bad_inputs(tmp_path):
    grid = template_grid(RES)
    good = blob(grid)
    d = tmp_path / "in"
    ok1 = write(d / "ok1.nii.gz", good, grid.affine)
    ok2 = write(d / "ok2.nii.gz", blob(grid, seed=5), grid.affine)
    full = write(d / "trunc_full.nii.gz", good, grid.affine)
    raw = gzip.decompress(full.read_bytes())
    trunc = d / "trunc.nii.gz"
    trunc.write_bytes(gzip.compress(raw[: len(raw) // 2]))
    four = write(d / "four.nii.gz", np.stack([good] * 3, -1), grid.affine)
    two = write(d / "two.nii.gz", good[:, :, 10], grid.affine)
    zero = write(d / "zero.nii.gz", np.zeros_like(good), grid.affine)
    rows = [
        ("sub-ok1", ok1),
        ("sub-trunc", trunc),
        ("sub-four", four),
        ("sub-two", two),
        ("sub-zero", zero),
        ("sub-missing", d / "missing.nii.gz"),
        ("sub-ok2", ok2),
    ]
    return pd.DataFrame({"participant_id": [r[0] for r in rows], "t1w": [str(r[1]) for r in rows]})


def test_cohort_failures_are_one_line_and_others_succeed(tmp_path):
    table = bad_inputs(tmp_path)
    res = preprocess_cohort(table, tmp_path / "out", FAST, backend="serial", progress=False)
    assert res.table["participant_id"].tolist() == ["sub-ok1", "sub-ok2"]
    assert list(res.table.columns) == [
        "participant_id", "preproc", "mask", "xfm", "inverse_xfm", "qc_png", "reg_quality",
        "seconds",
    ]  # fmt: skip
    by_id = {f.participant_id: f for f in res.failures}
    assert sorted(by_id) == ["sub-four", "sub-missing", "sub-trunc", "sub-two", "sub-zero"]
    path_of = dict(zip(table["participant_id"], table["t1w"], strict=True))
    expected = {
        "sub-trunc": "cannot read",
        "sub-four": "4D",
        "sub-two": "2D",
        "sub-zero": "all zero",
        "sub-missing": "does not exist",
    }
    for pid, err in by_id.items():
        msg = str(err)
        assert isinstance(err, InputError)
        assert "\n" not in msg and "Traceback" not in msg
        assert pid in msg and path_of[pid] in msg and expected[pid] in msg
        assert "—" in msg  # carries what to do
    qc = pd.read_csv(tmp_path / "out" / "qc.tsv", sep="\t")
    assert qc.columns.tolist() == ["participant_id", "reg_quality", "qc_png", "preproc", "mask"]
    assert qc["qc_png"].tolist() == [
        "sub-ok1/figures/sub-ok1_desc-qc_T1w.png",
        "sub-ok2/figures/sub-ok2_desc-qc_T1w.png",
    ]
    assert all((tmp_path / "out" / p).is_file() for p in qc["preproc"])


def test_strict_raises_first_failure(tmp_path):
    table = bad_inputs(tmp_path)
    with pytest.raises(InputError, match="sub-trunc"):
        preprocess_cohort(
            table, tmp_path / "out", FAST, backend="serial", strict=True, progress=False
        )


def test_cohort_in_worker_processes(tmp_path):
    table = bad_inputs(tmp_path).iloc[[0, 4, 6]]  # ok1, zero, ok2
    res = preprocess_cohort(table, tmp_path / "out", FAST, n_jobs=2, progress=False)
    assert res.table["participant_id"].tolist() == ["sub-ok1", "sub-ok2"]
    assert [f.participant_id for f in res.failures] == ["sub-zero"]
    again = preprocess_cohort(table, tmp_path / "out", FAST, backend="serial", progress=False)
    pd.testing.assert_frame_equal(
        again.table.drop(columns="seconds"), res.table.drop(columns="seconds")
    )


def test_colliding_ids_and_missing_columns(tmp_path):
    grid = template_grid(RES)
    p = write(tmp_path / "a.nii.gz", blob(grid), grid.affine)
    table = pd.DataFrame({"participant_id": ["IXI_1", "IXI1"], "t1w": [str(p), str(p)]})
    res = preprocess_cohort(table, tmp_path / "out", FAST, backend="serial", progress=False)
    assert res.table["participant_id"].tolist() == ["IXI_1"]
    assert "same folder sub-IXI1" in str(res.failures[0])
    with pytest.raises(InputError, match="lacks column"):
        preprocess_cohort(table[["participant_id"]], tmp_path / "out", FAST, progress=False)


# ------------------------------------------------------------------ loading for the models
def test_load_preprocessed_same_grid_and_resampled(tmp_path):
    """Oracle: a linear ramp in world x is reproduced exactly by linear resampling."""
    src = template_grid(4.0)
    ijk = np.indices(src.shape).reshape(3, -1)
    x_mm = (src.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[0].reshape(src.shape)
    paths = [
        write(tmp_path / f"r{i}.nii.gz", (x_mm + i).astype(np.float32), src.affine)
        for i in range(2)
    ]
    same = load_preprocessed([str(p) for p in paths])
    assert same.shape == (2, 1, 40, 48, 40) and same.dtype == np.float32
    np.testing.assert_allclose(same[1, 0], x_mm + 1, atol=1e-4)
    dst = template_grid(8.0)
    coarse = load_preprocessed(pd.DataFrame({"preproc": [str(p) for p in paths]}), grid=8.0)
    assert coarse.shape == (2, 1) + dst.shape
    ijk = np.indices(dst.shape).reshape(3, -1)
    x_dst = (dst.affine @ np.vstack([ijk, np.ones(ijk.shape[1])]))[0].reshape(dst.shape)
    np.testing.assert_allclose(coarse[0, 0], x_dst, atol=1e-3)
    other = write(tmp_path / "o.nii.gz", x_mm[:-1].astype(np.float32), src.affine)
    with pytest.raises(SpaceMismatchError):
        load_preprocessed([paths[0], other])


# ------------------------------------------------------------------ registration, known answer
def test_affine_registration_recovers_a_known_motion(tmp_path):
    """The template brain moved by a rotation + shift is registered back onto the template."""
    tpl = load_template(2.0)
    brain = tpl["t1w"].get_fdata() * (tpl["mask"].get_fdata() > 0)
    angle = np.deg2rad(8.0)
    motion = np.eye(4)
    motion[:3, :3] = [
        [1, 0, 0],
        [0, np.cos(angle), -np.sin(angle)],
        [0, np.sin(angle), np.cos(angle)],
    ]
    motion[:3, 3] = [7.0, -5.0, 4.0]
    native_affine = motion @ tpl["t1w"].affine  # the same voxels, elsewhere in the world
    path = write(tmp_path / "moved.nii.gz", brain.astype(np.float32), native_affine)
    cfg = PreprocessConfig(resolution_mm=4.0, skull_strip=False, bias_correct=False)
    # twice the same scan, in two worker processes (one ITK thread each: reproducible)
    table = pd.DataFrame({"participant_id": ["sub-moved", "sub-again"], "t1w": [str(path)] * 2})
    res = preprocess_cohort(table, tmp_path / "out", cfg, n_jobs=2, progress=False)
    row, again = res.table.to_dict("records")
    assert row["reg_quality"] > 0.97
    # the registered mask is the template mask
    out_mask = nib.load(row["mask"]).get_fdata() > 0
    tpl_mask = load_template(4.0)["mask"].get_fdata() > 0
    dice = 2 * (out_mask & tpl_mask).sum() / (out_mask.sum() + tpl_mask.sum())
    assert dice > 0.95
    # the inverse brings a template-space image back onto the moved scan
    native = warp_to_native(tpl["t1w"], row, path).get_fdata()
    inside = brain > 0
    assert np.corrcoef(native[inside], brain[inside])[0, 1] > 0.97
    # forward helper = the preprocessed image (up to scaling)
    fwd = warp_to_template(path, row).get_fdata()
    assert registration_quality(fwd, nib.load(row["preproc"]).get_fdata(), out_mask) > 0.99
    assert os.path.getsize(row["inverse_xfm"]) > 0
    # seeded: the second run gave the same transform, bit for bit
    assert Path(again["xfm"]).read_bytes() == Path(row["xfm"]).read_bytes()


def test_native_brain_cache_is_shared_by_content_and_changes_nothing(mni_image, tmp_path):
    """Skull stripping / N4 run once per scan for preprocessings that differ only afterwards."""
    path, _ = mni_image
    n4 = FAST.model_copy(update={"bias_correct": True})
    cache = tmp_path / "native"
    first = preprocess_subject("sub-01", path, tmp_path / "a", n4, native_cache=cache)
    assert len(list(cache.glob("*_desc-brain_T1w.json"))) == 1
    z = n4.model_copy(update={"intensity": "zscore"})
    second = preprocess_subject("sub-01", path, tmp_path / "b", z, native_cache=cache)
    timings = json.loads(Path(second["preproc"].replace(".nii.gz", ".json"))
                         .read_text())["seconds"]  # fmt: skip
    assert "reading the native brain" in timings and "N4 bias-field correction" not in timings
    # the same bits as a computation with an empty cache
    fresh = preprocess_subject("sub-01", path, tmp_path / "c", z, native_cache=tmp_path / "new")
    np.testing.assert_array_equal(
        nib.load(second["preproc"]).get_fdata(), nib.load(fresh["preproc"]).get_fdata()
    )
    assert nib.load(first["preproc"]).get_fdata().max() == pytest.approx(1.0)  # min-max
    # another scan (other bytes) is another cache entry
    other = write(tmp_path / "in" / "s2_T1w.nii.gz", blob(template_grid(RES), seed=9),
                  template_grid(RES).affine)  # fmt: skip
    preprocess_subject("sub-02", other, tmp_path / "a", n4, native_cache=cache)
    assert len(list(cache.glob("*_desc-brain_T1w.json"))) == 2


def test_rigid_registration_moves_but_does_not_resize(tmp_path):
    """Paper 000's non-registered condition: a 12 % larger, moved brain is put back in place
    (rotation and shift undone) but keeps its size; affine registration removes the size."""
    tpl = load_template(2.0)
    brain = (tpl["t1w"].get_fdata() * (tpl["mask"].get_fdata() > 0)).astype(np.float32)
    angle = np.deg2rad(6.0)
    motion = np.diag([1.12, 1.12, 1.12, 1.0])
    rot = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0],
                    [0, 0, 1]])  # fmt: skip
    motion[:3, :3] = rot @ motion[:3, :3]
    motion[:3, 3] = [5.0, -4.0, 3.0]
    path = write(tmp_path / "big.nii.gz", brain, motion @ tpl["t1w"].affine)
    tpl_mask = load_template(4.0)["mask"].get_fdata() > 0
    volumes = {}
    for kind in ("rigid", "affine"):
        cfg = PreprocessConfig(resolution_mm=4.0, skull_strip=False, bias_correct=False,
                               register=kind)  # fmt: skip
        row = preprocess_subject("sub-big", path, tmp_path / kind, cfg)
        mask = nib.load(row["mask"]).get_fdata() > 0
        volumes[kind] = mask.sum() / tpl_mask.sum()
        if kind == "rigid":  # centred on the template: it contains the template brain
            assert (mask & tpl_mask).sum() / tpl_mask.sum() > 0.97
    assert volumes["rigid"] == pytest.approx(1.12**3, rel=0.08)
    assert volumes["affine"] == pytest.approx(1.0, abs=0.06)
