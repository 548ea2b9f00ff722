"""Run ``fn(item)`` for many items and collect results and exceptions as tasks complete.

Three backends share one protocol, :func:`iter_tasks` / :func:`run_tasks`:

``"serial"``
    In this process, one item after the other: for debugging (full tracebacks, ``pdb``).
``"processes"``
    A :class:`concurrent.futures.ProcessPoolExecutor` with the ``spawn`` start method (safe with
    torch and ITK, which are not fork-safe once their thread pools exist). Each worker is limited
    to ``threads_per_task`` threads (torch, OpenMP/MKL/OpenBLAS, ITK) so that ``n_jobs`` workers
    share the cores instead of oversubscribing them. A worker that dies (segfault in a C library,
    killed for memory) does not take the run down: the pool is restarted and the items that were
    running are retried one at a time, each alone in a fresh process, so that only the item that
    really crashes is reported (as :class:`WorkerCrashError`).
``"dask"``
    :mod:`dask.distributed`: a :class:`~distributed.LocalCluster` of ``n_jobs`` single-threaded
    worker processes created for the call, or an existing cluster given by ``dask_address`` (the
    scheduler address of an HPC cluster, e.g. started with dask-jobqueue's ``SLURMCluster``, or a
    :class:`~distributed.Client`). Dask reschedules the tasks of workers that die.

An exception raised by ``fn`` for one item never stops the others: it is returned in place of the
result. Only ``KeyboardInterrupt`` and errors of the executor itself propagate.
"""

from __future__ import annotations

import os
import pickle
import sys
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import Any

from brainage.errors import ConfigError, did_you_mean

#: Names accepted for ``backend``.
BACKENDS = ("serial", "processes", "dask")

#: Environment variables that set the size of the thread pools of numerical libraries.
THREAD_ENV_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS",
)

_LIMITED_TO: int | None = None  # per process: the thread limit already applied by limit_threads


class WorkerCrashError(RuntimeError):
    """The worker process running an item died (crash in a C library, or killed for memory)."""


def limit_threads(n_threads: int = 1) -> None:
    """Limit the numerical thread pools of *this process* to ``n_threads``.

    Sets ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``,
    ``NUMEXPR_NUM_THREADS``, ``VECLIB_MAXIMUM_THREADS`` and ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS``
    (read by libraries when they create their thread pools: call this before the first heavy
    call; ITK reads it at its first filter) and calls ``torch.set_num_threads`` when torch is
    already imported. Worker processes of :func:`run_tasks` call it themselves; call it in the
    main process only when that process is a worker (e.g. a cluster job), since it changes
    process-wide state.

    Parameters
    ----------
    n_threads : int
        Threads per library, >= 1.
    """
    global _LIMITED_TO
    n_threads = int(n_threads)
    if n_threads < 1:
        raise ConfigError(f"'n_threads' must be >= 1; got {n_threads}")
    for name in THREAD_ENV_VARS:
        os.environ[name] = str(n_threads)
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(n_threads)
    _LIMITED_TO = n_threads


def _call(fn: Callable, item: Any, parent_pid: int, threads: int | None) -> Any:
    """Run ``fn(item)`` in a worker; limit threads first when in another process.

    Exceptions that could not travel back to the parent process (not picklable) are replaced by a
    :class:`RuntimeError` carrying their type and message.
    """
    if threads and os.getpid() != parent_pid and _LIMITED_TO != threads:
        limit_threads(threads)
    try:
        return fn(item)
    except Exception as exc:
        if os.getpid() == parent_pid:
            raise
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:
            raise RuntimeError(f"{type(exc).__name__}: {exc}") from None
        raise


def _check_args(fn, backend: str, n_jobs, threads_per_task) -> int:
    if not callable(fn):
        raise TypeError(f"'fn' must be callable; got {type(fn).__name__}")
    if backend not in BACKENDS:
        raise ConfigError(
            f"'backend' must be one of {BACKENDS}; got {backend!r} "
            f"({did_you_mean(str(backend), BACKENDS)})"
        )
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or (n_jobs < 1 and n_jobs != -1):
        raise ConfigError(f"'n_jobs' must be a positive int or -1 (all cores); got {n_jobs!r}")
    if threads_per_task is not None and (
        isinstance(threads_per_task, bool)
        or not isinstance(threads_per_task, int)
        or threads_per_task < 1
    ):
        raise ConfigError(
            f"'threads_per_task' must be a positive int or None; got {threads_per_task!r}"
        )
    if backend == "processes":
        try:
            pickle.dumps(fn)
        except Exception as exc:
            raise TypeError(
                f"'fn' cannot be sent to worker processes ({type(exc).__name__}: {exc}); define it "
                "at module level (not a lambda or a local function), or use functools.partial of "
                "such a function, or backend='serial'"
            ) from None
    return (os.cpu_count() or 1) if n_jobs == -1 else n_jobs


