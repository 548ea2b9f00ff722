"""Training throughput per architecture, and the share of this machine's FLOP/s it reaches.

For every registered architecture, at the default input size (the 4 mm template box,
40 × 48 × 40) and at 96³, it times forward + backward + optimiser steps on random volumes and
prints volumes per second, the FLOPs of one forward + backward (counted by
``torch.utils.flop_counter``), the achieved FLOP/s and that as a fraction of the FLOP/s of a
large float32 matrix multiply measured in the same run. It then compares CPU-path variants side
by side for the default model: intra-op threads, channels-last memory format, batch size and
``torch.compile``.

    python bench/bench_train.py                  # all architectures, both sizes
    python bench/bench_train.py --models hofmann --sizes 40,48,40 --steps 5
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from brainage.models import MODELS, build_model

DEFAULT = (40, 48, 40)

#: Architectures and the parameters that name the reference variants.
VARIANTS = {
    "hofmann": {},
    "resnet-18": {"model": "resnet", "layers": (2, 2, 2, 2)},
    "resnet-34": {"model": "resnet", "layers": (3, 4, 6, 3)},
    "resnet-50": {"model": "resnet", "depth": 50},
    "sfcn": {},
    "sfcn_paper": {"model": "sfcn", "output": "soft_label"},
    "projection2d": {},
}


def matmul_flops(seconds: float = 2.0, n: int = 2048) -> float:
    """FLOP/s of float32 ``n × n`` matrix multiplies on this machine (best of a few runs)."""
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b  # warm-up
    best, t_end = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < t_end:
        t0 = time.perf_counter()
        a @ b
        best = max(best, 2 * n**3 / (time.perf_counter() - t0))
    return best


def _model(name: str, shape) -> nn.Module:
    params = dict(VARIANTS.get(name, {}))
    arch = params.pop("model", name)
    return build_model(arch, input_shape=shape, in_channels=1, mean_age=50.0, **params)


def step_flops(model: nn.Module, x: torch.Tensor) -> int:
    """FLOPs of one forward + backward on ``x``."""
    counter = FlopCounterMode(display=False)
    with counter:
        model(x).sum().backward()
    model.zero_grad(set_to_none=True)
    return int(counter.get_total_flops())


def throughput(model, x, steps: int, channels_last=False) -> float:
    """Volumes per second of forward + backward + AdamW step (after one warm-up step)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    if channels_last:
        model = model.to(memory_format=torch.channels_last_3d)
        x = x.contiguous(memory_format=torch.channels_last_3d)
    y = torch.full((x.shape[0],), 50.0)

    def one():
        opt.zero_grad(set_to_none=True)
        loss = nn.functional.mse_loss(model(x).reshape(-1), y)
        loss.backward()
        opt.step()

    one()
    t0 = time.perf_counter()
    for _ in range(steps):
        one()
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default=",".join(VARIANTS))
    ap.add_argument("--sizes", default="40,48,40;96,96,96")
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--no-variants", action="store_true", help="skip the CPU-path comparison")
    args = ap.parse_args()
    torch.manual_seed(0)
    peak = matmul_flops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print(f"float32 matmul: {peak / 1e9:.1f} GFLOP/s (the reference of the fractions below)\n")
    sizes = [tuple(int(v) for v in s.split(",")) for s in args.sizes.split(";")]
    header = f"{'model':<12} {'input':<12} {'params':>9} {'GFLOP/vol':>10} {'vol/s':>8}"
    print(header + f" {'GFLOP/s':>8} {'of peak':>8}")
    for name in args.models.split(","):
        arch = VARIANTS.get(name, {}).get("model", name)
        if arch not in MODELS:
            print(f"{name:<12} (not registered)")
            continue
        for shape in sizes:
            model = _model(name, shape).train()
            x = torch.randn(args.batch_size, 1, *shape)
            flops = step_flops(model, x) / args.batch_size
            vps = throughput(model, x, args.steps)
            n_par = sum(p.numel() for p in model.parameters())
            print(
                f"{name:<12} {'x'.join(map(str, shape)):<12} {n_par / 1e6:8.2f}M "
                f"{flops / 1e9:10.2f} {vps:8.2f} {vps * flops / 1e9:8.1f} "
                f"{vps * flops / peak:8.1%}"
            )
    if args.no_variants:
        return
    print("\nCPU-path variants, hofmann at the default input (side by side, same run):")
    base_threads = torch.get_num_threads()
    rows = []
    for label, threads, bs, cl, compiled in (
        ("default", base_threads, 8, False, False),
        ("1 thread", 1, 8, False, False),
        ("channels-last", base_threads, 8, True, False),
        ("batch 4", base_threads, 4, False, False),
        ("batch 16", base_threads, 16, False, False),
        ("torch.compile", base_threads, 8, False, True),
    ):
        torch.set_num_threads(threads)
        model = _model("hofmann", DEFAULT).train()
        x = torch.randn(bs, 1, *DEFAULT)
        try:
            if compiled:
                model = torch.compile(model)
            vps = throughput(model, x, args.steps, channels_last=cl)
        except Exception as exc:  # noqa: BLE001 - a variant that cannot run here is reported
            rows.append((label, float("nan"), f"failed: {type(exc).__name__}"))
            continue
        rows.append((label, vps, ""))
    torch.set_num_threads(base_threads)
    ref = rows[0][1]
    for label, vps, note in rows:
        print(f"  {label:<14} {vps:8.2f} vol/s  ×{vps / ref:5.2f}  {note}")
    print(
        "\n(two workers of one thread each is the executor's split for 2 cores: compare "
        "2 × '1 thread' with 'default')"
    )


if __name__ == "__main__":
    main()
