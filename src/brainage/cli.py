"""Command-line interface: argument parsing only; every command is one library call.

Usage errors (unknown option or command, missing or malformed value) print one line with a
did-you-mean and exit 2; bad data and bad configuration print one line naming the file or key and
exit 2. ``-h`` is ``--help``.
"""

from __future__ import annotations

import difflib
import sys
from pathlib import Path
from typing import Annotated

import typer

from brainage import __version__
from brainage.errors import BrainageError

app = typer.Typer(
    name="brainage",
    help="Interpretable brain-age estimation from 3D MRI. Also a BIDS App: "
    "`brainage BIDS_DIR OUTPUT_DIR participant|group [--participant-label …] [--work-dir DIR] "
    "[--n-jobs N] [--omp-nthreads N] [--skip-bids-validation] [-v]` "
    "(`brainage BIDS_DIR OUTPUT_DIR participant -h` for its options).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)

BidsOpt = Annotated[
    Path | None,
    typer.Option("--bids", help="BIDS dataset (participants.tsv + sub-*/anat/*_T1w.nii.gz)."),
]
TableOpt = Annotated[
    Path | None, typer.Option("--table", help="CSV/TSV with participant_id, age, t1w (image path).")
]
OutOpt = Annotated[Path, typer.Option("--out", help="Output folder (rerun to resume).")]
RunOpt = Annotated[Path, typer.Option("--run", help="Folder of an earlier `brainage run`.")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="YAML overriding defaults.")]
LabelOpt = Annotated[
    str | None,
    typer.Option(
        "--participant-label", help="Only these subjects (comma-separated, with or without sub-)."
    ),
]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Stop at the first subject that fails instead of listing it."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars or log lines.")]
MethodsOpt = Annotated[
    str | None, typer.Option("--methods", help="Comma-separated explanation methods.")
]
JobsOpt = Annotated[int | None, typer.Option("--n-jobs", help="Parallel workers.", min=1)]
FilterOpt = Annotated[
    Path | None,
    typer.Option(
        "--bids-filter-file",
        help='JSON of T1w entity filters, e.g. {"t1w": {"acquisition": "mprage", "run": 1}}.',
    ),
]
WorkOpt = Annotated[
    Path | None,
    typer.Option("--work-dir", help="Folder for deletable work files (default: OUT_work)."),
]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"brainage {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version.")
    ] = False,
) -> None:
    """Interpretable brain-age estimation from 3D MRI."""


def _split(text: str | None) -> list[str] | None:
    return None if text is None else [m.strip() for m in text.split(",") if m.strip()]


def _cohort(bids, table, strict, labels, filter_file=None):
    from brainage.io import read_cohort
    from brainage.io.cohort import read_filter_file

    filters = read_filter_file(filter_file) if filter_file else None
    cohort = read_cohort(bids=bids, table=table, strict=strict, filters=filters)
    return cohort.subset(_split(labels)) if labels else cohort


def _config(config, methods=None, n_jobs=None, strict=None, seeds=None, base=None):
    from brainage.config import load_config

    overrides: dict = {}
    if strict:
        overrides["run"] = {"strict": True}
    if n_jobs is not None:
        overrides.setdefault("run", {})["n_jobs"] = n_jobs
    if seeds is not None:
        overrides["ensemble"] = {"n_seeds": seeds}
    if methods is not None:
        overrides["explain"] = {"methods": _split(methods)}
    return load_config(config, overrides, base=base)


