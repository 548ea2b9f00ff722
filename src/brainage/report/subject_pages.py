"""One report page per subject: ``OUT/sub-<label>.html`` (as fMRIPrep does).

Each page shows, for every scan of the subject (one, or one per session): the prediction (age,
brain age, brain-age gap, uncertainty, interval, split, fold), the registration quality with the
run's QC threshold, the QC picture, every method's relevance map in several axial slices on one
shared scale (:func:`brainage.report.figures_maps.subject_slices_figure`) and an interactive
viewer of the first method's map over the template (:func:`nilearn.plotting.view_img`, written
beside the QC picture as ``sub-<label>/figures/<scan>_desc-<method>_viewer.html`` with its
JavaScript embedded, so it works offline). The pages link back to the summary report, which
links to them from its subject table.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path

import nibabel as nib

from brainage.io.atomic import write_text
from brainage.io.layout import label, parse_entities, scan_names
from brainage.io.scans import subject_of_key
from brainage.report import figures_maps as fm
from brainage.report.figures_common import figure_to_data_uri
from brainage.report.run_folder import RunFolder
from brainage.report.section_common import _background, _brain_mask

log = logging.getLogger("brainage.report.html")

#: Bump when a page or viewer changes: cached ones are rewritten.
PAGE_VERSION = "2"
_KEY = re.compile(r"<!-- brainage-key: ([0-9a-f]+) -->")


def _content_key(*parts) -> str:
    """Hash of what a page or viewer is computed from (file contents by hash, values as JSON)."""
    import hashlib
    import json

    from brainage.utils import file_hash

    items = [file_hash(p, length=32) if isinstance(p, Path) else p for p in parts]
    blob = json.dumps([PAGE_VERSION, *items], sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:32]


def _is_current(path: Path, key: str) -> bool:
    """Return True when ``path`` exists and was written from inputs with this key."""
    try:
        with open(path, encoding="utf-8") as fh:
            head = fh.read(200)
    except OSError:
        return False
    m = _KEY.search(head)
    return bool(m and m.group(1) == key)


def _write_keyed(path: Path, key: str, html: str) -> None:
    """Write ``html`` atomically with its content key in a comment after the doctype."""
    marker = f"<!-- brainage-key: {key} -->"
    if html.lstrip().lower().startswith("<!doctype"):
        head, _, rest = html.partition(">")
        html = f"{head}>\n{marker}{rest}"
    else:
        html = f"{marker}\n{html}"
    write_text(path, html)


#: The only network reference nilearn's viewer page has (a favicon); removed so nothing loads.
_FAVICON = re.compile(r"<link[^>]*rel=[\"'](?:shortcut )?icon[\"'][^>]*>", re.I)


def subject_page_path(root: Path, key: str) -> Path:
    """``OUT/sub-<label>.html``: the page of the subject of scan ``key``."""
    return Path(root) / f"{scan_names(key)[0]}.html"


def viewer_path(root: Path, key: str, method: str) -> Path:
    """``OUT/sub-<label>/figures/<scan>_desc-<method>_viewer.html`` (bidsignored)."""
    sub, _, prefix = scan_names(key)
    return Path(root) / sub / "figures" / f"{prefix}_desc-{label(method)}_viewer.html"


def viewer_html(img, background=None, title: str = "") -> str:
    """Return a standalone interactive viewer of a relevance map (nilearn ``view_img``).

    Parameters
    ----------
    img : nibabel.Nifti1Image
        3D map in template space (MNI mm).
    background : nibabel.Nifti1Image, optional
        Anatomy under the map; default nilearn's bundled MNI152 template (never downloaded).
    title : str

    Returns
    -------
    str
        An HTML document with its JavaScript (jQuery, brainsprite) and images embedded; the
        colour scale is symmetric at the 99.5th percentile of ``|r|`` over nonzero voxels, and
        values below 5 % of it are transparent.
    """
    import numpy as np
    from nilearn import plotting

    data = np.abs(np.asarray(img.dataobj, dtype=np.float64))
    values = data[np.isfinite(data) & (data > 0)]
    vmax = float(np.percentile(values, 99.5)) if values.size else 1.0
    kwargs = {"bg_img": background} if background is not None else {}
    view = plotting.view_img(
        img, symmetric_cmap=True, vmax=vmax, threshold=0.05 * vmax, cmap="RdBu_r",
        black_bg=False, title=title, colorbar=True, resampling_interpolation="nearest",
        dim=-0.3, **kwargs,
    )  # fmt: skip
    return _FAVICON.sub("", view.get_standalone())


def write_subject_pages(
    run: RunFolder, context: dict, viewer: bool = True, n_jobs: int = 1,
    backend: str = "processes",
) -> dict[str, str]:  # fmt: skip
    """Write one page per subject of the run and return ``scan key → page link``.

    Parameters
    ----------
    run : RunFolder
    context : dict
        The summary report's context (:func:`brainage.report.html.build_context`): its
        ``subjects`` rows, ``title``, ``version`` and ``synthetic`` flag are reused.
    viewer : bool
        Also write the interactive viewer of each scan's first-method map.
    n_jobs : int
        Worker processes (:func:`brainage.parallel.run_tasks`; the pages are independent).
    backend : {"processes", "serial", "dask"}

    Returns
    -------
    dict of str to str
        Link of each scan's page relative to the run folder (``"sub-01.html#sub-01_ses-2"``).

    Raises
    ------
    Exception
        The first error of a worker (the report stage then records the section as failed).
    """
    import functools

    from brainage.parallel import run_tasks

    section = context.get("subjects")
    if not section:
        return {}
    by_subject: dict[str, list[dict]] = {}
    for row in section["rows"]:
        by_subject.setdefault(subject_of_key(row["pid"]), []).append(row)
    subjects = sorted(by_subject)
    pages = [subject_page_path(run.root, s).name for s in subjects]
    jobs = [
        {"subject": s, "rows": by_subject[s], "page": pages[i],
         "previous": pages[i - 1] if i > 0 else None,
         "next": pages[i + 1] if i + 1 < len(pages) else None}
        for i, s in enumerate(subjects)
    ]  # fmt: skip
    shared = {
        "title": context["title"], "version": context["version"],
        "synthetic": context["synthetic"], "threshold": section["threshold"],
        "mad": section["mad"], "viewer": viewer,
    }  # fmt: skip
    n = max(1, min(int(n_jobs), len(jobs)))
    chunks = [jobs[i::n] for i in range(n)]
    write = functools.partial(_write_pages, run, shared)
    if n == 1:
        results = [write(chunks[0])]
    else:
        results = []
        for _, out in run_tasks(write, chunks, n_jobs=n, backend=backend, progress=False):
            if isinstance(out, BaseException):
                raise out
            results.append(out)
    links = {k: v for part in results for k, v in part.items()}
    log.info("report: %d subject page(s)", len(subjects))
    return links


def _write_pages(run: RunFolder, shared: dict, jobs: list[dict]) -> dict[str, str]:
    """Render the pages of ``jobs`` (one per subject); return ``scan key → link``."""
    from brainage.report.html import template_environment

    methods = [m for m in run.explained_methods if run.subject_maps.get(m)]
    first_map = next((p for m in methods for p in run.subject_maps[m].values()), None)
    res = parse_entities(first_map).get("res") if first_map is not None else None
    background = _background(res) if res else None
    brain = _brain_mask(res) if res else None
    template = template_environment().get_template("subject.html")
    grids: dict = {}
    links: dict[str, str] = {}
    for job in jobs:
        page_path = run.root / job["page"]
        map_files = [run.subject_maps[m][r["pid"]] for r in job["rows"] for m in methods
                     if r["pid"] in run.subject_maps[m]]  # fmt: skip
        page_key = _content_key(job, shared, methods, res, *map_files)
        if _is_current(page_path, page_key):
            for row in job["rows"]:
                links[row["pid"]] = f"{job['page']}#{scan_names(row['pid'])[2]}"
            continue
        scans = []
        for row in job["rows"]:
            key = row["pid"]
            maps = {m: nib.load(str(run.subject_maps[m][key]))
                    for m in methods if key in run.subject_maps[m]}  # fmt: skip
            figure = viewer_link = None
            if maps:
                fig = fm.subject_slices_figure(maps, background, brain, cache=grids)
                figure = figure_to_data_uri(fig, dpi=90, max_colors=256)
                if shared["viewer"]:
                    method = next(iter(maps))
                    path = viewer_path(run.root, key, method)
                    vkey = _content_key(run.subject_maps[method][key], res, key, method)
                    if not _is_current(path, vkey):
                        html = viewer_html(maps[method], background, method)
                        _write_keyed(path, vkey, html)
                    viewer_link = {"uri": path.relative_to(run.root).as_posix(), "method": method}
            scans.append({**row, "anchor": scan_names(key)[2], "figure": figure,
                          "methods": list(maps), "viewer": viewer_link})  # fmt: skip
        _write_keyed(page_path, page_key, template.render(
            title=shared["title"], version=shared["version"], synthetic=shared["synthetic"],
            subject=scan_names(job["subject"])[0], scans=scans, threshold=shared["threshold"],
            mad=shared["mad"], previous=job["previous"], next=job["next"],
        ))  # fmt: skip
        for scan in scans:
            links[scan["pid"]] = f"{job['page']}#{scan['anchor']}"
    return links


#: Template resolution (mm) under the population viewers (finer than the 4 mm model grid).
POPULATION_VIEWER_BG_MM = 2.0


def population_viewer_path(root: Path, method: str) -> Path:
    """``OUT/figures/method-<m>_stat-mean_viewer.html`` (bidsignored)."""
    return Path(root) / "figures" / f"method-{label(method)}_stat-mean_viewer.html"


def write_population_viewers(run: RunFolder) -> dict[str, str]:
    """Write an interactive viewer of each method's population mean map; return the links.

    The viewer (:func:`viewer_html`) shows the map over the template at
    :data:`POPULATION_VIEWER_BG_MM` mm. Returns ``method → link`` relative to the run folder.
    """
    from brainage.space import load_template

    background = load_template(POPULATION_VIEWER_BG_MM)["t1w"]
    links = {}
    for method, pop in sorted(run.population.items()):
        if "mean" not in pop:
            continue
        path = population_viewer_path(run.root, method)
        key = _content_key(Path(pop["mean"]), POPULATION_VIEWER_BG_MM, method)
        if not _is_current(path, key):
            img = nib.load(str(pop["mean"]))
            _write_keyed(path, key, viewer_html(img, background, method))
        links[method] = path.relative_to(run.root).as_posix()
    return links
