"""Benchmark 3D U-Noise: seconds per training epoch and per map, HofmannCNN at 54×64×54 (3 mm).

Usage: ``python bench/bench_unoise.py [--n 4] [--threads 1] [--device auto] [--batch-size 2]``.
Synthetic volumes (a smooth ellipsoidal "brain" in [0, 1], 0 outside) on the 3 mm crop box; the
noise model is the paper's U-Net (5 levels, 16 base channels). Prints one line per measurement.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

from brainage.explain.unoise import fit_unoise, unoise_importance
from brainage.models import HofmannCNN
from brainage.utils import select_device

SHAPE = (54, 64, 54)


def synthetic_cohort(n: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    grid = np.stack(np.meshgrid(*[np.linspace(-1, 1, s) for s in SHAPE], indexing="ij"))
    r = np.sqrt((grid**2).sum(0))
    brain = r < 0.85
    x = np.zeros((n, 1, *SHAPE), np.float32)
    for i in range(n):
        img = 0.5 + 0.3 * np.cos(6 * r + rng.uniform(0, 1)) + 0.05 * rng.standard_normal(SHAPE)
        x[i, 0] = np.clip(img, 0, 1) * brain
    ages = rng.uniform(20, 80, n)
    return x, ages


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=4, help="training volumes per epoch")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=2)
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--amp", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = select_device(args.device)
    x, ages = synthetic_cohort(args.n)
    torch.manual_seed(0)
    predictor = HofmannCNN(input_shape=SHAPE, mean_age=float(ages.mean())).to(device).eval()
    print(
        f"device={device} threads={args.threads} n={args.n} batch_size={args.batch_size} "
        f"shape={SHAPE} amp={args.amp}"
    )

    # warm-up (allocations, cuDNN autotuning) on one batch
    fit_unoise(
        predictor,
        x[: args.batch_size],
        ages[: args.batch_size],
        pretrain_epochs=1,
        epochs=1,
        batch_size=args.batch_size,
        amp=args.amp,
    )
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    model = fit_unoise(
        predictor,
        x,
        ages,
        pretrain_epochs=args.epochs,
        epochs=args.epochs,
        batch_size=args.batch_size,
        amp=args.amp,
    )
    total = time.perf_counter() - t0
    sec = model.metadata["seconds"]
    pre, noise = sec["pretrain"] / args.epochs, sec["noise"] / args.epochs
    print(f"pretrain epoch: {pre:.2f} s ({pre / args.n:.3f} s per volume)")
    print(f"noise epoch:    {noise:.2f} s ({noise / args.n:.3f} s per volume)")
    print(f"fit_unoise total: {total:.2f} s")
    if device.type == "cuda":
        print(f"peak GPU memory: {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")

    unoise_importance(model, x[:1])  # warm-up
    for bs in (1, args.batch_size):
        t0 = time.perf_counter()
        unoise_importance(model, x, batch_size=bs)
        dt = (time.perf_counter() - t0) / args.n
        print(f"map (batch {bs}): {dt:.3f} s per volume")


if __name__ == "__main__":
    main()
