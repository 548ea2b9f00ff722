"""The HTML report: one self-contained page summarising a run folder.

The page embeds every figure as a base64 PNG and its CSS inline; it loads nothing from the network,
so it can be mailed, archived or opened offline. Every section renders even when its inputs are
missing (it then says "not computed").
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from brainage.report.formatting import _fmt, _pval, _sig
from brainage.report.run_folder import RunFolder, read_run_folder
from brainage.report.section_common import _safe
from brainage.report.section_crossfit import _crossfit_section
from brainage.report.section_population import N_TOP_REGIONS, _methods_section
from brainage.report.section_predictions import (
    _bias_section,
    _cohort_frame,
    _cohort_section,
    _metrics,
    _metrics_section,
    _scatter_section,
    _summary,
    _training_section,
)
from brainage.report.section_run import (
    N_FAILURES_SHOWN,
    N_QC_GALLERY,
    _failures_section,
    _provenance_section,
    _qc_section,
    _subjects_section,
)
from brainage.report.section_stats import _gap_section, _stats_section
from brainage.report.section_subgroups import _stability_section, _subgroups_section
from brainage.report.section_xai import (
    LESION_ALPHA,
    N_XAI_SUBJECTS,
    XAI_TABLE_COLUMNS,
    _sanity,
    _xai_section,
)

__all__ = [
    "LESION_ALPHA",
    "N_FAILURES_SHOWN",
    "N_QC_GALLERY",
    "N_TOP_REGIONS",
    "N_XAI_SUBJECTS",
    "XAI_TABLE_COLUMNS",
    "build_context",
    "render_report",
    "write_report",
]


def write_report(
    out_dir, path=None, title: str | None = None, subject_pages: bool = True, n_jobs: int = 1
) -> Path:
    """Write ``OUT/report.html`` for the run folder ``out_dir``, and a page per subject.

    Parameters
    ----------
    out_dir : str or Path
        Run folder (see DESIGN.md for its layout). Only ``predictions.tsv`` is required.
    path : str or Path, optional
        Where to write the page; default ``out_dir / "report.html"``.
    title : str, optional
        Page title; default the ``Name`` of ``dataset_description.json``.
    subject_pages : bool
        Also write ``OUT/sub-<label>.html`` for every subject (prediction, QC picture, relevance
        maps in several slices, an interactive viewer; :mod:`brainage.report.subject_pages`),
        linked from the subject table, and an interactive viewer of each population mean map
        (``OUT/figures/``), embedded in the methods section.
    n_jobs : int
        Worker processes for the subject pages.

    Returns
    -------
    Path
        The HTML file, written atomically. It is self-contained: figures are ``data:`` URIs, the
        CSS is inline and nothing refers to an external URL (the subject pages link to the QC
        pictures and viewers under ``sub-<label>/figures/``).

    Raises
    ------
    InputError
        ``out_dir`` or its ``predictions.tsv`` is missing or unusable.
    """
    from brainage.io.atomic import write_text

    out_dir = Path(out_dir)
    html = render_report(out_dir, title=title, subject_pages=subject_pages, n_jobs=n_jobs)
    return write_text(Path(path) if path is not None else out_dir / "report.html", html)


def render_report(
    out_dir, title: str | None = None, subject_pages: bool = False, n_jobs: int = 1
) -> str:
    """Return the report of ``out_dir`` as an HTML string (see :func:`write_report`).

    With ``subject_pages`` the per-subject pages are written first and linked.
    """
    run = read_run_folder(out_dir)
    context = build_context(run, title=title)
    if subject_pages and context.get("subjects"):
        from brainage.report.subject_pages import write_subject_pages

        links = _safe("subject pages", run, write_subject_pages, run, context, n_jobs=n_jobs) or {}
        for row in context["subjects"]["rows"]:
            row["page"] = links.get(row["pid"])
    if subject_pages:
        from brainage.report.subject_pages import write_population_viewers

        viewers = _safe("population viewers", run, write_population_viewers, run) or {}
        for entry in context["methods"]:
            entry["viewer"] = viewers.get(entry["name"])
    context["problems"] = list(run.problems)
    return template_environment().get_template("report.html").render(**context)


def template_environment():
    """Return the jinja2 environment of the report templates (strict, with number filters)."""
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.PackageLoader("brainage.report", "templates"),
        autoescape=jinja2.select_autoescape(["html"]),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["fmt"] = _fmt
    env.filters["pval"] = _pval
    env.filters["sig"] = _sig
    env.filters["wbr"] = _word_breaks
    return env


def _word_breaks(name):
    """Escape a label and let it break after underscores, never inside a word.

    For atlas names such as ``Left_Superior_Temporal_Gyrus_anterior_division``; returns markup.
    """
    from markupsafe import Markup, escape

    return Markup(str(escape(str(name))).replace("_", "_<wbr>"))


# --------------------------------------------------------------------------------------------
# context
# --------------------------------------------------------------------------------------------


def build_context(run: RunFolder, title: str | None = None) -> dict:
    """Collect everything the template shows (figures already rendered to data URIs).

    Parameters
    ----------
    run : RunFolder
        From :func:`brainage.report.run_folder.read_run_folder`.
    title : str, optional

    Returns
    -------
    dict
        Keys ``title``, ``summary``, ``cohort``, ``scatter``, ``metrics``, ``bias``,
        ``training``, ``xai``, ``methods``, ``qc``, ``failures``, ``provenance``, ``problems``,
        ``generated``.
    """
    import brainage

    desc = run.description or {}
    metrics, metrics_source = _metrics(run)
    cohort = _cohort_frame(run)
    context = {
        "title": title or desc.get("Name") or "brainage report",
        "generated": _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z"),
        "version": (run.provenance or {}).get("version") or brainage.__version__,
        "run_dir": str(run.root.resolve()),
        "synthetic": bool((desc.get("brainage") or {}).get("synthetic")),
    }
    sanity = _sanity(run)
    context["summary"] = _summary(run, metrics, cohort)
    context["summary"]["sanity"] = {
        "passing": [m for m, v in sanity.items() if v == "pass"],
        "failing": [m for m, v in sanity.items() if v == "fail"],
    }
    context["cohort"] = _safe("cohort", run, _cohort_section, run, cohort)
    context["scatter"] = _safe("scatter", run, _scatter_section, run)
    context["metrics"] = _safe("metrics", run, _metrics_section, run, metrics, metrics_source)
    context["crossfit"] = _safe("cross-fitting", run, _crossfit_section, run)
    context["bias"] = _safe("bias", run, _bias_section, run)
    context["training"] = _safe("training", run, _training_section, run)
    context["xai"] = _safe("explanation methods", run, _xai_section, run, sanity)
    context["methods"] = _safe("methods", run, _methods_section, run) or []
    for entry in context["methods"]:
        entry["sanity"] = sanity.get(entry["name"])
        entry["viewer"] = None  # interactive viewer, once written (render_report)
    context["subgroups"] = _safe("subgroup maps", run, _subgroups_section, run)
    context["stability"] = _safe("rank stability", run, _stability_section, run)
    context["stats"] = _safe("statistics", run, _stats_section, run)
    context["gap_stats"] = _safe("brain-age gap vs. covariates", run, _gap_section, run)
    context["qc"] = _safe("qc", run, _qc_section, run)
    context["subjects"] = _safe("subjects", run, _subjects_section, run)
    context["failures"] = _safe("failures", run, _failures_section, run)
    context["provenance"] = _safe("provenance", run, _provenance_section, run)
    context["problems"] = list(run.problems)
    return context
