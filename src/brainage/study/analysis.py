"""Analyses of a multi-seed study: phases, voxel agreement, MAE t-tests (paper 000, METHODS §7)."""

from __future__ import annotations

from itertools import combinations

import numpy as np
import pandas as pd

#: Columns of :func:`phase_table`.
PHASE_COLUMNS = ["condition", "seed", "fold", "phase", "threshold", "reached", "epoch", "val_mae",
                 "train_loss", "test_mae"]  # fmt: skip


def phase_table(logs: dict, thresholds) -> pd.DataFrame:
    """Find the first checkpoint of every seed whose validation MAE reaches each threshold.

    Parameters
    ----------
    logs : dict of tuple → pandas.DataFrame
        ``(condition, seed)`` or ``(condition, seed, fold)`` (cross-fitting: one base model per
        outer fold) → the training log (columns ``epoch`` and ``val_mae``, years, and where
        logged ``train_loss`` and ``test_mae``; one row per epoch, i.e. per checkpoint).
    thresholds : sequence of float
        Decreasing validation-MAE thresholds, years (paper 000: 32, 22, …).

    Returns
    -------
    pandas.DataFrame
        :data:`PHASE_COLUMNS`, one row per (condition, seed, fold, phase); ``phase`` is 1-based,
        ``fold`` NaN for 2-tuple keys; ``reached`` False (epoch and MAEs NaN) when the model
        never got that low — a cohort or setup where a threshold is out of reach shows as
        phases no seed reached, never as a silently shorter table.
    """
    rows = []
    for key, log in logs.items():
        condition, seed = key[:2]
        fold = key[2] if len(key) > 2 else np.nan
        epochs = np.asarray(log["epoch"], float)
        mae = np.asarray(log["val_mae"], float)
        for k, threshold in enumerate(thresholds, start=1):
            hit = np.flatnonzero(mae <= threshold)
            row = {"condition": condition, "seed": seed, "fold": fold, "phase": k,
                   "threshold": float(threshold), "reached": bool(len(hit))}  # fmt: skip
            if len(hit):
                row |= {"epoch": float(epochs[hit[0]]), "val_mae": float(mae[hit[0]])}
                for col in ("train_loss", "test_mae"):
                    if col in log:
                        row[col] = float(np.asarray(log[col], float)[hit[0]])
            rows.append(row)
    return pd.DataFrame(rows, columns=PHASE_COLUMNS)


def phase_summary(table: pd.DataFrame) -> pd.DataFrame:
    """Paper 000's Table 2: per condition and phase, how many checkpoints reached it, when, how low.

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`phase_table`.

    Returns
    -------
    pandas.DataFrame
        ``condition``, ``phase``, ``threshold``, ``n_models`` (base models: seeds × folds),
        ``n_reached`` (checkpoints reaching the phase), ``n_seeds`` and ``n_seeds_reached`` (a
        seed reaches a phase when all its folds' models do), ``mean_epoch``, ``sd_epoch``,
        ``mean_val_mae``, ``mean_train_loss``, ``mean_test_mae`` (means over the checkpoints
        that reached the phase; NaN where none did or the column was not logged).
    """
    out = []
    for (cond, phase), g in table.groupby(["condition", "phase"], sort=False):
        hit = g[g["reached"]]
        by_seed = g.groupby("seed")["reached"].all()

        def mean(col, hit=hit):
            return hit[col].mean() if col in hit and len(hit) else np.nan

        out.append({"condition": cond, "phase": int(phase),
                    "threshold": float(g["threshold"].iloc[0]), "n_models": len(g),
                    "n_reached": len(hit), "n_seeds": len(by_seed),
                    "n_seeds_reached": int(by_seed.sum()), "mean_epoch": mean("epoch"),
                    "sd_epoch": hit["epoch"].std(ddof=1) if len(hit) > 1 else np.nan,
                    "mean_val_mae": mean("val_mae"), "mean_train_loss": mean("train_loss"),
                    "mean_test_mae": mean("test_mae")})  # fmt: skip
    cols = ["condition", "phase", "threshold", "n_models", "n_reached", "n_seeds",
            "n_seeds_reached", "mean_epoch", "sd_epoch", "mean_val_mae", "mean_train_loss",
            "mean_test_mae"]  # fmt: skip
    return pd.DataFrame(out, columns=cols)


