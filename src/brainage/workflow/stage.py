"""The stage base class and the run context it works in.

A stage is the plumbing-free description of one step of a run (TorchIO's ``Transform`` pattern:
the base class and the :class:`~brainage.workflow.runner.Runner` do the plumbing, a subclass the
science). A subclass says

- ``name``, ``version``, ``requires`` (upstream stage names);
- :meth:`items` — what it works on (subjects, base models, method × subject …);
- :meth:`params` — the configuration values an item depends on;
- :meth:`inputs` — content hashes of what an item reads directly (scan bytes, ages, splits);
- :meth:`depends` — the upstream items whose outputs an item reads (their keys chain in);
- :meth:`compute` (or :meth:`compute_batch`) — compute one item (or several together) and
  return its outputs.

Stages call the science subpackages; they hold no science themselves.
"""

from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from brainage.config import Config
from brainage.errors import InputError
from brainage.io.layout import RunLayout

log = logging.getLogger("brainage")


@dataclass
class ItemResult:
    """What :meth:`Stage.compute` returns for one item.

    Attributes
    ----------
    outputs : dict of str to Path
        Files written (absolute paths inside the run folder).
    values : dict
        Small JSON results kept in the record.
    seed : int or None
        The seed used, if any.
    """

    outputs: dict = field(default_factory=dict)
    values: dict = field(default_factory=dict)
    seed: int | None = None


@dataclass
class RunContext:
    """Everything the stages of one run share (picklable, so items can run in workers).

    Attributes
    ----------
    layout : RunLayout
        The run folder being written.
    config : Config
        The validated configuration.
    cohort : pandas.DataFrame
        ``participant_id, age, t1w`` (+ ``sex``, ``site`` …); ``split`` once assigned.
    source : str
        Where the cohort came from (BIDS folder or table).
    truth_dir : Path or None
        Ground truth of a simulated cohort (``derivatives/truth``).
    models : RunLayout
        The run whose base models are used (``layout`` itself, or the ``--model`` run of
        ``brainage predict``).
    mode : {"run", "apply"}
        ``"apply"``: predict new subjects with the models of ``models``.
    records : dict
        ``(stage, item) → Record`` of every finished item so far.
    failures : dict of str to InputError
        Subjects that failed (cohort reading or a per-subject stage), by participant id.
    failure_stage : dict of str to str
        The stage where each failure happened.
    progress : bool
        Show progress bars on a terminal.
    roles : dict of int to dict of str to str
        Cross-fitting (``split.scheme: kfold``): ``fold → participant_id → role`` (``train``,
        ``validation``, ``test`` or ``predict``) in that outer fold; empty for ``holdout``.
    native_cache : Path or None
        Folder of native-space brains (skull-stripped, N4-corrected) keyed by content, shared
        by preprocessings that differ only after those steps (default ``<work>/native``).
    """

    layout: RunLayout
    config: Config
    cohort: pd.DataFrame
    source: str = ""
    truth_dir: Path | None = None
    models: RunLayout | None = None
    mode: str = "run"
    records: dict = field(default_factory=dict)
    failures: dict = field(default_factory=dict)
    failure_stage: dict = field(default_factory=dict)
    progress: bool = True
    roles: dict = field(default_factory=dict)
    native_cache: Path | None = None

    def __post_init__(self) -> None:
        if self.models is None:
            self.models = self.layout
        if self.native_cache is None:
            self.native_cache = self.layout.work / "native"

    @functools.cached_property
    def raw_root(self) -> Path:
        """Root of the input dataset, that ``bids:raw:`` URIs in sidecars are relative to.

        Computed once per context (for a table cohort it scans every image path).
        """
        from brainage.io.derivatives import raw_root

        return raw_root(self.source, self.cohort["t1w"] if "t1w" in self.cohort else ())

    # ------------------------------------------------------------------ cohort helpers
    def ok_subjects(self) -> list[str]:
        """Participant ids of subjects that have not failed, in cohort order."""
        return [p for p in self.cohort["participant_id"] if p not in self.failures]

    def split_of(self) -> dict[str, str]:
        """``participant_id → split`` (empty before the splits stage)."""
        if "split" not in self.cohort:
            return {}
        return dict(zip(self.cohort["participant_id"], self.cohort["split"], strict=True))

    def subjects_in(self, *splits: str, fold: int | None = None) -> list[str]:
        """Usable subjects (not failed) whose split is one of ``splits``, in cohort order.

        With ``fold`` (cross-fitting), their role in that outer fold instead of their split.
        """
        sp = self.split_of() if fold is None else self.roles[fold]
        return [p for p in self.ok_subjects() if sp.get(p) in splits]

    def folds(self) -> list[int | None]:
        """Outer folds of the run: ``[1, …, K]`` with cross-fitting, ``[None]`` with a hold-out."""
        return sorted(self.roles) if self.roles else [None]

    def fold_of(self, participant_id: str) -> int | None:
        """Return the outer fold holding ``participant_id`` out (None: hold-out run or no age)."""
        for fold, roles in self.roles.items():
            if roles.get(participant_id) == "test":
                return fold
        return None

    def ages(self) -> dict[str, float]:
        """``participant_id → age`` in years (NaN = unknown)."""
        return dict(
            zip(self.cohort["participant_id"], self.cohort["age"].astype(float), strict=True)
        )

    def record(self, stage: str, item: str):
        """Return the finished record of ``stage``/``item`` (KeyError when it is not finished)."""
        return self.records[(stage, item)]

    def stage_records(self, stage: str) -> dict:
        """``item → Record`` of a finished stage."""
        return {i: r for (s, i), r in self.records.items() if s == stage}

    # ------------------------------------------------------------------ shared inputs
    def volumes(self) -> tuple[np.ndarray, dict[str, int]]:
        """Return the stacked model inputs and the row of each participant.

        Returns
        -------
        x : ndarray, shape (n, c, i, j, k), float32 (c: one channel per preprocess modality)
            Memory-mapped; template space on ``template_grid(train.resolution_mm)``.
        rows : dict of str to int
        """
        rec = self.record("volumes", "stack")
        x = np.load(rec.output(self.layout, "volumes"), mmap_mode="r")
        rows = {p: i for i, p in enumerate(rec.values["participant_ids"])}
        return x, rows

    def stack(self, pids) -> np.ndarray:
        """Model inputs of ``pids``, shape (n, c, i, j, k), float32 (in memory)."""
        x, rows = self.volumes()
        idx = [rows[p] for p in pids]
        if not idx:
            return np.zeros((0, *x.shape[1:]), np.float32)
        return np.asarray(x[np.asarray(idx)])


