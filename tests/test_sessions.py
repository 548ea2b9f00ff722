"""Longitudinal BIDS input: one scan per session, ages from sessions.tsv, subject-grouped splits,
entity filters through pybids, and session-aware outputs."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
import yaml
from conftest import write_volume

from brainage.data.splits import make_folds, make_splits
from brainage.errors import InputError
from brainage.io import read_bids, read_table, write_tsv
from brainage.io.cohort import bids_filters, read_filter_file
from brainage.io.layout import RunLayout, scan_names, subject_label
from brainage.io.scans import join_scan_keys, read_tsv, scan_key, split_key, split_scan_keys


def _longitudinal(root, n_subjects=3, sessions=("1", "2"), session_ages=True):
    """participants.tsv (ages of the first visit) + sub-*/ses-*/anat T1w + sessions.tsv."""
    root.mkdir(parents=True)
    (root / "dataset_description.json").write_text(
        json.dumps({"Name": "long", "BIDSVersion": "1.10.0"})
    )
    rows = ["participant_id\tage"]
    for i in range(n_subjects):
        pid = f"sub-{i + 1:02d}"
        rows.append(f"{pid}\t{30 + 10 * i}")
        ses_rows = ["session_id\tage"] if session_ages else ["session_id\tacq_time"]
        for j, ses in enumerate(sessions):
            write_volume(root / pid / f"ses-{ses}" / "anat" / f"{pid}_ses-{ses}_T1w.nii.gz",
                         seed=10 * i + j)  # fmt: skip
            ses_rows.append(f"ses-{ses}\t{30 + 10 * i + 2.5 * j}" if session_ages
                            else f"ses-{ses}\t2020-01-0{j + 1}")  # fmt: skip
        (root / pid / f"{pid}_sessions.tsv").write_text("\n".join(ses_rows) + "\n")
    (root / "participants.tsv").write_text("\n".join(rows) + "\n")
    return root


# ------------------------------------------------------------------------------ scan keys
def test_scan_keys_round_trip_through_bids_columns(tmp_path):
    assert scan_key("sub-01", "ses-2") == scan_key("sub-01", "2") == "sub-01_ses-2"
    assert scan_key("sub-01", "n/a") == scan_key("sub-01") == "sub-01"
    assert split_key("sub-01_ses-2") == ("sub-01", "ses-2")
    assert split_key("IXI_012") == ("IXI_012", None)
    frame = pd.DataFrame({"participant_id": ["sub-01_ses-1", "sub-01_ses-2", "sub-02"],
                          "age": [30.0, 32.5, np.nan]})  # fmt: skip
    written = split_scan_keys(frame)
    assert list(written.columns) == ["participant_id", "session_id", "age"]
    assert written["participant_id"].tolist() == ["sub-01", "sub-01", "sub-02"]
    assert written["session_id"].tolist() == ["ses-1", "ses-2", "n/a"]
    pd.testing.assert_frame_equal(join_scan_keys(written), frame)
    path = write_tsv(tmp_path / "predictions.tsv", frame)
    on_disk = pd.read_csv(path, sep="\t")
    assert on_disk["session_id"].tolist() == ["ses-1", "ses-2", "n/a"] or on_disk[
        "session_id"
    ].isna().tolist() == [False, False, True]
    dictionary = json.loads(path.with_suffix(".json").read_text())
    assert "session" in dictionary["session_id"]["Description"]
    back = read_tsv(path)
    assert back["participant_id"].tolist() == frame["participant_id"].tolist()
    # a cross-sectional table is written unchanged
    single = pd.DataFrame({"participant_id": ["sub-01"], "age": [3.0]})
    assert split_scan_keys(single) is single


def test_layout_puts_sessions_in_their_bids_folders(tmp_path):
    assert scan_names("sub-01_ses-2") == ("sub-01", "ses-2", "sub-01_ses-2")
    assert subject_label("sub-01_ses-2") == "sub-01"
    paths = RunLayout(tmp_path).preproc("sub-01_ses-2", 4.0, "affine")
    anat = tmp_path / "sub-01" / "ses-2" / "anat"
    assert paths["preproc"].parent == anat
    assert paths["preproc"].name.startswith("sub-01_ses-2_space-")
    assert paths["preproc"].name.endswith("_res-4_desc-preproc_T1w.nii.gz")
    assert paths["qc_png"] == tmp_path / "sub-01" / "figures" / "sub-01_ses-2_desc-qc_T1w.png"
    rel = RunLayout(tmp_path).relevance("lrp", "sub-01_ses-2")
    assert rel.name.startswith("sub-01_ses-2_space-")


# ------------------------------------------------------------------------------ reading
def test_each_session_is_a_scan_with_its_age_from_sessions_tsv(tmp_path):
    root = _longitudinal(tmp_path / "bids")
    cohort = read_bids(root)
    keys = [f"sub-{i:02d}_ses-{s}" for i in (1, 2, 3) for s in (1, 2)]
    assert cohort.participant_ids == keys
    assert cohort.table["age"].tolist() == [30.0, 32.5, 40.0, 42.5, 50.0, 52.5]
    assert cohort.table["t1w"].iloc[1].endswith("sub-01/ses-2/anat/sub-01_ses-2_T1w.nii.gz")
    # --participant-label selects every session of a subject
    assert cohort.subset(["02"]).participant_ids == ["sub-02_ses-1", "sub-02_ses-2"]
    # the session filter picks one visit
    assert read_bids(root, filters={"ses": "2"}).participant_ids == [
        k for k in keys if "2" == k[-1]
    ]


def test_sessions_without_ages_take_the_participants_age_with_a_warning(tmp_path, caplog):
    root = _longitudinal(tmp_path / "bids", n_subjects=2, session_ages=False)
    with caplog.at_level("WARNING", logger="brainage"):
        cohort = read_bids(root)
    assert cohort.table["age"].tolist() == [30.0, 30.0, 40.0, 40.0]
    assert "no session age" in caplog.text and "sessions.tsv" in caplog.text


def test_entity_filters_choose_among_runs_and_acquisitions(tmp_path, caplog):
    root = tmp_path / "bids"
    root.mkdir()
    (root / "dataset_description.json").write_text('{"Name": "x", "BIDSVersion": "1.10.0"}')
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t20\nsub-02\t30\n")
    for pid in ("sub-01", "sub-02"):
        for name in ("acq-mprage_run-1", "acq-mprage_run-2", "acq-spgr_run-1"):
            write_volume(root / pid / "anat" / f"{pid}_{name}_T1w.nii.gz")
    with caplog.at_level("WARNING", logger="brainage"):
        first = read_bids(root)
    assert first.table["t1w"].str.endswith("_acq-mprage_run-1_T1w.nii.gz").all()
    assert "several T1w images" in caplog.text and "--bids-filter-file" in caplog.text
    chosen = read_bids(root, filters={"acq": "spgr"})
    assert chosen.table["t1w"].str.endswith("_acq-spgr_run-1_T1w.nii.gz").all()
    run2 = read_bids(root, filters={"t1w": {"acquisition": "mprage", "run": 2}})  # fMRIPrep form
    assert run2.table["t1w"].str.endswith("_acq-mprage_run-2_T1w.nii.gz").all()
    none = read_bids(root, filters={"acq": "flash"})
    assert len(none) == 0 and len(none.failures) == 2
    assert "matching the BIDS filters" in str(none.failures[0])


def test_bad_filters_are_clear_errors(tmp_path):
    with pytest.raises(InputError, match="unknown BIDS filter entity 'aqc'.*acq"):
        bids_filters({"aqc": "mprage"})
    with pytest.raises(InputError, match="has no value"):
        bids_filters({"run": []})
    bad = tmp_path / "filter.json"
    bad.write_text("{not json")
    with pytest.raises(InputError, match="cannot read the BIDS filter file") as info:
        read_filter_file(bad)
    assert info.value.path == str(bad)
    bad.write_text('{"t1w": {"acquisiton": "x"}}')
    with pytest.raises(InputError, match="unknown BIDS filter entity"):
        read_filter_file(bad)


def test_a_table_with_session_id_has_one_row_per_scan(tmp_path):
    img = write_volume(tmp_path / "a.nii.gz")
    (tmp_path / "c.tsv").write_text(
        "participant_id\tsession_id\tage\tt1w\ns1\tses-1\t20\ta.nii.gz\ns1\tses-2\t22\ta.nii.gz\n"
    )
    cohort = read_table(tmp_path / "c.tsv")
    assert cohort.participant_ids == ["s1_ses-1", "s1_ses-2"]
    assert cohort.table["t1w"].tolist() == [str(img)] * 2


# ------------------------------------------------------------------------------ splits
def test_no_subject_has_sessions_in_two_folds_or_splits():
    rng = np.random.default_rng(0)
    rows = []
    for i in range(30):
        base = rng.uniform(20, 80)
        for j in range(int(rng.integers(1, 4))):
            rows.append({"participant_id": scan_key(f"sub-{i:02d}", str(j + 1)),
                         "age": base + 2 * j})  # fmt: skip
    rows.append({"participant_id": "sub-00_ses-9", "age": np.nan})  # a visit without age
    table = pd.DataFrame(rows)
    subject = table["participant_id"].str.split("_ses-").str[0]
    folds = make_folds(table, n_folds=5, seed=1)
    assert folds.index.tolist() == table["participant_id"].tolist()
    known = table["age"].notna().to_numpy()
    per_subject = folds[known].groupby(subject[known].to_numpy())["fold"].nunique()
    assert (per_subject == 1).all()
    for k in range(1, 6):
        roles = folds[known].groupby(subject[known].to_numpy())[f"fold-{k}"].nunique()
        assert (roles == 1).all()  # a subject is train, validation or test as a whole
    assert (
        folds.loc["sub-00_ses-9", "fold"] == 0 and folds.loc["sub-00_ses-9", "split"] == "predict"
    )
    # folds are balanced in subjects, not scans: 30 subjects → 6 per fold
    first = folds[known].groupby(subject[known].to_numpy())["fold"].first()
    assert sorted(first.value_counts().tolist()) == [6] * 5
    split = make_splits(table, test_fraction=0.2, seed=2)
    assert (split[known].groupby(subject[known].to_numpy()).nunique() == 1).all()
    assert split["sub-00_ses-9"] == "predict"


# ------------------------------------------------------------------------------ integration
@pytest.mark.integration
def test_a_longitudinal_dataset_gives_one_prediction_per_session(tmp_path):
    """12 subjects × 2 sessions (phantoms): one prediction per session, both sessions of a
    subject in one fold, outputs under sub-*/ses-*/anat, a valid BIDS derivative."""
    from brainage.config import DEMO_OVERRIDES, merge
    from brainage.io.derivatives import validate_bids, validator_command
    from brainage.simulate import simulate_cohort
    from brainage.workflow import run

    phantoms = simulate_cohort(tmp_path / "phantoms", n_subjects=24, resolution_mm=4.0, seed=5,
                               progress=False)  # fmt: skip
    truth = pd.read_csv(phantoms / "participants.tsv", sep="\t")
    root = tmp_path / "bids"
    root.mkdir()
    shutil.copy(phantoms / "dataset_description.json", root)
    rows = []
    for i in range(12):
        pid = f"sub-{i + 1:02d}"
        ses_rows = []
        for j in range(2):
            src = truth["participant_id"].iloc[2 * i + j]
            dst = root / pid / f"ses-{j + 1}" / "anat" / f"{pid}_ses-{j + 1}_T1w.nii.gz"
            dst.parent.mkdir(parents=True)
            shutil.copy(phantoms / src / "anat" / f"{src}_T1w.nii.gz", dst)
            ses_rows.append({"session_id": f"ses-{j + 1}", "age": truth["age"].iloc[2 * i + j]})
        pd.DataFrame(ses_rows).to_csv(root / pid / f"{pid}_sessions.tsv", sep="\t", index=False)
        rows.append({"participant_id": pid, "sex": truth["sex"].iloc[2 * i]})
    pd.DataFrame(rows).to_csv(root / "participants.tsv", sep="\t", index=False)
    cohort = read_bids(root)
    assert len(cohort) == 24
    from test_bids_app import FAST

    split = {"scheme": "kfold", "n_folds": 3, "validation_fraction": 0.2}
    cfg_dict = merge(merge(DEMO_OVERRIDES, FAST), {"split": split})
    from brainage.config import Config

    out = tmp_path / "out"
    run(cohort, out, Config(**cfg_dict), progress=False)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(pred.columns[:2]) == ["participant_id", "session_id"]
    assert len(pred) == 24 and pred.groupby("participant_id").size().eq(2).all()
    assert pred["brain_age"].notna().all()
    assert (pred.groupby("participant_id")["fold"].nunique() == 1).all()
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    assert (splits.groupby("participant_id")["fold"].nunique() == 1).all()
    ages = pred.set_index(["participant_id", "session_id"])["age"]
    assert ages[("sub-03", "ses-2")] == pytest.approx(truth["age"].iloc[5], abs=0.01)
    for i in range(1, 13):
        for s in (1, 2):
            assert list(
                (out / f"sub-{i:02d}" / f"ses-{s}" / "anat").glob("*_desc-preproc_T1w.nii.gz")
            )
    assert yaml.safe_load((out / "config.yaml").read_text())["split"]["scheme"] == "kfold"
    if validator_command() is None:
        pytest.skip("bids-validator-deno is not installed")
    result = validate_bids(out)
    assert result.n_errors == 0, result.describe()


def test_read_tsv_takes_any_dtype(tmp_path):
    path = write_tsv(tmp_path / "failures.tsv", pd.DataFrame({"participant_id": ["007"], "n": [1]}))
    assert read_tsv(path, dtype=str)["n"].tolist() == ["1"]
    assert read_tsv(path)["participant_id"].tolist() == ["007"]  # ids stay text
