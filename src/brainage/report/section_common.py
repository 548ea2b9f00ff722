"""What the report's section builders share: the error guard and the template images."""

from __future__ import annotations

import logging

from brainage.report.run_folder import RunFolder

# the report's log records keep the logger name they had before the section builders moved here
log = logging.getLogger("brainage.report.html")


def _safe(section: str, run: RunFolder, fn, *args, **kwargs):
    """Run one section builder; on any error record it and return None (the page still renders)."""
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # a broken figure must not cost the whole report
        log.warning("report section %s failed: %s", section, exc)
        run.problems.append(f"section '{section}' could not be drawn: {type(exc).__name__}: {exc}")
        return None


def _background(res: str):
    from brainage.space import load_template

    try:
        return load_template(float(str(res).replace("p", ".")))["t1w"]
    except Exception:  # unknown resolution label: nilearn's bundled template is the fallback
        return None


def _brain_mask(res):
    from brainage.space import load_template

    try:
        return load_template(float(str(res).replace("p", ".")))["mask"]
    except Exception:  # unknown resolution label: scale over nonzero voxels instead
        return None
