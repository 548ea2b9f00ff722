"""Library entry points of the main job (every CLI command is one of these calls).

:func:`run`, :func:`predict`, :func:`demo`, :func:`explain_run` and :func:`run_stages`.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from brainage import __version__
from brainage.config import DEMO_OVERRIDES, Config, dump_config, load_config
from brainage.errors import ConfigError, InputError
from brainage.io.atomic import write_json, write_text
from brainage.io.cohort import Cohort
from brainage.io.derivatives import is_synthetic, source_name, write_derivative_metadata
from brainage.io.layout import RunLayout
from brainage.io.scans import read_tsv
from brainage.workflow.progress import setup_logging
from brainage.workflow.records import read_records
from brainage.workflow.runner import Runner, remove_stale_temporaries
from brainage.workflow.stage import RunContext
from brainage.workflow.stages import ALL_STAGES, APPLY_STAGES, MODEL_STAGES

log = logging.getLogger("brainage")

#: Stage run by each stage command; ``run`` chains all.
TARGETS = {
    "preprocess": ["preprocess"],
    "train": ["train", "reference"],
    "predict": ["predict"],
    "explain": ["explain"],
    "population": ["population", "subgroups"],
    "regions": ["regions", "native_regions", "stability"],
    "evaluate": ["evaluate"],
    "stats": ["stats"],
    "report": ["report"],
    "run": ["report"],
}


@dataclass
class RunResult:
    """Where a run wrote its outputs and what it computed.

    Attributes
    ----------
    out_dir : Path
    predictions : pandas.DataFrame or None
        ``predictions.tsv`` (None when the predict stage did not run).
    metrics : pandas.DataFrame or None
    computed : dict of str to int
        Items computed per stage (0 everywhere on a rerun with nothing changed).
    stage_seconds : dict of str to float
    report : Path or None
    """

    out_dir: Path
    predictions: pd.DataFrame | None = None
    metrics: pd.DataFrame | None = None
    computed: dict = field(default_factory=dict)
    stage_seconds: dict = field(default_factory=dict)
    report: Path | None = None


def _context(cohort: Cohort, layout: RunLayout, cfg: Config, progress: bool, **kw) -> RunContext:
    table = cohort.table.copy().reset_index(drop=True)
    table["participant_id"] = table["participant_id"].astype(str)
    ctx = RunContext(
        layout, cfg, table, str(cohort.source), cohort.truth_dir, progress=progress, **kw
    )
    for err in cohort.failures:
        pid = err.participant_id or str(err)
        ctx.failures[pid] = err
        ctx.failure_stage[pid] = "cohort"
    return ctx


def _library_versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "numpy", "nibabel", "nilearn", "antspyx", "deepbet", "zennit", "captum"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def _execute(ctx: RunContext, targets, stages, report_name="run") -> RunResult:
    """Write the run's metadata, run the stages, write provenance; return the result."""
    import torch

    from brainage.utils import select_device

    layout, cfg = ctx.layout, ctx.config
    layout.root.mkdir(parents=True, exist_ok=True)
    setup_logging(layout.root / "logs" / "brainage.log", console=ctx.progress)
    if cfg.run.omp_nthreads:
        from brainage.parallel import limit_threads

        limit_threads(cfg.run.omp_nthreads)
    removed = remove_stale_temporaries(layout.root)
    if removed:
        log.debug("removed %d temporary file(s) of an interrupted run", removed)
    started = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    write_text(layout.config, dump_config(cfg))
    root = ctx.raw_root
    synthetic = is_synthetic(root)
    write_derivative_metadata(
        layout, f"brainage: {source_name(root)}", root,
        {"config": cfg.to_dict(), "seeds": cfg.seeds, "source": str(ctx.source),
         "synthetic": synthetic},
    )  # fmt: skip
    n_age = int(ctx.cohort["age"].notna().sum())
    log.info("cohort: %d subjects from %s (%d with age)", len(ctx.cohort), ctx.source, n_age)
    runner = Runner(ctx, stages, provided=MODEL_STAGES if ctx.mode == "apply" else ())
    t0 = time.perf_counter()
    with _warnings_to_log():
        computed = runner.run(targets)
    from brainage.workflow.stages.preprocess import write_failures

    write_failures(ctx)
    if ctx.failures:
        log.warning("%d subject(s) failed; see %s", len(ctx.failures), layout.file("failures.tsv"))
    provenance = {
        "version": __version__,
        "command": " ".join(sys.argv),
        "started": started,
        "finished": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "wall_seconds": round(time.perf_counter() - t0, 2),
        "stage_seconds": {k: round(v, 3) for k, v in runner.seconds.items()},
        "computed": computed,
        "seeds": cfg.seeds,
        "device": str(select_device(cfg.train.device)),
        "n_threads": torch.get_num_threads(),
        "python": sys.version.split()[0],
        "libraries": _library_versions(),
    }
    write_json(layout.file("provenance.json"), provenance)
    result = RunResult(layout.root, computed=computed, stage_seconds=dict(runner.seconds))
    pred = layout.file("predictions.tsv")
    if ("predict", "ensemble") in ctx.records and pred.exists():
        result.predictions = read_tsv(pred)
        result.metrics = pd.read_csv(layout.file("metrics.tsv"), sep="\t")
        every = result.metrics.get("fold", pd.Series("all", index=result.metrics.index))
        test = result.metrics[
            (every.astype(str) == "all")
            & result.metrics["split"].isin(["test", "predict"])
            & result.metrics["model"].isin(["ensemble", "ensemble_corrected"])
        ]
        oof = " (out-of-fold)" if cfg.split.scheme == "kfold" else ""
        for _, r in test.iterrows():
            log.info(
                "%s %s: MAE %.2f years, r = %.2f (n = %d)%s",
                r["split"],
                r["model"],
                r["mae"],
                r["r"],
                r["n"],
                oof if r["split"] == "test" else "",
            )
    if ("report", "report") in ctx.records:
        result.report = ctx.record("report", "report").output(layout, "report")
        log.info("report: %s", result.report)
    return result


