"""Brain-map figures of the report: population maps and explanation methods side by side.

:func:`stat_map_figure` draws axial slices of a map (nilearn); :func:`methods_side_by_side_figure`
compares explanation methods on the same subjects. Maps live in template space
(``MNI152NLin2009aSym``) with their own affines. Every ``*_figure`` function returns a
:class:`matplotlib.figure.Figure` built without pyplot.
"""

from __future__ import annotations

import matplotlib
import nibabel as nib
import numpy as np
from matplotlib.figure import Figure

#: MNI z levels (mm) of the axial slices shown for population maps: cerebellum and brain stem,
#: hippocampus / mesial temporal lobe, basal ganglia, lateral ventricles, centrum semiovale, cortex.
DEFAULT_CUT_COORDS = (-40, -26, -12, 2, 16, 30, 44, 58)


def stat_map_figure(
    img,
    bg_img=None,
    title: str | None = None,
    cut_coords=DEFAULT_CUT_COORDS,
    threshold: float | None = None,
    cmap: str | None = None,
    symmetric: bool = True,
    fade: tuple[float, float] | None = None,
    colorbar_label: str | None = None,
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
    colorbar_label : str, optional
        What the colour bar measures, with its unit (written beside it).

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
    _tidy_colorbar(fig, vmax, symmetric, colorbar_label)
    return fig


def _tidy_colorbar(fig: Figure, vmax: float, symmetric: bool, text: str | None = None) -> None:
    """Put five evenly spaced ticks with two significant digits on the colour bar, and its label.

    nilearn adds ± the threshold to its ticks, whose labels overlap near 0.
    """
    # nilearn's colour bar: the tall, thin axes (in figure fractions, whatever the cut count)
    bars = [a for a in fig.axes if a.get_position().height > 3 * a.get_position().width]
    if not bars:
        return
    cax = min(bars, key=lambda a: a.get_position().width)
    ticks = np.linspace(-vmax, vmax, 5) if symmetric else np.linspace(0.0, vmax, 5)
    cax.set_yticks(ticks)
    cax.set_yticklabels([f"{t:.2g}" if abs(t) > 1e-12 * vmax else "0" for t in ticks])
    cax.tick_params(labelsize=11)
    if text:
        cax.set_ylabel(text, fontsize=12, labelpad=3)
        cax.yaxis.set_label_position("left")


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


def _grid(cache: dict, affine, shape, background, brain) -> dict:
    """Background (NaN outside the head/brain) and brain mask on one map grid, cached."""
    key = (tuple(shape), tuple(np.round(affine, 3).ravel()))
    if key in cache:
        return cache[key]
    bgv = None if background is None else _on_grid(background, affine, shape, "continuous")
    mask = None if brain is None else _on_grid(brain, affine, shape, "nearest") > 0.5
    entry = {"bg": bgv, "brain": mask}
    if bgv is not None:
        top = float(np.percentile(bgv, 99.5))
        head = bgv > 0.1 * top  # resampling leaves ~1e-18 outside the head
        if mask is not None:
            head &= mask
        entry["bg"] = np.where(head, bgv, np.nan)
        lo = float(np.percentile(bgv[head], 2)) if head.any() else 0.0
        entry["bg_range"] = (lo, max(top, lo + 1e-12))
    cache[key] = entry
    return entry


def draw_relevance_slice(ax, sl: np.ndarray, vmax: float, grid: dict, k: int, cmap) -> None:
    """Draw one axial relevance slice on ``ax`` (diverging, ``±vmax``) over faint anatomy.

    ``sl`` is the slice transposed for ``imshow(origin="lower")`` (RAS+: left on the left,
    anterior up); with a background the overlay's opacity grows with ``|r| / vmax`` (power 0.6)
    so the anatomy shows where relevance is small. ``grid`` comes from :func:`_grid`.
    """
    from matplotlib.colors import Normalize

    if grid["bg"] is None:
        ax.imshow(sl, cmap=cmap, vmin=-vmax, vmax=vmax, origin="lower", interpolation="nearest")
        return
    lo, hi = grid["bg_range"]
    bg = grid["bg"][:, :, k].T
    ax.imshow(np.ma.masked_invalid(bg), cmap="gray", vmin=lo, vmax=hi, origin="lower",
              alpha=0.45, interpolation="nearest")  # fmt: skip
    rgba = cmap(Normalize(-vmax, vmax, clip=True)(sl))
    rgba[..., 3] = np.clip(np.abs(sl) / vmax, 0.0, 1.0) ** 0.6
    ax.imshow(rgba, origin="lower", interpolation="nearest")


def relevance_rgba(sl: np.ndarray, grid: dict, k: int, cmap) -> np.ndarray:
    """RGB image (float, white paper) of a relevance slice in units of its colour limit.

    The same look as :func:`draw_relevance_slice` with ``vmax = 1``, composited in numpy:
    anatomy in grey at opacity 0.45 over white, the overlay at opacity ``min(|r|, 1) ** 0.6``.
    """
    from matplotlib.colors import Normalize

    out = np.ones((*sl.shape, 3))
    if grid["bg"] is not None:
        lo, hi = grid["bg_range"]
        bg = grid["bg"][:, :, k].T
        grey = np.clip((bg - lo) / (hi - lo), 0.0, 1.0)
        inside = np.isfinite(bg)[..., None]
        out = np.where(inside, 0.55 * out + 0.45 * np.nan_to_num(grey)[..., None], out)
        alpha = (np.clip(np.abs(sl), 0.0, 1.0) ** 0.6)[..., None]
    else:
        alpha = np.ones((*sl.shape, 1))
    colour = cmap(Normalize(-1.0, 1.0, clip=True)(sl))[..., :3]
    return (1 - alpha) * out + alpha * colour


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
            cached = _grid(grid_cache, affine, data.shape, background, brain)
            vmax = panel_scale(data, cached["brain"], percentile)
            draw_relevance_slice(ax, data[:, :, k].T, vmax, cached, k, cmap)
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


#: MNI z levels (mm) of a subject page's slices: mesial temporal lobe, basal ganglia, lateral
#: ventricles, centrum semiovale, upper cortex.
SUBJECT_CUTS_MM = (-20, -4, 12, 28, 44)


def subject_slices_figure(
    maps: dict,
    background=None,
    brain=None,
    cut_coords=SUBJECT_CUTS_MM,
    percentile: float = 99.0,
    panel_inches: float = 1.5,
    cache: dict | None = None,
) -> Figure:
    """One subject's relevance maps, several axial slices per method, on one shared scale.

    Rows = methods, columns = MNI z levels. Methods have different units, so each map is divided
    by its ``percentile`` of ``|r|`` over the brain (:func:`panel_scale`); every panel then shares
    one colour scale, −1 … +1 in those units (values beyond are clipped), and the divisor is
    printed beside each row. Red = evidence for an older brain age, blue = younger. Slices are
    drawn in neurological convention (left hemisphere on the left, anterior up).

    Parameters
    ----------
    maps : dict of str to nibabel.Nifti1Image
        ``method → 3D relevance map`` (affine: voxels → MNI mm).
    background, brain : nibabel.Nifti1Image, optional
        Template anatomy (drawn faintly) and brain mask (the percentile's voxels).
    cut_coords : sequence of float
        MNI z (mm) of the slices.
    percentile : float
        In (0, 100].
    panel_inches : float
    cache : dict, optional
        Background and mask resampled per map grid, reused across calls (one per report).

    Returns
    -------
    matplotlib.figure.Figure

    Raises
    ------
    ValueError
        ``maps`` or ``cut_coords`` is empty.
    """
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    methods = list(maps)
    cuts = [float(z) for z in cut_coords]
    if not methods or not cuts:
        raise ValueError("'maps' and 'cut_coords' must not be empty")
    cmap = matplotlib.colormaps["RdBu_r"]
    shape0 = nib.as_closest_canonical(maps[methods[0]]).shape
    aspect = shape0[1] / shape0[0]
    label_w, n_cols = 1.35, len(cuts)
    width = label_w + panel_inches * n_cols
    fig = Figure(figsize=(width, panel_inches * aspect * len(methods) + 1.25))
    height = fig.get_figheight()
    top, bottom = 1 - 0.35 / height, 0.95 / height
    row_h = (top - bottom) / len(methods)
    cache = {} if cache is None else cache
    for r, method in enumerate(methods):
        data, affine = _canonical(maps[method])
        grid = _grid(cache, affine, data.shape, background, brain)
        scale = panel_scale(data, grid["brain"], percentile)
        # one mosaic image per method (slices side by side): one axes per row draws fast
        tiles = []
        for z in cuts:
            k = _world_to_k(affine, data.shape, z)
            tiles.append(
                None if k is None else relevance_rgba(data[:, :, k].T / scale, grid, k, cmap)
            )
        blank = np.ones((data.shape[1], data.shape[0], 3))
        gap = np.ones((data.shape[1], 1, 3))
        row = [t if t is not None else blank for t in tiles]
        mosaic = np.concatenate([x for t in row for x in (t, gap)][:-1], axis=1)
        left = label_w / width
        ax = fig.add_axes([left, top - (r + 1) * row_h + 0.004, 1 - left - 0.005, row_h - 0.008])
        ax.imshow(mosaic, origin="lower", interpolation="nearest", aspect="equal")
        ax.set_xticks([])
        ax.set_yticks([])
        for spine in ax.spines.values():
            spine.set_visible(False)
        ax.set_ylabel(f"{_wrapped(method.replace('_', ' '), 14)}\n÷ {scale:.2g}",
                      fontsize=8.5, rotation=0, ha="right", va="center")  # fmt: skip
        step = data.shape[0] + 1
        for c, z in enumerate(cuts):
            if r == 0:
                ax.text(c * step + data.shape[0] / 2, data.shape[1] + 1, f"z = {z:g} mm",
                        ha="center", va="bottom", fontsize=8.5)  # fmt: skip
            if tiles[c] is None:
                ax.text(c * step + data.shape[0] / 2, data.shape[1] / 2, "outside map",
                        ha="center", va="center", fontsize=7)  # fmt: skip
        if r == 0:
            ax.text(1, data.shape[1] - 2, "L", ha="left", va="top", fontsize=7)
            ax.text(data.shape[0] - 2, data.shape[1] - 2, "R", ha="right", va="top", fontsize=7)
    cax = fig.add_axes([0.3, 0.42 / height, 0.4, 0.12 / height])
    cb = fig.colorbar(ScalarMappable(Normalize(-1, 1), cmap), cax=cax, orientation="horizontal")
    cb.set_ticks([-1, -0.5, 0, 0.5, 1])
    cb.ax.tick_params(labelsize=7)
    cb.set_label(f"relevance ÷ the map's {percentile:g}th percentile of |relevance| in the brain "
                 "(a.u.; divisor beside each row)", fontsize=7.5)  # fmt: skip
    cb.ax.xaxis.set_label_position("top")
    return fig
