"""Tests of brainage.parallel: the three backends return every item, with exceptions in place."""

from __future__ import annotations

import functools
import math
import os

import pytest

from brainage.errors import ConfigError
from brainage.parallel import iter_tasks, limit_threads, run_tasks
from brainage.parallel.executors import WorkerCrashError


class OddError(ValueError):
    """An exception whose constructor signature cannot be rebuilt from its args by pickle."""

    def __init__(self, a, b):
        super().__init__(f"odd {a} {b}")


def square_or_fail(x):
    if x < 0:
        raise ValueError(f"negative: {x}")
    if x == 13:
        raise OddError(1, 2)
    return x * x


def crash_on(x, bad):
    if x == bad:
        os._exit(3)  # simulates a segfault or an OOM kill of the worker
    return x + 100


def report_threads(_):
    return os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"), os.getpid()


def check_outcomes(out, items):
    assert sorted(i for i, _ in out) == sorted(items)  # every item exactly once
    for item, outcome in out:
        if item < 0:
            assert isinstance(outcome, ValueError) and str(item) in str(outcome)
        elif item == 13:
            assert isinstance(outcome, Exception) and "odd 1 2" in str(outcome)
        else:
            assert outcome == item * item


ITEMS = [3, -1, 0, 13, 7, 2]


def test_serial_returns_results_and_exceptions():
    out = run_tasks(square_or_fail, ITEMS, backend="serial", progress=False)
    check_outcomes(out, ITEMS)
    assert [i for i, _ in out] == ITEMS  # serial keeps the order
    assert isinstance(dict(out)[13], OddError)  # serial: the very exception object


def test_processes_backend():
    out = run_tasks(square_or_fail, ITEMS, n_jobs=2, backend="processes", progress=True)
    check_outcomes(out, ITEMS)


def test_processes_limit_threads_in_workers_not_in_parent():
    before = os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS")
    out = run_tasks(report_threads, [1, 2], n_jobs=2, backend="processes", progress=False)
    for _, (itk_threads, pid) in out:
        assert itk_threads == "1"
        assert pid != os.getpid()
    assert os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS") == before


def test_processes_survive_a_worker_crash():
    items = [1, 2, 3, 4, 5]
    out = run_tasks(
        functools.partial(crash_on, bad=3), items, n_jobs=2, backend="processes", progress=False
    )
    assert sorted(i for i, _ in out) == items
    outcome = dict(out)
    assert isinstance(outcome[3], WorkerCrashError)
    assert all(outcome[i] == i + 100 for i in items if i != 3)


def test_dask_backend_local_cluster_threads():
    pytest.importorskip("distributed")
    out = run_tasks(
        square_or_fail,
        ITEMS,
        n_jobs=1,
        backend="dask",
        progress=False,
        dask_cluster_kwargs={"processes": False},
    )
    check_outcomes(out, ITEMS)


def test_dask_backend_with_existing_client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        out = run_tasks(math.sqrt, [4.0, 9.0, -1.0], backend="dask", dask_address=client)
        assert client.status == "running"  # a client given by the caller is not closed
    outcome = dict(out)
    assert outcome[4.0] == 2.0 and outcome[9.0] == 3.0
    assert isinstance(outcome[-1.0], ValueError)


def test_iter_tasks_is_lazy_and_empty_input():
    gen = iter_tasks(square_or_fail, [2], backend="serial", progress=False)
    assert next(gen) == (2, 4)
    assert run_tasks(square_or_fail, [], backend="processes", progress=False) == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"backend": "proceses"}, "did you mean 'processes'"),
        ({"n_jobs": 0}, "'n_jobs' must be"),
        ({"n_jobs": 1.5}, "'n_jobs' must be"),
        ({"threads_per_task": 0}, "'threads_per_task' must be"),
    ],
)
def test_invalid_arguments(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        run_tasks(square_or_fail, [1], progress=False, **kwargs)


def test_iter_tasks_validates_at_call_time():
    with pytest.raises(ConfigError):
        iter_tasks(square_or_fail, [1], backend="nope")  # no next() needed


def test_unpicklable_function_is_refused_for_processes():
    with pytest.raises(TypeError, match="module level"):
        run_tasks(lambda x: x, [1], backend="processes", progress=False)
    # ... but is fine serially
    assert run_tasks(lambda x: x + 1, [1], backend="serial", progress=False) == [(1, 2)]


def test_limit_threads_validates():
    with pytest.raises(ConfigError):
        limit_threads(0)
