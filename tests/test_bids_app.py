"""The BIDS-Apps calling convention and the run folder as a valid BIDS derivative dataset."""

import json
import os
import shutil
import subprocess
import sys

import nibabel as nib
import pandas as pd
import pytest
import yaml

from brainage.bids_app import is_bids_app_call, parser
from brainage.config import DEMO_OVERRIDES, merge
from brainage.io.derivatives import bids_uri, raw_root, validator_command

EXE = shutil.which("brainage") or f"{sys.executable} -m brainage.cli"
COMMANDS = {"run", "demo", "study", "preprocess"}

FAST = {
    "split": {"scheme": "holdout", "test_fraction": 0.25},
    "ensemble": {"n_seeds": 1},
    "train": {"epochs": 2, "patience": 2, "batch_size": 8,
              "model_params": {"filters": [8, 8, 16, 16, 8], "dense": 16}},
    "bias_correction": {"n_bootstrap": 50},
    "explain": {"methods": ["lrp"]},
    "evaluate": {"n_subjects": 2, "randomisation": False, "faithfulness_subjects": 3,
                 "sensitivity_subjects": 2, "sensitivity_samples": 2},
    "stats": {"n_perm": 19},
    "population": {"atlases": ["aal"], "subgroups": []},
    "run": {"n_jobs": 1, "backend": "serial"},
}  # fmt: skip