@app.command()
def run(
    out: OutOpt,
    bids: BidsOpt = None,
    table: TableOpt = None,
    config: ConfigOpt = None,
    seeds: Annotated[
        int | None, typer.Option("--seeds", help="Number of base models.", min=1)
    ] = None,
    methods: MethodsOpt = None,
    n_jobs: JobsOpt = None,
    participant_label: LabelOpt = None,
    bids_filter_file: FilterOpt = None,
    work_dir: WorkOpt = None,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole pipeline: preprocess, train, predict, explain, population maps, report."""
    from brainage.workflow import run as run_all

    cfg = _config(config, methods, n_jobs, strict, seeds)
    cohort = _cohort(bids, table, strict, participant_label, bids_filter_file)
    run_all(cohort, out, cfg, progress=not quiet, work_dir=work_dir)


def _stage_command(stage: str, doc: str):
    """Build a command that brings one stage (and whatever upstream is stale) up to date."""

    def command(
        out: OutOpt,
        bids: BidsOpt = None,
        table: TableOpt = None,
        config: ConfigOpt = None,
        n_jobs: JobsOpt = None,
        participant_label: LabelOpt = None,
        bids_filter_file: FilterOpt = None,
        work_dir: WorkOpt = None,
        strict: StrictOpt = False,
        quiet: QuietOpt = False,
    ) -> None:
        from brainage.workflow import run as run_all
        from brainage.workflow.api import TARGETS

        cfg = _config(config, None, n_jobs, strict)
        cohort = _cohort(bids, table, strict, participant_label, bids_filter_file)
        run_all(cohort, out, cfg, progress=not quiet, targets=TARGETS[stage], work_dir=work_dir)

    command.__doc__ = doc
    command.__name__ = stage
    return command


app.command(name="preprocess")(
    _stage_command(
        "preprocess", "Preprocess a cohort (skull strip, N4, register to MNI152, crop, scale, QC)."
    )
)
app.command(name="train")(
    _stage_command("train", "Preprocess (where stale) and train the base models of a cohort.")
)


@app.command()
def predict(
    model: Annotated[
        Path, typer.Option("--model", help="Output folder of an earlier `brainage run`.")
    ],
    out: Annotated[Path, typer.Option("--out", help="Output folder for predictions.tsv.")],
    bids: BidsOpt = None,
    table: TableOpt = None,
    methods: Annotated[
        str | None, typer.Option("--methods", help="Also write relevance maps (comma-separated).")
    ] = None,
    participant_label: LabelOpt = None,
    bids_filter_file: FilterOpt = None,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Apply a trained run (ensemble + bias correction) to new subjects."""
    from brainage.workflow import predict as predict_new

    explain = tuple(_split(methods) or ())
    cohort = _cohort(bids, table, strict, participant_label, bids_filter_file)
    predict_new(model, cohort, out, explain, progress=not quiet)


@app.command()
def explain(
    run: RunOpt,
    methods: Annotated[
        str | None,
        typer.Option("--methods", help="Comma-separated methods (default: the run's)."),
    ] = None,
    subjects: Annotated[
        str | None,
        typer.Option("--subjects", help="test | heldout | all (default: the run's)."),
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Relevance maps of a run (its methods, or --methods), then maps, regions, report."""
    from brainage.workflow import explain_run

    explain_run(run, _split(methods), subjects, progress=not quiet)


def _run_command(stage: str, doc: str):
    """Build a command that brings one stage of an existing run (``--run DIR``) up to date."""

    def command(run: RunOpt, quiet: QuietOpt = False) -> None:
        from brainage.workflow import run_stages
        from brainage.workflow.api import TARGETS

        run_stages(run, TARGETS[stage], progress=not quiet)

    command.__doc__ = doc
    command.__name__ = stage
    return command


for _name, _doc in (
    ("population", "Population and subgroup maps of a run's relevance maps."),
    ("regions", "Region tables (atlases, native label maps) and the stability of their ranks."),
    ("evaluate", "Scores of a run's explanation methods (sanity checks, ground truth)."),
    ("stats", "Voxelwise permutation tests with TFCE on a run's relevance maps."),
    ("report", "(Re)write report.html of a run (and whatever it needs that is stale)."),
):
    app.command(name=_name)(_run_command(_name, _doc))


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("brainage-demo"),
    n_subjects: Annotated[
        int, typer.Option("--n-subjects", help="Synthetic subjects.", min=12)
    ] = 120,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole pipeline on a synthetic cohort made on the fly (no files needed)."""
    from brainage.workflow import demo as run_demo

    run_demo(out, n_subjects=n_subjects, seed=seed, progress=not quiet)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="BIDS folder to write.")],
    n_subjects: Annotated[int, typer.Option("--n-subjects", min=1)] = 120,
    resolution: Annotated[float, typer.Option("--resolution", help="Voxel size, mm.")] = 4.0,
    seed: Annotated[int, typer.Option("--seed", min=0)] = 0,
    flair: Annotated[bool, typer.Option("--flair", help="Also write FLAIR images.")] = False,
    design: Annotated[
        str,
        typer.Option(
            "--design",
            help="global (ventricles, cortical thinning, lesions) | regions (region-level "
            "truth: atrophy with known rates in chosen Harvard-Oxford regions).",
        ),
    ] = "global",
    n_jobs: Annotated[int, typer.Option("--n-jobs", min=1)] = 1,
    quiet: QuietOpt = False,
) -> None:
    """Simulate a 3D brain-phantom cohort with ground-truth age effects (BIDS)."""
    from brainage.simulate import simulate_cohort

    contrasts = ("T1w", "FLAIR") if flair else ("T1w",)
    simulate_cohort(
        out,
        n_subjects=n_subjects,
        resolution_mm=resolution,
        seed=seed,
        contrasts=contrasts,
        n_jobs=n_jobs,
        progress=not quiet,
        design=design,
    )


