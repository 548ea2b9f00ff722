"""Figures of the region-level checks: relevance against the true per-region effect, agreement.

Built without pyplot, like the other figure modules (see :mod:`brainage.report.make_figures`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainage.report.figures_common import _style

#: Colours of the region classes of ``evaluation/regions/method-<m>_truth.tsv``.
EFFECT_COLORS = {"yes": "#D55E00", "partial": "#E69F00", "no": "#0072B2"}
_EFFECT_LABELS = {"yes": "with effect (≥ 5 %)", "partial": "partial", "no": "none (< 1 %)"}


def region_truth_figure(tables: dict) -> Figure:
    """Per-region relevance against the true per-region effect, one panel per method.

    Parameters
    ----------
    tables : dict of str to pandas.DataFrame
        ``method → evaluation/regions/method-<m>_truth.tsv`` (columns ``true_effect``,
        ``relevance``, ``has_effect``).

    Returns
    -------
    matplotlib.figure.Figure
        x = true effect (% of the region's tissue that age changes), y = mean normalised relevance
        (parts per million per voxel, log scale when positive), dots coloured by class; the title
        carries Spearman ρ.
    """
    from scipy import stats

    methods = list(tables)
    n = max(1, len(methods))
    ncol = min(n, 4)
    nrow = int(np.ceil(n / ncol))
    fig = Figure(figsize=(3.3 * ncol + 0.4, 3.0 * nrow))
    for i, method in enumerate(methods):
        ax = fig.add_subplot(nrow, ncol, i + 1)
        t = tables[method]
        for cls, color in EFFECT_COLORS.items():
            sel = t["has_effect"] == cls
            ax.scatter(100 * t.loc[sel, "true_effect"], t.loc[sel, "relevance"], s=12,
                       color=color, alpha=0.8, label=_EFFECT_LABELS[cls], linewidths=0)  # fmt: skip
        if (t["relevance"] > 0).all():
            ax.set_yscale("log")
        rho = stats.spearmanr(t["true_effect"], t["relevance"]).statistic if len(t) > 2 else np.nan
        ax.set_title(f"{method.replace('_', ' ')}  (ρ = {rho:.2f})", fontsize=10)
        ax.set_xlabel("true effect (% of tissue changed)")
        ax.set_ylabel("relevance (ppm per voxel)")
        if i == 0:
            ax.legend(frameon=False, fontsize=7)
        _style(ax)
    fig.tight_layout()
    return fig


def method_agreement_figure(table: pd.DataFrame, methods: list | None = None) -> Figure:
    """Heat map of the Spearman correlations between the methods' region tables (one atlas).

    Parameters
    ----------
    table : pandas.DataFrame
        Rows of ``evaluation/method_agreement.tsv`` for one atlas (``method_a``, ``method_b``,
        ``spearman``).
    methods : list of str, optional
        Order of the rows and columns (default: order of appearance).

    Returns
    -------
    matplotlib.figure.Figure
        Symmetric matrix, diagonal 1, values printed in the cells, diverging colours in [−1, 1].
    """
    if methods is None:
        methods = list(dict.fromkeys([*table["method_a"], *table["method_b"]]))
    k = len(methods)
    index = {m: i for i, m in enumerate(methods)}
    matrix = np.eye(k)
    for r in table.itertuples():
        if r.method_a in index and r.method_b in index:
            matrix[index[r.method_a], index[r.method_b]] = r.spearman
            matrix[index[r.method_b], index[r.method_a]] = r.spearman
    size = 1.4 + 0.5 * k
    fig = Figure(figsize=(size + 2.8, size + 0.6))
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(matrix, cmap="RdBu_r", vmin=-1, vmax=1)
    names = [m.replace("_", " ") for m in methods]
    ax.set_xticks(range(k), names, rotation=40, ha="right", fontsize=10)
    ax.set_yticks(range(k), names, fontsize=10)
    for i in range(k):
        for j in range(k):
            v = matrix[i, j]
            text = "n/a" if not np.isfinite(v) else f"{v:.2f}"
            ax.text(j, i, text, ha="center", va="center", fontsize=9,
                    color="white" if np.isfinite(v) and abs(v) > 0.6 else "black")  # fmt: skip
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    bar.set_label("Spearman ρ of region tables", fontsize=10)
    fig.tight_layout()
    return fig
