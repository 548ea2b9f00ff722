"""Records and cache keys: one JSON record per computed item, written last, keyed by content.

A record says exactly what an item was computed from: the stage and its version, the package
version, the item's parameters, the content hashes of its direct inputs (scan bytes, ages, splits)
and the keys of the upstream items it read. The key hashes all of these, so keys chain: a change
anywhere upstream changes the key of everything downstream of it, and nothing else. The record is
written atomically after the item's outputs, so its presence with the right key (and its outputs on
disk) is the one completion marker of brainage.
"""

from __future__ import annotations

import datetime as _dt
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from brainage import __version__
from brainage.io.atomic import write_json
from brainage.io.layout import RunLayout
from brainage.utils import stable_hash

#: Record format version (a new format invalidates every record).
RECORD_FORMAT = 1


def cache_key(
    stage: str,
    version: str,
    item: str,
    params: dict,
    inputs: dict,
    upstream: dict[str, str],
) -> str:
    """Cache key of one item of a stage.

    Parameters
    ----------
    stage, version : str
        Stage name and version.
    item : str
        Item id (e.g. a participant id, ``"seed-0"``, ``"lrp/sub-01"``).
    params : dict
        The item's parameters (JSON values).
    inputs : dict
        Content hashes or values of the item's direct inputs (file hashes, ages, splits).
    upstream : dict of str to str
        ``"<stage>/<item>"`` → key of every upstream item it reads.

    Returns
    -------
    str
        32 hex digits of a SHA-256 over all of the above and the package version.
    """
    return stable_hash(
        RECORD_FORMAT, __version__, stage, version, item, params, inputs, upstream, length=32
    )


@dataclass
class Record:
    """What one item was computed from and what it wrote.

    Attributes
    ----------
    stage, item, key : str
    version : str
        Stage version.
    package_version : str
    params : dict
    inputs : dict
    upstream : dict of str to str
    seed : int or None
        The seed the item used (when it draws random numbers).
    seconds : float
        Wall time of the computation.
    outputs : dict of str to str
        Output files, paths relative to the run folder.
    values : dict
        Small results other stages read (e.g. registration quality, participant order).
    finished : str
        ISO time stamp (UTC).
    """

    stage: str
    item: str
    key: str
    version: str
    params: dict
    inputs: dict
    upstream: dict
    seed: int | None = None
    seconds: float = 0.0
    outputs: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    package_version: str = __version__
    finished: str = ""

    def output(self, layout: RunLayout, name: str) -> Path:
        """Absolute path of output ``name``."""
        return layout.absolute(self.outputs[name])

    def complete(self, layout: RunLayout) -> bool:
        """Return True when every output file exists."""
        return all(layout.absolute(p).exists() for p in self.outputs.values())

    def write(self, layout: RunLayout) -> Path:
        """Write the record atomically (the item's completion marker)."""
        self.finished = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
        return write_json(layout.record(self.stage, self.item), asdict(self))


def read_record(layout: RunLayout, stage: str, item: str) -> Record | None:
    """Return the record of ``stage``/``item`` in a run folder, or None (missing or unreadable)."""
    path = layout.record(stage, item)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return Record(**{k: v for k, v in data.items() if k in Record.__dataclass_fields__})
    except (OSError, ValueError, TypeError):
        return None


def read_records(layout: RunLayout, stage: str) -> dict[str, Record]:
    """Every readable record of ``stage`` in a run folder, by item id."""
    out = {}
    for path in layout.records(stage):
        try:
            data: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
            rec = Record(**{k: v for k, v in data.items() if k in Record.__dataclass_fields__})
        except (OSError, ValueError, TypeError):
            continue
        out[rec.item] = rec
    return out