def voxel_agreement(seed_maps, mask=None, quantile: float = 0.05) -> dict:
    """Voxels that agree across seeds (paper 000; METHODS §7).

    Per seed, the map's voxels at or below its ``quantile`` (over the mask) are discarded; a
    voxel *agrees* when it is kept in more than half of the seeds.

    Parameters
    ----------
    seed_maps : array-like, shape (S, ...)
        One map per seed: the test-set mean of the subjects' z-normalised relevance maps, in
        template space.
    mask : ndarray of bool, shape (...), optional
        Brain mask (default: every voxel).
    quantile : float
        In [0, 1).

    Returns
    -------
    dict
        ``agree`` (bool array of the maps' shape), ``n_agree``, ``n_voxels`` (in the mask),
        ``fraction``, ``n_seeds``, ``kept_per_voxel`` (int array: in how many seeds each voxel
        was kept).
    """
    maps = np.asarray(seed_maps, float)
    s = maps.shape[0]
    mask = np.ones(maps.shape[1:], bool) if mask is None else np.asarray(mask, bool)
    values = maps[:, mask]
    cut = np.quantile(values, quantile, axis=1)
    kept = values > cut[:, None]
    count = kept.sum(axis=0)
    agree = np.zeros(mask.shape, bool)
    agree[mask] = count > s / 2
    kept_per_voxel = np.zeros(mask.shape, int)
    kept_per_voxel[mask] = count
    n_vox = int(mask.sum())
    return {"agree": agree, "n_agree": int(agree.sum()), "n_voxels": n_vox,
            "fraction": float(agree.sum() / max(n_vox, 1)), "n_seeds": s,
            "kept_per_voxel": kept_per_voxel}  # fmt: skip


def condition_ttests(results: pd.DataFrame, metrics=("best_mae", "last_mae")) -> pd.DataFrame:
    """Two-sample t-tests of MAE across seeds between every pair of conditions (paper 000).

    Welch's test (unequal variances), two-sided.

    Parameters
    ----------
    results : pandas.DataFrame
        One row per (condition, seed) with the ``metrics`` columns (years).
    metrics : sequence of str

    Returns
    -------
    pandas.DataFrame
        ``metric``, ``a``, ``b``, ``n_a``, ``n_b``, ``mean_a``, ``mean_b``, ``diff`` (a − b),
        ``t``, ``df``, ``p``.
    """
    from scipy import stats

    rows = []
    conditions = list(dict.fromkeys(results["condition"]))
    for metric in metrics:
        for a, b in combinations(conditions, 2):
            x = results.loc[results["condition"] == a, metric].dropna().to_numpy(float)
            y = results.loc[results["condition"] == b, metric].dropna().to_numpy(float)
            row = {"metric": metric, "a": a, "b": b, "n_a": len(x), "n_b": len(y),
                   "mean_a": x.mean() if len(x) else np.nan,
                   "mean_b": y.mean() if len(y) else np.nan}  # fmt: skip
            row["diff"] = row["mean_a"] - row["mean_b"]
            if len(x) >= 2 and len(y) >= 2:
                res = stats.ttest_ind(x, y, equal_var=False)
                row |= {"t": float(res.statistic), "df": float(res.df), "p": float(res.pvalue)}
            rows.append(row)
    cols = ["metric", "a", "b", "n_a", "n_b", "mean_a", "mean_b", "diff", "t", "df", "p"]
    return pd.DataFrame(rows, columns=cols)
