"""Reference MAEs on IXI for the same hold-out split as `brainage run` (seed 0).

Prints the test MAE of (a) the mean-age predictor and (b) ridge regression on DLMUSE regional
brain volumes (``derivatives/dlmuse/volumes.tsv``, each volume divided by the total brain volume,
ridge alpha chosen by cross-validation on the training + validation subjects) — the baseline the
CNN ensemble should beat — and, with ``--run DIR``, the run's own test MAE side by side.

Usage::

    python bench/bench_ixi_baseline.py [--bids ../shared/data/ixi] [--run runs/ixi]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from sklearn.linear_model import RidgeCV
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from brainage.config import load_config
from brainage.data import make_splits
from brainage.io import read_bids

IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bids", type=Path, default=IXI)
    ap.add_argument("--run", type=Path, help="a brainage run folder on the same data")
    args = ap.parse_args()
    cfg = load_config()
    cohort = read_bids(args.bids)
    table = cohort.table.copy()
    if args.run and (args.run / "cohort.tsv").exists():
        split = pd.read_csv(args.run / "cohort.tsv", sep="\t").set_index("participant_id")["split"]
        table["split"] = table["participant_id"].map(split).fillna("excluded")
    else:
        table["split"] = make_splits(
            table, cfg.split.test_fraction, cfg.split.validation_fraction, cfg.seed
        ).to_numpy()
    vols = pd.read_csv(args.bids / "derivatives" / "dlmuse" / "volumes.tsv", sep="\t")
    data = table.merge(vols, on="participant_id")
    feats = [c for c in vols.columns if c.startswith("MUSE_")]
    single = [c for c in feats if int(c.split("_")[1]) < 300]  # single ROIs, no composites
    x = data[single].to_numpy(float)
    x = x / data[["MUSE_702"]].to_numpy(float) if "MUSE_702" in data else x  # relative volumes
    fit = data["split"].isin(["train", "validation"]).to_numpy()
    test = (data["split"] == "test").to_numpy()
    y = data["age"].to_numpy(float)
    model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 25))).fit(
        x[fit], y[fit]
    )
    ridge_mae = np.mean(np.abs(model.predict(x[test]) - y[test]))
    mean_mae = np.mean(np.abs(y[fit].mean() - y[test]))
    print(f"IXI hold-out test subjects: {test.sum()} (fit on {fit.sum()})")
    print(f"  mean-age predictor          MAE {mean_mae:5.2f} years")
    print(f"  ridge on {len(single)} DLMUSE volumes  MAE {ridge_mae:5.2f} years")
    if args.run and (args.run / "metrics.tsv").exists():
        m = pd.read_csv(args.run / "metrics.tsv", sep="\t")
        for name in ("ensemble", "ensemble_corrected"):
            r = m[(m["model"] == name) & (m["split"] == "test")]
            if len(r):
                print(f"  brainage {name:<19} MAE {r['mae'].iloc[0]:5.2f} years")


if __name__ == "__main__":
    main()
