import math

import nibabel as nib
import numpy as np
import pytest

from brainage.errors import ConfigError, DimensionError, SpaceMismatchError
from brainage.population import (
    normalise_maps,
    population_map_path,
    population_mean_map,
    read_sidecar,
    top_fraction_map,
    top_fraction_mask,
    write_population_maps,
)
from brainage.space import TEMPLATE_SPACE, Grid

SHAPE = (7, 8, 9)


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def mask():
    m = np.zeros(SHAPE, dtype=bool)
    m[1:6, 2:7, 1:8] = True  # 5 x 5 x 7 = 175 voxels, off-centre, unequal sides
    return m


def test_zscore_has_mean_0_sd_1_inside_mask_and_0_outside(rng, mask):
    maps = rng.normal(3.0, 2.0, size=(4, *SHAPE)) + np.arange(4)[:, None, None, None]
    out = normalise_maps(maps, mask, "zscore")
    assert out.shape == maps.shape
    inside = out[:, mask]
    np.testing.assert_allclose(inside.mean(axis=1), 0.0, atol=1e-12)
    np.testing.assert_allclose(inside.std(axis=1), 1.0, atol=1e-12)
    assert np.all(out[:, ~mask] == 0)


def test_zscore_matches_reference_per_subject(rng, mask):
    maps = rng.normal(size=(3, *SHAPE))
    out = normalise_maps(maps, mask, "zscore")
    for s in range(3):
        v = maps[s][mask]
        np.testing.assert_allclose(out[s][mask], (v - v.mean()) / v.std())


def test_zscore_invariant_to_positive_scaling_and_shift_of_one_subject(rng, mask):
    maps = rng.normal(size=(3, *SHAPE))
    scaled = maps.copy()
    scaled[1] = 7.5 * scaled[1] + 100.0
    np.testing.assert_allclose(
        normalise_maps(maps, mask, "zscore"), normalise_maps(scaled, mask, "zscore"), atol=1e-10
    )
    np.testing.assert_allclose(
        population_mean_map(maps, mask), population_mean_map(scaled, mask), atol=1e-10
    )


def test_outside_mask_values_do_not_matter(rng, mask):
    maps = rng.normal(size=(2, *SHAPE))
    other = maps.copy()
    other[:, ~mask] = 1e6
    np.testing.assert_array_equal(normalise_maps(maps, mask), normalise_maps(other, mask))


def test_abs_uses_magnitude(rng, mask):
    maps = rng.normal(size=(2, *SHAPE))
    np.testing.assert_allclose(
        normalise_maps(maps, mask, "abs"), normalise_maps(-maps, mask, "abs"), atol=1e-12
    )
    np.testing.assert_allclose(
        normalise_maps(maps, mask, "abs"), normalise_maps(np.abs(maps), mask, "zscore"), atol=1e-12
    )


def test_sum_to_one(rng, mask):
    maps = rng.normal(size=(3, *SHAPE))
    out = normalise_maps(maps, mask, "sum")
    np.testing.assert_allclose(out[:, mask].sum(axis=1), 1.0)
    assert np.all(out >= 0)
    np.testing.assert_allclose(normalise_maps(5 * maps, mask, "sum"), out)


def test_constant_and_zero_maps_give_zeros(mask):
    maps = np.stack([np.full(SHAPE, 4.0), np.zeros(SHAPE)])
    for method in ("zscore", "abs"):
        out = normalise_maps(maps, mask, method)
        assert np.all(np.isfinite(out))
        assert np.all(out == 0)
    out = normalise_maps(maps, mask, "sum")
    np.testing.assert_allclose(out[0][mask], 1.0 / mask.sum())
    assert np.all(out[1] == 0)


def test_population_mean_is_mean_of_normalised(rng, mask):
    maps = rng.normal(size=(5, *SHAPE))
    np.testing.assert_allclose(
        population_mean_map(maps, mask, "zscore"), normalise_maps(maps, mask).mean(axis=0)
    )
    raw = population_mean_map(maps, mask, None)
    np.testing.assert_allclose(raw[mask], maps.mean(axis=0)[mask])
    assert np.all(raw[~mask] == 0)


def test_validation_errors(rng, mask):
    maps = rng.normal(size=(2, *SHAPE))
    with pytest.raises(DimensionError):
        normalise_maps(maps[0], mask)
    with pytest.raises(SpaceMismatchError):
        normalise_maps(maps, mask[:, :, :-1])
    with pytest.raises(ConfigError, match="zscore"):
        normalise_maps(maps, mask, "zscor")
    with pytest.raises(ConfigError):
        normalise_maps(maps, np.zeros(SHAPE, bool))
    bad = maps.copy()
    bad[0, 3, 3, 3] = np.nan
    with pytest.raises(ConfigError, match="NaN"):
        normalise_maps(bad, mask)


@pytest.mark.parametrize("fraction", [0.10, 0.05, 0.33, 1.0])
def test_top_fraction_keeps_exact_count(rng, mask, fraction):
    stat = rng.normal(size=SHAPE)
    keep = top_fraction_mask(stat, mask, fraction)
    n_mask = int(mask.sum())
    assert keep.sum() == math.ceil(fraction * n_mask)
    assert not keep[~mask].any()
    # every kept voxel is >= every non-kept in-mask voxel
    assert stat[keep].min() >= stat[mask & ~keep].max() if fraction < 1 else True


