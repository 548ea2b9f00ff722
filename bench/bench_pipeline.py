"""Per-stage wall time of the main job and training/inference throughput (volumes per second).

Usage::

    python bench/bench_pipeline.py                 # throughput + a fresh demo run (3–5 min)
    python bench/bench_pipeline.py --run runs/ixi  # also print the stage times of an existing run
    python bench/bench_pipeline.py --no-demo       # throughput only
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from brainage.models import build_model
from brainage.space import template_grid
from brainage.utils import select_device


def throughput(model_name: str, resolution_mm: float, batch_size: int = 8, steps: int = 6) -> dict:
    """Training (forward + backward + AdamW step) and inference volumes/s on the crop-box grid."""
    device = select_device("auto")
    shape = template_grid(resolution_mm).shape
    model = build_model(model_name, input_shape=shape).to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    x = torch.randn(batch_size, 1, *shape, device=device)
    y = torch.randn(batch_size, device=device)
    model.train()
    for step in range(steps + 1):
        if step == 1:
            t0 = time.perf_counter()  # first step is warm-up
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(model(x).reshape(-1), y)
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    train_vps = batch_size * steps / (time.perf_counter() - t0)
    model.eval()
    with torch.no_grad():
        model(x)
        t0 = time.perf_counter()
        for _ in range(steps):
            model(x)
        if device.type == "cuda":
            torch.cuda.synchronize()
    infer_vps = batch_size * steps / (time.perf_counter() - t0)
    return {
        "model": model_name,
        "res_mm": resolution_mm,
        "shape": shape,
        "device": str(device),
        "train_vol_per_s": train_vps,
        "infer_vol_per_s": infer_vps,
    }


def print_stages(run_dir: Path) -> None:
    prov = json.loads((run_dir / "provenance.json").read_text())
    total = sum(prov["stage_seconds"].values())
    print(
        f"\nstage wall time of {run_dir} "
        f"(device {prov.get('device')}, {prov.get('n_threads')} threads)"
    )
    for stage, sec in prov["stage_seconds"].items():
        print(f"  {stage:<14} {sec:8.1f} s  {100 * sec / total:5.1f} %")
    print(f"  {'total':<14} {total:8.1f} s")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", type=Path, help="an existing run folder to report")
    ap.add_argument("--no-demo", action="store_true", help="skip the fresh demo run")
    ap.add_argument("--n-subjects", type=int, default=120)
    args = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"{'model':<8} {'res':>4} {'shape':<14} {'train vol/s':>12} {'infer vol/s':>12}")
    for name, res in (("hofmann", 4.0), ("hofmann", 3.0), ("hofmann", 2.0), ("resnet", 3.0)):
        r = throughput(name, res)
        print(
            f"{r['model']:<8} {r['res_mm']:>4g} {str(r['shape']):<14} "
            f"{r['train_vol_per_s']:>12.1f} {r['infer_vol_per_s']:>12.1f}"
        )
    if args.run:
        print_stages(args.run)
    if not args.no_demo:
        from brainage.workflow import demo

        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            demo(Path(tmp) / "demo", n_subjects=args.n_subjects, progress=False)
            print(
                f"\ndemo with {args.n_subjects} subjects: "
                f"{time.perf_counter() - t0:.1f} s end to end"
            )
            print_stages(Path(tmp) / "demo")


if __name__ == "__main__":
    main()
