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
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{writer_tag()}.", suffix=f".tmp{suffix}",
                               dir=path.parent)  # fmt: skip
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


def _host() -> str:
    import socket

    return "".join(c for c in socket.gethostname() if c.isalnum()) or "host"


def writer_tag() -> str:
    """Return ``<host>-<pid>`` of this process, part of every temporary file's name."""
    return f"{_host()}-{os.getpid()}"


def temporary_is_stale(path: str | Path, max_age_s: float = 86400.0) -> bool:
    """Whether a temporary file of :func:`atomic_path` was left by a writer that is gone.

    Its writer (host and pid in the name) is this process, or a process of this host that no
    longer runs; a writer on another host (a shared file system) counts as gone when the file
    is older than ``max_age_s``. Concurrent runs into one folder (BIDS-Apps participant jobs)
    therefore never delete each other's files being written.
    """
    import re
    import time

    path = Path(path)
    m = re.search(r"\.([A-Za-z0-9]+)-(\d+)\.[A-Za-z0-9_]+\.tmp", path.name)
    host, pid = (m[1], m[2]) if m else ("", "")
    if not pid.isdigit() or host != _host():
        try:
            return time.time() - path.stat().st_mtime > max_age_s or not pid.isdigit()
        except OSError:
            return False
    if int(pid) == os.getpid():
        return True
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


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


def write_tsv(
    path: str | Path, frame, descriptions: dict | None = None, dictionary: bool = True
) -> Path:
    """Write a :class:`pandas.DataFrame` atomically as a tab-separated file (``n/a`` = missing).

    Parameters
    ----------
    path : str or Path
        Destination ``.tsv``.
    frame : pandas.DataFrame
        The table; written without its index. Scan keys of sessions in ``participant_id``
        (``"sub-01_ses-2"``) are written as ``participant_id`` and ``session_id`` columns
        (:func:`brainage.io.scans.split_scan_keys`).
    descriptions : dict, optional
        Data-dictionary entries of columns (``{"col": {"Description": …, "Units": …}}``) that
        take precedence over :func:`brainage.io.dictionary.describe_column`.
    dictionary : bool
        Also write the BIDS data dictionary ``<name>.json`` beside the table (before it, so a
        table never lacks its dictionary): an entry for every documented column.

    Returns
    -------
    Path
        ``path``.
    """
    from brainage.io.scans import split_scan_keys

    path = Path(path)
    frame = split_scan_keys(frame)
    if dictionary:
        from brainage.io.dictionary import data_dictionary

        entries = data_dictionary(list(frame.columns), path.name, descriptions)
        write_json(path.with_suffix(".json"), entries)
    with atomic_path(path) as tmp:
        frame.to_csv(tmp, sep="\t", index=False, na_rep="n/a", float_format="%.6g")
    return path


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
