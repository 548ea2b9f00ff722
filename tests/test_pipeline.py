"""End-to-end: the main job on a tiny phantom cohort, rerun from cache, predict on new subjects."""

import json
import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.config import DEMO_OVERRIDES, load_config, merge
from brainage.io import read_bids
from brainage.pipeline import predict, run

pytestmark = pytest.mark.integration

TINY = {
    "seed": 0,
    "ensemble": {"n_seeds": 2},
    "train": {
        "epochs": 3,
        "patience": 3,
        "batch_size": 8,
        "model_params": {"filters": [8, 8, 16, 16, 8], "dense": 16},
    },
    "bias_correction": {"n_bootstrap": 50},
    "population": {"atlases": ["aal"]},
    "run": {"n_jobs": 1, "backend": "serial"},
}

PRED_COLUMNS = [
    "participant_id",
    "age",
    "brain_age",
    "brain_age_corrected",
    "brain_age_gap",
    "uncertainty",
    "split",
]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    from brainage.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("e2e")
    bids = simulate_cohort(root / "bids", n_subjects=40, resolution_mm=4.0, seed=1, progress=False)
    # one subject without age: predicted, never trained on or scored
    parts = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    parts.loc[0, "age"] = "n/a"
    parts.to_csv(bids / "participants.tsv", sep="\t", index=False)
    cfg = merge(load_config(overrides=DEMO_OVERRIDES), TINY)
    result = run(read_bids(bids), root / "out", cfg, progress=False)
    return root, bids, cfg, result


def test_run_outputs(tiny_run):
    root, bids, cfg, result = tiny_run
    out = root / "out"
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    assert list(pred.columns[:7]) == PRED_COLUMNS
    assert {"brain_age_seed-0", "brain_age_seed-1"} <= set(pred.columns)
    assert len(pred) == 40
    no_age = pred[pred["age"].isna()]
    assert len(no_age) == 1 and set(no_age["split"]) == {"predict"}
    assert np.isfinite(pred["brain_age"]).all() and (pred["uncertainty"] >= 0).all()
    # the gap is computed from the recommended column
    bias = json.loads((out / "bias_correction.json").read_text())
    col = bias["recommended_column"]
    known = pred.dropna(subset=["age"])
    np.testing.assert_allclose(known["brain_age_gap"], known[col] - known["age"], atol=1e-3)
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert {"seed-0", "seed-1", "ensemble", "ensemble_corrected", "mean_age_baseline"} <= set(
        metrics["model"]
    )
    # relevance maps: one per test subject and method, in template space
    n_test = int((pred["split"] == "test").sum())
    for method in cfg["explain"]["methods"]:
        maps = sorted((out / "explain" / f"method-{method}").glob("*_relevance.nii.gz"))
        assert len(maps) == n_test
        img = nib.load(str(maps[0]))
        assert img.shape == (40, 48, 40) and img.affine[0, 0] == 4.0
        assert list((out / "population").glob(f"method-{method}_*stat-mean_relevance.nii.gz"))
        regions = pd.read_csv(out / "regions" / f"method-{method}_atlas-aal_regions.tsv", sep="\t")
        assert len(regions) > 50
    html = (out / "report.html").read_text()
    assert "<img" in html and "http://" not in html.replace("http://www.w3.org", "")
    prov = json.loads((out / "provenance.json").read_text())
    assert {"preprocess", "train", "predict", "explain", "population", "report"} <= set(
        prov["stage_seconds"]
    )


def test_rerun_uses_cache(tiny_run):
    root, bids, cfg, first = tiny_run
    out = root / "out"
    model = out / "models" / "default" / "seed-0" / "model.pt"
    stamp = model.stat().st_mtime_ns
    relevance = next((out / "explain").rglob("*_relevance.nii.gz"))
    rel_stamp = relevance.stat().st_mtime_ns
    again = run(read_bids(bids), out, cfg, progress=False, report=False)
    assert model.stat().st_mtime_ns == stamp and relevance.stat().st_mtime_ns == rel_stamp
    pd.testing.assert_frame_equal(again.predictions, first.predictions)
    assert again.stage_seconds["train"] < 5


def test_predict_new_subjects(tiny_run, tmp_path):
    from brainage.simulate import simulate_cohort

    root, _, _, _ = tiny_run
    new = simulate_cohort(
        tmp_path / "new", n_subjects=6, resolution_mm=4.0, seed=99, progress=False
    )
    pred = predict(root / "out", read_bids(new), tmp_path / "pred", progress=False)
    written = pd.read_csv(tmp_path / "pred" / "predictions.tsv", sep="\t")
    assert list(written.columns[:7]) == PRED_COLUMNS and len(written) == 6
    assert set(written["split"]) == {"predict"}
    np.testing.assert_allclose(written["brain_age"], pred["brain_age"], rtol=1e-5)


