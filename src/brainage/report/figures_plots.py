"""Plots of the report: histograms, predicted vs chronological age, training curves, bars.

The histograms show age by split and registration quality; the bars, regions by relevance.
Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot; turn
it into an embeddable URI with :func:`brainage.report.figures_common.figure_to_data_uri`.
"""

from __future__ import annotations

import matplotlib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainage.report.figures_common import (
    SPLIT_ORDER,
    _natural_key,
    _ordered_splits,
    _split_color,
    _style,
)


def age_histogram_figure(cohort: pd.DataFrame, bins: int = 20) -> Figure:
    """Stacked histogram of chronological age by split.

    Parameters
    ----------
    cohort : pandas.DataFrame
        Columns ``age`` (years, NaN = unknown) and ``split``.
    bins : int
        Number of bins over the age range.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig = Figure(figsize=(6.4, 3.4))
    ax = fig.add_subplot(1, 1, 1)
    known = cohort[cohort["age"].notna()]
    if len(known):
        edges = np.histogram_bin_edges(known["age"].to_numpy(float), bins=bins)
        splits = _ordered_splits(known["split"]) if "split" in known else ["all"]
        data = [
            known.loc[known["split"].astype(str) == s, "age"].to_numpy(float)
            if "split" in known
            else known["age"].to_numpy(float)
            for s in splits
        ]
        ax.hist(
            data,
            bins=edges,
            stacked=True,
            color=[_split_color(s) for s in splits],
            label=[f"{s} (n={len(d)})" for s, d in zip(splits, data, strict=True)],
            edgecolor="white",
            linewidth=0.6,
        )
        ax.legend(frameon=False, fontsize=9, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    ax.set_xlabel("chronological age (years)")
    ax.set_ylabel("subjects")
    _style(ax)
    fig.tight_layout()
    return fig


def _mae(pred, age) -> float:
    return float(np.mean(np.abs(np.asarray(pred, float) - np.asarray(age, float))))


def scatter_axes(
    ax, predictions: pd.DataFrame, column: str, splits=("validation", "test"), lims=None
):
    """Draw predicted vs chronological age on ``ax``, coloured by split, with the identity line.

    Parameters
    ----------
    ax : matplotlib.axes.Axes
    predictions : pandas.DataFrame
        Columns ``age``, ``split`` and ``column`` (years).
    column : str
        The prediction column to plot, e.g. ``"brain_age"``.
    splits : sequence of str
        Splits to show (subjects without age are skipped).
    lims : (float, float), optional
        Common axis limits in years.
    """
    df = predictions[predictions["age"].notna() & predictions[column].notna()]
    df = df[df["split"].astype(str).isin(splits)]
    for s in [s for s in SPLIT_ORDER if s in splits] + [s for s in splits if s not in SPLIT_ORDER]:
        part = df[df["split"].astype(str) == s]
        if not len(part):
            continue
        ax.scatter(
            part["age"],
            part[column],
            s=22,
            alpha=0.8,
            color=_split_color(s),
            edgecolor="white",
            linewidth=0.4,
            label=f"{s}: n={len(part)}, MAE {_mae(part[column], part['age']):.2f} y",
        )
    if lims is None and len(df):
        vals = np.concatenate([df["age"].to_numpy(float), df[column].to_numpy(float)])
        pad = 0.05 * (vals.max() - vals.min() + 1)
        lims = (vals.min() - pad, vals.max() + pad)
    if lims is not None:
        ax.plot(lims, lims, color="#444444", linestyle="--", linewidth=1, label="identity")
        ax.set_xlim(lims)
        ax.set_ylim(lims)
    ax.set_aspect("equal", adjustable="box")
    ax.set_xlabel("chronological age (years)")
    ax.set_ylabel(f"{column} (years)")
    ax.legend(frameon=False, fontsize=8, loc="upper left")
    _style(ax)


def predicted_vs_age_figure(
    predictions: pd.DataFrame,
    columns=("brain_age", "brain_age_corrected"),
    titles=("before bias correction", "after bias correction"),
    splits=("validation", "test"),
) -> Figure:
    """Side-by-side scatter plots of predicted vs chronological age (same axis limits).

    Parameters
    ----------
    predictions : pandas.DataFrame
        ``predictions.tsv``: ``age``, ``split`` and the prediction columns (years).
    columns : sequence of str
        Prediction columns, one panel each; missing columns are skipped.
    titles : sequence of str
        Panel titles, aligned with ``columns``.
    splits : sequence of str
        Splits to show.

    Returns
    -------
    matplotlib.figure.Figure
    """
    cols = [(c, t) for c, t in zip(columns, titles, strict=False) if c in predictions.columns]
    fig = Figure(figsize=(5.2 * max(1, len(cols)), 5.0))
    rows = predictions[predictions["age"].notna() & predictions["split"].astype(str).isin(splits)]
    vals = [rows["age"].to_numpy(float)] + [rows[c].dropna().to_numpy(float) for c, _ in cols]
    vals = np.concatenate(vals) if len(rows) else np.array([0.0, 100.0])
    pad = 0.05 * (vals.max() - vals.min() + 1)
    lims = (vals.min() - pad, vals.max() + pad)
    for i, (c, t) in enumerate(cols):
        ax = fig.add_subplot(1, len(cols), i + 1)
        scatter_axes(ax, predictions, c, splits=splits, lims=lims)
        ax.set_title(f"{c} — {t}", fontsize=11)
    fig.tight_layout()
    return fig


def gap_figure(predictions: pd.DataFrame, splits=("validation", "test")) -> Figure:
    """Brain-age gap against chronological age, with a least-squares line (residual age bias).

    Parameters
    ----------
    predictions : pandas.DataFrame
        ``predictions.tsv``: ``age``, ``brain_age_gap`` (years) and ``split``.
    splits : sequence of str
        Splits to show (subjects without age are skipped).

    Returns
    -------
    matplotlib.figure.Figure
        One panel: points coloured by split, the zero line, and the fitted line
        ``gap = a · age + b`` of the shown subjects with its slope in the legend (a slope ≠ 0
        means the gap still depends on age: regression towards the mean).
    """
    df = predictions[predictions["age"].notna() & predictions["brain_age_gap"].notna()]
    df = df[df["split"].astype(str).isin(splits)]
    fig = Figure(figsize=(5.4, 3.8))
    ax = fig.add_subplot(1, 1, 1)
    for s in [s for s in SPLIT_ORDER if s in splits]:
        part = df[df["split"].astype(str) == s]
        if len(part):
            ax.scatter(part["age"], part["brain_age_gap"], s=20, alpha=0.8, color=_split_color(s),
                       edgecolor="white", linewidth=0.4, label=f"{s} (n={len(part)})")  # fmt: skip
    ax.axhline(0, color="#444444", linewidth=1, linestyle="--")
    if len(df) >= 3 and df["age"].nunique() > 1:
        a, b = np.polyfit(df["age"].to_numpy(float), df["brain_age_gap"].to_numpy(float), 1)
        x = np.array([df["age"].min(), df["age"].max()], float)
        ax.plot(x, a * x + b, color="#b2182b", linewidth=1.4,
                label=f"fit: slope {a:+.2f} y per y")  # fmt: skip
        lim = np.nanpercentile(np.abs(df["brain_age_gap"].to_numpy(float)), 99) * 1.15
        ax.set_ylim(-max(lim, 1.0), max(lim, 1.0))
    ax.set_xlabel("chronological age (years)")
    ax.set_ylabel("brain-age gap (years)")
    ax.legend(frameon=False, fontsize=8)
    _style(ax)
    fig.tight_layout()
    return fig


def robust_upper_limit(series, quantile: float = 0.9, margin: float = 1.25):
    """Upper axis limit that early spikes cannot stretch: ``margin ×`` the ``quantile`` of values.

    Parameters
    ----------
    series : iterable of array-like
        The plotted values (e.g. MAE per epoch of every curve), years.
    quantile, margin : float

    Returns
    -------
    (float, bool) or None
        The limit and whether some values lie above it; None when there are no finite values.
    """
    values = np.concatenate([np.asarray(v, dtype=float).ravel() for v in series] or [[]])
    values = values[np.isfinite(values)]
    if values.size == 0:
        return None
    top = float(max(margin * np.quantile(values, quantile), 1e-9))
    if values.max() <= top:
        return float(values.max() * 1.05), False
    return top, True


def training_curves_figure(logs: dict, metric: str = "val_mae") -> Figure:
    """Plot validation MAE per epoch: one line per seed, one panel per condition.

    Parameters
    ----------
    logs : dict of (str, str) to pandas.DataFrame
        ``(condition, seed) → training_log.tsv`` with columns ``epoch`` and ``metric``
        (and optionally ``train_mae``, drawn dotted).
    metric : str
        Column to plot (years).

    Returns
    -------
    matplotlib.figure.Figure
    """
    conditions = sorted({c for c, _ in logs})
    n = max(1, len(conditions))
    ncol = min(n, 3)
    nrow = int(np.ceil(n / ncol))
    fig = Figure(figsize=(4.6 * ncol + 0.6, 3.4 * nrow))
    cmap = matplotlib.colormaps["tab10"]
    top = robust_upper_limit(
        [log[col] for log in logs.values() for col in (metric, "train_mae") if col in log]
    )
    for i, cond in enumerate(conditions):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        seeds = sorted((s for c, s in logs if c == cond), key=_natural_key)
        for j, seed in enumerate(seeds):
            log = logs[(cond, seed)]
            color = cmap(j % 10)
            if metric in log:
                ax.plot(log["epoch"], log[metric], color=color, linewidth=1.4, label=seed)
            if "train_mae" in log and metric != "train_mae":
                ax.plot(log["epoch"], log["train_mae"], color=color, linewidth=0.9, linestyle=":")
        ax.set_title(cond, fontsize=11)
        ax.set_xlabel("epoch")
        ax.set_ylabel("MAE (years)")
        if top is not None:
            ax.set_ylim(0, top[0])
            if top[1]:
                ax.text(0.99, 0.99, f"axis cut at {top[0]:.0f} y (early epochs above)",
                        transform=ax.transAxes, ha="right", va="top", fontsize=7,
                        color="#5b6475")  # fmt: skip
        if len(seeds) <= 10:
            ax.legend(
                frameon=False,
                fontsize=8,
                title="solid: validation, dotted: train",
                title_fontsize=7,
            )
        _style(ax)
    fig.tight_layout()
    return fig


def region_bar_figure(table: pd.DataFrame, n: int = 15, title: str | None = None) -> Figure:
    """Horizontal bar chart of the top-``n`` regions by mean relevance.

    Parameters
    ----------
    table : pandas.DataFrame
        A region table (columns ``region``, ``mean_relevance``, optionally ``rank``).
    n : int
        Number of regions shown (highest mean relevance at the top).
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
    """
    top = table.sort_values("mean_relevance", ascending=False, kind="stable").head(n)
    fig = Figure(figsize=(6.6, 0.28 * max(len(top), 3) + 1.0))
    ax = fig.add_subplot(1, 1, 1)
    names = [str(r).replace("_", " ") for r in top["region"]]
    values = top["mean_relevance"].to_numpy(float)
    colors = np.where(values >= 0, "#D55E00", "#0072B2")
    ax.barh(np.arange(len(top)), values, color=colors, height=0.7)
    ax.set_yticks(np.arange(len(top)))
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(0, color="#444444", linewidth=0.8)
    ax.set_xlabel("mean relevance in region")
    if title:
        ax.set_title(title, fontsize=10)
    _style(ax)
    ax.grid(False, axis="y")
    fig.tight_layout()
    return fig


def qc_histogram_figure(values, worst=None) -> Figure:
    """Histogram of registration quality with the worst subjects marked.

    Parameters
    ----------
    values : array-like, shape (n_subjects,)
        Registration quality (e.g. normalised cross-correlation with the template).
    worst : array-like, optional
        Values of the subjects shown in the gallery (drawn as ticks).

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    fig = Figure(figsize=(6.0, 2.4))
    ax = fig.add_subplot(1, 1, 1)
    if values.size:
        ax.hist(values, bins=min(30, max(5, values.size // 3)), color="#56B4E9", edgecolor="white")
    if worst is not None:
        for v in np.asarray(worst, dtype=float):
            ax.axvline(v, color="#D55E00", linewidth=1, alpha=0.8)
    ax.set_xlabel("registration quality (higher is better)")
    ax.set_ylabel("subjects")
    _style(ax)
    fig.tight_layout()
    return fig


def interval_figure(predictions: pd.DataFrame) -> Figure:
    """Absolute error against interval width: the calibrated interval and paper 001's uncertainty.

    Parameters
    ----------
    predictions : pandas.DataFrame
        ``predictions.tsv`` of out-of-fold (or test) subjects with ``age``, ``brain_age``,
        ``brain_age_lower``, ``brain_age_upper`` and ``uncertainty`` (years).

    Returns
    -------
    matplotlib.figure.Figure
        Left: |brain_age − age| against the half-width of the calibrated interval, subjects
        outside their interval in red. Right: the same error against ``uncertainty``.
    """
    df = predictions.dropna(subset=["age", "brain_age"])
    err = (df["brain_age"] - df["age"]).abs().to_numpy(float)
    fig = Figure(figsize=(10.4, 4.4))
    panels = []
    if {"brain_age_lower", "brain_age_upper"} <= set(df.columns):
        half = ((df["brain_age_upper"] - df["brain_age_lower"]) / 2).to_numpy(float)
        panels.append(("calibrated interval half-width (years)", half, True))
    if "uncertainty" in df.columns:
        panels.append(("paper 001 uncertainty: t-interval width (years)", df["uncertainty"], False))
    for i, (label, width, calibrated) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        width = np.asarray(width, float)
        ok = np.isfinite(width)
        outside = ok & (err > width) if calibrated else np.zeros_like(ok)
        ax.scatter(
            width[ok & ~outside],
            err[ok & ~outside],
            s=16,
            color="#0072B2",
            alpha=0.8,
            label="age inside the interval" if calibrated else "subjects",
        )
        if outside.any():
            ax.scatter(
                width[outside],
                err[outside],
                s=18,
                color="#D55E00",
                label=f"outside ({outside.sum()} of {ok.sum()})",
            )
        if calibrated and ok.any():
            top = max(float(np.nanmax(width[ok])), float(err.max()))
            ax.plot(
                [0, top],
                [0, top],
                color="#444444",
                linestyle="--",
                linewidth=1,
                label="error = half-width",
            )
        ax.set_xlabel(label)
        ax.set_ylabel("absolute error |brain_age − age| (years)")
        ax.legend(frameon=False, fontsize=8, loc="upper left")
        _style(ax)
    fig.tight_layout()
    return fig


def perturbation_curves_figure(curves: dict) -> Figure:
    """Mean change of the predicted age while the brain is removed, per method and order.

    Parameters
    ----------
    curves : dict of str to pandas.DataFrame
        ``method → evaluation/faithfulness/method-<m>_curves.tsv`` (columns ``fraction``,
        ``morf``, ``lerf``, ``random``; years).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per method: most relevant first (solid), least relevant first (dashed),
        random order (grey); x = % of brain voxels replaced by the mean training image.
    """
    methods = list(curves)
    n = max(1, len(methods))
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    fig = Figure(figsize=(3.3 * ncol + 0.4, 2.9 * nrow))
    styles = {"morf": ("#D55E00", "-", "most relevant first"),
              "lerf": ("#0072B2", "--", "least relevant first"),
              "random": ("#777777", ":", "random order")}  # fmt: skip
    for i, method in enumerate(methods):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        table = curves[method]
        for order, (color, ls, label) in styles.items():
            if order in table:
                ax.plot(100 * table["fraction"], table[order], color=color, linestyle=ls,
                        marker="o", markersize=3, linewidth=1.5, label=label)  # fmt: skip
        ax.axhline(0, color="#999999", linewidth=0.8)
        ax.set_title(method.replace("_", " "), fontsize=10)
        ax.set_xlabel("brain voxels replaced (%)")
        ax.set_ylabel("Δ predicted age (years)")
        if i == 0:
            ax.legend(frameon=False, fontsize=8)
        _style(ax)
    fig.tight_layout()
    return fig
