"""Throughput of ``brainage study``: tasks per hour on 1 and 2 local workers, Dask overhead.

Simulates a phantom cohort and runs the same small study (2 conditions × 3 seeds = 6 tasks, one
shared preprocessing) side by side in one process on: the serial executor, local processes with 1
and 2 workers, and a local Dask cluster with 1 and 2 workers. Every study starts in a fresh folder
whose shared preprocessing is copied from a first run, so only the (condition, seed) tasks are
timed. Prints task seconds, tasks per hour, the speed-up of 2 workers and the Dask executor's
overhead against the serial one (same study, same single worker).

    python bench/bench_study.py --n-subjects 40 --epochs 5 --out /tmp/bench_study
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from brainage.config import DEMO_OVERRIDES, merge
from brainage.io import read_bids
from brainage.simulate import simulate_cohort
from brainage.study import StudyConfig, run_study

CONFIGS = [("serial", 1), ("processes", 1), ("dask", 1), ("processes", 2), ("dask", 2)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-subjects", type=int, default=40)
    ap.add_argument("--epochs", type=int, default=5)
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=Path("/tmp/bench_study"))
    args = ap.parse_args()
    out = args.out.resolve()
    bids = out / "bids"
    if not bids.exists():
        simulate_cohort(bids, n_subjects=args.n_subjects, resolution_mm=4.0, seed=0, progress=False)
    cohort = read_bids(bids)
    base = merge(DEMO_OVERRIDES, {
        "split": {"scheme": "holdout", "test_fraction": 0.25},
        "train": {"epochs": args.epochs, "patience": args.epochs},
        "explain": {"methods": ["lrp"]},
        "population": {"atlases": ["aal"], "subgroups": []},
        "bias_correction": {"n_bootstrap": 100},
    })  # fmt: skip
    study = StudyConfig(name="bench", seeds=args.seeds, phases=[30.0, 15.0],
                        conditions={"plain": {"train": {"augment": []}},
                                    "flip": {"train": {"augment": ["flip"]}}})  # fmt: skip
    n_tasks = len(study.conditions) * args.seeds
    first = out / "shared-source"
    if not (first / "runs.tsv").exists():
        run_study(study, cohort, first, base=base, backend="serial", progress=False)
    print(f"{n_tasks} tasks per study ({args.n_subjects} phantoms, {args.epochs} epochs, 4 mm)")
    print(f"{'executor':<12} {'workers':>7} {'task s':>8} {'tasks/hour':>11}")
    seconds = {}
    for backend, workers in CONFIGS:
        folder = out / f"{backend}-{workers}"
        shutil.rmtree(folder, ignore_errors=True)
        shutil.copytree(first / "shared", folder / "shared")
        res = run_study(study, cohort, folder, base=base, backend=backend, n_jobs=workers,
                        progress=False)  # fmt: skip
        assert not res.failed, res.failed
        seconds[(backend, workers)] = res.task_seconds
        print(f"{backend:<12} {workers:>7} {res.task_seconds:8.1f} "
              f"{3600 * n_tasks / res.task_seconds:11.1f}")  # fmt: skip
    s = seconds
    print(
        f"speed-up of 2 workers: processes {s['processes', 1] / s['processes', 2]:.2f}x, "
        f"dask {s['dask', 1] / s['dask', 2]:.2f}x"
    )
    print(
        f"Dask overhead vs serial (1 worker): {s['dask', 1] - s['serial', 1]:+.1f} s "
        f"({100 * (s['dask', 1] / s['serial', 1] - 1):+.1f} %); local processes vs serial: "
        f"{100 * (s['processes', 1] / s['serial', 1] - 1):+.1f} %"
    )


if __name__ == "__main__":
    main()
