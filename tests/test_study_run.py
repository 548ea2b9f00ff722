"""``brainage study`` end to end on phantoms: Dask workers killed mid-study change nothing.

A 4-condition × 3-seed study (paper 000's design on a small phantom cohort) runs on a local Dask
cluster with 2 workers, once undisturbed and once with a worker killed (SIGKILL) while runs are
training; the killed worker's task is retried and resumes from the run's records and training
checkpoint. Both studies must give identical numbers and maps.
"""

from __future__ import annotations

import os
import signal
import threading
import time

import nibabel as nib
import numpy as np
import pandas as pd
import pytest

from brainage.config import DEMO_OVERRIDES, merge
from brainage.io import read_bids
from brainage.study import StudyConfig, StudyLayout, run_study
from brainage.study.runner import preprocessing_key, share_records

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BASE = merge(
    DEMO_OVERRIDES,
    {
        "split": {"scheme": "holdout", "test_fraction": 0.25, "validation_fraction": 0.2},
        "train": {
            "epochs": 3,
            "patience": 3,
            "batch_size": 4,
            "model_params": {"filters": [4, 4, 8, 8, 4], "dense": 8},
        },  # fmt: skip
        "ensemble": {"learners": []},
        "bias_correction": {"n_bootstrap": 20},
        "explain": {"methods": ["lrp"]},
        "population": {"atlases": ["aal"], "subgroups": []},
    },
)

#: Augmentation × intensity scaling: two preprocessing groups, each shared by two conditions.
STUDY = StudyConfig(
    name="phantoms",
    conditions={
        "plain": {"train": {"augment": []}},
        "flip": {"train": {"augment": ["flip"]}},
        "zplain": {"preprocess": {"intensity": "zscore"}, "train": {"augment": []}},
        "zflip": {"preprocess": {"intensity": "zscore"}, "train": {"augment": ["flip"]}},
    },
    seeds=3,
    phases=[30.0, 15.0],
    targets=["predict", "phases", "regions"],
)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    from brainage.simulate import simulate_cohort

    root = tmp_path_factory.mktemp("study")
    bids = simulate_cohort(root / "bids", n_subjects=24, resolution_mm=4.0, seed=3, progress=False)
    return root, read_bids(bids)


@pytest.fixture(scope="module")
def undisturbed(cohort):
    root, c = cohort
    result = run_study(STUDY, c, root / "a", base=BASE, backend="dask", n_jobs=2, progress=False)
    return root / "a", result


def _kill_a_worker_once_training(client, out, killed: list) -> None:
    """Kill one worker (SIGKILL) as soon as some run has a finished base model."""
    deadline = time.time() + 600
    while time.time() < deadline and not killed:
        if list((out / "runs").glob("*/records/train/*.json")):
            pids = client.run(os.getpid)
            pid = sorted(pids.values())[0]
            os.kill(pid, signal.SIGKILL)
            killed.append(pid)
            return
        time.sleep(0.05)


def _tables(out):
    layout = StudyLayout(out)
    return {
        n: pd.read_csv(layout.table(n), sep="\t")
        for n in ("runs", "phases", "phase_summary", "agreement", "ttests", "regions_ranks")
    }


def test_study_on_dask_survives_a_killed_worker(cohort, undisturbed):
    from distributed import Client, LocalCluster

    root, c = cohort
    out_a, res_a = undisturbed
    assert not res_a.failed and len(res_a.runs) == 12
    out_b = root / "b"
    killed: list = []
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:  # fmt: skip
        watcher = threading.Thread(target=_kill_a_worker_once_training,
                                   args=(client, out_b, killed), daemon=True)  # fmt: skip
        watcher.start()
        res_b = run_study(STUDY, c, out_b, base=BASE, scheduler=cluster.scheduler_address,
                          n_jobs=2, progress=False)  # fmt: skip
        watcher.join(timeout=5)
    assert killed, "no worker was killed: the study finished before any model was trained"
    assert not res_b.failed
    ta, tb = _tables(out_a), _tables(out_b)
    for name in ta:
        # measurements, not results: wall time and the worker's peak memory (which depends on
        # which tasks a worker ran before, and so on the kill)
        measured = ["seconds", "max_rss_mb"]
        a, b = ta[name].drop(columns=measured, errors="ignore"), tb[name]
        pd.testing.assert_frame_equal(a, b.drop(columns=measured, errors="ignore"), obj=name)
    for run in res_a.runs["run"]:
        pa = pd.read_csv(out_a / "runs" / run / "predictions.tsv", sep="\t")
        pb = pd.read_csv(out_b / "runs" / run / "predictions.tsv", sep="\t")
        pd.testing.assert_frame_equal(pa, pb, obj=f"{run}/predictions.tsv")
    maps_a = sorted((out_a / "maps").glob("*.nii.gz"))
    assert len(maps_a) >= 4
    for path in maps_a:
        a = np.asarray(nib.load(path).dataobj)
        b = np.asarray(nib.load(out_b / "maps" / path.name).dataobj)
        np.testing.assert_array_equal(a, b, err_msg=path.name)