class Stage:
    """Base class of every stage (see the module docstring).

    Class attributes
    ----------------
    name : str
    version : str
        Bump when the stage's computation changes: its items (and everything downstream)
        are recomputed.
    requires : tuple of str
        Upstream stages.
    parallel : bool
        Items run on the configured executor (local processes or Dask) when True.
    tolerate : tuple of exception types
        Per-item errors that fail only that subject (listed in ``failures.tsv``) unless
        ``run.strict``.
    """

    name: ClassVar[str] = ""
    version: ClassVar[str] = "1"
    requires: ClassVar[tuple[str, ...]] = ()
    parallel: ClassVar[bool] = False
    tolerate: ClassVar[tuple[type[BaseException], ...]] = ()

    def items(self, ctx: RunContext) -> list[str]:
        """Item ids, in the order they are computed."""
        raise NotImplementedError

    def params(self, ctx: RunContext, item: str) -> dict[str, Any]:
        """Return the configuration values the item depends on (JSON values)."""
        return {}

    def inputs(self, ctx: RunContext, item: str) -> dict[str, Any]:
        """Content of direct inputs (hashes, ages, splits) the item depends on."""
        return {}

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        """Upstream ``(stage, item)`` pairs the item reads; default: every item of ``requires``."""
        return [(s, i) for s in self.requires for (s2, i) in ctx.records if s2 == s]

    def seed(self, ctx: RunContext, item: str) -> int | None:
        """Seed of the item, recorded (None when it draws no random numbers)."""
        return None

    def batch_size(self, ctx: RunContext) -> int:
        """Items given to one :meth:`compute_batch` call."""
        return 1

    def threads_per_task(self, ctx: RunContext) -> int:
        """Numerical threads of each worker of a parallel stage (``run.omp_nthreads``, else 1)."""
        return ctx.config.run.omp_nthreads or 1

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        """Compute one item; write its outputs atomically; return them."""
        raise NotImplementedError

    def compute_batch(self, ctx: RunContext, items: list[str], keys: list[str]) -> list:
        """Compute several items (default: one by one); a result or an exception per item."""
        out = []
        for item, key in zip(items, keys, strict=True):
            try:
                out.append(self.compute(ctx, item, key))
            except self.tolerate as err:
                out.append(err)
        return out

    def finish(self, ctx: RunContext) -> None:
        """Run after every item is finished (e.g. write a summary table from the records)."""


def subject_of(item: str) -> str:
    """Return the participant id of a ``"<name>/<participant_id>"`` item."""
    return item.split("/", 1)[1]


def tolerated_failure(err: BaseException, item: str) -> InputError:
    """Turn a tolerated item error into an :class:`InputError` naming the item."""
    if isinstance(err, InputError):
        return err
    detail = " ".join(str(err).split())[:200] or "no message"
    return InputError(f"{type(err).__name__}: {detail}", participant_id=item)
