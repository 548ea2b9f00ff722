"""Figures of the statistics: glass brains, sliding-window correlations, rank charts.

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot; turn
it into an embeddable URI with :func:`brainage.report.figures_common.figure_to_data_uri`.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from brainage.report.figures_common import _style

#: Okabe-Ito colours for categories (rank charts, subgroups).
CATEGORY_COLORS = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442",
                   "#000000"]  # fmt: skip


def glass_brain_figure(
    img, title: str | None = None, outline=None, vmax: float | None = None
) -> Figure:
    """Maximum-intensity projections of a signed map in MNI152 space (nilearn glass brain).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D map (e.g. t where FWE p ≤ alpha, 0 elsewhere), voxel → MNI mm by its affine.
    title : str, optional
    outline : nibabel.Nifti1Image, optional
        Binary image (e.g. the significant voxels) drawn as a contour on every projection.
    vmax : float, optional
        Colour scale ±vmax (default: the map's largest absolute value); give one value to
        figures that are compared.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from nilearn import plotting

    data = np.asarray(img.dataobj, np.float64)
    vmax = float(vmax) if vmax else float(np.abs(data).max()) or 1.0
    fig = Figure(figsize=(9.0, 2.6))
    display = plotting.plot_glass_brain(
        img, display_mode="lyrz", figure=fig, title=title, colorbar=True, plot_abs=False,
        cmap="RdBu_r", vmax=vmax, symmetric_cbar=True, threshold=1e-6, black_bg=False,
        annotate=True,
    )  # fmt: skip
    if outline is not None and np.asarray(outline.dataobj).any():
        display.add_contours(outline, levels=[0.5], colors="#222222", linewidths=0.6)
    return fig


def gap_windows_figure(table: pd.DataFrame, alpha: float = 0.05) -> Figure:
    """Pearson r of the brain-age gap with each covariate in sliding age windows (paper 001 Fig. 7).

    Parameters
    ----------
    table : pandas.DataFrame
        From :func:`brainage.stats.gap.sliding_window_correlations` (``covariate``, ``coding``,
        ``window_centre``, ``r``, ``ci_low``, ``ci_high``, ``n``, ``significant``).
    alpha : float
        Family-wise level of the marked windows (for the legend).

    Returns
    -------
    matplotlib.figure.Figure
        One panel per covariate: r against the window centre (years) with its 95 % interval
        (narrower where the window holds more subjects) and red diamonds where the
        Bonferroni-corrected p ≤ ``alpha``.
    """
    covs = list(dict.fromkeys(table["covariate"]))
    n = max(len(covs), 1)
    cols = min(n, 3)
    rows = int(np.ceil(n / cols))
    fig = Figure(figsize=(3.4 * cols, 2.5 * rows + 0.3))
    for k, cov in enumerate(covs):
        ax = fig.add_subplot(rows, cols, k + 1)
        t = table[table["covariate"] == cov].sort_values("window_centre")
        x = t["window_centre"].to_numpy(float)
        ax.fill_between(x, t["ci_low"], t["ci_high"], color="#CC79A7", alpha=0.25, linewidth=0)
        ax.plot(x, t["r"], color="#0072B2", marker="o", markersize=3, linewidth=1.2)
        sig = t["significant"].astype(bool).to_numpy()
        if sig.any():
            ax.plot(x[sig], t["r"].to_numpy(float)[sig], "D", color="#D7191C", markersize=6,
                    label=f"Bonferroni p ≤ {alpha:g}")  # fmt: skip
            ax.legend(fontsize=7, frameon=False, loc="best")
        ax.axhline(0, color="#444444", linewidth=0.8)
        ax.set_ylim(-1, 1)
        coding = str(t["coding"].iloc[0]) if "coding" in t and len(t) else ""
        ax.set_title(f"{cov} ({coding})" if coding and coding != "numeric" else cov, fontsize=9)
        ax.set_xlabel("window centre (years)", fontsize=8)
        ax.set_ylabel("r with brain-age gap", fontsize=8)
        _style(ax)
    fig.tight_layout()
    return fig


def rank_chart_figure(ranks: pd.DataFrame, n: int = 10, title: str | None = None) -> Figure:
    """Rank chart (bump chart) of regions across conditions (seeds, folds or methods).

    Parameters
    ----------
    ranks : pandas.DataFrame
        Columns ``condition``, ``region``, ``rank`` (1 = most relevant).
    n : int
        The ``n`` regions with the best mean rank are drawn.
    title : str, optional

    Returns
    -------
    matplotlib.figure.Figure
        Conditions on the x axis, rank on the (inverted) y axis, one line per region.
    """
    conds = list(dict.fromkeys(ranks["condition"]))
    wide = ranks.pivot_table(index="region", columns="condition", values="rank")[conds]
    top = wide.mean(axis=1).sort_values().head(n).index
    fig = Figure(figsize=(5.4, 0.3 * n + 1.6))  # one size: charts sit side by side
    ax = fig.add_subplot(1, 1, 1)
    x = np.arange(len(conds))
    for k, region in enumerate(top):
        y = wide.loc[region].to_numpy(float)
        color = CATEGORY_COLORS[k % len(CATEGORY_COLORS)]
        ax.plot(x, y, marker="o", color=color, linewidth=1.4, markersize=4,
                linestyle="-" if k < len(CATEGORY_COLORS) else "--")  # fmt: skip
        ax.annotate(str(region).replace("_", " "), (x[-1], y[-1]), xytext=(6, 0),
                    textcoords="offset points", va="center", fontsize=9, color=color)  # fmt: skip
    ax.set_xticks(x)
    crowded = len(conds) > 5 or sum(len(str(c)) for c in conds) > 48  # labels would touch
    ax.set_xticklabels(conds, fontsize=9.5, rotation=30 if crowded else 0,
                       ha="right" if crowded else "center")  # fmt: skip
    ax.invert_yaxis()
    ax.set_ylabel("rank (1 = most relevant)")
    ax.set_xlim(-0.3, len(conds) - 0.4 + 2.2)
    ax.tick_params(axis="y", labelsize=9.5)
    if title:
        ax.set_title(title, fontsize=11)
    _style(ax)
    fig.tight_layout()
    return fig


def subgroup_maps_figure(
    images: dict, background=None, z_mm=(-10.0, 10.0, 30.0, 50.0), mask=None,
    colorbar_label: str = "mean relevance (normalised)",
) -> Figure:  # fmt: skip
    """Subgroup mean relevance maps side by side: rows = subgroups, columns = axial slices.

    Parameters
    ----------
    images : dict of str → nibabel.Nifti1Image
        Row label (e.g. ``"sex F (n = 70)"``) → 3D map in MNI152 space, all on one grid and in
        one unit (normalised means), so one symmetric colour scale (± the 99th percentile of
        |value| over all rows) serves every panel.
    background : nibabel.Nifti1Image, optional
        Anatomy on the same grid, drawn in grey under the maps.
    mask : nibabel.Nifti1Image, optional
        Brain mask on the same grid: maps are drawn inside it only.
    z_mm : sequence of float
        MNI z of the slices.
    colorbar_label : str
        What the colour bar measures, with its unit.

    Returns
    -------
    matplotlib.figure.Figure
        Neurological convention (left on the left, anterior up); red = positive.
    """
    from matplotlib.colors import Normalize

    from brainage.report.figures_maps import _canonical, _world_to_k

    labels = list(images)
    arrays = {k: _canonical(img) for k, img in images.items()}
    bg = _canonical(background)[0] if background is not None else None
    inside = _canonical(mask)[0] > 0 if mask is not None else None
    values = np.concatenate([np.abs(a[a != 0]).ravel() for a, _ in arrays.values()] or [[1.0]])
    vmax = float(np.percentile(values, 99)) if values.size else 1.0
    norm = Normalize(-vmax or -1.0, vmax or 1.0)
    fig = Figure(figsize=(1.2 * len(z_mm) + 1.9, 1.3 * len(labels) + 0.4))
    grid = fig.add_gridspec(len(labels), len(z_mm) + 1, width_ratios=[1.4] + [1] * len(z_mm))
    im = None
    for r, lab in enumerate(labels):
        data, affine = arrays[lab]
        ax = fig.add_subplot(grid[r, 0])
        ax.axis("off")
        ax.text(1.0, 0.5, lab, ha="right", va="center", fontsize=8, transform=ax.transAxes)
        for c, z in enumerate(z_mm):
            ax = fig.add_subplot(grid[r, c + 1])
            ax.axis("off")
            k = _world_to_k(affine, data.shape, z)
            if k is None:
                continue
            if bg is not None:
                ax.imshow(np.ma.masked_equal(np.rot90(bg[:, :, k]), 0), cmap="gray", alpha=0.45)
            sl = np.rot90(data[:, :, k])
            hide = sl == 0 if inside is None else ~np.rot90(inside[:, :, k])
            im = ax.imshow(np.ma.masked_array(sl, hide), cmap="RdBu_r", norm=norm)
            if r == 0:
                ax.set_title(f"z = {z:g} mm", fontsize=8)
    if im is not None:
        cax = fig.add_axes([0.92, 0.25, 0.015, 0.5])
        bar = fig.colorbar(im, cax=cax)
        bar.ax.tick_params(labelsize=7)
        bar.set_label(colorbar_label, fontsize=8)
    fig.subplots_adjust(left=0.01, right=0.9, top=0.93, bottom=0.02, wspace=0.02, hspace=0.05)
    return fig
