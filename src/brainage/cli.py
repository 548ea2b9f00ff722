"""Command-line interface: argument parsing only, every command is one library call."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from brainage import __version__
from brainage.errors import BrainageError

app = typer.Typer(
    name="brainage",
    help="Interpretable brain-age estimation from 3D MRI.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

BidsOpt = Annotated[
    Path | None,
    typer.Option("--bids", help="BIDS dataset (participants.tsv + sub-*/anat/*_T1w.nii.gz)."),
]
TableOpt = Annotated[
    Path | None, typer.Option("--table", help="CSV/TSV with participant_id, age, t1w (image path).")
]
StrictOpt = Annotated[
    bool,
    typer.Option("--strict", help="Stop at the first subject that fails instead of listing it."),
]
QuietOpt = Annotated[bool, typer.Option("--quiet", help="No progress bars.")]


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


def _cohort(bids, table, strict):
    from brainage.io import read_cohort

    return read_cohort(bids=bids, table=table, strict=strict)


@app.command()
def run(
    out: Annotated[Path, typer.Option("--out", help="Output folder (rerun to resume).")],
    bids: BidsOpt = None,
    table: TableOpt = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML overriding defaults.")
    ] = None,
    seeds: Annotated[int | None, typer.Option("--seeds", help="Number of base models.")] = None,
    methods: Annotated[
        str | None, typer.Option("--methods", help="Comma-separated explanation methods.")
    ] = None,
    n_jobs: Annotated[
        int | None, typer.Option("--n-jobs", help="Parallel preprocessing workers.")
    ] = None,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole pipeline: preprocess, train, predict, explain, population maps, report."""
    from brainage.config import load_config
    from brainage.pipeline import run as run_pipeline

    overrides: dict = {"run": {"strict": strict}}
    if seeds is not None:
        overrides["ensemble"] = {"n_seeds": seeds}
    if methods is not None:
        overrides["explain"] = {"methods": [m.strip() for m in methods.split(",") if m.strip()]}
    if n_jobs is not None:
        overrides["run"]["n_jobs"] = n_jobs
    cfg = load_config(config, overrides)
    run_pipeline(_cohort(bids, table, strict), out, cfg, progress=not quiet)


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
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Apply a trained run (ensemble + bias correction) to new subjects."""
    from brainage.pipeline import predict as predict_pipeline

    explain = tuple(m.strip() for m in methods.split(",")) if methods else ()
    predict_pipeline(model, _cohort(bids, table, strict), out, explain, progress=not quiet)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("brainage-demo"),
    n_subjects: Annotated[int, typer.Option("--n-subjects", help="Synthetic subjects.")] = 120,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    quiet: QuietOpt = False,
) -> None:
    """Run the whole pipeline on a synthetic cohort made on the fly (no files needed)."""
    from brainage.pipeline import demo as demo_pipeline

    demo_pipeline(out, n_subjects=n_subjects, seed=seed, progress=not quiet)


@app.command()
def simulate(
    out: Annotated[Path, typer.Option("--out", help="BIDS folder to write.")],
    n_subjects: Annotated[int, typer.Option("--n-subjects")] = 120,
    resolution: Annotated[float, typer.Option("--resolution", help="Voxel size, mm.")] = 4.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
    flair: Annotated[bool, typer.Option("--flair", help="Also write FLAIR images.")] = False,
    n_jobs: Annotated[int, typer.Option("--n-jobs")] = 1,
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
    )


@app.command()
def preprocess(
    out: Annotated[Path, typer.Option("--out", help="Output folder.")],
    bids: BidsOpt = None,
    table: TableOpt = None,
    config: Annotated[
        Path | None, typer.Option("--config", help="YAML overriding defaults.")
    ] = None,
    n_jobs: Annotated[int | None, typer.Option("--n-jobs")] = None,
    strict: StrictOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Preprocess a cohort only (skull strip, N4, register to MNI152, crop, scale, QC)."""
    from brainage.config import load_config
    from brainage.pipeline import preprocess_only

    overrides: dict = {"run": {"strict": strict}}
    if n_jobs is not None:
        overrides["run"]["n_jobs"] = n_jobs
    preprocess_only(_cohort(bids, table, strict), out, load_config(config, overrides), not quiet)


@app.command()
def explain(
    out: Annotated[Path, typer.Option("--out", help="Output folder of a finished `brainage run`.")],
    methods: Annotated[
        str, typer.Option("--methods", help="Comma-separated methods, e.g. lrp,gradcam,occlusion.")
    ] = "guided_backprop,lrp",
    subjects: Annotated[
        str | None, typer.Option("--subjects", help="test | heldout | all (default: the run's).")
    ] = None,
    quiet: QuietOpt = False,
) -> None:
    """Write relevance maps of a finished run with chosen methods, then maps, regions, report."""
    from brainage.pipeline import explain_run

    explain_run(
        out, [m.strip() for m in methods.split(",") if m.strip()], subjects, progress=not quiet
    )


@app.command(name="methods")
def list_explanation_methods() -> None:
    """List the registered explanation methods."""
    from brainage.explain import list_methods

    for name in list_methods():
        typer.echo(name)


@app.command()
def report(
    out: Annotated[Path, typer.Option("--out", help="Output folder of a run.")],
) -> None:
    """(Re)write report.html of a run folder."""
    from brainage.report import write_report

    typer.echo(write_report(out))


def main() -> None:
    """Entry point: run the app; print user errors as one line, no traceback."""
    from rich.console import Console

    try:
        app(standalone_mode=False)
    except BrainageError as err:
        Console(stderr=True).print(f"[bold red]error:[/] {err}", highlight=False, soft_wrap=True)
        sys.exit(2)
    except KeyboardInterrupt:
        Console(stderr=True).print(
            "[yellow]interrupted[/]: finished work is kept; rerun the same command to resume."
        )
        sys.exit(130)
    except typer.Exit as ex:
        sys.exit(ex.exit_code)
    except Exception as err:  # click usage errors
        import click

        if isinstance(err, click.exceptions.ClickException):
            err.show()
            sys.exit(err.exit_code)
        if isinstance(err, click.exceptions.Abort):
            sys.exit(1)
        raise


if __name__ == "__main__":
    main()