def brainage(*args, timeout=900):
    return subprocess.run([*EXE.split(), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)  # fmt: skip


# ------------------------------------------------------------------------------ unit
def test_the_bids_app_form_is_told_from_subcommands(tmp_path):
    assert is_bids_app_call(["/data", "/out", "participant"], COMMANDS)
    assert is_bids_app_call(["/data", "/out", "group", "--n-jobs", "2"], COMMANDS)
    assert is_bids_app_call([str(tmp_path), "/out"], COMMANDS)  # a folder: the parser explains
    assert not is_bids_app_call(["run", "--out", "x", "participant"], COMMANDS)
    assert not is_bids_app_call(["--version"], COMMANDS)
    assert not is_bids_app_call(["runn", "a", "b"], COMMANDS)
    argv = "/d /o participant --participant_label 01 sub-02 -w /w --omp-nthreads 3"
    args = parser().parse_args([*argv.split(), "--skip_bids_validation", "-vv"])
    assert args.participant_label == ["01", "sub-02"] and str(args.work_dir) == "/w"
    assert args.omp_nthreads == 3 and args.skip_bids_validation and args.verbose == 2


def test_bids_uris_name_the_input_file_relative_to_its_dataset(tmp_path):
    f = tmp_path / "ds" / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    f.parent.mkdir(parents=True)
    f.write_bytes(b"")
    assert bids_uri(f, tmp_path / "ds") == "bids:raw:sub-01/anat/sub-01_T1w.nii.gz"
    assert bids_uri(f, tmp_path / "other").startswith("file:///")
    # a table cohort: the images' deepest common folder is the dataset root
    assert raw_root(tmp_path / "t.csv", [f, f.with_name("x.nii.gz")]) == f.parent


def test_bad_analysis_level_and_missing_input_are_one_line_errors(tmp_path):
    res = brainage(tmp_path, tmp_path / "out", "grup")
    assert res.returncode == 2 and "invalid choice: 'grup'" in res.stderr
    assert "Traceback" not in res.stderr
    res = brainage(tmp_path / "nope", tmp_path / "out", "group")
    assert res.returncode == 2 and "BIDS_DIR does not exist" in res.stderr
    assert "Traceback" not in res.stderr


def test_an_invalid_input_dataset_is_refused_with_the_validators_findings(tmp_path):
    if validator_command() is None:
        pytest.skip("bids-validator-deno is not installed")
    from brainage.bids_app import check_input
    from brainage.errors import InputError

    (tmp_path / "sub-01" / "anat").mkdir(parents=True)
    (tmp_path / "sub-01" / "anat" / "sub-01_T1w.nii.gz").write_bytes(b"not a nifti")
    with pytest.raises(InputError, match="BIDS validator found .* error") as err:
        check_input(tmp_path)
    assert "--skip-bids-validation" in str(err.value) and "\n" not in str(err.value)


# ------------------------------------------------------------------------------ integration
@pytest.mark.integration
def test_participant_then_group_gives_a_valid_bids_derivative(tmp_path):
    """participant preprocesses only the labelled subjects, group does the rest; the output
    passes the BIDS validator with 0 errors and every TSV has a complete data dictionary."""
    from brainage.simulate import simulate_cohort

    bids = simulate_cohort(tmp_path / "bids", n_subjects=24, resolution_mm=4.0, seed=3,
                           progress=False)  # fmt: skip
    config = tmp_path / "fast.yaml"
    config.write_text(yaml.safe_dump(merge(DEMO_OVERRIDES, FAST)))
    out = tmp_path / "derivatives" / "brainage"
    res = brainage(bids, out, "participant", "--participant-label", "0001", "sub-0002",
                   "--config", config, "--quiet")  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-0001", "sub-0002"]
    assert not (out / "models").exists() and not (out / "predictions.tsv").exists()
    anat = out / "sub-0001" / "anat"
    preproc = next(anat.glob("*_desc-preproc_T1w.nii.gz"))
    side = json.loads(preproc.with_name(preproc.name.replace(".nii.gz", ".json")).read_text())
    assert side["Sources"] == ["bids:raw:sub-0001/anat/sub-0001_T1w.nii.gz"]
    # phantoms have no skull: the demo configuration strips nothing, and the sidecar says so
    assert side["SkullStripped"] is False and "4" in side["Resolution"]
    mask_side = json.loads(next(anat.glob("*_desc-brain_mask.json")).read_text())
    assert mask_side["Type"] == "Brain" and mask_side["Sources"] == side["Sources"]
    hdr = nib.load(preproc).header
    assert int(hdr["sform_code"]) == 4 and int(hdr["qform_code"]) == 4  # MNI152
    assert hdr.get_xyzt_units()[0] == "mm"
    assert (out / "sub-0001" / "figures" / "sub-0001_desc-qc_T1w.png").is_file()

    res = brainage(bids, out, "group", "--config", config, "--quiet", "--skip-bids-validation")
    assert res.returncode == 0, res.stderr
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert len(pred) == 24 and len(list(out.glob("sub-*/anat/*_desc-preproc_T1w.nii.gz"))) == 24
    # work files are outside the derivative; the log is in it
    assert (tmp_path / "derivatives" / "brainage_work").is_dir()
    assert not list(out.rglob("*.npy")) and not list(out.rglob("checkpoints"))
    assert (out / "logs" / "brainage.log").is_file()
    desc = json.loads((out / "dataset_description.json").read_text())
    assert desc["DatasetType"] == "derivative" and desc["DatasetLinks"]["raw"].startswith("file:")
    # every TSV has a data dictionary describing each of its columns
    for tsv in out.rglob("*.tsv"):
        columns = pd.read_csv(tsv, sep="\t", nrows=0).columns
        dictionary = json.loads(tsv.with_suffix(".json").read_text())
        missing = [c for c in columns if not dictionary.get(c, {}).get("Description")]
        assert not missing, f"{tsv.relative_to(out)}: {missing} undocumented"
    if validator_command() is None:
        pytest.skip("bids-validator-deno is not installed")
    from brainage.io.derivatives import validate_bids

    result = validate_bids(out)
    assert result.n_errors == 0, result.describe()


@pytest.mark.integration
def test_participant_level_on_two_real_scans(ixi_root, tmp_path):
    """The issue's check: only IXI012 and IXI013 are preprocessed."""
    out = tmp_path / "out"
    res = brainage(ixi_root, out, "participant", "--participant-label", "IXI012", "IXI013",
                   "--quiet", "--omp-nthreads", str(os.cpu_count() or 1))  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in out.glob("sub-*")) == ["sub-IXI012", "sub-IXI013"]
    qc = pd.read_csv(out / "qc.tsv", sep="\t")
    assert qc["participant_id"].tolist() == ["sub-IXI012", "sub-IXI013"]
    assert (qc["reg_quality"] > 0.4).all()  # as in test_preprocess_ixi (measured 0.47–0.60)
