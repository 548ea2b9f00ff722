"""Scan keys: one row per T1w scan, also in longitudinal cohorts (BIDS sessions).

A cohort has one row per *scan*. In a cross-sectional cohort a scan is a subject and its key is
the ``participant_id`` (``"sub-01"``). In a longitudinal BIDS dataset each session is a scan of
its own, keyed ``"<participant_id>_<session_id>"`` (``"sub-01_ses-2"``, the BIDS file-name
prefix of the scan). Inside brainage the key travels in the ``participant_id`` column of every
table and as the item id of per-scan stages, so a cross-sectional cohort sees no difference.
At the file boundary :func:`split_scan_keys` (called by :func:`brainage.io.atomic.write_tsv`)
writes a key as the two BIDS columns ``participant_id`` and ``session_id``, and
:func:`read_tsv` joins them back, so every written table is what pybids and BIDS tools expect.

Splits group the scans of one subject (:func:`subject_of_key`), so no subject's sessions
straddle folds.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

#: Separator between the participant and the session of a scan key.
SESSION_SEP = "_ses-"

#: BIDS ``anat`` suffixes a scan may add to its T1w as further input channels
#: (``preprocess.modalities``); a cohort table names them in lower case (``flair``, ``t2w``).
EXTRA_MODALITIES = ("FLAIR", "T2w", "PDw")


def modality_column(modality: str) -> str:
    """Cohort-table column of a modality's image path: ``"FLAIR"`` → ``"flair"``."""
    return modality.lower()


def scan_key(participant_id: str, session_id: str | None = None) -> str:
    """Return the key of a scan: ``participant_id`` or ``"<participant_id>_ses-<label>"``.

    ``session_id`` may be given with or without the ``ses-`` prefix; ``None``, ``""`` and
    ``"n/a"`` mean no session.
    """
    pid = str(participant_id)
    ses = "" if session_id is None else str(session_id).strip()
    if ses in ("", "n/a", "nan", "None"):
        return pid
    return f"{pid}{SESSION_SEP}{ses.removeprefix('ses-')}"


def split_key(key: str) -> tuple[str, str | None]:
    """Return ``(participant_id, session_id)`` of a scan key (``ses-<label>``, or None)."""
    key = str(key)
    pid, sep, ses = key.rpartition(SESSION_SEP)
    if not sep or not pid or not ses:
        return key, None
    return pid, f"ses-{ses}"


def subject_of_key(key: str) -> str:
    """Return the participant id of a scan key (``"sub-01_ses-2"`` → ``"sub-01"``)."""
    return split_key(key)[0]


def has_sessions(keys) -> bool:
    """Return True when any key of ``keys`` names a session."""
    return any(split_key(k)[1] is not None for k in keys)


def split_scan_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Write scan keys as BIDS columns: ``participant_id`` → ``participant_id, session_id``.

    Returns ``frame`` itself when it has no ``participant_id`` column, already has a
    ``session_id`` column, or no key names a session; otherwise a copy with ``session_id``
    (``ses-<label>``, ``n/a`` for scans without a session) right after ``participant_id``.
    """
    if "participant_id" not in frame.columns or "session_id" in frame.columns:
        return frame
    keys = frame["participant_id"]
    if not has_sessions(keys.dropna()):
        return frame
    parts = [split_key(k) if isinstance(k, str) else (k, None) for k in keys]
    out = frame.copy()
    out["participant_id"] = [p for p, _ in parts]
    at = list(out.columns).index("participant_id") + 1
    out.insert(at, "session_id", [s if s is not None else "n/a" for _, s in parts])
    return out


def join_scan_keys(frame: pd.DataFrame) -> pd.DataFrame:
    """Inverse of :func:`split_scan_keys`: ``participant_id, session_id`` → one key column."""
    if "participant_id" not in frame.columns or "session_id" not in frame.columns:
        return frame
    out = frame.drop(columns="session_id")
    out["participant_id"] = [
        scan_key(p, None if pd.isna(s) else s)
        for p, s in zip(frame["participant_id"], frame["session_id"], strict=True)
    ]
    return out


def read_tsv(path: str | Path, **kwargs) -> pd.DataFrame:
    """Read a brainage TSV (``n/a`` missing, ``participant_id`` as text) with scan keys joined.

    Keyword arguments go to :func:`pandas.read_csv`.
    """
    given = kwargs.pop("dtype", None)
    dtype = given if given is not None and not isinstance(given, dict) else {
        "participant_id": str, "session_id": str, **(given or {})}  # fmt: skip
    kwargs.setdefault("na_values", ["n/a"])
    frame = pd.read_csv(path, sep="\t", dtype=dtype, **kwargs)
    return join_scan_keys(frame)


def group_by_subject(keys, ages) -> tuple[pd.DataFrame, list[str]]:
    """Collapse scans to subjects for a subject-grouped split.

    Parameters
    ----------
    keys : sequence of str
        Scan keys.
    ages : sequence of float
        Age of each scan in years (NaN = unknown).

    Returns
    -------
    subjects : pandas.DataFrame
        One row per subject, in order of first appearance: ``participant_id`` and ``age``, the
        mean of its known scan ages (NaN when none is known); the age stratifies the split.
    subject_of : list of str
        The subject of each scan.
    """
    subject_of = [subject_of_key(k) for k in keys]
    frame = pd.DataFrame({"participant_id": subject_of, "age": pd.to_numeric(ages)})
    subjects = frame.groupby("participant_id", sort=False)["age"].mean().reset_index()
    return subjects, subject_of
