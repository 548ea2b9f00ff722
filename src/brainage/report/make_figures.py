"""Figures of the brainage report, reusable on their own.

Every ``*_figure`` function returns a :class:`matplotlib.figure.Figure` built without pyplot (so
no GUI backend and no global figure state is involved); :func:`figure_to_data_uri` turns it into an
embeddable ``data:image/png;base64,…`` URI and closes it. Ages are in years; brain maps live in
template space (``MNI152NLin2009aSym``) with their own affines.

The figures live in :mod:`.figures_common` (data URIs, split colours), :mod:`.figures_plots`
(histograms, scatter plots, curves, bars) and :mod:`.figures_maps` (brain maps); this module
gathers them under one name.
"""

from brainage.report.figures_common import (
    SPLIT_COLORS,
    SPLIT_ORDER,
    figure_to_data_uri,
    png_file_to_data_uri,
)
from brainage.report.figures_maps import (
    DEFAULT_CUT_COORDS,
    TRUTH_COLOR,
    VENTRICLE_Z_MM,
    axial_slice_with_most,
    methods_side_by_side_figure,
    panel_scale,
    stat_map_figure,
)
from brainage.report.figures_plots import (
    age_histogram_figure,
    gap_figure,
    interval_figure,
    predicted_vs_age_figure,
    qc_histogram_figure,
    region_bar_figure,
    scatter_axes,
    training_curves_figure,
)

__all__ = [
    "DEFAULT_CUT_COORDS",
    "SPLIT_COLORS",
    "SPLIT_ORDER",
    "TRUTH_COLOR",
    "VENTRICLE_Z_MM",
    "age_histogram_figure",
    "axial_slice_with_most",
    "figure_to_data_uri",
    "gap_figure",
    "interval_figure",
    "methods_side_by_side_figure",
    "panel_scale",
    "png_file_to_data_uri",
    "predicted_vs_age_figure",
    "qc_histogram_figure",
    "region_bar_figure",
    "scatter_axes",
    "stat_map_figure",
    "training_curves_figure",
]