def test_study_outputs_are_complete_and_consistent(cohort, undisturbed):
    root, c = cohort
    out, res = undisturbed
    layout = StudyLayout(out)
    runs = res.runs
    assert set(runs["status"]) == {"finished"}
    assert runs.groupby("condition").size().to_dict() == {k: 3 for k in STUDY.conditions}
    # one shared preprocessing per distinct preprocess section (2), each used by 2 conditions
    shared = sorted(p.name for p in (out / "shared").glob("preproc-*"))
    shared = [s for s in shared if not s.endswith("_work")]  # each with its work folder beside
    assert len(shared) == 2
    from brainage.study import expand_study

    keys = {preprocessing_key(r.config) for r in expand_study(STUDY, BASE)}
    assert {f"preproc-{k}" for k in keys} == set(shared)
    for run in runs["run"]:  # the runs read the shared scans and stack; none made its own
        assert not list((out / "runs" / run).glob("sub-*/anat/*.nii.gz"))
        assert not list((out / "runs" / run).rglob("volumes*.npy"))
    # every seed has the same test subjects (the split seed is the study's), so MAEs compare
    tests = {
        r: set(
            pd.read_csv(out / "runs" / r / "splits.tsv", sep="\t").query("split == 'test'")[
                "participant_id"
            ]
        )  # fmt: skip
        for r in runs["run"]
    }
    assert len({frozenset(v) for v in tests.values()}) == 1
    # best_mae is the CNN's test MAE at its best validation epoch = the monitored test MAE there
    curves = pd.read_csv(layout.table("curves"), sep="\t")
    for _, r in runs.iterrows():
        g = curves[(curves["condition"] == r["condition"]) & (curves["seed"] == r["seed"])]
        at_best = g.loc[g["epoch"] == r["best_epoch"], "test_mae"].iloc[0]
        assert r["best_mae"] == pytest.approx(at_best, abs=2e-3)
        assert r["last_mae"] == pytest.approx(g["test_mae"].iloc[-1], abs=1e-6)
    # phases: the first epoch at or below each threshold, as in the training logs
    phases = pd.read_csv(layout.table("phases"), sep="\t")
    for _, p in phases.iterrows():
        g = curves[(curves["condition"] == p["condition"]) & (curves["seed"] == p["seed"])]
        hit = g[g["val_mae"] <= p["threshold"]]
        assert bool(p["reached"]) == (len(hit) > 0)
        if len(hit):
            assert p["epoch"] == hit["epoch"].iloc[0]
    # a phase map exists exactly for the seeds that reached the phase
    for _, p in phases.iterrows():
        run = layout.run(f"cond-{p['condition']}_seed-{p['seed']}")
        found = list((run / "phases").glob(f"phase-{p['phase']}_*.nii.gz"))
        assert bool(found) == bool(p["reached"])
    agreement = pd.read_csv(layout.table("agreement"), sep="\t", na_values=["n/a"])
    final = agreement[(agreement["phase"] == "final") & (agreement["quantile"] == 0.05)]
    assert len(final) == 4 and (final["n_seeds"] == 3).all()
    top = agreement[(agreement["phase"] == "final") & (agreement["quantile"] == 0.9)]
    assert (top["fraction"] <= final["fraction"].to_numpy()).all()  # fewer kept, fewer agree
    assert ((final["fraction"] > 0) & (final["fraction"] <= 1)).all()
    html = layout.report.read_text()
    for anchor in ("mae", "curves", "phases", "agreement", "regions", "maps"):
        assert f'id="{anchor}"' in html
    assert html.count("data:image/png;base64") >= 6
    # a rerun of the finished study computes nothing
    again = run_study(STUDY, c, out, base=BASE, backend="serial", progress=False)
    assert all(n == 0 for counts in again.computed.values() for n in counts.values())


def test_share_records_points_a_run_at_the_shared_outputs(cohort, undisturbed):
    out, _ = undisturbed
    from brainage.io.layout import RunLayout
    from brainage.study import expand_study
    from brainage.workflow.records import read_records

    plain = next(r for r in expand_study(STUDY, BASE) if r.condition == "plain")
    shared = StudyLayout(out).shared(preprocessing_key(plain.config))
    run = out / "runs" / plain.name
    assert share_records(shared, run) == 0  # already there, unchanged
    recs = read_records(RunLayout(run), "preprocess")
    assert recs and all(
        os.path.isabs(p) and str(p).startswith(str(shared))
        for r in recs.values()
        for p in r.outputs.values()
    )


