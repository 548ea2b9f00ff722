"""End-to-end: the stage engine on a tiny phantom cohort — what reruns when an input changes,
reproducibility, kill and resume, predict with every method, usage errors."""

import json
import os
import shutil
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.config import DEMO_OVERRIDES, load_config, merge
from brainage.io import read_bids
from brainage.workflow import predict, run

pytestmark = pytest.mark.integration

TINY = {
    "seed": 0,
    "split": {"scheme": "kfold", "n_folds": 3},
    "ensemble": {"n_seeds": 2},
    "train": {
        "epochs": 3,
        "patience": 3,
        "batch_size": 8,
        "model_params": {"filters": [8, 8, 16, 16, 8], "dense": 16},
    },
    "bias_correction": {"n_bootstrap": 50},
    "explain": {
        "methods": ["guided_backprop", "lrp", "unoise"],
        "unoise_fit": {
            "n_subjects": 8,
            "pretrain_epochs": 0,
            "epochs": 1,
            "batch_size": 4,
            "base_channels": 4,
            "levels": 2,
        },
    },
    # 3 subjects keep the perturbation and region-reliance tests short (each evaluate item must
    # finish inside the kill test's windows)
    "evaluate": {
        "n_subjects": 2,
        "faithfulness_subjects": 3,
        "sensitivity_subjects": 2,
        "sensitivity_samples": 2,
    },
    "stats": {"n_perm": 19},
    "population": {"atlases": ["aal"]},
    "run": {"n_jobs": 1, "backend": "serial"},
}

PRED_COLUMNS = [
    "participant_id",
    "age",
    "fold",
    "brain_age",
    "brain_age_corrected",
    "brain_age_gap",
    "uncertainty",
    "brain_age_lower",
    "brain_age_upper",
    "split",
]
FOLDS = (1, 2, 3)
EXE = shutil.which("brainage") or f"{sys.executable} -m brainage.cli"


def tiny_config(**overrides):
    return load_config(base=merge(DEMO_OVERRIDES, TINY), overrides=overrides)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from brainage.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("e2e")
    bids = simulate_cohort(root / "bids", n_subjects=40, resolution_mm=4.0, seed=1, progress=False)
    # one subject without age: predicted, never trained on or scored
    parts = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    parts.loc[0, "age"] = "n/a"
    parts.to_csv(bids / "participants.tsv", sep="\t", index=False)
    cfg = tiny_config()
    old = os.umask(0o022)
    try:
        result = run(read_bids(bids), root / "out", cfg, progress=False)
    finally:
        os.umask(old)
    return root, bids, cfg, result


