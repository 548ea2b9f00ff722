"""Choose architecture and augmentation defaults on the validation subjects of the IXI folds.

For each candidate training configuration (architecture × augmentation) this trains one CNN per
outer fold of a preprocessed run (``brainage train``, seed 0, no learners), in a sibling run
folder whose preprocessing is hard-linked from ``--run`` (nothing is preprocessed twice), and
prints per candidate the validation MAE pooled over folds: at the epoch early stopping chose
(``best``, optimistic: the epoch is chosen on these subjects) and the mean over the last 10
epochs (``last10``, not selected). Test folds are never read: candidates are compared on
validation subjects only, as the defaults must be (issue 8).

Usage::

    python bench/bench_architectures.py --run runs/ixi --bids ../shared/data/ixi \
        [--candidates hofmann,hofmann_elastic,resnet18,projection2d,sfcn] [--epochs 60]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import yaml

#: Candidate → ``train`` section overrides (everything else as the defaults).
CANDIDATES: dict[str, dict] = {
    "hofmann": {"model": "hofmann", "augment": ["flip", "affine"]},
    "hofmann_elastic": {"model": "hofmann", "augment": ["flip", "affine", "elastic"]},
    "hofmann_noaug": {"model": "hofmann", "augment": []},
    "resnet18": {"model": "resnet", "augment": ["flip", "affine"]},
    "projection2d": {"model": "projection2d", "augment": ["flip", "affine"]},
    "sfcn": {"model": "sfcn", "augment": ["flip", "affine"]},
    "sfcn_kl": {
        "model": "sfcn",
        "model_params": {"output": "soft_label"},
        "loss": "kl",
        "augment": ["flip", "affine"],
    },
}


def link_run(src: Path, dst: Path) -> None:
    """Copy a run's preprocessing (hard links) and records into ``dst`` (no models)."""
    dst.mkdir(parents=True, exist_ok=True)
    for name in ("preproc", "records/preprocess", "records/volumes", "work/stack"):
        if (src / name).exists() and not (dst / name).exists():
            shutil.copytree(src / name, dst / name, copy_function=os.link)
    for f in ("splits.tsv", "dataset_description.json"):
        if (src / f).exists() and not (dst / f).exists():
            shutil.copy2(src / f, dst / f)


def validation_scores(run: Path) -> dict:
    """Pooled validation MAE of the fold models of ``run`` (best epoch and last 10 epochs)."""
    best, last, epochs, secs = [], [], [], []
    for meta_file in sorted(run.glob("models/fold-*/seed-*/model.json")):
        meta = json.loads(meta_file.read_text())
        log = pd.read_csv(meta_file.parent / "training_log.tsv", sep="\t")
        n_val = int(meta.get("n_validation", 1))
        best.append((meta["best_val_mae"], n_val))
        last.append((float(log["val_mae"].tail(10).mean()), n_val))
        epochs.append(meta["best_epoch"])
        secs.append(float(log["seconds"].sum()) if "seconds" in log else np.nan)

    def pooled(pairs):
        v = np.array([p[0] for p in pairs])
        w = np.array([p[1] for p in pairs], float)
        return float(np.sum(v * w) / np.sum(w))

    return {
        "n_models": len(best),
        "val_mae_best": pooled(best),
        "val_mae_last10": pooled(last),
        "fold_best": [round(b[0], 2) for b in best],
        "best_epoch_mean": float(np.mean(epochs)),
        "train_seconds": float(np.nansum(secs)),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, required=True, help="a preprocessed brainage run")
    ap.add_argument("--bids", type=Path, required=True)
    ap.add_argument("--candidates", default="hofmann,hofmann_elastic,resnet18,projection2d,sfcn")
    ap.add_argument("--epochs", type=int, default=None)
    ap.add_argument("--n-jobs", type=int, default=2)
    args = ap.parse_args()
    rows = []
    for name in args.candidates.split(","):
        out = args.run.parent / f"{args.run.name}_arch-{name}"
        link_run(args.run, out)
        train = dict(CANDIDATES[name])
        if args.epochs:
            train["epochs"] = args.epochs
        cfg = {
            "train": train,
            "ensemble": {"n_seeds": 1, "learners": []},
            "run": {"n_jobs": args.n_jobs},
        }
        (out / "bench_config.yaml").write_text(yaml.safe_dump(cfg))
        t0 = time.perf_counter()
        cmd = [sys.executable, "-c", "from brainage.cli import main; main()", "train",
               "--bids", str(args.bids), "--out", str(out),
               "--config", str(out / "bench_config.yaml")]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            print(f"{name}: failed\n{proc.stderr[-2000:]}", flush=True)
            continue
        row = {"candidate": name, "wall_s": round(wall, 1), **validation_scores(out)}
        rows.append(row)
        print(json.dumps(row), flush=True)
    if rows:
        table = pd.DataFrame(rows).drop(columns="fold_best")
        print(table.to_string(index=False, float_format=lambda v: f"{v:.2f}"))


if __name__ == "__main__":
    main()
