"""Atomic file writes: a file either exists complete or not at all.

Every output of brainage is written to a temporary file in the destination folder and moved into
place with :func:`os.replace`, which is atomic on POSIX file systems. A run killed at any point
therefore never leaves a half-written file under its final name. Files get the permissions that
the user's umask gives any new file (``0644`` under umask ``022``), so collaborators can read a run.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path that is moved to ``path`` when the block ends without error.

    Parameters
    ----------
    path : str or Path
        Final destination. Parent folders are created. The temporary file keeps the suffixes of
        ``path`` (e.g. ``.nii.gz``) so that libraries choosing a format from the name still work.

    Yields
    ------
    Path
        Where to write. On an exception the temporary file is removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        # mkstemp creates 0600; give the file the mode any other tool's output gets (umask)
        os.chmod(tmp_path, 0o666 & ~current_umask())
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def current_umask() -> int:
    """Return the process's file-creation mask (e.g. ``0o022``) without changing it.

    Read from ``/proc/self/status`` where available (thread-safe); elsewhere set and restored
    with :func:`os.umask`.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` atomically (UTF-8) and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


def write_json(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON to ``path`` atomically and return the path."""
    return write_text(
        path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n"
    )


def write_tsv(path: str | Path, frame) -> Path:
    """Write a :class:`pandas.DataFrame` atomically as a tab-separated file (``n/a`` = missing)."""
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return Path(path)


def _json_default(obj: Any) -> Any:
    import numpy as np

    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.floating):
        return float(obj)
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")