def test_a_failing_condition_is_reported_and_a_changed_condition_reruns_only_itself(tmp_path):
    """Serial study: one condition cannot train (no validation subjects), the other finishes;
    changing the finished condition's epochs retrains only its run and reuses the preprocessing."""
    from brainage.simulate import simulate_cohort

    bids = simulate_cohort(tmp_path / "bids", n_subjects=16, resolution_mm=4.0, seed=5,
                           progress=False)  # fmt: skip
    c = read_bids(bids)
    base = merge(BASE, {"train": {"epochs": 1}, "split": {"test_fraction": 0.25}})
    study = StudyConfig(
        name="fails",
        seeds=[4],
        phases=[30.0],
        conditions={"ok": {}, "broken": {"split": {"validation_fraction": 0.0}}},
    )
    res = run_study(study, c, tmp_path / "s", base=base, backend="serial", progress=False,
                    retries=0)  # fmt: skip
    status = res.runs.set_index("condition")["status"].to_dict()
    assert status == {"ok": "finished", "broken": "failed"} and res.failed == ["cond-broken_seed-4"]
    err = res.runs.set_index("condition").loc["broken", "error"]
    assert "validation" in err
    assert (tmp_path / "s" / "report.html").exists()  # the finished runs are summarised
    # a changed input of one condition reruns that run's training and what follows, nothing else
    changed = {"ok": {"train": {"epochs": 2}}, "broken": study.conditions["broken"]}
    study2 = study.model_copy(update={"conditions": changed})
    res2 = run_study(study2, c, tmp_path / "s", base=base, backend="serial", progress=False,
                     retries=0)  # fmt: skip
    ok = res2.computed["cond-ok_seed-4"]
    assert ok["preprocess"] == 0 and ok["volumes"] == 0 and ok["splits"] == 0
    assert ok["train"] >= 1 and ok["predict"] == 1 and ok["phases"] == 1
    runs = pd.read_csv(StudyLayout(tmp_path / "s").table("curves"), sep="\t")
    assert runs[runs["condition"] == "ok"]["epoch"].max() == 2


def test_training_killed_mid_way_resumes_with_its_phase_checkpoints(tmp_path, monkeypatch):
    """A run interrupted after some epochs (phase files written) resumes from its checkpoint and
    ends with the same phase checkpoints, phase maps and models as an undisturbed run."""
    from brainage.config import load_config
    from brainage.simulate import simulate_cohort
    from brainage.workflow import run
    from brainage.workflow.progress import StageProgress

    bids = simulate_cohort(tmp_path / "bids", n_subjects=16, resolution_mm=4.0, seed=7,
                           progress=False)  # fmt: skip
    c = read_bids(bids)
    cfg = load_config(base=merge(BASE, {"train": {"epochs": 4, "phases": [60.0, 40.0, 1.0]},
                                        "ensemble": {"n_seeds": 1},
                                        "run": {"backend": "serial", "n_jobs": 1}}))  # fmt: skip
    ref = run(c, tmp_path / "ref", cfg, progress=False, targets=["phases"])
    assert ref.computed["phases"] == 3
    calls = {"n": 0}
    original = StageProgress.advance

    def interrupt(self, n=1, failed=0, status=""):
        if self.description.startswith("train "):
            calls["n"] += 1
            if calls["n"] == 3:  # after epoch 3 of the first model (checkpoint written)
                raise KeyboardInterrupt
        return original(self, n, failed, status)

    monkeypatch.setattr(StageProgress, "advance", interrupt)
    with pytest.raises(KeyboardInterrupt):
        run(c, tmp_path / "cut", cfg, progress=False, targets=["phases"])
    monkeypatch.setattr(StageProgress, "advance", original)
    assert list((tmp_path / "cut_work" / "checkpoints").glob("*.pt"))
    run(c, tmp_path / "cut", cfg, progress=False, targets=["phases"])
    for p in sorted((tmp_path / "ref" / "models").rglob("*.pt")):
        q = tmp_path / "cut" / p.relative_to(tmp_path / "ref")
        assert q.exists(), q.name
        a, b = torch_load(p), torch_load(q)
        assert a.keys() == b.keys() and all((a[k] == b[k]).all() for k in a)
    for p in sorted((tmp_path / "ref" / "phases").glob("*.nii.gz")):
        np.testing.assert_array_equal(
            np.asarray(nib.load(p).dataobj),
            np.asarray(nib.load(tmp_path / "cut" / "phases" / p.name).dataobj),
        )


def torch_load(path):
    import torch

    return torch.load(path, map_location="cpu", weights_only=True)