def test_top_fraction_map_without_smoothing_keeps_values(rng, mask):
    stat = rng.normal(size=SHAPE)
    out = top_fraction_map(stat, mask, 0.10, sigma_vox=0)
    keep = out != 0
    assert keep.sum() == math.ceil(0.10 * mask.sum())
    np.testing.assert_array_equal(out[keep], stat[keep])
    assert stat[keep].min() >= np.sort(stat[mask])[-keep.sum()]


def test_top_fraction_ties_are_exact(mask):
    stat = np.ones(SHAPE)
    assert top_fraction_mask(stat, mask, 0.10).sum() == math.ceil(0.10 * mask.sum())


def test_top_fraction_absolute(mask):
    stat = np.zeros(SHAPE)
    stat[3, 4, 4] = -10.0
    stat[2, 3, 3] = 1.0
    k = top_fraction_mask(stat, mask, 1 / mask.sum(), absolute=True)
    assert k.sum() == 1 and k[3, 4, 4]
    k = top_fraction_mask(stat, mask, 1 / mask.sum())
    assert k[2, 3, 3]


def test_smoothing_preserves_sum_and_spreads(rng):
    shape = (24, 28, 22)
    m = np.zeros(shape, bool)
    m[4:20, 5:23, 4:18] = True
    stat = rng.random(shape)
    raw = top_fraction_map(stat, m, 0.10, sigma_vox=0)
    smooth = top_fraction_map(stat, m, 0.10, sigma_vox=1.0)
    np.testing.assert_allclose(smooth.sum(), raw.sum(), rtol=1e-3)
    assert (smooth != 0).sum() > (raw != 0).sum()
    assert smooth.max() < raw.max()


def test_smoothing_matches_scipy_reference(rng, mask):
    from scipy.ndimage import gaussian_filter

    stat = rng.normal(size=SHAPE)
    raw = top_fraction_map(stat, mask, 0.2, sigma_vox=0)
    np.testing.assert_allclose(
        top_fraction_map(stat, mask, 0.2, sigma_vox=1.5),
        gaussian_filter(raw, 1.5, mode="constant"),
    )


def test_top_fraction_validation(rng, mask):
    stat = rng.normal(size=SHAPE)
    for bad in (0.0, -0.1, 1.5):
        with pytest.raises(ConfigError, match="fraction"):
            top_fraction_map(stat, mask, bad)
    with pytest.raises(ConfigError, match="sigma"):
        top_fraction_map(stat, mask, 0.1, sigma_vox=-1)
    with pytest.raises(SpaceMismatchError):
        top_fraction_map(stat, mask.transpose(2, 1, 0), 0.1)


def test_write_population_maps(tmp_path, rng):
    shape = (24, 28, 22)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = (-36.0, -50.0, -30.0)
    grid = Grid(shape, tuple(affine.ravel().tolist()))
    m = np.zeros(shape, bool)
    m[3:21, 4:25, 3:19] = True
    maps = rng.normal(size=(4, *shape))
    paths = write_population_maps(maps, m, grid, tmp_path, "guided_backprop")
    assert set(paths) == {"mean", "top10"}
    assert paths["mean"].name == (
        f"method-guidedbackprop_space-{TEMPLATE_SPACE}_res-3_stat-mean_relevance.nii.gz"
    )
    assert paths["top10"].name == (
        f"method-guidedbackprop_space-{TEMPLATE_SPACE}_res-3_desc-top10_relevance.nii.gz"
    )
    assert paths["mean"] == population_map_path(tmp_path, "guided_backprop", 3.0, "mean")
    mean_img = nib.load(str(paths["mean"]))
    np.testing.assert_allclose(mean_img.affine, affine)
    assert mean_img.shape == shape
    np.testing.assert_allclose(mean_img.get_fdata(), population_mean_map(maps, m), atol=1e-6)
    top_img = nib.load(str(paths["top10"]))
    np.testing.assert_allclose(
        top_img.get_fdata(), top_fraction_map(population_mean_map(maps, m), m), atol=1e-6
    )
    side = read_sidecar(paths["top10"])
    assert side["NSubjects"] == 4 and side["TopFraction"] == 0.1
    assert not list(tmp_path.rglob("*.tmp*"))


def test_write_population_maps_checks_grid(tmp_path, rng):
    grid = Grid((7, 8, 9), tuple(np.eye(4).ravel().tolist()))
    with pytest.raises(SpaceMismatchError):
        write_population_maps(
            rng.normal(size=(2, 7, 9, 8)), np.ones((7, 9, 8), bool), grid, tmp_path, "gb"
        )
    with pytest.raises(ConfigError, match="method"):
        write_population_maps(
            rng.normal(size=(2, 7, 8, 9)), np.ones(SHAPE, bool), grid, tmp_path, "a/b"
        )
    assert population_map_path(tmp_path, "lrp", 1.5).name.split("_")[2] == "res-1p5"