def test_run_outputs(tiny_run):
    root, bids, cfg, result = tiny_run
    out = root / "out"
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(pred.columns[: len(PRED_COLUMNS)]) == PRED_COLUMNS
    assert {"brain_age_seed-0", "brain_age_seed-1"} <= set(pred.columns)
    assert len(pred) == 40
    no_age = pred[pred["age"].isna()]
    assert len(no_age) == 1 and set(no_age["split"]) == {"predict"} and set(no_age["fold"]) == {0}
    # cross-fitting: every subject with age is out-of-fold (a test subject of exactly one fold)
    known = pred.dropna(subset=["age"])
    assert set(known["split"]) == {"test"} and set(known["fold"]) == set(FOLDS)
    assert np.isfinite(pred["brain_age"]).all() and (pred["uncertainty"] >= 0).all()
    assert (pred["brain_age_lower"] < pred["brain_age"]).all()
    assert (pred["brain_age"] < pred["brain_age_upper"]).all()
    # the gap is taken from the correction each fold recommends
    bias = json.loads((out / "bias_correction.json").read_text())
    col = known["fold"].map({b["fold"]: b["recommended_column"] for b in bias["folds"]})
    chosen = np.where(col == "brain_age", known["brain_age"], known["brain_age_corrected"])
    np.testing.assert_allclose(known["brain_age_gap"], chosen - known["age"], atol=1e-3)
    dictionary = json.loads((out / "predictions.json").read_text())
    assert set(dictionary) == set(pred.columns) and dictionary["age"]["Units"] == "year"
    # splits were drawn from the cohort before preprocessing and recorded
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    assert dict(zip(splits["participant_id"], splits["split"], strict=True)) == dict(
        zip(pred["participant_id"], pred["split"], strict=True)
    )
    n_test = int((pred["split"] == "test").sum())
    layout = result_layout(out, cfg)
    for method in cfg.explain.methods:
        for pid in pred.loc[pred["split"] == "test", "participant_id"]:
            img = nib.load(str(layout.relevance(method, pid)))
            assert img.shape == (40, 48, 40) and img.affine[0, 0] == 4.0
        assert layout.population(method).exists()
        assert len(pd.read_csv(layout.regions(method, "aal"), sep="\t")) > 50
    # everything a later command needs is an output: reference image, noise models
    assert all(layout.reference(f).exists() for f in FOLDS)
    assert all(layout.noise_model(s, f).exists() for s in cfg.seeds for f in FOLDS)
    # one record per item, written last; the test subjects × methods of explain
    records = list((out / "records" / "explain").glob("*.json"))
    assert len(records) == n_test * len(cfg.explain.methods)
    rec = json.loads(records[0].read_text())
    assert {"key", "params", "inputs", "upstream", "seconds", "outputs"} <= set(rec)
    html = (out / "report.html").read_text()
    assert "<img" in html and "http://" not in html.replace("http://www.w3.org", "")
    # the report's cross-fitting section: one row per fold and the interval's measured coverage
    assert 'id="crossfit"' in html and html.count("head weights") == 1
    ens = json.loads((out / "ensemble.json").read_text())
    cover = ens["interval"]["scores"]["coverage"]
    assert f"{cover * 100:.1f} %" in html
    prov = json.loads((out / "provenance.json").read_text())
    assert {"preprocess", "train", "predict", "explain", "population", "report"} <= set(
        prov["stage_seconds"]
    )
    # every method has its randomisation check, U-Noise too (noise models refitted per
    # randomised predictor); max-sensitivity and region-level truth for the gradient methods
    xai = pd.read_csv(out / "evaluation" / "xai.tsv", sep="\t").set_index("method")
    assert np.isfinite(xai["randomisation_spearman"]).all(), xai["randomisation_spearman"]
    steps = pd.read_csv(out / "evaluation" / "randomisation" / "method-unoise.tsv", sep="\t")
    assert steps["spearman"].iloc[0] == pytest.approx(1.0) and len(steps) > 2
    assert np.isfinite(xai.loc[["guided_backprop", "lrp"], "max_sensitivity"]).all()
    assert xai.loc[["guided_backprop", "lrp"], "region_roc_auc"].between(0, 1).all()
    # readable by group and others under umask 022 (no 0600 temporary-file modes)
    for path in (out / "predictions.tsv", layout.relevance("lrp", pid), records[0]):
        assert path.stat().st_mode & 0o044 == 0o044, path


