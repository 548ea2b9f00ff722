"""Run a study: every (condition, seed) through the stage engine, on one executor (paper 000).

``run_study`` expands the study file into one validated run configuration per (condition, seed)
(:func:`~brainage.study.design.expand_study`), preprocesses each distinct ``preprocess``
section (and model grid) once into ``shared/preproc-<hash>/`` — the scans and their stack on the
model grid, subjects in parallel on the executor, the skull stripping and N4 of each scan once
for all groups (``shared/native/``) — gives every run the records of its shared
preprocessing (:data:`SHARED_STAGES`), then runs the (condition, seed) tasks — serially, in
local worker processes or on a Dask cluster — and summarises the finished runs
(:mod:`brainage.study.summary`) into tables, maps and ``report.html``.

Resuming is the stage engine's: a task is a ``brainage run`` of one run folder, whose finished
items (records keyed by content) are never recomputed and whose training resumes from its last
epoch checkpoint. A task whose worker died (or that failed) is retried once more; a study that
was interrupted is resumed by running it again, and its results equal those of an
uninterrupted study (``tests/test_study_run.py``).
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brainage.errors import BrainageError, ConfigError
from brainage.io.atomic import write_json, write_text, write_tsv
from brainage.io.cohort import Cohort
from brainage.io.scans import read_tsv
from brainage.study.design import StudyConfig, StudyRun, expand_study
from brainage.study.layout import StudyLayout
from brainage.utils import stable_hash

log = logging.getLogger("brainage")

#: Columns of ``runs.tsv`` written by the runner (the summary adds the MAE columns).
RUN_COLUMNS = ["run", "condition", "seed", "status", "seconds", "max_rss_mb", "error"]


@dataclass
class StudyResult:
    """What :func:`run_study` did.

    Attributes
    ----------
    out_dir : Path
    runs : pandas.DataFrame
        ``runs.tsv``: one row per (condition, seed) with its status and test MAEs.
    failed : list of str
        Runs that failed (their error is in ``runs.tsv``).
    computed : dict of str to int
        Items computed per run (0 everywhere on a rerun of a finished study).
    report : Path or None
    seconds : float
        Wall time of the whole study.
    task_seconds : float
        Wall time of the (condition, seed) tasks alone (after the shared preprocessing).
    """

    out_dir: Path
    runs: pd.DataFrame
    failed: list = field(default_factory=list)
    computed: dict = field(default_factory=dict)
    report: Path | None = None
    seconds: float = 0.0
    task_seconds: float = 0.0


#: Stages a study computes once per preprocessing group and shares with its runs.
SHARED_STAGES = ("preprocess", "volumes")


def preprocessing_key(cfg) -> str:
    """Return the 12-hex-digit key of a run's preprocessing (``preprocess`` + model grid).

    Runs with equal keys share the preprocessed scans and their stack on the model grid.
    """
    return stable_hash(cfg.preprocess.key_dict(), cfg.train.resolution_mm, length=12)


def run_study(
    study: StudyConfig,
    cohort: Cohort,
    out_dir: str | Path,
    base: dict | None = None,
    backend: str = "processes",
    n_jobs: int = 2,
    scheduler: str | None = None,
    progress: bool = True,
    retries: int = 1,
) -> StudyResult:
    """Run every (condition, seed) of a study and summarise them.

    Parameters
    ----------
    study : StudyConfig
        From :func:`~brainage.study.design.read_study`.
    cohort : Cohort
        From :func:`brainage.io.read_bids` or :func:`brainage.io.read_table`.
    out_dir : str or Path
        Study folder (layout: :class:`~brainage.study.layout.StudyLayout`); rerun to resume.
    base : dict, optional
        Configuration overrides below the study's (e.g. a ``--config`` file's).
    backend : {"processes", "serial", "dask"}
        Executor of the (condition, seed) tasks and of the shared preprocessing.
    n_jobs : int
        Local worker processes (``processes``, or a local Dask cluster); each gets
        ``cpu_count // n_jobs`` numerical threads.
    scheduler : str, optional
        Address of a running Dask scheduler (``tcp://host:8786``); implies ``backend="dask"``.
        The workers must see ``out_dir`` and the cohort's images at the same paths.
    progress : bool
        Progress bar of the tasks (and log lines on stderr).
    retries : int
        Further attempts of a task that failed or whose worker died.

    Returns
    -------
    StudyResult

    Raises
    ------
    ConfigError
        A condition's configuration is invalid (named), or the executor settings are.
    InputError
        No subject could be preprocessed.
    """
    from brainage.workflow.progress import setup_logging

    t0 = time.perf_counter()
    layout = StudyLayout(Path(out_dir))
    layout.root.mkdir(parents=True, exist_ok=True)
    setup_logging(layout.log, console=progress)
    if scheduler is not None:
        backend = "dask"
    if backend not in ("processes", "serial", "dask"):
        raise ConfigError(f"'backend' must be processes, serial or dask; got {backend!r}")
    executor = {"backend": backend, "n_jobs": int(n_jobs), "dask_address": scheduler}
    runs = expand_study(study, base)
    _check_comparable(runs)
    write_text(layout.study_file, _dump_study(study))
    log.info(
        "study %s: %d condition(s) × %d seed(s) = %d runs on %s, %d subjects",
        study.name, len(study.conditions), len(study.seed_list()), len(runs), backend, len(cohort),
    )  # fmt: skip
    cohorts, failures = _shared_preprocessing(runs, cohort, layout, executor, progress)
    setup_logging(layout.log, console=progress)
    specs = [_task_spec(r, cohorts[preprocessing_key(r.config)], layout, study) for r in runs]
    t_tasks = time.perf_counter()
    outcomes = _run_tasks(specs, executor, progress, retries, layout.log)
    task_seconds = time.perf_counter() - t_tasks
    rows, failed, computed = [], [], {}
    for r, spec in zip(runs, specs, strict=True):
        out = outcomes.get(spec["name"])
        ok = isinstance(out, dict)
        if not ok:
            failed.append(r.name)
            log.warning("run %s failed: %s", r.name, _one_line(out))
        else:
            computed[r.name] = out["computed"]
        rows.append({"run": r.name, "condition": r.condition, "seed": r.seed,
                     "status": "finished" if ok else "failed",
                     "seconds": round(out["seconds"], 1) if ok else None,
                     "max_rss_mb": out.get("max_rss_mb") if ok else None,
                     "error": None if ok else _one_line(out)})  # fmt: skip
    table = pd.DataFrame(rows, columns=RUN_COLUMNS)
    write_tsv(layout.table("failures"), failures)
    from brainage.study.summary import summarise_study

    table = summarise_study(layout, study, runs, table)
    from brainage.report.study import write_study_report
    from brainage.study.summary import summary_method

    cfg = runs[0].config
    report = write_study_report(layout, study, summary_method(cfg), cfg.train.resolution_mm)
    log.info("study report: %s", report)
    seconds = time.perf_counter() - t0
    write_json(
        layout.root / "provenance.json",
        {
            "study": study.name,
            "backend": backend,
            "n_jobs": n_jobs,
            "scheduler": scheduler,
            "wall_seconds": round(seconds, 1),
            "failed": failed,
            "computed": computed,
        },  # fmt: skip
    )
    return StudyResult(layout.root, table, failed, computed, report, seconds, task_seconds)


def _check_comparable(runs) -> None:
    """Conditions must share what the study compares on: the model grid, map method and atlas.

    Raises
    ------
    ConfigError
        Naming the first condition that differs and the setting.
    """
    from brainage.study.summary import summary_method

    def what(cfg):
        atlases = cfg.population.atlases
        return {"train.resolution_mm": cfg.train.resolution_mm,
                "explain.methods (first)": summary_method(cfg),
                "population.atlases (first)": atlases[0] if atlases else None}  # fmt: skip

    ref = what(runs[0].config)
    for r in runs[1:]:
        for key, value in what(r.config).items():
            if value != ref[key]:
                raise ConfigError(
                    f"study condition {r.condition!r} has {key} = {value!r} but "
                    f"{runs[0].condition!r} has {ref[key]!r}; the conditions' maps are compared "
                    "voxel by voxel, so set it in the study's 'base' instead"
                )


def _dump_study(study: StudyConfig) -> str:
    import yaml

    return yaml.safe_dump(study.model_dump(mode="json"), sort_keys=False)


def _one_line(err) -> str:
    return " ".join(str(err).split())[:300] if err is not None else "not run"


# ---------------------------------------------------------------------- shared preprocessing
def _shared_preprocessing(runs, cohort: Cohort, layout: StudyLayout, executor, progress):
    """Preprocess once per distinct ``preprocess`` section; return the cohort of each.

    Returns
    -------
    cohorts : dict of str → dict
        Preprocessing key → ``{"table": records, "shared": folder}``: the subjects whose
        preprocessing finished (the others are in the study's ``failures.tsv``).
    failures : pandas.DataFrame
    """
    from brainage.workflow.api import run as run_pipeline
    from brainage.workflow.records import read_records

    groups: dict[str, object] = {}
    for r in runs:
        groups.setdefault(preprocessing_key(r.config), r.config)
    cohorts, frames = {}, []
    for key, cfg in groups.items():
        folder = layout.shared(key)
        shared_cfg = cfg.merged({"run": executor})
        names = [r.name for r in runs if preprocessing_key(r.config) == key]
        log.info("preprocessing %s (register: %s) for %d run(s)", folder.name,
                 cfg.preprocess.register, len(names))  # fmt: skip
        run_pipeline(cohort, folder, shared_cfg, progress=progress, targets=list(SHARED_STAGES),
                     native_cache=layout.native_cache)  # fmt: skip
        from brainage.io.layout import RunLayout

        done = set(read_records(RunLayout(folder, cfg.train.resolution_mm), "preprocess"))
        fail = read_tsv(folder / "failures.tsv", dtype=str)
        done -= set(fail["participant_id"].astype(str))  # a stale record of a subject now failing
        table = cohort.table[cohort.table["participant_id"].astype(str).isin(done)]
        if table.empty:
            from brainage.errors import InputError

            raise InputError("no subject could be preprocessed", path=folder / "failures.tsv")
        truth = None if cohort.truth_dir is None else str(cohort.truth_dir)
        cohorts[key] = {"table": table.to_dict("records"), "shared": str(folder),
                        "source": str(cohort.source), "truth_dir": truth,
                        "native_cache": str(layout.native_cache)}  # fmt: skip
        fail.insert(0, "preprocessing", folder.name)
        frames.append(fail)
    return cohorts, pd.concat(frames, ignore_index=True)


def share_records(shared: Path, run_dir: Path, stage: str = "preprocess") -> int:
    """Give a run folder the finished records of a shared run folder (outputs made absolute).

    The run's stage engine then finds these items finished (same key: same parameters and
    inputs) and reads their outputs from the shared folder; nothing is copied but the records.

    Returns
    -------
    int
        Records written.
    """
    from brainage.io.layout import RunLayout
    from brainage.workflow.records import read_record, read_records

    src, dst = RunLayout(shared), RunLayout(run_dir)
    n = 0
    for item, rec in read_records(src, stage).items():
        rec.outputs = {k: str(src.absolute(v)) for k, v in rec.outputs.items()}
        have = read_record(dst, stage, item)
        if have is not None and have.key == rec.key and have.outputs == rec.outputs:
            continue
        rec.write(dst)
        n += 1
    return n


# ---------------------------------------------------------------------- tasks
def _task_spec(r: StudyRun, shared: dict, layout: StudyLayout, study: StudyConfig) -> dict:
    cfg = r.config.merged({"run": {"backend": "serial", "n_jobs": 1}})
    return {"name": r.name, "run_dir": str(layout.run(r.name)), "config": cfg.to_dict(),
            "targets": list(study.targets), **shared}  # fmt: skip


def run_task(spec: dict) -> dict:
    """Run one (condition, seed) of a study (a worker task; picklable, idempotent).

    Parameters
    ----------
    spec : dict
        ``name``, ``run_dir``, ``config`` (a full configuration dict), ``table`` (cohort rows),
        ``source`` and ``truth_dir`` of the cohort, ``shared`` (the shared preprocessing folder),
        ``native_cache``, ``targets``.

    Returns
    -------
    dict
        ``name``, ``computed`` (items per stage), ``seconds``, ``max_rss_mb`` (peak resident
        memory of the worker process so far, MiB — over every task it ran, so an upper bound of
        this task's: what a cluster job must provide).
    """
    from brainage.config import Config
    from brainage.workflow.api import run as run_pipeline

    t0 = time.perf_counter()
    run_dir = Path(spec["run_dir"])
    for stage in SHARED_STAGES:
        share_records(Path(spec["shared"]), run_dir, stage)
    truth = spec.get("truth_dir")
    cohort = Cohort(pd.DataFrame(spec["table"]), spec["source"], [], truth and Path(truth))
    cfg = Config(**spec["config"])
    result = run_pipeline(cohort, run_dir, cfg, progress=False, targets=spec["targets"],
                          native_cache=spec.get("native_cache"))  # fmt: skip
    return {"name": spec["name"], "computed": result.computed,
            "seconds": time.perf_counter() - t0, "max_rss_mb": _max_rss_mb()}  # fmt: skip


def _max_rss_mb() -> float | None:
    try:
        import resource
    except ImportError:  # pragma: no cover - Windows
        return None
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)  # KiB on Linux


def _run_tasks(specs: list[dict], executor: dict, progress: bool, retries: int, log_file) -> dict:
    """Run the tasks on the executor; retry failed ones; return ``name → summary | error``.

    ``log_file``: the study's log, restored after each task (a serial task logs to its run's).
    """
    from brainage.parallel import iter_tasks
    from brainage.workflow.progress import setup_logging

    n_jobs = max(1, min(executor["n_jobs"], len(specs)))
    threads = max(1, (os.cpu_count() or 1) // n_jobs)
    todo, outcomes = list(specs), {}
    for attempt in range(retries + 1):
        if not todo:
            break
        if attempt:
            log.info("retrying %d failed run(s)", len(todo))
        it = iter_tasks(
            run_task,
            todo,
            n_jobs=n_jobs,
            backend=executor["backend"],
            description="study runs" if not attempt else "study runs (retry)",
            progress=progress,
            dask_address=executor["dask_address"],
            threads_per_task=threads,
        )
        for spec, out in it:
            setup_logging(log_file, console=progress)
            outcomes[spec["name"]] = out
            if isinstance(out, BaseException):
                log.debug("run %s: %s: %s", spec["name"], type(out).__name__, _one_line(out))
        todo = [s for s in specs if isinstance(outcomes.get(s["name"]), BaseException)]
    return outcomes


def read_runs(out_dir: str | Path) -> pd.DataFrame:
    """Return ``runs.tsv`` of a study folder.

    Raises
    ------
    BrainageError
        ``out_dir`` is not a study folder.
    """
    path = StudyLayout(Path(out_dir)).table("runs")
    if not path.exists():
        raise BrainageError(f"{out_dir} is not a brainage study folder (no runs.tsv)")
    return pd.read_csv(path, sep="\t")


__all__ = ["StudyResult", "preprocessing_key", "read_runs", "run_study", "run_task",
           "share_records"]  # fmt: skip
