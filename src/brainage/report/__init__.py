"""The HTML report of a run folder, and its reusable figures (:mod:`.make_figures`)."""

from brainage.report import make_figures
from brainage.report.html import build_context, render_report, write_report
from brainage.report.run_folder import RunFolder, metrics_from_predictions, read_run_folder

__all__ = [
    "RunFolder",
    "build_context",
    "make_figures",
    "metrics_from_predictions",
    "read_run_folder",
    "render_report",
    "write_report",
]