def test_no_subject_is_predicted_or_explained_by_a_model_that_saw_it(tiny_run):
    """Leakage: what each model was trained on (its record) never holds a subject it predicts."""
    from brainage.workflow.records import read_records

    root, _, cfg, _ = tiny_run
    out = root / "out"
    layout = result_layout(out, cfg)
    seen = {  # every subject a base model was trained or validated on, from its record
        item: {s[0] for s in rec.inputs["subjects"]}
        for item, rec in read_records(layout, "train").items()
    }
    per_fold = len(cfg.seeds) + len(cfg.ensemble.learners)  # CNN seeds + the voxel ridge
    assert len(seen) == len(FOLDS) * per_fold
    references = read_records(layout, "reference")
    reference_seen = {i: set(r.inputs["subjects"]) for i, r in references.items()}
    ensemble = json.loads((out / "ensemble.json").read_text())
    fold_items = {f["fold"]: f["items"] for f in ensemble["folds"]}
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    for pid, fold in zip(pred["participant_id"], pred["fold"], strict=True):
        if fold == 0:  # no age: predicted by every fold, trained on by none
            assert all(pid not in s for s in seen.values())
            continue
        mine = fold_items[fold]
        assert len(mine) == per_fold and all(pid not in seen[i] for i in mine)
        assert pid not in reference_seen[f"fold-{fold}"]
        # and the check can fail: every other fold's models did see the subject
        assert all(pid in seen[i] for f, items in fold_items.items() if f != fold for i in items)
    # the head and the bias correction of a fold were fitted on its validation subjects only
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    for f in ensemble["folds"]:
        n_val = int((splits[f"fold-{f['fold']}"] == "validation").sum())
        assert f["bias_correction"]["n_validation"] == n_val > 0
    # every relevance map was computed by the models of the fold that holds its subject out
    folds = dict(zip(pred["participant_id"], pred["fold"], strict=True))
    n_maps = 0
    for item, rec in read_records(layout, "explain").items():
        pid = item.split("/", 1)[1]
        used = sorted(u.split("/", 1)[1] for u in rec.upstream if u.startswith("train/"))
        assert used == sorted(i for i in fold_items[folds[pid]] if "seed-" in i), item
        assert all(pid not in seen[i] for i in used)
        if item.startswith("unoise/"):  # and its noise models were fitted without it
            noise = read_records(layout, "noise")
            assert all(pid not in {s[0] for s in noise[i].inputs["subjects"]} for i in used)
        n_maps += 1
    assert n_maps == (pred["fold"] > 0).sum() * len(cfg.explain.methods)


def result_layout(out, cfg):
    from brainage.io.layout import RunLayout

    return RunLayout(out, cfg.train.resolution_mm)


def test_rerun_with_nothing_changed_computes_nothing(tiny_run):
    root, bids, cfg, first = tiny_run
    again = run(read_bids(bids), root / "out", cfg, progress=False)
    assert set(again.computed.values()) == {0}, again.computed
    pd.testing.assert_frame_equal(again.predictions, first.predictions)


def _copy(tiny_run, tmp_path):
    root, bids, cfg, _ = tiny_run
    shutil.copytree(bids, tmp_path / "bids")
    shutil.copytree(root / "out", tmp_path / "out")
    return tmp_path / "bids", tmp_path / "out", cfg


def test_changing_one_scan_reruns_only_what_depends_on_it(tiny_run, tmp_path):
    bids, out, cfg = _copy(tiny_run, tmp_path)
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    pid = splits.loc[splits["fold"] == 1, "participant_id"].iloc[0]
    path = next((bids / pid / "anat").glob("*_T1w.nii.gz"))
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, dtype=np.float32)
    data[data > 0] *= 1.05
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    res = run(read_bids(bids), out, cfg, progress=False)
    n_methods, n_seeds = len(cfg.explain.methods), len(cfg.seeds)
    # the scan trains or validates the models of folds 2 and 3 (not those of fold 1, which
    # explain it); maps are redone for itself and for the subjects of folds 2 and 3 (the
    # subject without age is not explained: explain.subjects is "test")
    row = splits.set_index("participant_id").loc[pid]
    explained = 1 + int((splits["fold"] > 1).sum())
    expected = {
        "splits": 0,
        "preprocess": 1,
        "volumes": 1,
        "train": 2 * (n_seeds + 1),  # + the voxel ridge of each fold
        "reference": sum(row[f"fold-{f}"] == "train" for f in FOLDS),  # training subjects only
        "noise": 2 * n_seeds,
        "predict": 1,
        "explain": n_methods * explained,
        "population": n_methods,
        "regions": n_methods,
        "truth": 0,
        "evaluate": n_methods,
        # the maps changed; and the brain-age gaps the covariate tables read
        "stats": len(cfg.stats.analyses) * len(cfg.stats_methods) + 1,
        "native_regions": 0,  # the phantoms have no native label maps
        "subgroups": n_methods,
        "stability": n_methods + 1,  # per method, and across methods
        "phases": 0,  # no train.phases in this run
        "report": 1,
    }
    assert res.computed == expected


