"""Progress of long work: a bar on a terminal, else lines in the log (always in the log file)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from brainage.parallel.progress import StageProgress

log = logging.getLogger("brainage")

__all__ = ["StageProgress", "setup_logging"]


def setup_logging(log_file: Path | None = None, console: bool = True) -> None:
    """Log brainage messages to stderr (INFO) and to ``log_file`` (DEBUG, appended).

    Idempotent: handlers added by an earlier call for the same file are reused.
    """
    logger = logging.getLogger("brainage")
    logger.setLevel(logging.DEBUG)
    logger.propagate = False
    fmt = logging.Formatter("%(asctime)s %(levelname)s %(message)s", "%Y-%m-%d %H:%M:%S")
    have = {getattr(h, "_brainage", None) for h in logger.handlers}
    if console and "console" not in have:
        h = logging.StreamHandler(sys.stderr)
        h.setLevel(logging.INFO)
        h.setFormatter(logging.Formatter("%(message)s"))
        h._brainage = "console"
        logger.addHandler(h)
    if log_file is not None:
        tag = f"file:{Path(log_file).resolve()}"
        for h in list(logger.handlers):
            if str(getattr(h, "_brainage", "")).startswith("file:") and h._brainage != tag:
                logger.removeHandler(h)
                h.close()
        if tag not in have:
            Path(log_file).parent.mkdir(parents=True, exist_ok=True)
            fh = logging.FileHandler(log_file, encoding="utf-8")
            fh.setLevel(logging.DEBUG)
            fh.setFormatter(fmt)
            fh._brainage = tag
            logger.addHandler(fh)