def iter_tasks(
    fn: Callable[[Any], Any],
    items: Iterable,
    n_jobs: int = 2,
    backend: str = "processes",
    description: str = "Working",
    progress: bool = True,
    dask_address=None,
    threads_per_task: int | None = 1,
    dask_cluster_kwargs: dict | None = None,
) -> Iterator[tuple[Any, Any]]:
    """Yield ``(item, result_or_exception)`` for every item, in order of completion.

    Parameters
    ----------
    fn : callable
        ``fn(item) -> result``. For ``"processes"`` and ``"dask"`` it must be picklable: a
        module-level function or a :func:`functools.partial` of one.
    items : iterable
        The inputs (picklable for ``"processes"``/``"dask"``). Read into a list first.
    n_jobs : int
        Worker processes for ``"processes"`` and the local Dask cluster (``-1``: all cores).
        Ignored by ``"serial"`` and when ``dask_address`` is given (the cluster decides).
    backend : {"processes", "serial", "dask"}
    description : str
        Label of the progress bar.
    progress : bool
        Show a :mod:`rich` progress bar (done / total, failures, elapsed time, ETA) on stderr.
    dask_address : str or distributed.Client, optional
        Scheduler address (``"tcp://host:8786"``) or a connected client of an existing cluster;
        ``None`` starts a :class:`~distributed.LocalCluster` for the call and closes it after.
    threads_per_task : int or None
        Thread limit set in each worker process (see :func:`limit_threads`); ``None`` leaves the
        libraries' defaults. Never applied to the calling process (``"serial"``, or a Dask
        cluster with ``processes=False``).
    dask_cluster_kwargs : dict, optional
        Extra keyword arguments of the :class:`~distributed.LocalCluster` (e.g.
        ``{"processes": False}``, ``{"memory_limit": "4GiB"}``).

    Returns
    -------
    iterator of tuple
        Yields ``(item, result)``, or ``(item, exception)`` when ``fn`` raised (an
        :class:`Exception` instance; :class:`WorkerCrashError` when the worker process died
        while running it). Arguments are checked when ``iter_tasks`` is called; the work starts
        at the first ``next()``. Close the iterator (or exhaust it) to shut the workers down.

    Raises
    ------
    ConfigError
        Unknown ``backend``, or invalid ``n_jobs``/``threads_per_task``.
    TypeError
        ``fn`` is not callable, or cannot be pickled for the process backend.
    """
    n_jobs = _check_args(fn, backend, n_jobs, threads_per_task)  # raises now, not at next()
    return _generate(
        fn, list(items), n_jobs, backend, description, progress, dask_address, threads_per_task,
        dask_cluster_kwargs,
    )  # fmt: skip


def _generate(
    fn, items, n_jobs, backend, description, progress, dask_address, threads_per_task,
    dask_cluster_kwargs,
):  # fmt: skip
    if not items:
        return
    call = _Caller(fn, os.getpid(), threads_per_task)
    if backend == "serial":
        outcomes = _iter_serial(call, items)
    elif backend == "processes":
        outcomes = _iter_processes(call, items, min(n_jobs, len(items)))
    else:
        outcomes = _iter_dask(
            call, items, min(n_jobs, len(items)), dask_address, dask_cluster_kwargs
        )
    yield from _with_progress(outcomes, len(items), description, progress)


def run_tasks(
    fn: Callable[[Any], Any],
    items: Iterable,
    n_jobs: int = 2,
    backend: str = "processes",
    description: str = "Working",
    progress: bool = True,
    dask_address=None,
    threads_per_task: int | None = 1,
    dask_cluster_kwargs: dict | None = None,
) -> list[tuple[Any, Any]]:
    """Run ``fn`` on every item; return ``(item, result_or_exception)`` in order of completion.

    The list form of :func:`iter_tasks` (same parameters). Sort by item if order matters.

    Returns
    -------
    list of tuple
        One ``(item, result_or_exception)`` per item.

    Examples
    --------
    >>> import math
    >>> out = run_tasks(math.sqrt, [4.0, -1.0], backend="serial", progress=False)
    >>> sorted((i, r if not isinstance(r, Exception) else "error") for i, r in out)
    [(-1.0, 'error'), (4.0, 2.0)]
    """
    return list(
        iter_tasks(
            fn,
            items,
            n_jobs=n_jobs,
            backend=backend,
            description=description,
            progress=progress,
            dask_address=dask_address,
            threads_per_task=threads_per_task,
            dask_cluster_kwargs=dask_cluster_kwargs,
        )
    )


