"""Shared pieces of the report figures: split colours and order, axes style, PNG data URIs.

Used by :mod:`.figures_plots`, :mod:`.figures_maps` and the report sections; re-exported by
:mod:`.make_figures`.
"""

from __future__ import annotations

import base64
import io
from pathlib import Path

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


def _natural_key(text: str):
    import re

    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", str(text))]
