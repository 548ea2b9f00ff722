"""The stage engine: stages, records and cache keys, the runner, the run layout, progress.

A run is a chain of stages (:mod:`brainage.workflow.stages`); the :class:`Runner` computes the
items that are missing or stale and writes one :class:`Record` per item as its completion marker.
"""

from brainage.io.layout import RunLayout
from brainage.workflow.api import (
    RunResult,
    demo,
    explain_run,
    predict,
    run,
    run_stages,
)
from brainage.workflow.records import Record, cache_key, read_record, read_records
from brainage.workflow.runner import Runner
from brainage.workflow.stage import ItemResult, RunContext, Stage

__all__ = [
    "ItemResult",
    "Record",
    "RunContext",
    "RunLayout",
    "RunResult",
    "Runner",
    "Stage",
    "cache_key",
    "demo",
    "explain_run",
    "predict",
    "read_record",
    "read_records",
    "run",
    "run_stages",
]