class _Caller:
    """Picklable ``item -> fn(item)`` wrapper around :func:`_call`."""

    def __init__(self, fn, parent_pid: int, threads: int | None) -> None:
        self.fn = fn
        self.parent_pid = parent_pid
        self.threads = threads

    def __call__(self, item):
        return _call(self.fn, item, self.parent_pid, self.threads)


def _iter_serial(call, items):
    for item in items:
        try:
            result = call(item)
        except Exception as exc:
            yield item, exc
        else:
            yield item, result


def _iter_processes(call, items, n_jobs: int):
    pending = deque(items)
    while pending:
        suspects = yield from _run_pool(call, pending, n_jobs)
        for item in suspects:  # items in flight when a worker died: retry each alone
            crashed = yield from _run_pool(call, deque([item]), 1)
            if crashed:
                yield (
                    item,
                    WorkerCrashError(
                        "the worker process died while processing this item (a crash in a C "
                        "library, or killed by the system for lack of memory)"
                    ),
                )


def _run_pool(call, pending: deque, n_jobs: int):
    """Run items of ``pending`` (consumed) on a fresh pool; return the items lost to a crash."""
    import multiprocessing
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
    from concurrent.futures.process import BrokenProcessPool

    executor = ProcessPoolExecutor(
        max_workers=n_jobs, mp_context=multiprocessing.get_context("spawn")
    )
    in_flight: dict = {}
    lost: list = []
    try:
        while pending or in_flight:
            while pending and len(in_flight) < n_jobs:
                item = pending.popleft()
                try:
                    in_flight[executor.submit(call, item)] = item
                except BrokenProcessPool:
                    pending.appendleft(item)
                    break
            if not in_flight:  # the pool broke before anything could be submitted
                return lost
            done, _ = wait(in_flight, return_when=FIRST_COMPLETED)
            broken = False
            for fut in done:
                item = in_flight.pop(fut)
                exc = fut.exception()
                if isinstance(exc, BrokenProcessPool):
                    lost.append(item)
                    broken = True
                else:
                    yield item, (exc if exc is not None else fut.result())
            if broken:
                lost.extend(in_flight.values())
                in_flight.clear()
                return lost
        return lost
    finally:
        executor.shutdown(wait=True, cancel_futures=True)


def _iter_dask(call, items, n_jobs: int, address, cluster_kwargs):
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:  # pragma: no cover - depends on the installation
        raise ConfigError(
            "backend='dask' needs dask.distributed; install it with pip install 'brainage[dask]'"
        ) from None
    cluster = None
    own_client = True
    if isinstance(address, Client):
        client, own_client = address, False
    elif address is not None:
        client = Client(address)
    else:
        kwargs = {
            "n_workers": n_jobs,
            "threads_per_worker": 1,
            "processes": True,
            "dashboard_address": None,
        }
        kwargs.update(cluster_kwargs or {})
        cluster = LocalCluster(**kwargs)
        client = Client(cluster)
    futures = {}
    try:
        tag = uuid.uuid4().hex[:8]
        for i, item in enumerate(items):
            futures[client.submit(call, item, pure=False, key=f"brainage-{tag}-{i}")] = item
        for fut in as_completed(list(futures)):
            item = futures.pop(fut)
            if fut.status == "error":
                outcome = fut.exception()
            elif fut.status == "cancelled":
                outcome = WorkerCrashError("the Dask task was cancelled (worker lost?)")
            else:
                outcome = fut.result()
            fut.release()
            yield item, outcome
    finally:
        if futures:
            client.cancel(list(futures))
        if own_client:
            client.close()
        if cluster is not None:
            cluster.close()


def _with_progress(outcomes, total: int, description: str, enabled: bool):
    from brainage.parallel.progress import StageProgress

    bar = StageProgress(description, total, enabled)
    try:
        for item, outcome in outcomes:
            bar.advance(1, failed=int(isinstance(outcome, BaseException)))
            yield item, outcome
    finally:
        bar.close()