@app.command()
def study(
    study_file: Annotated[Path, typer.Argument(help="Study file (YAML): conditions × seeds.")],
    out: OutOpt,
    bids: BidsOpt = None,
    table: TableOpt = None,
    config: ConfigOpt = None,
    backend: Annotated[
        str, typer.Option("--backend", help="serial | processes | dask (a local cluster).")
    ] = "processes",
    n_jobs: Annotated[int, typer.Option("--n-jobs", help="Local workers.", min=1)] = 2,
    scheduler: Annotated[
        str | None,
        typer.Option("--scheduler", help="Address of a running Dask scheduler (tcp://host:8786)."),
    ] = None,
    participant_label: LabelOpt = None,
    bids_filter_file: FilterOpt = None,
    quiet: QuietOpt = False,
) -> None:
    """Run a multi-seed × condition study (paper 000); rerun the same command to resume."""
    from brainage.config import read_yaml
    from brainage.study import read_study, run_study

    spec = read_study(study_file)
    base = read_yaml(config) if config is not None else None
    cohort = _cohort(bids, table, False, participant_label, bids_filter_file)
    result = run_study(spec, cohort, out, base=base, backend=backend, n_jobs=n_jobs,
                       scheduler=scheduler, progress=not quiet)  # fmt: skip
    if result.failed:
        typer.echo(
            f"{len(result.failed)} of {len(result.runs)} run(s) failed: "
            f"{', '.join(result.failed[:5])}; see {result.out_dir / 'runs.tsv'}. Rerun to retry.",
            err=True,
        )
        raise typer.Exit(1)


@app.command(name="methods")
def list_explanation_methods() -> None:
    """List the registered explanation methods."""
    from brainage.explain import list_methods

    for name in list_methods():
        typer.echo(name)


@app.command(name="config")
def show_config(
    show: Annotated[bool, typer.Option("--show", help="Print the resolved configuration.")] = True,
    config: ConfigOpt = None,
    demo_defaults: Annotated[
        bool, typer.Option("--demo", help="Start from the configuration of `brainage demo`.")
    ] = False,
) -> None:
    """Print the resolved configuration (every key with its default) as YAML."""
    from brainage.config import DEMO_OVERRIDES, dump_config

    cfg = _config(config, base=DEMO_OVERRIDES if demo_defaults else None)
    if show:
        typer.echo(dump_config(cfg), nl=False)


def _click_exceptions():
    """Return the click exceptions typer uses (typer ≥ 0.22 vendors click: ``typer._click``)."""
    try:
        from typer._click import exceptions
    except ImportError:  # pragma: no cover - older typer with the click package
        from click import exceptions
    return exceptions


def _usage_line(err) -> str:
    """One line for a click usage error, with a did-you-mean for unknown commands."""
    msg = " ".join(err.format_message().split())
    ctx = getattr(err, "ctx", None)
    cmd = ctx.command_path if ctx is not None else "brainage"
    if "No such command" in msg and ctx is not None and hasattr(ctx.command, "commands"):
        name = msg.split("'")[1] if "'" in msg else ""
        close = difflib.get_close_matches(name, list(ctx.command.commands), n=1)
        if close and "did you mean" not in msg.lower():
            msg += f" Did you mean '{close[0]}'?"
    return f"{cmd}: {msg} (see '{cmd} --help')"


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; print usage and user errors as one line, exit 2."""
    from rich.console import Console

    err_console = Console(stderr=True, soft_wrap=True, highlight=False)
    exc = _click_exceptions()
    args = sys.argv[1:] if argv is None else list(argv)
    try:
        from brainage.bids_app import is_bids_app_call

        commands = {c.name or c.callback.__name__ for c in app.registered_commands}
        if is_bids_app_call(args, commands):
            from brainage.bids_app import main as bids_app_main

            bids_app_main(args)
            return
        app(args=argv, standalone_mode=False, prog_name="brainage")
    except BrainageError as err:
        err_console.print(f"[bold red]error:[/] {err}")
        sys.exit(2)
    except KeyboardInterrupt:
        err_console.print(
            "[yellow]interrupted[/]: finished work is kept; rerun the same command to resume."
        )
        sys.exit(130)
    except typer.Exit as ex:  # --version
        sys.exit(ex.exit_code)
    except exc.UsageError as err:
        if not err.format_message().strip():  # plain `brainage`: the help was printed
            sys.exit(0)
        err_console.print(f"[bold red]error:[/] {_usage_line(err)}")
        sys.exit(2)
    except exc.ClickException as err:
        err_console.print(f"[bold red]error:[/] {' '.join(err.format_message().split())}")
        sys.exit(2)
    except typer.Abort:
        sys.exit(130)


if __name__ == "__main__":
    main()
