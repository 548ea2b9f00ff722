"""Reference MAEs on IXI on the same subjects and splits as `brainage run` (seed 0).

Prints the MAE of (a) the mean-age predictor and (b) ridge regression on DLMUSE regional brain
volumes (``derivatives/dlmuse/volumes.tsv``, each volume divided by the total brain volume, ridge
alpha chosen by cross-validation on the fitting subjects) — the baseline the CNN ensemble should
beat — and, with ``--run DIR``, the run's own MAE side by side. With cross-fitting (the default)
the baselines are fitted per outer fold of the run (``splits.tsv``) and scored out-of-fold on
every subject with age, exactly like the run; with a hold-out run, on its test split.

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
from brainage.data import make_folds, make_splits
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
    if args.run and (args.run / "splits.tsv").exists():
        splits = pd.read_csv(args.run / "splits.tsv", sep="\t").drop(columns="age")
        table = table.merge(splits, on="participant_id", how="left")
    elif cfg.split.scheme == "kfold":
        folds = make_folds(table, cfg.split.n_folds, cfg.split.validation_fraction, cfg.seed)
        table = table.merge(folds.reset_index(), on="participant_id")
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
    y = data["age"].to_numpy(float)
    # (fit, test) per outer fold; one pair for a hold-out split
    if "fold" in data:
        k = sorted(c for c in data.columns if c.startswith("fold-"))
        pairs = [
            (data[c].isin(["train", "validation"]).to_numpy(), (data[c] == "test").to_numpy())
            for c in k
        ]
        label = f"{len(k)}-fold out-of-fold"
    else:
        pairs = [
            (
                data["split"].isin(["train", "validation"]).to_numpy(),
                (data["split"] == "test").to_numpy(),
            )
        ]
        label = "hold-out test"
    ridge_pred, mean_pred = np.full(len(y), np.nan), np.full(len(y), np.nan)
    for fit, test in pairs:
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=np.logspace(-2, 4, 25)))
        model.fit(x[fit], y[fit])
        ridge_pred[test] = model.predict(x[test])
        mean_pred[test] = y[fit].mean()
    scored = np.isfinite(ridge_pred) & np.isfinite(y)
    print(f"IXI {label} subjects: {scored.sum()}")
    for name, pred in (
        ("mean-age predictor", mean_pred),
        (f"ridge on {len(single)} DLMUSE volumes", ridge_pred),
    ):
        print(f"  {name:<28} MAE {np.mean(np.abs(pred[scored] - y[scored])):5.2f} years")
    if args.run and (args.run / "metrics.tsv").exists():
        m = pd.read_csv(args.run / "metrics.tsv", sep="\t")
        if "fold" in m:
            m = m[m["fold"].astype(str) == "all"]
        for name in ("ensemble", "ensemble_corrected"):
            r = m[(m["model"] == name) & (m["split"] == "test")]
            if len(r):
                print(f"  brainage {name:<19} MAE {r['mae'].iloc[0]:5.2f} years")


if __name__ == "__main__":
    main()
