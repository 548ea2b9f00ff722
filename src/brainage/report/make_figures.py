"""Figures of the brainage report, reusable on their own.

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot (so
no GUI backend and no global figure state is involved); :func:`figure_to_data_uri` turns it into an
embeddable ``data:image/png;base64,…`` URI and closes it. Ages are in years; brain maps live in
template space (``MNI152NLin2009aSym``) with their own affines.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib
import nibabel as nib
import numpy as np
import pandas as pd
from matplotlib.figure import Figure

#: Colours of the data splits (colour-blind safe, Okabe-Ito).
SPLIT_COLORS = {
    "train": "#999999",
    "validation": "#E69F00",
    "test": "#0072B2",
    "predict": "#009E73",
}
#: Order in which splits are listed.
SPLIT_ORDER = ("train", "validation", "test", "predict")

#: MNI z levels (mm) of the axial slices shown for population maps: cerebellum and brain stem,
#: hippocampus / mesial temporal lobe, basal ganglia, lateral ventricles, centrum semiovale, cortex.
DEFAULT_CUT_COORDS = (-40, -26, -12, 2, 16, 30, 44, 58)


def _split_color(split: str) -> str:
    return SPLIT_COLORS.get(str(split), "#CC79A7")


def _ordered_splits(values) -> list[str]:
    present = [str(v) for v in pd.unique(pd.Series(values).dropna())]
    return [s for s in SPLIT_ORDER if s in present] + sorted(
        s for s in present if s not in SPLIT_ORDER
    )


def _style(ax) -> None:
    ax.spines["top"].set_visible(False)
    ax.spines["right"].set_visible(False)
    ax.grid(True, color="#e5e5e5", linewidth=0.8)
    ax.set_axisbelow(True)


def figure_to_data_uri(fig: Figure, dpi: int = 100, max_colors: int | None = None) -> str:
    """Render ``fig`` to PNG and return a ``data:image/png;base64,…`` URI (the figure is closed).

    Parameters
    ----------
    fig : matplotlib.figure.Figure
    dpi : int
        Resolution of the PNG in dots per inch.
    max_colors : int, optional
        Store the PNG with a palette of at most this many colours (≤ 256; Pillow's fast octree
        quantiser): several times smaller for large figures of brain slices, at no visible cost.
        Default: full RGB.

    Returns
    -------
    str
        A data URI usable as the ``src`` of an ``<img>`` in a self-contained HTML page.
    """
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight", facecolor="white")
    fig.clear()
    data = buf.getvalue()
    if max_colors is not None:
        from PIL import Image

        if not 2 <= int(max_colors) <= 256:
            raise ValueError(f"'max_colors' must be between 2 and 256; got {max_colors}")
        img = Image.open(io.BytesIO(data)).convert("RGB")
        small = io.BytesIO()
        img.quantize(int(max_colors), method=Image.Quantize.FASTOCTREE).save(
            small, format="PNG", optimize=True
        )
        data = small.getvalue()
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


def png_file_to_data_uri(path) -> str | None:
    """Read a PNG file into a data URI, or return None when it does not exist or is not a PNG."""
    path = Path(path)
    if not path.is_file():
        return None
    data = path.read_bytes()
    if not data.startswith(b"\x89PNG"):
        return None
    return "data:image/png;base64," + base64.b64encode(data).decode("ascii")


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


def _natural_key(text: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]


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


def stat_map_figure(
    img,
    bg_img=None,
    title: str | None = None,
    cut_coords=DEFAULT_CUT_COORDS,
    threshold: float | None = None,
    cmap: str | None = None,
    symmetric: bool = True,
    fade: tuple[float, float] | None = None,
) -> Figure:
    """Axial slices of a map in template space over an anatomical background (nilearn).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D map whose affine maps voxels to MNI mm.
    bg_img : nibabel.Nifti1Image, optional
        Background, e.g. ``brainage.space.load_template(res)["t1w"]``; default: nilearn's bundled
        MNI152 template (never downloaded).
    title : str, optional
    cut_coords : sequence of float
        MNI z coordinates (mm) of the slices.
    threshold : float, optional
        Values with ``|v| <= threshold`` are transparent (default: only exact zeros).
    cmap : str, optional
        Colour map; default ``"RdBu_r"`` for signed maps, ``"hot"`` otherwise.
    symmetric : bool
        Colour scale symmetric around 0 (signed maps).
    fade : (float, float), optional
        ``(lo, hi)`` in map units: overlay opacity grows with ``|value|`` from 0 at ``lo`` to 1 at
        ``hi`` (nilearn ``transparency``), so weak values do not hide the anatomy.

    Returns
    -------
    matplotlib.figure.Figure
    """
    from nilearn import plotting

    data = np.asarray(img.dataobj, dtype=np.float64)
    vmax = float(np.max(np.abs(data))) if data.size else 1.0
    vmax = vmax if vmax > 0 else 1.0
    fig = Figure(figsize=(2.0 * len(cut_coords), 2.6))
    kwargs = dict(
        display_mode="z",
        cut_coords=list(cut_coords),
        figure=fig,
        title=title,
        threshold=1e-6 if threshold is None else float(threshold),
        colorbar=True,
        black_bg=False,
        annotate=True,
        draw_cross=False,
        vmax=vmax,
        cmap=cmap or ("RdBu_r" if symmetric else "hot"),
        symmetric_cbar=bool(symmetric),
    )
    if bg_img is not None:
        kwargs["bg_img"] = bg_img
        kwargs["dim"] = -0.3
    if not symmetric:
        kwargs["vmin"] = 0.0
    if fade is not None:
        lo, hi = float(fade[0]), float(fade[1])
        # opacity in [0, 1] computed here (nilearn's own rescaling can round to 1 + 1e-7)
        alpha = np.clip((np.abs(data) - lo) / max(hi - lo, 1e-12), 0.0, 1.0)
        if alpha.max() > 0:
            kwargs["transparency"] = nib.Nifti1Image(alpha.astype(np.float32), img.affine)
            kwargs["transparency_range"] = [0.0, 1.0]
    plotting.plot_stat_map(img, **kwargs)
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


#: MNI z (mm) of the default axial slice of the method comparison: the bodies of the lateral
#: ventricles (the template's ventricular CSF peaks at z ≈ 18–22 mm).
VENTRICLE_Z_MM = 20.0
#: Colour of the ground-truth contour (Okabe-Ito bluish green).
TRUTH_COLOR = "#009E73"


def _canonical(img):
    """``img`` as a float64 array in RAS+ voxel order, with its (RAS+) affine."""
    img = nib.as_closest_canonical(img)
    return np.asarray(img.dataobj, dtype=np.float64), img.affine


def _world_to_k(affine: np.ndarray, shape, z_mm: float) -> int | None:
    """Index of the axial slice at MNI ``z_mm`` (through the volume's centre); None if outside."""
    centre = affine @ np.array([(shape[0] - 1) / 2, (shape[1] - 1) / 2, 0.0, 1.0])
    ijk = np.linalg.solve(affine, np.array([centre[0], centre[1], float(z_mm), 1.0]))
    k = int(np.rint(ijk[2]))
    return k if 0 <= k < shape[2] else None


def axial_slice_with_most(mask_img) -> float | None:
    """MNI z (mm) of the axial slice that holds the most voxels of a mask.

    Parameters
    ----------
    mask_img : nibabel.Nifti1Image
        3D mask (nonzero = inside) whose affine maps voxels to MNI mm.

    Returns
    -------
    float or None
        z in mm of the centre of that slice (ties: the lowest slice); None for an empty mask.
    """
    data, affine = _canonical(mask_img)
    if data.ndim != 3:
        raise ValueError(f"'mask_img' must be a 3D image; got shape {data.shape}")
    counts = (data > 0).sum(axis=(0, 1))
    if counts.max() == 0:
        return None
    k = int(np.argmax(counts))
    centre = affine @ np.array([(data.shape[0] - 1) / 2, (data.shape[1] - 1) / 2, k, 1.0])
    return float(centre[2])


def panel_scale(data, mask=None, percentile: float = 99.0) -> float:
    """Colour limit of one relevance panel: a high percentile of ``|r|``.

    Parameters
    ----------
    data : ndarray, shape (i, j, k)
        Relevance map.
    mask : ndarray of bool, shape (i, j, k), optional
        Voxels over which the percentile is taken (e.g. the brain); default every finite nonzero
        voxel.
    percentile : float
        In (0, 100].

    Returns
    -------
    float
        The ``percentile`` of ``|r|`` over the voxels, or 1.0 when they are all zero (so that an
        empty map is drawn blank rather than dividing by zero).
    """
    a = np.abs(np.asarray(data, dtype=np.float64))
    sel = np.isfinite(a) & (a > 0) if mask is None else np.isfinite(a) & np.asarray(mask, bool)
    values = a[sel]
    if values.size == 0:
        return 1.0
    v = float(np.percentile(values, percentile))
    return v if v > 0 else (float(values.max()) if values.max() > 0 else 1.0)


def _on_grid(img, affine, shape, interpolation: str):
    """``img`` (canonical) on the grid ``(affine, shape)``; resampled only when it differs."""
    data, aff = _canonical(img)
    if data.shape == tuple(shape) and np.allclose(aff, affine, atol=1e-3):
        return data
    from nilearn.image import resample_img

    out = resample_img(
        nib.Nifti1Image(data, aff),
        target_affine=affine,
        target_shape=tuple(shape),
        interpolation=interpolation,
        fill_value=0,
        force_resample=True,
        copy_header=True,
    )
    return np.asarray(out.dataobj, dtype=np.float64)


def methods_side_by_side_figure(
    maps,
    row_labels,
    truths=None,
    background=None,
    brain=None,
    flagged=(),
    z_mm=None,
    percentile: float = 99.0,
    panel_inches: float = 1.55,
) -> Figure:
    """Every method's relevance map on the same subjects: rows = subjects, columns = methods.

    Each row shows one axial slice: through the largest cross-section of the subject's
    ground-truth mask when there is one (:func:`axial_slice_with_most`), else at ``z_mm``. Each
    panel has its own symmetric diverging colour scale, ``±`` the ``percentile`` of ``|r|`` over
    the subject's brain (:func:`panel_scale`), so methods with very different units can be
    compared by pattern; red = positive relevance (evidence for an older brain age), blue =
    negative. The truth mask is outlined. Slices are drawn in neurological convention (left
    hemisphere on the left, anterior up); the row label gives the slice's MNI z in mm.

    Parameters
    ----------
    maps : dict of str to sequence of nibabel.Nifti1Image or None
        ``method → one 3D map per row`` (None = missing map, drawn as an empty panel). Affines
        map voxels to MNI mm; each map is reoriented to RAS+ before slicing.
    row_labels : sequence of str, length n_rows
        Text left of each row (e.g. ``"sub-01 · 63 y"``).
    truths : sequence of nibabel.Nifti1Image or None, length n_rows, optional
        Ground-truth masks (where age acts), resampled nearest-neighbour onto the map's grid
        when needed.
    background : nibabel.Nifti1Image, optional
        Anatomy drawn faintly under the maps, e.g. ``brainage.space.load_template(res)["t1w"]``;
        the maps then fade in with ``|r|`` so the anatomy shows where relevance is small.
    brain : nibabel.Nifti1Image, optional
        Brain mask for the colour scale; default every nonzero voxel of the map.
    flagged : collection of str
        Methods whose column title is marked "fails sanity check" (in red).
    z_mm : float, optional
        MNI z (mm) of the slice of rows without a truth mask; default :data:`VENTRICLE_Z_MM`.
    percentile : float
        Percentile of ``|r|`` that sets each panel's colour limit.
    panel_inches : float
        Width of one panel in inches.

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        ``maps`` is empty, or a method's list or ``truths`` does not have one entry per row.
    """
    from matplotlib.colors import Normalize
    from matplotlib.lines import Line2D

    methods = list(maps)
    n_rows = len(row_labels)
    if not methods or n_rows == 0:
        raise ValueError("'maps' must hold at least one method and 'row_labels' one row")
    for m in methods:
        if len(maps[m]) != n_rows:
            raise ValueError(
                f"'maps[{m!r}]' must have one map per row ({n_rows}); got {len(maps[m])}"
            )
    truths = list(truths) if truths is not None else [None] * n_rows
    if len(truths) != n_rows:
        raise ValueError(f"'truths' must have one entry per row ({n_rows}); got {len(truths)}")
    z_default = VENTRICLE_Z_MM if z_mm is None else float(z_mm)
    flagged = set(flagged)
    cmap = matplotlib.colormaps["RdBu_r"]

    # aspect of a panel from the first available map
    first = next(img for m in methods for img in maps[m] if img is not None)
    shape0 = nib.as_closest_canonical(first).shape
    aspect = shape0[1] / shape0[0]
    label_w = 1.25
    fig = Figure(
        figsize=(label_w + panel_inches * len(methods), panel_inches * aspect * n_rows + 1.45)
    )
    gs = fig.add_gridspec(
        n_rows,
        len(methods),
        left=label_w / (label_w + panel_inches * len(methods)),
        right=0.995,
        top=1 - 0.42 / fig.get_figheight(),
        bottom=1.03 / fig.get_figheight(),
        wspace=0.03,
        hspace=0.16,
    )
    has_truth = False
    grid_cache: dict = {}
    for r in range(n_rows):
        truth_z = axial_slice_with_most(truths[r]) if truths[r] is not None else None
        z = truth_z if truth_z is not None else z_default
        for c, method in enumerate(methods):
            ax = fig.add_subplot(gs[r, c])
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if r == 0:
                ax.set_title(
                    _wrapped(method.replace("_", " "), 14)
                    + ("\n✗ fails sanity check" if method in flagged else ""),
                    fontsize=9,
                    color="#b3261e" if method in flagged else "#1d2330",
                    fontweight="bold" if method in flagged else "normal",
                )
            if c == 0:
                ax.set_ylabel(
                    f"{row_labels[r]}\nz = {z:.0f} mm",
                    fontsize=8.5,
                    rotation=0,
                    ha="right",
                    va="center",
                )
            img = maps[method][r]
            if img is None:
                ax.text(0.5, 0.5, "no map", ha="center", va="center", fontsize=8, color="#888")
                continue
            data, affine = _canonical(img)
            k = _world_to_k(affine, data.shape, z)
            if k is None:
                ax.text(
                    0.5, 0.5, f"z = {z:g} mm\noutside map", ha="center", va="center", fontsize=7
                )
                continue
            key = (data.shape, tuple(np.round(affine, 3).ravel()))
            if key not in grid_cache:
                grid_cache[key] = {
                    "bg": None
                    if background is None
                    else _on_grid(background, affine, data.shape, "continuous"),
                    "brain": None
                    if brain is None
                    else _on_grid(brain, affine, data.shape, "nearest") > 0.5,
                }
                bgv = grid_cache[key]["bg"]
                if bgv is not None:
                    top = float(np.percentile(bgv, 99.5))
                    head = bgv > 0.1 * top  # resampling leaves ~1e-18 outside the head
                    if grid_cache[key]["brain"] is not None:
                        head &= grid_cache[key]["brain"]
                    grid_cache[key]["bg"] = np.where(head, bgv, np.nan)
                    lo = float(np.percentile(bgv[head], 2)) if head.any() else 0.0
                    grid_cache[key]["bg_range"] = (lo, max(top, lo + 1e-12))
            cached = grid_cache[key]
            vmax = panel_scale(data, cached["brain"], percentile)
            sl = data[:, :, k].T
            if cached["bg"] is not None:
                lo, hi = cached["bg_range"]
                bg = cached["bg"][:, :, k].T
                ax.imshow(
                    np.ma.masked_invalid(bg),  # outside the brain: white
                    cmap="gray",
                    vmin=lo,
                    vmax=hi,
                    origin="lower",
                    alpha=0.45,
                    interpolation="nearest",
                )
                rgba = cmap(Normalize(-vmax, vmax, clip=True)(sl))
                rgba[..., 3] = np.clip(np.abs(sl) / vmax, 0.0, 1.0) ** 0.6
                ax.imshow(rgba, origin="lower", interpolation="nearest")
            else:
                ax.imshow(
                    sl, cmap=cmap, vmin=-vmax, vmax=vmax, origin="lower", interpolation="nearest"
                )
            if truths[r] is not None:
                t = _on_grid(truths[r], affine, data.shape, "nearest")[:, :, k].T > 0.5
                if t.any():
                    has_truth = True
                    ax.contour(t.astype(float), levels=[0.5], colors=TRUTH_COLOR, linewidths=0.9)
            ax.text(
                0.98,
                0.02,
                f"±{vmax:.2g}",
                transform=ax.transAxes,
                ha="right",
                va="bottom",
                fontsize=6.5,
                color="#333",
            )
            if r == 0 and c == 0:
                ax.text(0.02, 0.98, "L", transform=ax.transAxes, ha="left", va="top", fontsize=7)
                ax.text(0.98, 0.98, "R", transform=ax.transAxes, ha="right", va="top", fontsize=7)

    # legend: one colour bar for the per-panel scale, and the truth contour
    from matplotlib.cm import ScalarMappable

    height = fig.get_figheight()
    cax = fig.add_axes([0.3, 0.5 / height, 0.4, 0.12 / height])
    cb = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=cax, orientation="horizontal")
    cb.set_ticks([-1, 0, 1])
    cb.set_ticklabels([f"−p{percentile:g} |r|", "0", f"+p{percentile:g} |r|"])
    cb.ax.tick_params(labelsize=7)
    cb.set_label("relevance, scaled per panel (± value printed in each panel)", fontsize=7.5)
    cb.ax.xaxis.set_label_position("top")
    if has_truth:
        fig.legend(
            handles=[
                Line2D([], [], color=TRUTH_COLOR, linewidth=1.2, label="truth: where age acts")
            ],
            loc="lower center",
            bbox_to_anchor=(0.5, 0.0),
            frameon=False,
            fontsize=7.5,
        )
    return fig


def _wrapped(text: str, width: int) -> str:
    """``text`` broken into lines of at most ``width`` characters (at spaces)."""
    import textwrap

    return "\n".join(textwrap.wrap(text, width)) or text