def _fold_subjects(splits: pd.DataFrame, fold: int) -> list:
    """What a fold's models are trained on: (participant, age, role) of train + validation."""
    col = f"fold-{fold}"
    part = splits[splits[col].isin(["train", "validation"])]
    return sorted(zip(part["participant_id"], part["age"], part[col], strict=True))


def test_changing_one_age_retrains_and_keeps_preprocessing(tiny_run, tmp_path):
    bids, out, cfg = _copy(tiny_run, tmp_path)
    parts = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    before_splits = pd.read_csv(out / "splits.tsv", sep="\t")
    pid = before_splits.loc[before_splits["fold"] == 2, "participant_id"].iloc[0]
    parts.loc[parts["participant_id"] == pid, "age"] = "99"
    parts.to_csv(bids / "participants.tsv", sep="\t", index=False)
    before = pd.read_csv(out / "predictions.tsv", sep="\t")
    res = run(read_bids(bids), out, cfg, progress=False)
    after_splits = pd.read_csv(out / "splits.tsv", sep="\t")
    # a fold's models are retrained exactly when what they are trained on changed
    changed = [
        f for f in FOLDS
        if _fold_subjects(before_splits, f) != _fold_subjects(after_splits, f)
    ]  # fmt: skip
    assert len(changed) >= 2  # at least the folds that train on the subject
    assert res.computed["preprocess"] == 0 and res.computed["volumes"] == 0
    per_fold = len(cfg.seeds) + len(cfg.ensemble.learners)
    assert res.computed["splits"] == 1 and res.computed["train"] == len(changed) * per_fold
    assert res.computed["predict"] == 1
    assert not np.allclose(res.predictions["brain_age"], before["brain_age"])


def test_changing_one_parameter_reruns_only_downstream(tiny_run, tmp_path):
    bids, out, cfg = _copy(tiny_run, tmp_path)
    cfg2 = cfg.merged({"population": {"top_fraction": 0.2}})
    res = run(read_bids(bids), out, cfg2, progress=False)
    n = len(cfg.explain.methods)
    changed = {k: v for k, v in res.computed.items() if v}
    # the region tables of subgroups and of rank stability count top-fraction voxels too
    assert changed == {
        "population": n, "regions": n, "subgroups": n, "stability": n + 1, "report": 1,
    }  # fmt: skip


