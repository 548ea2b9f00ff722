"""The runner: plans the stages a target needs, skips what is finished, computes the rest.

For every item of a stage the runner computes its cache key (:func:`~brainage.workflow.records.
cache_key`) from the stage, its parameters, its direct inputs and the keys of the upstream items
it reads; an item whose record has that key and whose outputs exist is skipped, any other is
computed — on the configured executor for parallel stages (local processes or Dask), in batches
for batched stages — and its record is written last. Wall time per stage goes to provenance.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import time
from pathlib import Path

from brainage.errors import BrainageError
from brainage.workflow.progress import StageProgress
from brainage.workflow.records import Record, cache_key, read_record
from brainage.workflow.stage import ItemResult, RunContext, Stage, tolerated_failure

log = logging.getLogger("brainage")


class Runner:
    """Run a chain of stages in one run folder.

    Parameters
    ----------
    ctx : RunContext
    stages : sequence of Stage
        Every stage the run may need (their ``requires`` name each other).
    provided : sequence of str
        Stages whose records are already in ``ctx.records`` and are not run here (the model
        stages of ``brainage predict``).
    """

    def __init__(self, ctx: RunContext, stages, provided=()) -> None:
        self.ctx = ctx
        self.stages: dict[str, Stage] = {s.name: s for s in stages}
        self.provided = set(provided)
        self.seconds: dict[str, float] = {}
        self.computed: dict[str, int] = {}

    def plan(self, targets) -> list[str]:
        """Stage names needed for ``targets``, upstream first."""
        order: list[str] = []

        def visit(name: str, path: tuple = ()) -> None:
            if name in order or (name in self.provided and name not in self.stages):
                return
            if name not in self.stages:
                raise BrainageError(f"unknown stage {name!r} (needed by {' → '.join(path)})")
            for up in self.stages[name].requires:
                visit(up, (*path, name))
            order.append(name)

        for t in targets:
            visit(t)
        return order

    def run(self, targets) -> dict[str, int]:
        """Run ``targets`` and whatever upstream is missing or stale.

        Returns
        -------
        dict of str to int
            Items computed per stage (0: everything was up to date).
        """
        for name in self.plan(targets):
            t0 = time.perf_counter()
            self.computed[name] = self.run_stage(self.stages[name])
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
        return dict(self.computed)

    # ------------------------------------------------------------------ one stage
    def key_of(self, stage: Stage, item: str) -> tuple[str, dict, dict, dict]:
        """Cache key of an item, with the upstream keys, parameters and inputs it was made from.

        Returns
        -------
        key : str
        upstream : dict of str to str
            ``"<stage>/<item>"`` → key.
        params, inputs : dict
            What :meth:`Stage.params` and :meth:`Stage.inputs` returned (computed once: inputs
            may hash files).

        Raises
        ------
        BrainageError
            An upstream item the stage depends on is not finished.
        """
        ctx = self.ctx
        upstream = {}
        for s, i in stage.depends(ctx, item):
            rec = ctx.records.get((s, i))
            if rec is None:
                raise BrainageError(f"{stage.name}/{item} needs {s}/{i}, which is not finished")
            upstream[f"{s}/{i}"] = rec.key
        params, inputs = stage.params(ctx, item), stage.inputs(ctx, item)
        key = cache_key(stage.name, stage.version, item, params, inputs, upstream)
        return key, upstream, params, inputs

    def run_stage(self, stage: Stage) -> int:
        """Bring every item of ``stage`` up to date; return how many were computed."""
        ctx, layout = self.ctx, self.ctx.layout
        todo: list[tuple[str, str, dict]] = []
        for item in stage.items(ctx):
            key, *made_from = self.key_of(stage, item)
            rec = read_record(layout, stage.name, item)
            if rec is not None and rec.key == key and rec.complete(layout):
                ctx.records[(stage.name, item)] = rec
                continue
            todo.append((item, key, made_from))
        if todo:
            log.debug("%s: %d item(s) to compute", stage.name, len(todo))
            bar = StageProgress(stage.name, len(todo), ctx.progress)
            try:
                if stage.parallel and ctx.config.run.backend != "serial" and len(todo) > 1:
                    self._run_parallel(stage, todo, bar)
                else:
                    self._run_batches(stage, todo, bar)
            finally:
                bar.close()
        stage.finish(ctx)
        return len(todo)

    def _record(self, stage, item, key, made_from, result: ItemResult, seconds: float) -> None:
        ctx, layout = self.ctx, self.ctx.layout
        upstream, params, inputs = made_from
        rec = Record(
            stage=stage.name,
            item=item,
            key=key,
            version=stage.version,
            params=params,
            inputs=inputs,
            upstream=upstream,
            seed=result.seed,
            seconds=round(seconds, 3),
            outputs={k: layout.relative(v) for k, v in result.outputs.items()},
            values=result.values,
        )
        rec.write(layout)  # last: the completion marker
        ctx.records[(stage.name, item)] = rec

    def _failed(self, stage: Stage, item: str, err: BaseException) -> None:
        ctx = self.ctx
        if not isinstance(err, stage.tolerate) or ctx.config.run.strict:
            raise err
        err = tolerated_failure(err, item)
        pid = err.participant_id or item
        ctx.failures[pid] = err
        ctx.failure_stage[pid] = stage.name
        log.warning("%s failed: %s", stage.name, err)

    def _run_batches(self, stage: Stage, todo, bar: StageProgress) -> None:
        size = max(1, stage.batch_size(self.ctx))
        for start in range(0, len(todo), size):
            chunk = todo[start : start + size]
            t0 = time.perf_counter()
            results = stage.compute_batch(self.ctx, [c[0] for c in chunk], [c[1] for c in chunk])
            seconds = (time.perf_counter() - t0) / len(chunk)
            failed = 0
            for (item, key, made_from), result in zip(chunk, results, strict=True):
                if isinstance(result, BaseException):
                    failed += 1
                    self._failed(stage, item, result)
                else:
                    self._record(stage, item, key, made_from, result, seconds)
            bar.advance(len(chunk), failed)

    def _run_parallel(self, stage: Stage, todo, bar: StageProgress) -> None:
        import contextlib

        from brainage.parallel import iter_tasks

        run = self.ctx.config.run
        meta = {item: (key, made_from) for item, key, made_from in todo}
        task = functools.partial(_compute_item, stage, self.ctx, os.getpid())
        outcomes = iter_tasks(
            task,
            [(item, key) for item, (key, _) in meta.items()],
            n_jobs=run.n_jobs,
            backend=run.backend,
            description=stage.name,
            progress=False,
            dask_address=run.dask_address,
            threads_per_task=stage.threads_per_task(self.ctx),
        )
        with contextlib.closing(outcomes):
            for (item, _), outcome in outcomes:
                key, made_from = meta[item]
                if isinstance(outcome, BaseException):
                    self._failed(stage, item, outcome)
                    bar.advance(1, 1)
                    continue
                result, seconds = outcome
                self._record(stage, item, key, made_from, result, seconds)
                bar.advance(1)


def _compute_item(stage: Stage, ctx: RunContext, parent_pid: int, task: tuple[str, str]):
    """Worker task: compute one ``(item, key)`` (picklable via functools.partial).

    In another process there are no progress bars (they would interleave on the terminal).
    """
    item, key = task
    if os.getpid() != parent_pid and ctx.progress:
        ctx = dataclasses.replace(ctx, progress=False)
    t0 = time.perf_counter()
    result = stage.compute(ctx, item, key)
    return result, time.perf_counter() - t0


def remove_stale_temporaries(root: Path) -> int:
    """Delete temporary files left by a killed run (``.<name>.<host>-<pid>.<random>.tmp…``).

    Only those whose writer is gone (:func:`brainage.io.atomic.temporary_is_stale`): another run
    writing into the same folder keeps its files.

    Returns
    -------
    int
        Number of files removed.
    """
    from brainage.io.atomic import temporary_is_stale

    stale = [p for p in Path(root).rglob(".*.tmp*") if p.is_file() and temporary_is_stale(p)]
    for p in stale:
        p.unlink(missing_ok=True)
    return len(stale)


__all__ = ["Runner", "remove_stale_temporaries"]
