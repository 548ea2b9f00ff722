"""The report of a study (``brainage study``): one self-contained page (paper 000).

Sections: the design and every run's status; test-MAE distributions per condition and the
t-tests between conditions; MAE vs. epoch (mean ± sd across seeds); the phase table (paper 000,
Table 2); voxel agreement across seeds per phase and condition; atlas-region rank charts and
their stability; each condition's mean relevance map on one shared colour scale.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainage.report.figures_common import _style, figure_to_data_uri
from brainage.report.figures_stats import CATEGORY_COLORS, glass_brain_figure, rank_chart_figure

#: Regions drawn in each rank chart.
N_RANKED = 10


def _read(path: Path) -> pd.DataFrame | None:
    if not path.exists():
        return None
    try:
        return pd.read_csv(path, sep="\t", na_values=["n/a"])
    except (pd.errors.EmptyDataError, ValueError):
        return None


def _colors(conditions) -> dict:
    return {c: CATEGORY_COLORS[k % len(CATEGORY_COLORS)] for k, c in enumerate(conditions)}


def mae_distribution_figure(runs: pd.DataFrame) -> Figure:
    """Plot the test MAE of every seed per condition: best-validation and last-epoch weights.

    Parameters
    ----------
    runs : pandas.DataFrame
        ``runs.tsv`` (``condition``, ``best_mae``, ``last_mae``, years).
    """
    conds = list(dict.fromkeys(runs["condition"]))
    colors = _colors(conds)
    fig = Figure(figsize=(max(5.0, 1.5 * len(conds) + 2.5), 3.4))
    axes = fig.subplots(1, 2, sharey=True)
    rng = np.random.default_rng(0)  # jitter only
    for ax, col, title in zip(axes, ("best_mae", "last_mae"),
                              ("best validation epoch", "last epoch"), strict=True):  # fmt: skip
        for k, c in enumerate(conds):
            y = runs.loc[runs["condition"] == c, col].dropna().to_numpy(float)
            if not len(y):
                continue
            x = k + rng.uniform(-0.12, 0.12, len(y))
            ax.scatter(x, y, s=22, color=colors[c], alpha=0.85, zorder=3)
            ax.hlines(y.mean(), k - 0.3, k + 0.3, color="#1d2330", linewidth=2, zorder=4)
        ax.set_xticks(range(len(conds)))
        ax.set_xticklabels(conds, rotation=20 if len(conds) > 3 else 0, fontsize=9)
        ax.set_title(f"test MAE, {title}", fontsize=10)
        _style(ax)
    axes[0].set_ylabel("test MAE (years)")
    fig.tight_layout()
    return fig


def curves_figure(curves: pd.DataFrame) -> Figure:
    """Plot validation (solid) and test (dashed) MAE vs. epoch, mean ± sd across seeds.

    A seed's curve is the mean over its folds' base models. The y axis ends at the 98th
    percentile of the plotted means, so early spikes do not flatten the rest.
    """
    conds = list(dict.fromkeys(curves["condition"]))
    colors = _colors(conds)
    fig = Figure(figsize=(7.2, 3.6))
    ax = fig.add_subplot(1, 1, 1)
    tops = []
    for c in conds:
        g = curves[curves["condition"] == c]
        for col, style in (("val_mae", "-"), ("test_mae", "--")):
            if col not in g or g[col].isna().all():
                continue
            per_seed = g.groupby(["seed", "epoch"])[col].mean().unstack("seed")
            m, s = per_seed.mean(axis=1), per_seed.std(axis=1, ddof=1).fillna(0)
            label = f"{c} ({'validation' if col == 'val_mae' else 'test'})"
            ax.plot(m.index, m.to_numpy(), style, color=colors[c], linewidth=1.6, label=label)
            ax.fill_between(m.index, m - s, m + s, color=colors[c], alpha=0.12, linewidth=0)
            if np.isfinite(m.to_numpy(float)).any():
                tops.append(np.nanpercentile(m.to_numpy(float), 98))
    if tops and np.isfinite(max(tops)) and max(tops) > 0:
        ax.set_ylim(0, max(tops) * 1.1)
    ax.set_xlabel("epoch")
    ax.set_ylabel("MAE (years)")
    ax.legend(fontsize=7.5, ncol=2, frameon=False)
    _style(ax)
    fig.tight_layout()
    return fig


def agreement_figure(agreement: pd.DataFrame) -> Figure:
    """Plot the fraction of brain voxels agreeing across seeds per phase and condition.

    One panel per quantile (voxels at or below it are discarded per seed), bars per condition.
    """
    conds = list(dict.fromkeys(agreement["condition"]))
    phases = list(dict.fromkeys(agreement["phase"].astype(str)))
    quantiles = list(dict.fromkeys(agreement["quantile"]))
    colors = _colors(conds)
    width_in = max(4.5, 0.35 * len(phases) * max(1, len(conds)) + 2)
    fig = Figure(figsize=(min(width_in * len(quantiles), 11.0), 3.3))
    axes = np.atleast_1d(fig.subplots(1, len(quantiles), squeeze=False)[0])
    width = 0.8 / max(len(conds), 1)
    for ax, q in zip(axes, quantiles, strict=True):
        for k, c in enumerate(conds):
            g = agreement[(agreement["condition"] == c) & (agreement["quantile"] == q)]
            g = g.set_index(g["phase"].astype(str))
            y = [float(g.loc[p, "fraction"]) if p in g.index else np.nan for p in phases]
            ax.bar(np.arange(len(phases)) + (k - (len(conds) - 1) / 2) * width, y, width,
                   color=colors[c], label=c)  # fmt: skip
        ax.set_xticks(range(len(phases)))
        ax.set_xticklabels([f"phase {p}" if p != "final" else "final" for p in phases],
                           fontsize=8, rotation=30 if len(phases) > 4 else 0)  # fmt: skip
        ax.set_title(f"voxels above each seed's {100 * q:g} % quantile", fontsize=9)
        # a majority of seeds can keep more voxels than each seed does: scale to the data
        top = np.nanmax(agreement.loc[agreement["quantile"] == q, "fraction"].to_numpy(float),
                        initial=0.0)  # fmt: skip
        ax.set_ylim(0, min(1.0, 1.12 * top) if top > 0 else 1 - q)
        _style(ax)
    axes[0].set_ylabel("agreeing voxels (fraction of brain)")
    axes[-1].legend(fontsize=7.5, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def _table(frame: pd.DataFrame | None, columns: list[str]) -> list[dict]:
    if frame is None or frame.empty:
        return []
    cols = [c for c in columns if c in frame]
    return frame[cols].to_dict("records")


def build_study_context(layout, study, method: str | None, resolution_mm: float) -> dict:
    """Return everything the study template shows (figures as data URIs)."""
    from brainage import __version__

    t = {name: _read(layout.table(name)) for name in
         ("runs", "curves", "phase_summary", "agreement", "ttests", "regions_ranks",
          "regions_stability", "failures")}  # fmt: skip
    runs = t["runs"]
    done = runs[runs["status"] == "finished"] if runs is not None else None
    ctx = {
        "version": __version__,
        "title": f"brainage study: {study.name}",
        "generated": _dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
        "study": study,
        "conditions": list(study.conditions),
        "n_runs": 0 if runs is None else len(runs),
        "n_finished": 0 if done is None else len(done),
        "runs": _table(
            runs,
            [
                "condition",
                "seed",
                "status",
                "best_mae",
                "last_mae",
                "ensemble_mae",
                "n_test",
                "best_epoch",
                "n_epochs",
                "seconds",
                "error",
            ],
        ),  # fmt: skip
        "phase_summary": _table(
            t["phase_summary"],
            [
                "condition",
                "phase",
                "threshold",
                "n_models",
                "n_reached",
                "n_seeds_reached",
                "mean_epoch",
                "sd_epoch",
                "mean_val_mae",
                "mean_train_loss",
                "mean_test_mae",
            ],
        ),  # fmt: skip
        "agreement": _table(
            t["agreement"],
            [
                "condition",
                "phase",
                "threshold",
                "quantile",
                "n_seeds",
                "n_agree",
                "n_voxels",
                "fraction",
            ],
        ),  # fmt: skip
        "ttests": _table(
            t["ttests"],
            ["metric", "a", "b", "n_a", "n_b", "mean_a", "mean_b", "diff", "t", "df", "p"],
        ),  # fmt: skip
        "n_failures": 0 if t["failures"] is None else len(t["failures"]),
        "figs": {"mae": None, "curves": None, "agreement": None},
    }
    figs = ctx["figs"]
    if done is not None and len(done) and done["best_mae"].notna().any():
        figs["mae"] = figure_to_data_uri(mae_distribution_figure(done))
    if t["curves"] is not None and len(t["curves"]):
        figs["curves"] = figure_to_data_uri(curves_figure(t["curves"]))
    ag = t["agreement"]
    if ag is not None and ag["fraction"].notna().any():
        figs["agreement"] = figure_to_data_uri(agreement_figure(ag.dropna(subset=["fraction"])))
    ctx["stability"] = _stability_rows(t["regions_stability"])
    ctx["rank_charts"] = _rank_charts(t["regions_ranks"], list(study.conditions))
    ctx["method"] = method
    ctx["maps"] = _condition_maps(layout, done, study, method, resolution_mm)
    return ctx


def _stability_rows(stab: pd.DataFrame | None) -> list[dict]:
    """Mean pairwise rank agreement within each condition (seeds) and between conditions."""
    if stab is None or stab.empty:
        return []
    rows = []
    for (cond, factor), g in stab.groupby(["condition", "factor"], sort=False):
        rows.append({"condition": cond, "factor": factor, "n_pairs": len(g),
                     "spearman": g["spearman"].mean(), "kendall": g["kendall"].mean(),
                     "top10_overlap": g["top10_overlap"].mean()})  # fmt: skip
    return rows


def _rank_charts(ranks: pd.DataFrame | None, conditions: list[str]) -> list[dict]:
    if ranks is None or ranks.empty:
        return []
    out = []
    for c in conditions:
        g = ranks[ranks["condition"] == c]
        if g["seed"].nunique() < 1:
            continue
        r = g.assign(condition="seed " + g["seed"].astype(str))[["condition", "region", "rank"]]
        fig = rank_chart_figure(r, n=N_RANKED, title=f"{c}: regions across seeds")
        out.append({"condition": c, "uri": figure_to_data_uri(fig)})
    means = ranks.groupby(["condition", "region"], sort=False)["top_share"].mean().reset_index()
    if means["condition"].nunique() >= 2:
        means["rank"] = means.groupby("condition")["top_share"].rank(ascending=False,
                                                                    method="first")  # fmt: skip
        fig = rank_chart_figure(means[["condition", "region", "rank"]], n=N_RANKED,
                                title="regions across conditions (seed means)")  # fmt: skip
        out.append({"condition": "all conditions", "uri": figure_to_data_uri(fig)})
    return out


def _condition_maps(layout, done, study, method, res) -> list[dict]:
    import nibabel as nib

    if done is None or done.empty or method is None:
        return []
    paths = {c: layout.condition_map(c, method, res) for c in study.conditions}
    imgs = {c: nib.load(str(p)) for c, p in paths.items() if p.exists()}
    if not imgs:
        return []
    vmax = max(float(np.abs(np.asarray(i.dataobj)).max()) for i in imgs.values()) or 1.0
    return [{"condition": c, "method": method, "uri": figure_to_data_uri(
                glass_brain_figure(img, title=f"{c} ({method}, mean z over seeds)", vmax=vmax))}
            for c, img in imgs.items()]  # fmt: skip


def write_study_report(layout, study, method: str | None, resolution_mm: float) -> Path:
    """Write ``STUDY_OUT/report.html`` (self-contained: figures are data URIs, CSS inline).

    Parameters
    ----------
    layout : brainage.study.layout.StudyLayout
    study : brainage.study.StudyConfig
    method : str or None
        Explanation method of the study's maps (:func:`brainage.study.summary.summary_method`).
    resolution_mm : float
        Grid of the maps (``train.resolution_mm``).

    Returns
    -------
    Path
    """
    from brainage.io.atomic import write_text
    from brainage.report.html import template_environment

    env = template_environment()
    html = env.get_template("study.html").render(
        **build_study_context(layout, study, method, resolution_mm)
    )
    return write_text(layout.report, html)