def test_subgroups_rank_stability_and_statistics_outputs(tiny_run):
    root, _, cfg, _ = tiny_run
    out = root / "out"
    layout = result_layout(out, cfg)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t").set_index("participant_id")
    for method in cfg.explain.methods:
        summary = json.loads(layout.region_summary(method, "subgroups").read_text())
        assert set(summary["factors"]) == {"sex", "age_group", "gap_group"}
        groups = {g["level"]: g for g in summary["factors"]["age_group"]["groups"]}
        # the age groups partition the explained subjects with age
        assert sum(g["n"] for g in groups.values()) == summary["n_subjects"]
        assert groups["< 60"]["mean_age"] < groups["60–70"]["mean_age"] < groups["≥ 70"]["mean_age"]
        gap = {g["level"]: g for g in summary["factors"]["gap_group"]["groups"]}
        assert gap["accelerated"]["mean_gap"] > gap["decelerated"]["mean_gap"]
        assert gap["accelerated"]["n"] == int(0.2 * pred["brain_age_gap"].notna().sum())
        # a subgroup map is the mean of its members' normalised maps (here: all of sex F)
        f_map = nib.load(str(layout.subgroup_map(method, "sexF")))
        assert f_map.shape == (40, 48, 40)
        regions = pd.read_csv(layout.subgroup_regions(method, "sexF", "aal"), sep="\t")
        assert list(regions["rank"]) == list(range(1, len(regions) + 1))
        # rank stability: across the 2 seeds (1 pair) and the 3 folds (3 pairs)
        stab = pd.read_csv(layout.region_summary(method, "stability"), sep="\t")
        assert (stab["factor"] == "model").sum() == 1 and (stab["factor"] == "fold").sum() == 3
        assert stab["spearman"].between(-1, 1).all() and stab["kendall"].between(-1, 1).all()
    across = pd.read_csv(layout.region_summary("all", "stability"), sep="\t")
    n = len(cfg.explain.methods)
    assert len(across) == n * (n - 1) // 2 and set(across["factor"]) == {"method"}
    # the brain-age gap against the cohort's covariates (sex), in 10-year windows
    windows = pd.read_csv(out / "stats" / "gap_windows.tsv", sep="\t")
    assert set(windows["covariate"]) == {"sex"}
    assert np.allclose(windows["window_end"] - windows["window_start"], 10)
    html = (out / "report.html").read_text()
    assert 'id="subgroups"' in html and 'id="rank-stability"' in html
    assert 'id="gap-covariates"' in html
    summaries = [json.loads(p.read_text()) for p in (out / "stats").glob("method-*_summary.json")]
    significant = sum(s.get("n_significant", 0) > 0 for s in summaries)
    assert html.count('alt="glass brain of significant t values') == significant


def test_native_label_maps_give_a_region_table_keyed_by_their_content(tiny_run, tmp_path):
    """A derivatives dataset of native dseg maps adds a region table; editing one map reruns it."""
    bids, out, cfg = _copy(tiny_run, tmp_path)
    layout = result_layout(out, cfg)
    seg = bids / "derivatives" / "seg"
    pids = pd.read_csv(out / "splits.tsv", sep="\t")["participant_id"]
    for pid in pids:
        t1w = nib.load(str(next((bids / pid / "anat").glob("*_T1w.nii.gz"))))
        brain = np.asarray(t1w.dataobj) > 0
        labels = np.zeros(brain.shape, np.int16)
        labels[brain] = 2
        labels[: brain.shape[0] // 2][brain[: brain.shape[0] // 2]] = 1  # one half: label 1
        (seg / pid / "anat").mkdir(parents=True)
        nib.save(nib.Nifti1Image(labels, t1w.affine), seg / pid / "anat" / f"{pid}_dseg.nii.gz")
    (seg / "dseg.tsv").write_text("index\tname\n1\tHalfA\n2\tHalfB\n")
    res = run(read_bids(bids), out, cfg, progress=False)
    n = len(cfg.explain.methods)
    changed = {k: v for k, v in res.computed.items() if v}
    assert changed == {"native_regions": n, "report": 1}
    table = pd.read_csv(layout.regions("lrp", "segnative"), sep="\t")
    assert set(table["region"]) == {"HalfA", "HalfB"}
    assert (table["n_subjects"] == int((pd.read_csv(out / "predictions.tsv", sep="\t")["fold"]
                                         > 0).sum())).all()  # fmt: skip
    # each subject's regions: the mean of its |relevance| over its own mean is 1 overall
    subjects = pd.read_csv(layout.region_summary("lrp", "atlas-segnative_subjects"), sep="\t")
    for _, t in subjects.groupby("participant_id"):
        w = t["n_voxels"] / t["n_voxels"].sum()
        assert (w * t["mean_relevance"]).sum() == pytest.approx(1, rel=1e-4)
    assert "segnative" in (out / "report.html").read_text()
    # editing one label map reruns the native tables, nothing else
    path = seg / pids.iloc[3] / "anat" / f"{pids.iloc[3]}_dseg.nii.gz"
    img = nib.load(str(path))
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[::-1].copy(), img.affine), path)
    again = run(read_bids(bids), out, cfg, progress=False)
    assert {k: v for k, v in again.computed.items() if v} == {"native_regions": n, "report": 1}


