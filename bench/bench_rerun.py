"""How long a rerun takes when nothing changed, and what one changed input costs (stage engine).

Simulates a phantom cohort, runs a small configuration once, then — in the same process, side by
side — a rerun with nothing changed, a rerun after one test scan changed and one after a
population parameter changed. Prints wall seconds and the items computed per stage.

    python bench/bench_rerun.py --n-subjects 60 --out /tmp/bench_rerun
    python bench/bench_rerun.py --bids ../shared/data/ixi --out runs/ixi   # a finished real run
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.config import DEMO_OVERRIDES, load_config, merge
from brainage.io import read_bids
from brainage.workflow import run

SMALL = {
    "ensemble": {"n_seeds": 2},
    "train": {"epochs": 3, "model_params": {"filters": [8, 8, 16, 16, 8], "dense": 16}},
    "bias_correction": {"n_bootstrap": 100},
    "population": {"atlases": ["aal"]},
    "evaluate": {"n_subjects": 2},
}


def timed(label, fn):
    t0 = time.perf_counter()
    res = fn()
    dt = time.perf_counter() - t0
    done = {k: v for k, v in res.computed.items() if v}
    print(f"{label:<34} {dt:8.2f} s   computed: {done or 'nothing'}")
    return dt


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--bids", type=Path, help="an existing BIDS dataset (default: simulate)")
    ap.add_argument("--n-subjects", type=int, default=60)
    args = ap.parse_args()
    if args.bids is None:
        from brainage.simulate import simulate_cohort

        bids = args.out / "bids"
        if not (bids / "participants.tsv").exists():
            simulate_cohort(bids, n_subjects=args.n_subjects, resolution_mm=4.0, seed=0)
        cfg = load_config(base=merge(DEMO_OVERRIDES, SMALL))
        out = args.out / "run"
    else:
        bids, out = args.bids, args.out
        cfg = load_config(out / "config.yaml") if (out / "config.yaml").exists() else load_config()
    first = timed("run (or rerun of a finished run)", lambda: run(read_bids(bids), out, cfg, False))
    again = timed("rerun, nothing changed", lambda: run(read_bids(bids), out, cfg, False))
    print(f"rerun / first run: {again / max(first, 1e-9):.3f}")
    if args.bids is not None:
        return  # never modify a user's data
    copy = args.out / "bids_changed"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(bids, copy)
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    pid = splits.loc[splits["split"] == "test", "participant_id"].iloc[0]
    path = next((copy / pid / "anat").glob("*_T1w.nii.gz"))
    img = nib.load(str(path))
    data = np.asarray(img.dataobj, np.float32) * 1.05
    nib.save(nib.Nifti1Image(data, img.affine), str(path))
    timed("rerun, one test scan changed", lambda: run(read_bids(copy), out, cfg, False))
    cfg2 = cfg.merged({"population": {"top_fraction": 0.2}})
    timed("rerun, population.top_fraction", lambda: run(read_bids(copy), out, cfg2, False))


if __name__ == "__main__":
    main()
