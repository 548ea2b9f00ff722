"""Executors: run one function over many items serially, in local processes or on Dask.

The same call runs a stage on a laptop (``"serial"`` for debugging, ``"processes"`` for the local
cores) or on a Dask cluster (``"dask"``: a :class:`~distributed.LocalCluster`, or the scheduler of
an HPC cluster started by the user, e.g. with dask-jobqueue).
"""

from brainage.parallel.executors import BACKENDS, iter_tasks, limit_threads, run_tasks

__all__ = ["BACKENDS", "iter_tasks", "limit_threads", "run_tasks"]