def test_same_seed_gives_byte_identical_predictions(tmp_path):
    from brainage.simulate import simulate_cohort

    bids = simulate_cohort(tmp_path / "b", n_subjects=24, resolution_mm=4.0, seed=5, progress=False)
    cfg = tiny_config(explain={"methods": []}, ensemble={"n_seeds": 1})
    a = run(read_bids(bids), tmp_path / "a", cfg, progress=False, targets=["predict"])
    # the second with its caches elsewhere (--work-dir): results do not depend on it
    b = run(read_bids(bids), tmp_path / "c", cfg, False, ["predict"], work_dir=tmp_path / "w")
    assert a.computed["train"] == b.computed["train"] == 2 * len(FOLDS)  # CNN + voxel ridge
    assert list((tmp_path / "w").glob("volumes_res-4.npy")) and not (tmp_path / "c_work").exists()
    assert (tmp_path / "a" / "predictions.tsv").read_bytes() == (
        tmp_path / "c" / "predictions.tsv"
    ).read_bytes()


def test_holdout_scheme_still_splits_train_validation_test(tmp_path):
    from brainage.simulate import simulate_cohort

    bids = simulate_cohort(tmp_path / "b", n_subjects=24, resolution_mm=4.0, seed=6, progress=False)
    cfg = tiny_config(split={"scheme": "holdout"}, explain={"methods": []}, ensemble={"n_seeds": 2})
    res = run(read_bids(bids), tmp_path / "o", cfg, progress=False, targets=["predict"])
    assert res.computed["train"] == 3 and (tmp_path / "o" / "models" / "seed-0").is_dir()
    pred = res.predictions
    assert "fold" not in pred and set(pred["split"]) == {"train", "validation", "test"}
    ens = json.loads((tmp_path / "o" / "ensemble.json").read_text())
    assert ens["scheme"] == "holdout" and [f["fold"] for f in ens["folds"]] == [None]
    # the interval is calibrated on the validation subjects (split-conformal)
    assert ens["interval"]["n_calibration"] == int((pred["split"] == "validation").sum())


def test_predict_new_subjects_with_every_method(tiny_run, tmp_path):
    from brainage.explain import list_methods
    from brainage.io.layout import RunLayout
    from brainage.simulate import simulate_cohort

    root, _, cfg, _ = tiny_run
    new = simulate_cohort(
        tmp_path / "new", n_subjects=3, resolution_mm=4.0, seed=99, progress=False
    )
    methods = tuple(list_methods())
    pred = predict(root / "out", read_bids(new), tmp_path / "pred", methods, progress=False)
    written = pd.read_csv(tmp_path / "pred" / "predictions.tsv", sep="\t")
    assert list(written.columns[: len(PRED_COLUMNS)]) == PRED_COLUMNS and len(written) == 3
    assert set(written["split"]) == {"predict"} and set(written["fold"]) == {0}  # every fold
    assert (written["brain_age_lower"] < written["brain_age_upper"]).all()
    np.testing.assert_allclose(written["brain_age"], pred["brain_age"], rtol=1e-5)
    layout = RunLayout(tmp_path / "pred", cfg.train.resolution_mm)
    for method in methods:
        for pid in written["participant_id"]:
            data = np.asarray(nib.load(str(layout.relevance(method, pid))).dataobj)
            assert data.shape == (40, 48, 40) and np.isfinite(data).all(), method


def test_predict_refuses_a_folder_that_is_not_a_run(tmp_path):
    from conftest import make_bids

    from brainage.errors import InputError

    bids = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": "40"})
    with pytest.raises(InputError, match="config.yaml is missing: not a finished brainage run"):
        predict(tmp_path / "nothing", read_bids(bids), tmp_path / "o", progress=False)


