import gzip

import nibabel as nib
import numpy as np
import pytest
from conftest import make_bids, write_volume

from brainage.errors import DimensionError, InputError
from brainage.io import atomic_path, load_volume, read_bids, read_table, save_nifti


def test_read_bids_ages_and_unknown(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "20.5", "sub-02": "n/a", "sub-03": "61.25"})
    cohort = read_bids(root)
    assert cohort.participant_ids == ["sub-01", "sub-02", "sub-03"]
    ages = cohort.table["age"].to_numpy()
    assert ages[0] == 20.5 and np.isnan(ages[1]) and ages[2] == 61.25  # never rounded
    assert cohort.has_age.tolist() == [True, False, True]
    assert cohort.failures == []


def test_read_bids_warns_of_unlisted_subjects_and_extra_scans(tmp_path, caplog):
    root = make_bids(tmp_path / "bids", {"sub-01": "20", "sub-02": "30"})
    write_volume(root / "sub-09" / "anat" / "sub-09_T1w.nii.gz")  # not in participants.tsv
    write_volume(root / "sub-01" / "ses-2" / "anat" / "sub-01_ses-2_T1w.nii.gz", seed=5)
    with caplog.at_level("WARNING", logger="brainage"):
        cohort = read_bids(root)
    # a session is a scan of its own (keyed sub-01_ses-2), with the participant's age here
    assert cohort.participant_ids == ["sub-01", "sub-01_ses-2", "sub-02", "sub-09"]
    assert cohort.table["age"].iloc[1] == 20 and np.isnan(cohort.table["age"].iloc[3])
    text = caplog.text
    assert "sub-09" in text and "not in participants.tsv" in text
    assert "no session age (e.g. sub-01)" in text


def test_read_bids_real_ixi(ixi_root):
    cohort = read_bids(ixi_root)
    assert len(cohort) == 145
    assert int(cohort.has_age.sum()) == 141
    assert cohort.table["age"].min() > 19 and cohort.table["age"].max() < 83


@pytest.mark.parametrize(
    ("age", "fragment"),
    [("abc", "is not a number"), ("-3", "not a valid age"), ("200", "not a valid age")],
)
def test_bad_age_is_a_failure_naming_the_subject(tmp_path, age, fragment):
    root = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": age, "sub-03": "40"})
    cohort = read_bids(root)
    assert cohort.participant_ids == ["sub-01", "sub-03"]
    (err,) = cohort.failures
    msg = str(err)
    assert "sub-02" in msg and fragment in msg and "participants.tsv" in msg and "\n" not in msg
    with pytest.raises(InputError, match="sub-02"):
        read_bids(root, strict=True)


def test_duplicate_participant_is_fatal(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": "40"})
    (root / "participants.tsv").write_text(
        "participant_id\tage\nsub-01\t30\nsub-02\t40\nsub-01\t31\n"
    )
    with pytest.raises(InputError, match="'sub-01' appears more than once"):
        read_bids(root)


def test_missing_image_listed(tmp_path):
    root = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": "40"})
    (root / "participants.tsv").write_text(
        "participant_id\tage\nsub-01\t30\nsub-02\t40\nsub-09\t50\n"
    )
    cohort = read_bids(root)
    assert cohort.participant_ids == ["sub-01", "sub-02"]
    assert "sub-09" in str(cohort.failures[0]) and "no T1w image" in str(cohort.failures[0])


def test_read_table_relative_paths_and_missing_file(tmp_path):
    write_volume(tmp_path / "imgs" / "a.nii.gz")
    write_volume(tmp_path / "imgs" / "b.nii.gz", seed=1)
    table = tmp_path / "cohort.csv"
    table.write_text(
        "participant_id,age,t1w\nA,33.3,imgs/a.nii.gz\nB,,imgs/b.nii.gz\nC,50,imgs/missing.nii.gz\n"
    )
    cohort = read_table(table)
    assert cohort.participant_ids == ["A", "B"]
    assert cohort.table["t1w"].iloc[0] == str((tmp_path / "imgs" / "a.nii.gz").resolve())
    assert np.isnan(cohort.table["age"].iloc[1])
    assert "C" in str(cohort.failures[0]) and "does not exist" in str(cohort.failures[0])


def test_read_table_missing_column(tmp_path):
    table = tmp_path / "cohort.tsv"
    table.write_text("participant_id\tyears\tt1w\nA\t3\tx.nii\n")
    with pytest.raises(InputError, match="no age column"):
        read_table(table)


def test_load_volume_errors(tmp_path):
    good = write_volume(tmp_path / "good.nii.gz", (9, 10, 11))
    img = load_volume(good, "sub-01")
    assert img.shape == (9, 10, 11) and img.get_data_dtype() == np.float32
    # truncated gzip
    raw = good.read_bytes()
    trunc = tmp_path / "trunc.nii.gz"
    trunc.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(InputError, match=r"sub-01: .*trunc.nii.gz: cannot read NIfTI"):
        load_volume(trunc, "sub-01")
    # not gzip at all
    junk = tmp_path / "junk.nii.gz"
    junk.write_bytes(gzip.compress(b"not a nifti"))
    with pytest.raises(InputError, match="cannot read NIfTI"):
        load_volume(junk)
    # 4D and 2D
    four = tmp_path / "four.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((9, 10, 11, 3), np.float32), np.eye(4)), str(four))
    with pytest.raises(DimensionError, match="image is 4D"):
        load_volume(four, "sub-01")
    two = tmp_path / "two.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((9, 10), np.float32), np.eye(4)), str(two))
    with pytest.raises(DimensionError, match="image is 2D"):
        load_volume(two)
    # a 4D file with one volume is accepted
    one = tmp_path / "one.nii.gz"
    nib.save(nib.Nifti1Image(np.ones((9, 10, 11, 1), np.float32), np.eye(4)), str(one))
    assert load_volume(one).shape == (9, 10, 11)
    zero = write_volume(tmp_path / "zero.nii.gz", (9, 10, 11), value=0)
    with pytest.raises(InputError, match="all zero"):
        load_volume(zero)
    with pytest.raises(InputError, match="does not exist"):
        load_volume(tmp_path / "nope.nii.gz", "sub-02")


def test_atomic_path_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half")
        raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]  # no temporary left behind


def test_save_nifti_roundtrip(tmp_path):
    data = np.arange(7 * 8 * 9, dtype=np.float32).reshape(7, 8, 9)
    affine = np.diag([3.0, 3.0, 3.0, 1.0])
    affine[:3, 3] = [-80, -114, -74]
    p = save_nifti(data, affine, tmp_path / "a" / "m.nii.gz")
    img = nib.load(str(p))
    np.testing.assert_array_equal(np.asarray(img.dataobj), data)
    np.testing.assert_allclose(img.affine, affine)


def test_participant_label_with_or_without_sub_and_unknown_labels(tmp_path):
    from conftest import make_bids

    from brainage.errors import InputError
    from brainage.io import read_bids

    bids = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": "40", "sub-03": "50"})
    cohort = read_bids(bids)
    assert list(cohort.subset(["01", "sub-03"]).table["participant_id"]) == ["sub-01", "sub-03"]
    with pytest.raises(InputError, match="sub-04 not in the cohort"):
        cohort.subset(["02", "04"])