@contextlib.contextmanager
def _warnings_to_log():
    """Show Python warnings of the science code (e.g. the bias-correction guard) as log lines."""
    original = warnings.showwarning

    def show(message, category, filename, lineno, file=None, line=None):
        log.warning("%s", message)

    warnings.showwarning = show
    try:
        yield
    finally:
        warnings.showwarning = original


def run(
    cohort: Cohort,
    out_dir: str | Path,
    config: Config | None = None,
    progress: bool = True,
    targets=("report",),
    work_dir: str | Path | None = None,
    native_cache: str | Path | None = None,
) -> RunResult:
    """Run the whole pipeline (or up to ``targets``) on a cohort.

    Parameters
    ----------
    cohort : Cohort
        From :func:`brainage.io.read_bids` or :func:`brainage.io.read_table`.
    out_dir : str or Path
        Output folder (created; layout: :class:`brainage.io.layout.RunLayout`). Rerunning on
        the same folder computes only what is missing or stale.
    config : Config, optional
        Default: :func:`brainage.config.load_config` ().
    progress : bool
        Progress bars (and log lines on stderr).
    targets : sequence of str
        Stages to bring up to date, with everything upstream (default: all, up to the report).
    work_dir : str or Path, optional
        Folder for deletable caches (default ``out_dir/work``).
    native_cache : str or Path, optional
        Folder of skull-stripped, N4-corrected native brains keyed by content (default
        ``<work_dir>/native``); runs that share it strip and correct each scan once.

    Returns
    -------
    RunResult

    Raises
    ------
    InputError
        Too few usable subjects; with ``run.strict`` the first subject that fails.
    """
    cfg = config if config is not None else load_config()
    layout = RunLayout(Path(out_dir), cfg.train.resolution_mm, work_dir)
    cache = Path(native_cache).expanduser().resolve() if native_cache is not None else None
    ctx = _context(cohort, layout, cfg, progress, native_cache=cache)
    _check_cohort_columns(cfg, ctx.cohort)
    return _execute(ctx, list(targets), ALL_STAGES())


def _check_cohort_columns(cfg: Config, table: pd.DataFrame) -> None:
    """Fail before any work when the configuration names cohort columns the cohort lacks."""
    wanted = []
    for c in cfg.stats.contrasts:
        cols = [c.column, *(v for v in c.covariates if v not in ("age", "age2"))]
        wanted += [(f"stats.contrasts ({c.name})", col) for col in cols]
    wanted += [("stats.covariates", col) for col in cfg.stats.covariates or []]
    missing = [(where, col) for where, col in wanted if col not in table]
    if missing:
        where, col = missing[0]
        raise ConfigError(
            f"'{where}' names the column {col!r}, which the cohort does not have (columns: "
            f"{', '.join(map(str, table.columns))}); fix the configuration or participants.tsv"
        )


def _finished_run(run_dir, needed: tuple[str, ...]) -> RunLayout:
    root = Path(run_dir).expanduser().resolve()
    for name in needed:
        if not (root / name).exists():
            raise InputError(
                f"{name} is missing: not a finished brainage run",
                "give the output folder of a completed `brainage run`",
                path=root,
            )
    cfg = load_config(root / "config.yaml")
    return RunLayout(root, cfg.train.resolution_mm)


def cohort_of_run(layout: RunLayout) -> Cohort:
    """Return the cohort of a run folder, from its ``cohort.tsv`` (image paths as recorded)."""
    table = read_tsv(layout.file("cohort.tsv"))
    desc = layout.file("dataset_description.json")
    source = ""
    if desc.exists():
        import json

        meta = json.loads(desc.read_text())
        source = meta.get("brainage", {}).get("source") or meta.get("SourceDatasets", [{}])[0].get(
            "URL", ""
        )
    truth = Path(source) / "derivatives" / "truth" if source else None
    cols = [c for c in table.columns if c != "split"]
    return Cohort(table[cols], source, [], truth if truth and truth.is_dir() else None)


