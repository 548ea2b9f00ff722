"""Cohorts: which subjects, their ages and their images (METHODS §1).

A cohort is read from a BIDS dataset (``participants.tsv`` + ``sub-*/anat/*_T1w.nii.gz``) or from
a CSV/TSV table with the columns ``participant_id``, ``age`` and an image path column. Age is in
years (float); ``n/a`` or an empty cell means unknown: such subjects are predicted, never trained on
or scored.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from brainage.errors import InputError
from brainage.io.scans import EXTRA_MODALITIES, modality_column, scan_key, subject_of_key

log = logging.getLogger("brainage")

#: Names accepted for the T1w image column of a cohort table, in order of preference.
IMAGE_COLUMNS = ("t1w", "T1w", "path", "image", "image_path", "t1w_path")
_NA = {"", "n/a", "na", "nan", "none", "null"}


@dataclass
class Cohort:
    """Subjects with ages and T1w image paths.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per usable scan; columns ``participant_id`` (str, unique: the scan key, which is
        the participant id, or ``<participant_id>_ses-<label>`` for a session of a longitudinal
        dataset, :mod:`brainage.io.scans`), ``age`` (float, years, NaN when unknown), ``t1w``
        (absolute path, str), one column per further modality found (``flair``, ``t2w``,
        ``pdw``: absolute path, ``""`` for a scan without one; :data:`EXTRA_MODALITIES`) and any
        further columns of the source table (``sex``, ``site``, covariates).
    source : str
        Where the cohort came from (BIDS folder or table file).
    failures : list of InputError
        Subjects excluded while reading (bad age, missing image), each with its reason.
    truth_dir : Path or None
        ``derivatives/truth`` of a simulated BIDS dataset, when present (ground-truth masks).
    """

    table: pd.DataFrame
    source: str
    failures: list[InputError] = field(default_factory=list)
    truth_dir: Path | None = None

    def __len__(self) -> int:
        return len(self.table)

    @property
    def participant_ids(self) -> list[str]:
        """Scan keys (participant ids; with sessions ``sub-<id>_ses-<id>``), in table order."""
        return self.table["participant_id"].tolist()

    @property
    def has_age(self) -> np.ndarray:
        """Boolean mask, shape (n_subjects,): True where the age is known."""
        return self.table["age"].notna().to_numpy()

    def subset(self, participant_ids) -> Cohort:
        """Return the cohort restricted to ``participant_ids`` (order of the table kept).

        Every scan (session) of a selected participant is kept. Labels may be given with or
        without ``sub-`` (BIDS-Apps ``--participant-label``).

        Raises
        ------
        InputError
            A label that is not in the cohort (with a did-you-mean).
        """
        from brainage.errors import did_you_mean

        wanted = {p if str(p).startswith("sub-") else f"sub-{p}" for p in participant_ids}
        failed = [
            f
            for f in self.failures
            if subject_of_key(getattr(f, "participant_id", None) or "") in wanted
        ]
        subjects = self.table["participant_id"].map(subject_of_key)
        known = set(subjects) | {subject_of_key(f.participant_id or "") for f in self.failures}
        missing = sorted(wanted - known)
        if missing:
            listed = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise InputError(
                f"--participant-label: {listed} not in the cohort of {self.source}",
                did_you_mean(missing[0], sorted(known)),
            )
        keep = subjects.isin(wanted)
        return Cohort(self.table[keep].reset_index(drop=True), self.source, failed, self.truth_dir)

    def failures_frame(self) -> pd.DataFrame:
        """Failures as a table with columns ``participant_id, stage, file, error``."""
        return failures_frame(self.failures, stage="cohort")


def failures_frame(failures, stage: str) -> pd.DataFrame:
    """Turn a list of :class:`InputError` into a ``failures.tsv`` table.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id, stage, file, error``; one row per failure.
    """
    rows = [
        {
            "participant_id": getattr(f, "participant_id", None) or "n/a",
            "stage": stage,
            "file": getattr(f, "path", None) or "n/a",
            "error": str(f),
        }
        for f in failures
    ]
    return pd.DataFrame(rows, columns=["participant_id", "stage", "file", "error"])


def parse_age(value, participant_id: str, source: str) -> float:
    """Parse one age cell into years.

    Parameters
    ----------
    value : object
        The cell: a number, a numeric string, or ``n/a``/empty for unknown.
    participant_id : str
        For the error message.
    source : str
        The table file, for the error message.

    Returns
    -------
    float
        Age in years, or NaN when unknown. Never rounded.

    Raises
    ------
    InputError
        When the cell is not a number, or is negative or above 130 years.
    """
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return float("nan")
    text = str(value).strip()
    if text.lower() in _NA:
        return float("nan")
    try:
        age = float(text)
    except ValueError:
        raise InputError(
            f"age {text!r} is not a number",
            "write the age in years as a decimal number, or n/a when unknown",
            participant_id,
            source,
        ) from None
    if not np.isfinite(age) or age < 0 or age > 130:
        raise InputError(
            f"age {text!r} is not a valid age in years (must be between 0 and 130)",
            "fix the age in the table, or write n/a when unknown",
            participant_id,
            source,
        )
    return age


def _check_unique(ids: pd.Series, source) -> None:
    dup = ids[ids.duplicated()].unique().tolist()
    if dup:
        raise InputError(
            f"participant_id {dup[0]!r} appears more than once"
            + (f" (and {len(dup) - 1} more duplicates)" if len(dup) > 1 else ""),
            "give every subject (or, with session_id, every session) one row with a unique id",
            dup[0],
            source,
        )


def _finish(rows: pd.DataFrame, source: str, failures: list, strict: bool) -> pd.DataFrame:
    """Parse ages, check image existence; move bad subjects to ``failures``."""
    good = []
    for rec in rows.to_dict("records"):
        pid = rec["participant_id"]
        try:
            rec["age"] = parse_age(rec.get("age"), pid, source)
            t1w = rec.get("t1w")
            if t1w is None or (isinstance(t1w, float) and np.isnan(t1w)) or str(t1w) == "":
                raise InputError(
                    "no T1w image given", "add the image path to the table", pid, source
                )
            if not Path(t1w).exists():
                raise InputError(
                    "T1w image file does not exist",
                    "check the path (relative paths are read from the table's folder)",
                    pid,
                    t1w,
                )
        except InputError as err:
            if strict:
                raise
            failures.append(err)
            continue
        good.append(rec)
    columns = list(rows.columns)
    table = pd.DataFrame(good, columns=columns)
    table["age"] = table["age"].astype(float)
    table["participant_id"] = table["participant_id"].astype(str)
    return table.reset_index(drop=True)


#: BIDS entity filters of the T1w scans: short name (as in file names) → pybids entity name.
BIDS_FILTERS = {"ses": "session", "acq": "acquisition", "rec": "reconstruction", "run": "run",
                "ce": "ceagent"}  # fmt: skip


def bids_filters(filters: dict | None) -> dict[str, object]:
    """Validate T1w entity filters and return them as pybids query arguments.

    Parameters
    ----------
    filters : dict, optional
        ``{"acq": "mprage", "run": 1, "ses": ["1", "2"]}``: keys are BIDS entities, short
        (``ses``, ``acq``, ``rec``, ``run``, ``ce``) or as pybids names them (``session``,
        ``acquisition``, …); a value is one label or a list of labels. The form of fMRIPrep's
        ``--bids-filter-file`` (``{"t1w": {…}}``) is accepted too.

    Raises
    ------
    InputError
        An unknown entity or an empty value.
    """
    from brainage.errors import did_you_mean

    filters = dict(filters or {})
    if set(filters) == {"t1w"} and isinstance(filters["t1w"], dict):
        filters = dict(filters["t1w"])
    long_names = {v: v for v in BIDS_FILTERS.values()}
    out: dict[str, object] = {}
    for key, value in filters.items():
        name = BIDS_FILTERS.get(key) or long_names.get(key)
        if name is None:
            known = sorted([*BIDS_FILTERS, *long_names])
            raise InputError(
                f"unknown BIDS filter entity {key!r}",
                f"filter T1w scans by one of {', '.join(known)}; {did_you_mean(key, known)}",
            )
        values = value if isinstance(value, list | tuple) else [value]
        labels = [str(v).strip() for v in values if str(v).strip()]
        if not labels:
            raise InputError(f"BIDS filter {key!r} has no value", "give a label, e.g. acq: mprage")
        prefix = {"session": "ses-", "run": "run-"}.get(name, f"{key}-")
        labels = [lab.removeprefix(prefix) for lab in labels]
        if name == "run":
            labels = [int(lab) if lab.isdigit() else lab for lab in labels]
        out[name] = labels
    return out


def read_filter_file(path: str | Path) -> dict:
    """Read a BIDS filter file (JSON, fMRIPrep's ``--bids-filter-file`` form ``{"t1w": {…}}``).

    Returns
    -------
    dict
        The filters, validated by :func:`bids_filters` (short or pybids entity names).

    Raises
    ------
    InputError
        The file is missing, is not JSON, or is not an object of entity filters.
    """
    import json

    path = Path(path).expanduser()
    fix = 'write a JSON object such as {"t1w": {"acquisition": "mprage", "run": 1}}'
    try:
        filters = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError("BIDS filter file does not exist", fix, path=path) from None
    except (OSError, ValueError) as exc:
        raise InputError(f"cannot read the BIDS filter file ({exc})", fix, path=path) from None
    if not isinstance(filters, dict) or not all(isinstance(k, str) for k in filters):
        raise InputError("the BIDS filter file is not a JSON object of entities", fix, path=path)
    try:
        bids_filters(filters)
    except InputError as err:
        raise InputError(err.problem, err.fix, path=path) from None
    return filters


def _bids_layout(root: Path):
    """Index a BIDS folder with pybids (no validation here: see ``--skip-bids-validation``)."""
    import bids

    try:
        return bids.BIDSLayout(str(root), validate=False)
    except Exception as exc:
        detail = " ".join(str(exc).split())[:300]
        raise InputError(
            f"pybids cannot index the BIDS folder ({type(exc).__name__}: {detail})",
            "check dataset_description.json and the folder structure (bids-validator-deno "
            "DIR lists the problems)",
            path=root,
        ) from None


def _read_bids_tsv(path: Path, column: str, fix: str) -> pd.DataFrame:
    """Read a BIDS TSV as text cells (InputError naming the file: unreadable, no ``column``)."""
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(
            f"cannot read table ({exc})", "write a tab-separated file", path=path
        ) from None
    if column not in table.columns:
        raise InputError(
            f"no {column} column (columns: {', '.join(table.columns)})", fix, path=path
        )
    return table


def _session_ages(layout, root: Path, subject: str) -> dict[str, str]:
    """``session_id → age`` cell from ``sub-<id>/sub-<id>_sessions.tsv`` (empty if absent)."""
    files = layout.get(subject=subject, suffix="sessions", extension=".tsv")
    if not files:
        return {}
    path = Path(files[0].path)
    table = _read_bids_tsv(path, "session_id", "name the session column session_id (ses-<label>)")
    if "age" not in table.columns:
        return {}
    ids = [str(v).strip() for v in table["session_id"]]
    ages = table["age"].tolist()
    return {(v if v.startswith("ses-") else f"ses-{v}"): a for v, a in zip(ids, ages, strict=True)}


def read_bids(path: str | Path, strict: bool = False, filters: dict | None = None) -> Cohort:
    """Read a BIDS dataset of T1w scans with pybids (one row per scan).

    Parameters
    ----------
    path : str or Path
        BIDS root: ``participants.tsv`` (``participant_id``, ``age`` in years, ``n/a`` unknown) and
        ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-<label>][_acq-…][_run-…]_T1w.nii[.gz]``,
        indexed by :class:`bids.BIDSLayout`. In a longitudinal dataset each session is a scan
        of its own, keyed ``sub-<label>_ses-<label>`` (:mod:`brainage.io.scans`), with the age
        of that session from ``sub-<label>/sub-<label>_sessions.tsv`` (column ``age``) when
        given, else the participant's age from ``participants.tsv`` (a warning says so).
    strict : bool
        Raise on the first bad subject instead of recording it in ``Cohort.failures``.
    filters : dict, optional
        BIDS entity filters of the T1w scans (:func:`bids_filters`), e.g. ``{"acq": "mprage"}``.
        When a scan still has several T1w images (runs, acquisitions), the first in sorted
        order is used and a warning names the filter that would choose.

    Returns
    -------
    Cohort
        Scans with an image; subjects listed in ``participants.tsv`` without an image, or with
        an invalid age, are in ``failures``. Subjects with an image but no row get age NaN
        (with a warning).

    Raises
    ------
    InputError
        The folder or ``participants.tsv`` is missing, has no ``participant_id`` column, lists a
        participant twice, or a filter is invalid; pybids cannot index the folder.
    """
    root = Path(path).expanduser().resolve()
    tsv = root / "participants.tsv"
    if not root.is_dir():
        raise InputError("BIDS folder does not exist", "check --bids", path=root)
    if not tsv.exists():
        raise InputError(
            "participants.tsv is missing",
            "a BIDS dataset needs participants.tsv with participant_id and age columns",
            path=tsv,
        )
    parts = _read_bids_tsv(tsv, "participant_id", "name the subject column participant_id")
    parts["participant_id"] = parts["participant_id"].str.strip()
    _check_unique(parts["participant_id"], tsv)
    if "age" not in parts.columns:
        parts["age"] = "n/a"
    query = bids_filters(filters)
    layout = _bids_layout(root)
    files = layout.get(suffix="T1w", datatype="anat", extension=[".nii", ".nii.gz"], **query)
    scans: dict[tuple[str, str | None], list[str]] = {}
    for f in files:
        ent = f.get_entities()
        ses = ent.get("session")
        scans.setdefault((f"sub-{ent['subject']}", f"ses-{ses}" if ses else None), []).append(
            f.path
        )
    several = {k: sorted(v) for k, v in scans.items() if len(v) > 1}
    if several:
        (pid, ses), found = next(iter(sorted(several.items(), key=lambda kv: str(kv[0]))))
        log.warning(
            "%d scan(s) have several T1w images (e.g. %s: %s); using the first in sorted "
            "order; choose with a BIDS filter (acq, run, rec: --bids-filter-file)",
            len(several), scan_key(pid, ses), ", ".join(Path(p).name for p in found),
        )  # fmt: skip
    images = {k: sorted(v)[0] for k, v in scans.items()}
    known = set(parts["participant_id"])
    extra = sorted({pid for pid, _ in images if pid not in known})
    if extra:
        log.warning(
            "%d subject(s) with images are not in participants.tsv (%s): they are predicted "
            "with unknown age, never trained on or scored; add them to %s to use them",
            len(extra), ", ".join(extra[:5]) + (" …" if len(extra) > 5 else ""), tsv,
        )  # fmt: skip
        parts = pd.concat(
            [parts, pd.DataFrame({"participant_id": extra, "age": ["n/a"] * len(extra)})],
            ignore_index=True,
        ).fillna("n/a")
    failures: list[InputError] = []
    rows = []
    by_subject: dict[str, list] = {}
    for (pid, ses), t1w in images.items():
        by_subject.setdefault(pid, []).append((ses, t1w))
    no_session_age = []
    for rec in parts.to_dict("records"):
        pid = rec["participant_id"]
        if pid not in by_subject:
            fix = f"expected {pid}/anat/{pid}_T1w.nii.gz"
            if query:
                fix += f" matching the BIDS filters {filters}"
            err = InputError("no T1w image found in the BIDS folder", fix, pid, root / pid)
            if strict:
                raise err
            failures.append(err)
            continue
        found = sorted(by_subject[pid], key=lambda st: st[0] or "")
        session_ages = _session_ages(layout, root, pid[4:]) if found[0][0] else {}
        for ses, t1w in found:
            row = dict(rec, participant_id=scan_key(pid, ses), t1w=t1w)
            if ses is not None and ses in session_ages:
                row["age"] = session_ages[ses]
            elif ses is not None and len(found) > 1:
                no_session_age.append(pid)
            rows.append(row)
    if no_session_age:
        subjects = sorted(set(no_session_age))
        log.warning(
            "%d subject(s) with several sessions have no session age (e.g. %s): every session "
            "gets the participant's age; add an age column to sub-<id>/sub-<id>_sessions.tsv",
            len(subjects), subjects[0],
        )  # fmt: skip
    extra = _extra_images(layout, query)
    for column, found_images in extra.items():
        for row in rows:
            row[column] = found_images.get(row["participant_id"], "")
    columns = [*parts.columns, "t1w", *extra]
    table = _finish(pd.DataFrame(rows, columns=columns), str(tsv), failures, strict)
    truth = root / "derivatives" / "truth"
    return Cohort(table, str(root), failures, truth if truth.is_dir() else None)


def _extra_images(layout, query: dict) -> dict[str, dict[str, str]]:
    """Images of the further modalities (:data:`EXTRA_MODALITIES`) by scan key, per column.

    Only the session filter of ``query`` applies (acquisition or run filters name T1w scans).
    A modality that no scan has gets no column; of several images of one scan the first in
    sorted order is used, with a warning.
    """
    session = {k: v for k, v in query.items() if k == "session"}
    out: dict[str, dict[str, str]] = {}
    for modality in EXTRA_MODALITIES:
        files = layout.get(
            suffix=modality, datatype="anat", extension=[".nii", ".nii.gz"], **session
        )
        found: dict[str, list[str]] = {}
        for f in files:
            ent = f.get_entities()
            ses = ent.get("session")
            key = scan_key(f"sub-{ent['subject']}", f"ses-{ses}" if ses else None)
            found.setdefault(key, []).append(f.path)
        several = sorted(k for k, v in found.items() if len(v) > 1)
        if several:
            log.warning(
                "%d scan(s) have several %s images (e.g. %s); using the first in sorted order",
                len(several), modality, several[0],
            )  # fmt: skip
        if found:
            out[modality_column(modality)] = {k: sorted(v)[0] for k, v in found.items()}
    return out


def _resolve(paths, folder: Path) -> list[str]:
    """Absolute image paths (relative ones from ``folder``); ``""`` stays empty."""
    return ["" if not p.strip() else str((folder / p.strip()).resolve()) for p in paths]


def read_table(path: str | Path, strict: bool = False) -> Cohort:
    """Read a cohort from a CSV or TSV table.

    Parameters
    ----------
    path : str or Path
        Table with columns ``participant_id``, ``age`` (years; empty or ``n/a`` unknown) and an
        image column named one of ``t1w``, ``path``, ``image``, and optionally columns of further
        modalities named by their BIDS suffix (``flair`` or ``FLAIR``, ``t2w``, ``pdw``; empty
        where a scan has none); with a ``session_id`` column,
        one row per scan (keyed ``<participant_id>_ses-<label>``, grouped by participant in
        the splits). Relative image paths are relative to
        the table's folder. The separator is taken from the extension (``.tsv`` tab, else comma).
    strict : bool
        Raise on the first bad subject instead of recording it in ``Cohort.failures``.

    Returns
    -------
    Cohort

    Raises
    ------
    InputError
        The file is missing or unreadable, a required column is missing, or an id is duplicated.
    """
    path = Path(path).expanduser().resolve()
    if not path.exists():
        raise InputError("cohort table does not exist", "check --table", path=path)
    sep = "\t" if path.suffix.lower() in (".tsv", ".txt") else ","
    try:
        rows = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(
            f"cannot read table ({exc})", "write a CSV or TSV file", path=path
        ) from None
    rows.columns = [c.strip() for c in rows.columns]
    for required in ("participant_id", "age"):
        if required not in rows.columns:
            raise InputError(
                f"no {required} column (columns: {', '.join(rows.columns)})",
                "the table needs participant_id, age and t1w (image path) columns",
                path=path,
            )
    image_col = next((c for c in IMAGE_COLUMNS if c in rows.columns), None)
    if image_col is None:
        raise InputError(
            f"no image column (columns: {', '.join(rows.columns)})",
            f"name the T1w path column one of: {', '.join(IMAGE_COLUMNS)}",
            path=path,
        )
    rows["participant_id"] = rows["participant_id"].str.strip()
    if "session_id" in rows.columns:  # longitudinal table: one row per scan
        rows["participant_id"] = [
            scan_key(p, s) for p, s in zip(rows["participant_id"], rows["session_id"], strict=True)
        ]
        rows = rows.drop(columns="session_id")
    _check_unique(rows["participant_id"], path)
    rows["t1w"] = _resolve(rows[image_col], path.parent)
    if image_col != "t1w":
        rows = rows.drop(columns=[image_col])
    for modality in EXTRA_MODALITIES:
        column = modality_column(modality)
        given = next((c for c in rows.columns if c.lower() == column), None)
        if given is None:
            continue
        rows[column] = _resolve(rows[given], path.parent)
        if given != column:
            rows = rows.drop(columns=[given])
    failures: list[InputError] = []
    table = _finish(rows, str(path), failures, strict)
    return Cohort(table, str(path), failures, None)


def read_cohort(
    bids: str | Path | None = None,
    table: str | Path | None = None,
    strict: bool = False,
    filters: dict | None = None,
) -> Cohort:
    """Read a cohort from exactly one of a BIDS folder or a table (see :func:`read_bids`).

    ``filters`` (BIDS entity filters, :func:`bids_filters`) apply to a BIDS folder only.

    Raises
    ------
    InputError
        When both or neither source is given.
    """
    if (bids is None) == (table is None):
        raise InputError("give exactly one of --bids PATH or --table FILE")
    if filters and bids is None:
        raise InputError("BIDS filters apply to --bids datasets only", "drop --bids-filter-file")
    return read_bids(bids, strict, filters) if bids is not None else read_table(table, strict)
