"""The BIDS-Apps calling convention: ``brainage BIDS_DIR OUTPUT_DIR participant|group``.

As the BIDS-Apps specification (Gorgolewski et al. 2017) and fMRIPrep/MRIQC describe it:

- ``participant``: per-subject work — preprocessing (skull stripping, N4, registration to
  MNI152, QC picture) of the subjects of ``--participant-label`` (default: all). Several
  participant jobs may write into one output folder at once (e.g. one cluster job per subject).
- ``group``: everything that needs the whole cohort — training (cross-fitted), prediction,
  explanation, population maps, regions, statistics and the report; subjects that no
  participant job preprocessed are preprocessed first.

The output folder is a BIDS derivative dataset (:mod:`brainage.io.derivatives`); work files go to
``--work-dir`` (default ``<OUTPUT_DIR>_work``). The input is checked with the BIDS validator
unless ``--skip-bids-validation``.
"""

from __future__ import annotations

import argparse
import logging
import subprocess
from pathlib import Path

from brainage import __version__
from brainage.errors import InputError

log = logging.getLogger("brainage")

#: The analysis levels of the BIDS-Apps specification that brainage implements.
ANALYSIS_LEVELS = ("participant", "group")


def parser() -> argparse.ArgumentParser:
    """Return the parser of the BIDS-App form (BIDS-Apps option names, both spellings)."""
    p = argparse.ArgumentParser(
        prog="brainage",
        usage="brainage BIDS_DIR OUTPUT_DIR {participant,group} [options]",
        description="Brain-age estimation as a BIDS App: participant = preprocessing of each "
        "subject; group = training, prediction, explanation, population maps, statistics and "
        "the report. The subcommands (`brainage run`, `brainage --help`) do the same with "
        "more control.",
    )
    p.add_argument("bids_dir", type=Path, help="the input BIDS dataset")
    p.add_argument("output_dir", type=Path, help="the output folder (a BIDS derivative dataset)")
    p.add_argument("analysis_level", choices=ANALYSIS_LEVELS, help="participant or group")
    p.add_argument(
        "--participant-label",
        "--participant_label",
        nargs="+",
        metavar="LABEL",
        help="subjects to process, with or without sub- (space-separated); default: all",
    )
    p.add_argument(
        "--session-label",
        "--session_label",
        nargs="+",
        metavar="LABEL",
        help="sessions to process, with or without ses- (space-separated); default: all",
    )
    p.add_argument(
        "--bids-filter-file",
        "--bids_filter_file",
        type=Path,
        metavar="FILE",
        help='JSON of T1w entity filters, e.g. {"t1w": {"acquisition": "mprage", "run": 1}}',
    )
    p.add_argument("--work-dir", "-w", type=Path, help="folder for deletable work files")
    p.add_argument("--config", type=Path, help="YAML configuration overriding the defaults")
    p.add_argument("--n-jobs", "--nprocs", type=int, metavar="N", help="parallel workers")
    p.add_argument("--omp-nthreads", type=int, metavar="N", help="numerical threads per worker")
    p.add_argument(
        "--skip-bids-validation",
        "--skip_bids_validation",
        action="store_true",
        help="do not check the input with the BIDS validator",
    )
    p.add_argument("-v", "--verbose", action="count", default=0, help="more log lines (-vv)")
    p.add_argument("--quiet", action="store_true", help="no progress bars or log lines")
    p.add_argument("--version", action="version", version=f"brainage {__version__}")
    return p


def is_bids_app_call(argv: list[str], commands) -> bool:
    """Whether ``argv`` is the BIDS-App form: two paths, then an analysis level.

    Also when the first argument is an existing folder and no command, so that a wrong or
    missing analysis level gets the BIDS-App parser's message.
    """
    if not argv or argv[0].startswith("-") or argv[0] in commands:
        return False
    positional = [a for a in argv if not a.startswith("-")]
    return Path(argv[0]).expanduser().is_dir() or (
        len(positional) >= 3 and positional[2] in ANALYSIS_LEVELS
    )


def check_input(bids_dir: Path) -> None:
    """Validate the input dataset with the BIDS validator; raise on errors.

    Raises
    ------
    InputError
        The validator reports errors (listed by issue code with example files).
    """
    from brainage.io.derivatives import validate_bids

    try:
        result = validate_bids(bids_dir)
    except (RuntimeError, OSError, subprocess.TimeoutExpired) as err:
        log.warning("input not validated: %s", err)
        return
    if result.n_errors:
        raise InputError(
            f"the BIDS validator found {result.n_errors} error(s) in the input: "
            + "; ".join(result.describe().splitlines()[:3]),
            "fix the dataset (run bids-validator-deno on it), or pass --skip-bids-validation",
            path=bids_dir,
        )
    log.info("input is valid BIDS (%d warning(s))", sum(result.warnings.values()))


def main(argv: list[str]) -> None:
    """Run the BIDS-App form (see the module docstring)."""
    from brainage.config import load_config
    from brainage.io import read_bids
    from brainage.io.cohort import read_filter_file
    from brainage.workflow import run as run_all
    from brainage.workflow.api import TARGETS
    from brainage.workflow.progress import setup_logging

    args = parser().parse_args(argv)
    bids_dir = args.bids_dir.expanduser().resolve()
    out = args.output_dir.expanduser().resolve()
    if not bids_dir.is_dir():
        raise InputError("BIDS_DIR does not exist", "give the input BIDS dataset", path=bids_dir)
    inside = out.relative_to(bids_dir).parts if out.is_relative_to(bids_dir) else ()
    if out == bids_dir or any(part.startswith("sub-") for part in inside):
        raise InputError(
            "OUTPUT_DIR must not be the input dataset itself or a subject folder in it",
            "write to a separate folder, e.g. BIDS_DIR/derivatives/brainage",
            path=out,
        )
    setup_logging(out / "logs" / "brainage.log", console=not args.quiet)
    if args.verbose:
        logging.getLogger("brainage").setLevel(logging.DEBUG)
    if not args.skip_bids_validation:
        check_input(bids_dir)
    overrides: dict = {}
    if args.n_jobs is not None:
        overrides.setdefault("run", {})["n_jobs"] = args.n_jobs
    if args.omp_nthreads is not None:
        overrides.setdefault("run", {})["omp_nthreads"] = args.omp_nthreads
    cfg = load_config(args.config, overrides)
    filters = read_filter_file(args.bids_filter_file) if args.bids_filter_file else {}
    if args.session_label:
        filters = {**filters.get("t1w", filters), "session": args.session_label}
    cohort = read_bids(bids_dir, filters=filters)
    if args.participant_label:
        cohort = cohort.subset(args.participant_label)
    targets = TARGETS["preprocess"] if args.analysis_level == "participant" else TARGETS["run"]
    run_all(cohort, out, cfg, progress=not args.quiet, targets=targets, work_dir=args.work_dir)