def run_stages(
    run_dir: str | Path,
    targets,
    overrides: dict | None = None,
    progress: bool = True,
) -> RunResult:
    """Bring stages of an existing run up to date (``brainage explain|population|… --run DIR``).

    Reads the run's configuration (``config.yaml``) and cohort (``cohort.tsv``), applies
    ``overrides`` (validated), and runs ``targets`` with whatever upstream is missing or stale.

    Raises
    ------
    InputError
        ``run_dir`` is not a brainage run folder.
    ConfigError
        Invalid ``overrides``.
    """
    layout = _finished_run(run_dir, ("config.yaml", "cohort.tsv"))
    cfg = load_config(layout.config).merged(overrides)
    layout = RunLayout(layout.root, cfg.train.resolution_mm)
    ctx = _context(cohort_of_run(layout), layout, cfg, progress)
    return _execute(ctx, list(targets), ALL_STAGES())


def explain_run(
    run_dir: str | Path,
    methods: list[str] | None = None,
    subjects: str | None = None,
    params: dict | None = None,
    progress: bool = True,
    report: bool = True,
) -> RunResult:
    """Explain a run again, e.g. with other methods (``brainage explain --run DIR``).

    Parameters
    ----------
    run_dir : str or Path
        Output folder of :func:`run`.
    methods : list of str, optional
        Registered explanation methods; default: the run's (``explain.methods``).
    subjects : {"test", "heldout", "all"}, optional
    params : dict, optional
        Per-method parameters, e.g. ``{"occlusion": {"window": 6}}``.

    Returns
    -------
    RunResult
    """
    explain: dict = {}
    if methods:
        explain["methods"] = list(methods)
    if subjects:
        explain["subjects"] = subjects
    if params:
        explain["params"] = params
    targets = ["report"] if report else [*TARGETS["population"], *TARGETS["regions"],
                                         "evaluate", "stats"]  # fmt: skip
    return run_stages(run_dir, targets, {"explain": explain} if explain else None, progress)


def predict(
    model_dir: str | Path,
    cohort: Cohort,
    out_dir: str | Path,
    explain_methods: tuple[str, ...] = (),
    progress: bool = True,
) -> pd.DataFrame:
    """Apply a trained run to new subjects (``brainage predict``).

    Preprocesses the new subjects as in the run ``model_dir`` (its ``config.yaml``), applies its
    base models, ridge head and age-bias correction, and writes ``out_dir/predictions.tsv``
    (split ``predict``), ``failures.tsv``, ``metrics.tsv`` (where ages are known) and, with
    ``explain_methods``, relevance maps of every new subject.

    Raises
    ------
    InputError
        ``model_dir`` is not a finished brainage run.
    """
    models = _finished_run(model_dir, ("config.yaml", "ensemble.json", "bias_correction.json"))
    cfg = load_config(models.config)
    if explain_methods:
        cfg = cfg.merged({"explain": {"methods": list(explain_methods)}})
    layout = RunLayout(Path(out_dir), cfg.train.resolution_mm)
    ctx = _context(cohort, layout, cfg, progress, models=models, mode="apply")
    for stage in MODEL_STAGES:
        for item, rec in read_records(models, stage).items():
            ctx.records[(stage, item)] = rec
    fitted = read_records(models, "predict").get("ensemble")
    if fitted is None or not ctx.stage_records("train"):
        raise InputError(
            "the run has no finished models and ensemble (records/ are missing)",
            "rerun `brainage run` on it with this brainage version",
            path=models.root,
        )
    ctx.records[("fitted", "ensemble")] = fitted
    targets = ["explain", "predict"] if explain_methods else ["predict"]
    result = _execute(ctx, targets, APPLY_STAGES())
    if result.predictions is None:
        raise InputError("no subject could be predicted", f"see {layout.file('failures.tsv')}")
    return result.predictions


def demo(
    out_dir: str | Path = "brainage-demo",
    n_subjects: int = 120,
    seed: int = 0,
    progress: bool = True,
) -> RunResult:
    """Run the whole pipeline on a synthetic cohort made on the fly (``brainage demo``).

    Simulates ``n_subjects`` brain phantoms with age-dependent ventricle enlargement, cortical
    thinning and white-matter lesions (:mod:`brainage.simulate`) into
    ``out_dir/sourcedata/phantoms`` (BIDS with ground truth), then calls :func:`run` with
    :data:`brainage.config.DEMO_OVERRIDES`.

    Returns
    -------
    RunResult
    """
    from brainage.io import read_bids
    from brainage.simulate import simulate_cohort

    out = Path(out_dir).expanduser().resolve()
    cfg = load_config(base=DEMO_OVERRIDES, overrides={"seed": seed})
    bids = out / "sourcedata" / "phantoms"
    if not (bids / "participants.tsv").exists():
        simulate_cohort(
            bids,
            n_subjects=n_subjects,
            resolution_mm=cfg.preprocess.resolution_mm,
            seed=seed,
            progress=progress,
        )
    return run(read_bids(bids), out, cfg, progress=progress)