def test_explain_run_adds_a_method_and_rejects_typos(tiny_run):
    from brainage.errors import ConfigError
    from brainage.workflow import explain_run

    root, _, _, _ = tiny_run
    out = root / "out"
    res = explain_run(out, ["gradcam"], progress=False, report=False)
    assert res.computed["explain"] > 0 and res.computed["train"] == 0
    xai = pd.read_csv(out / "evaluation" / "xai.tsv", sep="\t")
    assert list(xai["method"]) == ["gradcam"]
    assert np.isfinite(xai["roc_auc"]).all() and (xai["mask_fraction"] > 0).all()
    # robustness and region-level truth (issue 11): captum max-sensitivity, region scores
    assert (xai["max_sensitivity"] > 0).all() and np.isfinite(xai["max_sensitivity"]).all()
    assert xai["region_roc_auc"].between(0, 1).all()
    assert xai["region_effect_spearman"].between(-1, 1).all()
    truth = pd.read_csv(out / "evaluation" / "regions" / "method-gradcam_truth.tsv", sep="\t")
    assert set(truth["has_effect"]) <= {"yes", "no", "partial"} and (truth["n_voxels"] > 0).all()
    agreement = pd.read_csv(out / "evaluation" / "method_agreement.tsv", sep="\t")
    pairs = set(zip(agreement["method_a"], agreement["method_b"], strict=True))
    assert ("guided_backprop", "lrp") in pairs and agreement["spearman"].between(-1, 1).all()
    with pytest.raises(ConfigError, match="did you mean 'gradcam'"):
        explain_run(out, ["gradcm"], progress=False, report=False)


def _cli(*args, timeout=120):
    return subprocess.run([*EXE.split(), *args], capture_output=True, text=True, timeout=timeout)


def test_configuration_errors_fail_fast_before_any_work(tmp_path):
    from conftest import make_bids

    bids = make_bids(tmp_path / "bids", {f"sub-{i:02d}": str(20 + i) for i in range(12)})
    for text, hint in (
        ("train: {epocs: 3}\n", "did you mean 'epochs'"),
        ("train: {epochs: sixty}\n", "'train.epochs'"),
        ("explain: {params: {occlussion: {window: 4}}}\n", "did you mean 'occlusion'"),
        # a contrast on a column the cohort lacks: known from participants.tsv, before any work
        ("stats: {contrasts: [{column: diagnosis}]}\n", "the column 'diagnosis'"),
    ):
        (tmp_path / "c.yaml").write_text(text)
        t0 = time.perf_counter()
        proc = _cli("run", "--bids", str(bids), "--out", str(tmp_path / "o"), "--config",
                    str(tmp_path / "c.yaml"))  # fmt: skip
        assert time.perf_counter() - t0 < 15
        assert proc.returncode == 2 and hint in proc.stderr and "Traceback" not in proc.stderr
        assert not list((tmp_path / "o").glob("sub-*"))
    proc = _cli("run", "--bids", str(bids), "--out", str(tmp_path / "o"), "--methods", "lrp,gradcm")
    assert proc.returncode == 2 and "did you mean 'gradcam'" in proc.stderr


@pytest.mark.parametrize(
    ("args", "hint"),
    [
        (["--bid", "x"], "No such option: --bid"),
        (["rn"], "Did you mean 'run'"),
        (["run"], "Missing option '--out'"),
        (["simulate", "--out", "x", "--n-subjects", "abc"], "'--n-subjects'"),
        (["explain"], "Missing option '--run'"),
    ],
)
def test_usage_errors_are_one_line_with_exit_2(args, hint):
    proc = _cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert hint in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1


def test_help_and_config_show():
    proc = _cli("-h")
    assert proc.returncode == 0 and "preprocess" in proc.stdout and "evaluate" in proc.stdout
    proc = _cli("config", "--show")
    assert proc.returncode == 0
    import yaml

    shown = yaml.safe_load(proc.stdout)
    assert shown == load_config().to_dict()