def test_cli_reports_bad_input_in_one_line(tmp_path):
    bids = tmp_path / "bids"
    bids.mkdir()
    (bids / "participants.tsv").write_text("participant_id\tage\nsub-1\t30\nsub-1\t40\n")
    exe = shutil.which("brainage") or f"{sys.executable} -m brainage.cli"
    proc = subprocess.run(
        [*exe.split(), "run", "--bids", str(bids), "--out", str(tmp_path / "o")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert "sub-1" in proc.stderr and "appears more than once" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_explain_run_adds_a_method(tiny_run):
    from brainage.explain import list_methods
    from brainage.pipeline import explain_run

    root, _, _, _ = tiny_run
    out = root / "out"
    maps = explain_run(out, ["gradcam"], progress=False, report=False)
    assert set(maps) == {"gradcam"} and all(p.exists() for p in maps["gradcam"])
    xai = pd.read_csv(out / "evaluation" / "xai.tsv", sep="\t")
    assert "gradcam" in set(xai["method"])
    # simulated cohort: ground-truth scores are filled in
    assert np.isfinite(xai["roc_auc"]).all() and (xai["mask_fraction"] > 0).all()
    # every simulated effect with voxels in the explained subjects is scored on its own
    assert {"roc_auc_ventricles", "roc_auc_cortex", "population_roc_auc"} <= set(xai.columns)
    assert np.isfinite(xai[["roc_auc_ventricles", "roc_auc_cortex"]].to_numpy()).all()
    assert "gradcam" in list_methods()
    with pytest.raises(Exception, match="did you mean 'gradcam'"):
        explain_run(out, ["gradcm"], progress=False, report=False)


def test_killed_run_resumes_without_redoing_work(tmp_path):
    """SIGKILL a real `brainage run` after its first base model, rerun, and check the result."""
    import os
    import signal
    import time

    import yaml

    from brainage.simulate import simulate_cohort

    bids = simulate_cohort(
        tmp_path / "bids", n_subjects=30, resolution_mm=4.0, seed=3, progress=False
    )
    cfg = merge(load_config(overrides=DEMO_OVERRIDES), TINY)
    cfg["train"]["epochs"] = 6
    cfg["explain"]["methods"] = ["guided_backprop"]
    cfg["evaluate"]["randomisation"] = False
    (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    exe = shutil.which("brainage") or f"{sys.executable} -m brainage.cli"
    cmd = [
        *exe.split(),
        "run",
        "--bids",
        str(bids),
        "--out",
        str(out),
        "--config",
        str(tmp_path / "c.yaml"),
        "--quiet",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "models" / "default" / "seed-0" / "model.json"
    deadline = time.time() + 300
    while not first.exists() and time.time() < deadline and proc.poll() is None:
        time.sleep(0.2)
    assert first.exists(), "the run never finished its first base model"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "predictions.tsv").exists()
    stamp = (out / "models" / "default" / "seed-0" / "model.pt").stat().st_mtime_ns
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (out / "models" / "default" / "seed-0" / "model.pt").stat().st_mtime_ns == stamp
    assert (out / "predictions.tsv").exists() and (out / "report.html").exists()
    assert not [p for p in out.rglob(".*.tmp*")], "temporary files left behind"
    log = pd.read_csv(out / "models" / "default" / "seed-1" / "training_log.tsv", sep="\t")
    assert log["epoch"].tolist() == list(range(1, len(log) + 1))


def test_predict_refuses_a_folder_that_is_not_a_run(tmp_path):
    from conftest import make_bids

    from brainage.errors import InputError
    from brainage.io import read_bids

    bids = make_bids(tmp_path / "bids", {"sub-01": "30", "sub-02": "40"})
    with pytest.raises(InputError, match="config.yaml is missing: not a finished brainage run"):
        predict(tmp_path / "nothing", read_bids(bids), tmp_path / "o", progress=False)


def test_training_mean_baseline_is_resolved_from_the_training_split():
    from brainage.errors import InputError
    from brainage.pipeline import method_params

    rng = np.random.default_rng(0)
    x = rng.random((70, 1, 3, 4, 5)).astype(np.float32)
    split = np.array(["train", "validation", "test", "train", "train"] * 14)
    table = pd.DataFrame({"participant_id": [f"sub-{i}" for i in range(70)], "split": split})
    params = {"baseline": "training_mean", "n_steps": 8}
    out = method_params(params, x, table)
    np.testing.assert_allclose(out["baseline"], x[split == "train"].mean(axis=0), rtol=1e-6)
    assert out["baseline"].shape == (1, 3, 4, 5) and out["n_steps"] == 8
    assert params["baseline"] == "training_mean"  # the configuration is not modified
    assert method_params({"baseline": 0.0}, x, table) == {"baseline": 0.0}
    with pytest.raises(InputError, match="training subjects"):
        method_params(params, x, table.assign(split="test"))


def test_integrated_gradients_uses_the_mean_training_image(tiny_run):
    """Default IG baseline in a run is the mean training volume: completeness per base model,
    Σ IG(x) = f(x) − f(mean training volume), checked on the saved per-seed maps."""
    import torch

    from brainage.pipeline import explain_run, load_volumes, relevance_path
    from brainage.train import load_model

    root, _, cfg, _ = tiny_run
    out = root / "out"
    assert cfg["explain"]["params"]["integrated_gradients"]["baseline"] == "training_mean"
    explain_run(out, ["integrated_gradients"], progress=False, report=False)
    table = pd.read_csv(out / "cohort.tsv", sep="\t")
    x = np.asarray(load_volumes(table, out, cfg["train"]["resolution_mm"]))
    reference = x[(table["split"] == "train").to_numpy()].mean(axis=0)
    model, meta = load_model(sorted((out / "models").glob("*/seed-0"))[0])
    rows = np.flatnonzero((table["split"] == "test").to_numpy())[:3]
    for i in rows:
        path = relevance_path(
            out,
            "integrated_gradients",
            table["participant_id"].iloc[i],
            cfg["train"]["resolution_mm"],
            f"seed-{meta['seed']}",
        )
        total = float(np.asarray(nib.load(str(path)).dataobj, dtype=np.float64).sum())
        with torch.no_grad():
            f = model(torch.as_tensor(np.stack([x[i], reference]), dtype=torch.float32))[:, 0]
        assert total == pytest.approx(float(f[0] - f[1]), rel=0.02, abs=0.02)
