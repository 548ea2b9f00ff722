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
        One row per usable subject; columns ``participant_id`` (str, unique), ``age`` (float,
        years, NaN when unknown), ``t1w`` (absolute path, str) and any further columns of the
        source table (``sex``, ``site``, covariates).
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
        """Participant identifiers, in table order."""
        return self.table["participant_id"].tolist()

    @property
    def has_age(self) -> np.ndarray:
        """Boolean mask, shape (n_subjects,): True where the age is known."""
        return self.table["age"].notna().to_numpy()

    def subset(self, participant_ids) -> Cohort:
        """Return the cohort restricted to ``participant_ids`` (order of the table kept).

        Labels may be given with or without ``sub-`` (BIDS-Apps ``--participant-label``).

        Raises
        ------
        InputError
            A label that is not in the cohort (with a did-you-mean).
        """
        from brainage.errors import did_you_mean

        wanted = {p if str(p).startswith("sub-") else f"sub-{p}" for p in participant_ids}
        failed = [f for f in self.failures if getattr(f, "participant_id", None) in wanted]
        known = set(self.table["participant_id"]) | {f.participant_id for f in self.failures}
        missing = sorted(wanted - known)
        if missing:
            listed = ", ".join(missing[:5]) + (
                f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            )
            raise InputError(
                f"--participant-label: {listed} not in the cohort of {self.source}",
                did_you_mean(missing[0], sorted(known)),
            )
        keep = self.table["participant_id"].isin(wanted)
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
            "give every subject one row with a unique participant_id",
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


def read_bids(path: str | Path, strict: bool = False) -> Cohort:
    """Read a BIDS dataset of T1w scans.

    Parameters
    ----------
    path : str or Path
        BIDS root: ``participants.tsv`` (``participant_id``, ``age`` in years, ``n/a`` unknown) and
        ``sub-<label>/[ses-<label>/]anat/sub-<label>[_ses-…]…_T1w.nii[.gz]``. When a subject has
        several T1w runs, the first in sorted order is used.
    strict : bool
        Raise on the first bad subject instead of recording it in ``Cohort.failures``.

    Returns
    -------
    Cohort
        Subjects with an image; those listed in ``participants.tsv`` without an image, or with an
        invalid age, are in ``failures``. Subjects with an image but no row get age NaN.

    Raises
    ------
    InputError
        The folder or ``participants.tsv`` is missing, has no ``participant_id`` column, or lists a
        participant twice.
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
    try:
        parts = pd.read_csv(tsv, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:
        raise InputError(
            f"cannot read table ({exc})", "write a tab-separated file", path=tsv
        ) from None
    if "participant_id" not in parts.columns:
        raise InputError(
            f"no participant_id column (columns: {', '.join(parts.columns)})",
            "name the subject column participant_id",
            path=tsv,
        )
    parts["participant_id"] = parts["participant_id"].str.strip()
    _check_unique(parts["participant_id"], tsv)
    if "age" not in parts.columns:
        parts["age"] = "n/a"
    images = {}
    for sub_dir in sorted(root.glob("sub-*")):
        if not sub_dir.is_dir():
            continue
        found = sorted(sub_dir.glob("anat/*_T1w.nii*")) + sorted(
            sub_dir.glob("ses-*/anat/*_T1w.nii*")
        )
        if found:
            images[sub_dir.name] = str(found[0])
            if len(found) > 1:
                log.warning(
                    "%s has %d T1w scans; using %s (one scan per subject: sessions and runs "
                    "are not yet read separately)", sub_dir.name, len(found), found[0].name,
                )  # fmt: skip
    known = set(parts["participant_id"])
    extra = [pid for pid in images if pid not in known]
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
    parts["t1w"] = parts["participant_id"].map(images).fillna("")
    failures: list[InputError] = []
    for pid in parts.loc[parts["t1w"] == "", "participant_id"]:
        err = InputError(
            "no T1w image found in the BIDS folder",
            f"expected {pid}/anat/{pid}_T1w.nii.gz",
            pid,
            root / pid,
        )
        if strict:
            raise err
        failures.append(err)
    parts = parts[parts["t1w"] != ""]
    table = _finish(parts, str(tsv), failures, strict)
    truth = root / "derivatives" / "truth"
    return Cohort(table, str(root), failures, truth if truth.is_dir() else None)


def read_table(path: str | Path, strict: bool = False) -> Cohort:
    """Read a cohort from a CSV or TSV table.

    Parameters
    ----------
    path : str or Path
        Table with columns ``participant_id``, ``age`` (years; empty or ``n/a`` unknown) and an
        image column named one of ``t1w``, ``path``, ``image``. Relative image paths are relative to
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
    _check_unique(rows["participant_id"], path)
    rows["t1w"] = [
        "" if not p.strip() else str((path.parent / p.strip()).resolve()) for p in rows[image_col]
    ]
    if image_col != "t1w":
        rows = rows.drop(columns=[image_col])
    failures: list[InputError] = []
    table = _finish(rows, str(path), failures, strict)
    return Cohort(table, str(path), failures, None)


def read_cohort(
    bids: str | Path | None = None, table: str | Path | None = None, strict: bool = False
) -> Cohort:
    """Read a cohort from exactly one of a BIDS folder or a table (see :func:`read_bids`).

    Raises
    ------
    InputError
        When both or neither source is given.
    """
    if (bids is None) == (table is None):
        raise InputError("give exactly one of --bids PATH or --table FILE")
    return read_bids(bids, strict) if bids is not None else read_table(table, strict)