def test_cli_reports_bad_input_in_one_line(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-1\t30\nsub-1\t40\n")
    proc = _cli("run", "--bids", str(bids), "--out", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "sub-1" in proc.stderr and "appears more than once" in proc.stderr
    assert "Traceback" not in proc.stderr


def _rerun_command(tiny_run, tmp_path):
    """The CLI command that repeats the reference run of ``tiny_run`` in a new folder."""
    import yaml

    root, bids, cfg, _ = tiny_run
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
    out = tmp_path / "out"
    cmd = [*EXE.split(), "run", "--bids", str(bids), "--out", str(out), "--config",
           str(tmp_path / "c.yaml"), "--quiet"]  # fmt: skip
    # one thread, as in this test process (conftest): the same float sums as the reference run
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    return root, cfg, out, cmd, env


def test_killed_run_resumes_to_the_outputs_of_an_uninterrupted_run(tiny_run, tmp_path):
    """SIGKILL a real `brainage run` during training, rerun, compare with the uninterrupted run."""
    import signal

    root, cfg, out, cmd, env = _rerun_command(tiny_run, tmp_path)
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    first = out / "records" / "train" / "fold-1_seed-0.json"
    deadline = time.time() + 300

    def mid_training():  # the second base model has a checkpoint: killed inside an epoch loop
        return first.exists() and list(
            (out.parent / f"{out.name}_work" / "checkpoints").glob("fold-1_seed-1_*.pt")
        )

    while not mid_training() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.02)
    assert mid_training(), "the run never reached the middle of its second base model"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "predictions.tsv").exists()
    stamp = (out / "models" / "fold-1" / "seed-0" / "model.pt").stat().st_mtime_ns
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "models" / "fold-1" / "seed-0" / "model.pt").stat().st_mtime_ns == stamp
    assert not [p for p in out.rglob(".*.tmp*")], "temporary files left behind"
    # the outputs of the uninterrupted run, byte for byte
    assert (out / "predictions.tsv").read_bytes() == (root / "out" / "predictions.tsv").read_bytes()


def test_killed_at_random_points_until_done_gives_the_uninterrupted_outputs(tiny_run, tmp_path):
    """SIGKILL `brainage run` at seeded random times, again and again, until it finishes."""
    import signal

    root, cfg, out, cmd, env = _rerun_command(tiny_run, tmp_path)
    rng = np.random.default_rng(7)
    kills = 0
    for attempt in range(20):  # each attempt a little longer, so the run surely ends
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            proc.wait(timeout=float(rng.uniform(3.0, 12.0)) + 2.0 * attempt)
        except subprocess.TimeoutExpired:
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait()
            kills += 1
            continue
        assert proc.returncode == 0
        break
    else:
        pytest.fail("the run never finished")
    assert kills >= 2, "the run was not interrupted often enough to test anything"
    assert not [p for p in out.rglob(".*.tmp*")], "temporary files left behind"
    for name in ("predictions.tsv", "metrics.tsv", "splits.tsv"):
        assert (out / name).read_bytes() == (root / "out" / name).read_bytes(), name
    # maps and region tables too (other tests may add methods to the reference run later)
    ref, new = result_layout(root / "out", cfg), result_layout(out, cfg)
    pid = (
        pd.read_csv(out / "splits.tsv", sep="\t").query("split == 'test'")["participant_id"].iloc[0]
    )
    for method in cfg.explain.methods:
        a = np.asarray(nib.load(str(new.relevance(method, pid))).dataobj)
        np.testing.assert_array_equal(
            a, np.asarray(nib.load(str(ref.relevance(method, pid))).dataobj)
        )
        pd.testing.assert_frame_equal(
            pd.read_csv(new.regions(method, "aal"), sep="\t"),
            pd.read_csv(ref.regions(method, "aal"), sep="\t"),
        )
