"""Benchmark: seconds and peak memory per relevance map, per explanation method (torch CPU).

For HofmannCNN and ResNet3D (default widths) on one 96³ volume (batch 1, float32), every method of
``brainage.explain`` is run once in a fresh child process, which reports the wall-clock seconds of
the call and its peak resident memory above the process's state right before the call
(``resource.getrusage(...).ru_maxrss`` delta; torch's CPU tensors are not seen by tracemalloc).
The unit is one plain forward+backward pass (gradient of the output w.r.t. the input), measured
the same way; the table gives each method as a multiple of it.

Costs scale with the settings: Integrated Gradients ≈ n_steps × (forward+backward), SmoothGrad ≈
nt_samples × (forward+backward), occlusion ≈ (number of boxes + 1) × forward.

Usage::

    python bench/bench_explain.py            # default settings, < 5 min on 2 cores
    python bench/bench_explain.py --quick    # fewer IG steps / noise samples / occlusion boxes
    python bench/bench_explain.py --models hofmann --methods lrp gradcam --threads 4
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

METHODS = ("guided_backprop", "lrp", "gradcam", "integrated_gradients", "smoothgrad", "occlusion")
MODELS = ("hofmann", "resnet")
CHEAP = ("grad", "guided_backprop", "lrp", "gradcam")

SETTINGS = {
    "default": {
        "integrated_gradients": {"n_steps": 16, "internal_batch_size": 4},
        "smoothgrad": {"nt_samples": 8, "nt_samples_batch_size": 4},
        "occlusion": {"window": 32, "perturbations_per_eval": 4},  # 27 boxes
    },
    "quick": {
        "integrated_gradients": {"n_steps": 4, "internal_batch_size": 4},
        "smoothgrad": {"nt_samples": 2, "nt_samples_batch_size": 2},
        "occlusion": {"window": 48, "perturbations_per_eval": 4},  # 8 boxes
    },
}


def _peak_mib() -> float:
    """Peak resident memory of this process, MiB (VmHWM on Linux, else ru_maxrss)."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10  # bytes on macOS, KiB else


def _rss_mib() -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 2**10
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    """Reset the peak-RSS mark to the current RSS (Linux ``clear_refs``); False if unsupported."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def child(model_name: str, method: str, size: int, threads: int, quick: bool) -> dict:
    """Measure one map (or the forward+backward unit when method == 'grad') in this process."""
    import torch

    torch.set_num_threads(threads)
    from brainage.explain import explain
    from brainage.models import build_model

    torch.manual_seed(0)
    model = build_model(model_name, input_shape=(size,) * 3).eval()
    x = torch.randn(1, 1, size, size, size)
    params = SETTINGS["quick" if quick else "default"].get(method, {})

    def grad():
        xg = x.clone().requires_grad_(True)
        torch.autograd.grad(model(xg).sum(), xg)

    def run():
        if method == "grad":
            grad()
        else:
            explain(model, x, method, batch_size=1, **params)

    # warm up kernels (oneDNN primitives are made per shape) on the full-size input, then reset
    # the peak-memory mark where Linux allows it; otherwise warm up on a small copy only, so that
    # the warm-up does not raise the peak that is measured
    if _reset_peak():
        grad()
        _reset_peak()
        before = _rss_mib()
    else:
        tiny = build_model(model_name, input_shape=(32, 32, 32)).eval()
        small = torch.randn(1, 1, 32, 32, 32, requires_grad=True)
        torch.autograd.grad(tiny(small).sum(), small)
        before = _peak_mib()
    times = [_timed(run)]
    peak = _peak_mib() - before
    # cheap calls: best of 3 (the machine is shared; the minimum is the least disturbed run)
    if method in CHEAP:
        times += [_timed(run) for _ in range(2)]
    # the unit, measured in the same process right after: best of 3 forward+backward passes
    unit = min(_timed(grad) for _ in range(3))
    return {
        "model": model_name,
        "method": method,
        "seconds": min(times),
        "runs": len(times),
        "unit_seconds": unit,
        "peak_mib": peak,
        "params": params,
    }


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def run_child(model_name: str, method: str, args) -> dict:
    cmd = [
        sys.executable,
        __file__,
        "--child",
        model_name,
        method,
        "--size",
        str(args.size),
        "--threads",
        str(args.threads),
    ] + (["--quick"] if args.quick else [])
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"benchmark child {model_name}/{method} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer IG steps, noise samples, boxes")
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=MODELS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--size", type=int, default=96, help="cubic input size in voxels")
    parser.add_argument("--threads", type=int, default=2, help="torch CPU threads")
    parser.add_argument("--child", nargs=2, metavar=("MODEL", "METHOD"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(*args.child, args.size, args.threads, args.quick)))
        return

    t_start = time.perf_counter()
    mode = "quick" if args.quick else "default"
    print(
        f"brainage.explain benchmark: {args.size}³ input, batch 1, float32, torch CPU, "
        f"{args.threads} threads, {mode} settings"
    )
    header = (
        f"{'model':9s} {'method':21s} {'seconds':>8s} {'x fwd+bwd':>9s} "
        f"{'peak MiB':>9s} {'x fwd+bwd':>9s}  settings"
    )
    print(header)
    print("-" * len(header))
    for model_name in args.models:
        unit = run_child(model_name, "grad", args)
        print(
            f"{model_name:9s} {'forward+backward':21s} {unit['unit_seconds']:8.2f} {1.0:9.1f} "
            f"{unit['peak_mib']:9.0f} {1.0:9.1f}  best of 3",
            flush=True,
        )
        for method in args.methods:
            r = run_child(model_name, method, args)
            settings = ", ".join(f"{k}={v}" for k, v in r["params"].items()) or "defaults"
            if r["runs"] > 1:
                settings += f"; best of {r['runs']}"
            print(
                f"{model_name:9s} {method:21s} {r['seconds']:8.2f} "
                f"{r['seconds'] / r['unit_seconds']:9.1f} {r['peak_mib']:9.0f} "
                f"{r['peak_mib'] / max(unit['peak_mib'], 1.0):9.1f}  {settings}",
                flush=True,
            )
    print(f"total wall time {time.perf_counter() - t_start:.0f} s")


if __name__ == "__main__":
    main()
