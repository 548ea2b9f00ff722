"""Seconds per preprocessing step (deepbet, N4, registration, total) on real IXI scans.

Each subject is preprocessed from scratch in this process with one thread per library (what one
worker of ``preprocess_cohort(n_jobs=2)`` gets), then the time for the whole cohort with
``--workers`` workers is projected. ``--parallel N`` also measures the real wall time of N
subjects through ``preprocess_cohort`` with the process pool (two workers share the 2 cores, so
this includes their contention).

Usage::

    python bench/bench_preprocess.py                       # 3 subjects, affine (≈ 40 s)
    python bench/bench_preprocess.py --subjects 5 --register syn
    python bench/bench_preprocess.py --parallel 6          # + measured 2-worker throughput
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"
STEPS = {
    "deepbet": "skull stripping (deepbet)",
    "N4": "N4 bias-field correction",
    "registration": "registration",
    "scale": "intensity scaling",
    "write+QC": "writing outputs",
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bids", type=Path, default=IXI)
    parser.add_argument("--subjects", type=int, default=3)
    parser.add_argument("--register", default="affine", choices=["affine", "syn", "none"])
    parser.add_argument("--resolution", type=float, default=2.0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cohort-size", type=int, default=145)
    parser.add_argument("--parallel", type=int, default=0, help="also time N subjects in a pool")
    args = parser.parse_args()

    from brainage.parallel import limit_threads

    limit_threads(1)
    import torch

    torch.set_num_threads(1)
    from brainage.io import read_bids
    from brainage.preprocess import PreprocessConfig, preprocess_cohort, preprocess_subject

    if not args.bids.is_dir():
        raise SystemExit(f"IXI data not found at {args.bids}")
    cohort = read_bids(args.bids)
    config = PreprocessConfig(resolution_mm=args.resolution, register=args.register)
    rows = cohort.table.head(args.subjects)
    header = f"{'subject':<12}" + "".join(f"{k:>14}" for k in STEPS) + f"{'total':>10}{'r':>8}"
    print(f"config: {config.to_dict()}  (one thread per library)")
    print(header)
    totals = []
    with tempfile.TemporaryDirectory() as out:
        for rec in rows.to_dict("records"):
            row = preprocess_subject(rec["participant_id"], rec["t1w"], out, config)
            sidecar = Path(row["preproc"]).parent / (
                Path(row["qc_png"]).name.replace("_desc-qc_T1w.png", "_desc-preproc_T1w.json")
            )
            seconds = json.loads(sidecar.read_text())["seconds"]
            totals.append(seconds["total"])
            cells = "".join(f"{seconds.get(name, 0.0):>14.2f}" for name in STEPS.values())
            print(
                f"{rec['participant_id']:<12}{cells}{seconds['total']:>10.2f}"
                f"{row['reg_quality']:>8.3f}"
            )
    # the first subject also pays one-off costs (library loading, deepbet model, template)
    steady = sum(totals[1:]) / max(len(totals) - 1, 1) if len(totals) > 1 else totals[0]
    projected = steady * args.cohort_size / args.workers
    print(
        f"\nsteady state {steady:.1f} s/subject/worker -> {args.cohort_size} subjects with "
        f"{args.workers} workers ≈ {projected / 60:.1f} min (if each worker has a free core)"
    )
    if args.parallel:
        subset = cohort.subset(cohort.participant_ids[: args.parallel])
        with tempfile.TemporaryDirectory() as out:
            t0 = time.perf_counter()
            res = preprocess_cohort(subset, out, config, n_jobs=args.workers, progress=True)
            wall = time.perf_counter() - t0
        per = wall / max(len(res.table), 1)
        print(
            f"measured: {len(res.table)} subjects, {args.workers} workers, {wall:.1f} s wall "
            f"({per:.1f} s/subject incl. worker start-up) -> {args.cohort_size} subjects ≈ "
            f"{per * args.cohort_size / 60:.1f} min; failures: {len(res.failures)}"
        )


if __name__ == "__main__":
    main()
