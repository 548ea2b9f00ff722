"""The two-stage U-Noise training loop and the paper's loss (Eq. 1 and 2; METHODS §8).

Everything random is drawn from explicit generators derived from the run's seed: the U-Net's
initialisation (seeded inside :func:`~brainage.explain._core.seeded`, which forks and restores
torch's CPU generator), the mini-batch order (a NumPy ``Generator``) and the noise ε (a
``torch.Generator``). Global random state is left untouched.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainage.explain._core import as_column, model_device_dtype, model_guard, seeded
from brainage.explain.unoise.network import UNet3D
from brainage.utils import check_random_state


@contextlib.contextmanager
def _frozen(model: nn.Module) -> Iterator[nn.Module]:
    """Predictor in eval mode with ``requires_grad`` off; everything restored on exit.

    :func:`~brainage.explain._core.model_guard` restores every module's training flag and every
    parameter's ``requires_grad`` flag, also when an error is raised.
    """
    with model_guard(model):
        for p in model.parameters():
            p.requires_grad_(False)
        yield model


def _train(predictor, xt, yt, xv, yv, arch, params, device, progress):
    """Run both training stages; return the U-Net (eval mode) and the training record."""
    rng = check_random_state(params["seed"])
    init_seed, noise_seed, val_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=3))
    with seeded(init_seed, torch.device("cpu")):  # the U-Net is initialised on the CPU
        net = UNet3D(**arch)
    net.to(device)
    pdtype = model_device_dtype(predictor)[1]
    use_amp = bool(params["amp"]) and device.type == "cuda"
    n = xt.shape[0]
    bs = params["batch_size"]
    history: list[dict] = []
    seconds = {"pretrain": 0.0, "noise": 0.0}

    def batches():
        order = rng.permutation(n)
        for s in range(0, n, bs):
            idx = torch.from_numpy(np.sort(order[s : s + bs]))
            yield idx

    def optimiser():
        opt = torch.optim.Adam(net.parameters(), lr=params["lr"])
        step = params["lr_step"]
        sched = torch.optim.lr_scheduler.StepLR(opt, step, params["lr_gamma"]) if step else None
        return opt, sched

    def autocast():
        if not use_amp:
            return contextlib.nullcontext()
        return torch.autocast("cuda", dtype=torch.bfloat16)

    # Stage 1: autoencoder pretraining (voxel-wise MSE, linear output).
    opt, sched = optimiser()
    net.train()
    for epoch in range(params["pretrain_epochs"]):
        t0 = time.perf_counter()
        total = 0.0
        for idx in batches():
            xb = xt[idx].to(device, torch.float32)
            with autocast():
                loss = F.mse_loss(net(xb).float(), xb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += float(loss.detach()) * len(idx)
        if sched is not None:
            sched.step()
        seconds["pretrain"] += time.perf_counter() - t0
        rec = {"stage": "pretrain", "epoch": epoch + 1, "loss": total / n}
        history.append(rec)
        if progress is not None:
            progress("pretrain", epoch + 1, params["pretrain_epochs"], dict(rec))

    # Stage 2: noise training with the predictor frozen.
    opt, sched = optimiser()
    gen = torch.Generator(device=device)
    gen.manual_seed(noise_seed)
    vgen = torch.Generator(device=device)
    best = (math.inf, None, params["epochs"])
    with _frozen(predictor):
        for epoch in range(params["epochs"]):
            t0 = time.perf_counter()
            net.train()
            sums = {"loss": 0.0, "prediction_term": 0.0, "mean_log_mask": 0.0, "mean_mask": 0.0}
            for idx in batches():
                xb = xt[idx].to(device, torch.float32)
                yb = None if yt is None else yt[idx].to(device, torch.float32)
                with autocast():
                    terms = _noise_loss(net, predictor, xb, yb, params, gen, pdtype)
                opt.zero_grad(set_to_none=True)
                terms["loss"].backward()
                opt.step()
                for key in sums:
                    sums[key] += float(terms[key].detach()) * len(idx)
            if sched is not None:
                sched.step()
            rec = {"stage": "noise", "epoch": epoch + 1, **{k: v / n for k, v in sums.items()}}
            if xv is not None:
                vgen.manual_seed(val_seed)
                rec.update(
                    _evaluate(net, predictor, xv, yv, params, vgen, pdtype, device, autocast)
                )
                if rec["val_loss"] < best[0]:
                    state = {k: v.detach().clone() for k, v in net.state_dict().items()}
                    best = (rec["val_loss"], state, epoch + 1)
            seconds["noise"] += time.perf_counter() - t0
            history.append(rec)
            if progress is not None:
                progress("noise", epoch + 1, params["epochs"], dict(rec))
    if best[1] is not None:
        net.load_state_dict(best[1])
    net.eval()
    return net, {"best_epoch": best[2], "history": history, "seconds": seconds}


def _noise_loss(net, predictor, xb, yb, params, gen, pdtype) -> dict:
    """Compute the paper's loss terms for one mini-batch (Eq. 1 and 2)."""
    logits = net(xb).float()
    m = torch.sigmoid(logits)
    sigma = (m * (params["vmax"] - params["vmin"]) + params["vmin"]) * _noise_scale(xb, params)
    eps = torch.randn(xb.shape, generator=gen, device=xb.device, dtype=xb.dtype)
    pred = as_column(predictor((xb + sigma * eps).to(pdtype)))[:, 0].float()
    if params["target"] == "prediction":
        with torch.no_grad():
            yb = as_column(predictor(xb.to(pdtype)))[:, 0].float()
    prediction_term = ((pred - yb) ** 2).mean()
    mean_log_mask = F.logsigmoid(logits).mean()  # log m, stable for very negative logits
    loss = prediction_term - params["r"] * mean_log_mask
    return {
        "loss": loss,
        "prediction_term": prediction_term,
        "mean_log_mask": mean_log_mask,
        "mean_mask": m.mean(),
        "pred": pred.detach(),
        "y": yb.detach(),
    }


@torch.no_grad()
def _evaluate(net, predictor, xv, yv, params, gen, pdtype, device, autocast) -> dict:
    """Return the validation loss and noisy-prediction MAE (years) for one fixed noise draw."""
    net.eval()
    bs = params["batch_size"]
    loss = abs_err = 0.0
    for s in range(0, xv.shape[0], bs):
        xb = xv[s : s + bs].to(device, torch.float32)
        yb = None if yv is None else yv[s : s + bs].to(device, torch.float32)
        with autocast():
            terms = _noise_loss(net, predictor, xb, yb, params, gen, pdtype)
        loss += float(terms["loss"]) * xb.shape[0]
        abs_err += float((terms["pred"] - terms["y"]).abs().sum())
    return {"val_loss": loss / xv.shape[0], "val_mae_noisy": abs_err / xv.shape[0]}


def _noise_scale(xb: torch.Tensor, params: dict):
    """``s`` of the package docstring: per-volume-and-channel SD ("auto") or a constant."""
    if params["noise_scale"] == "auto":
        return xb.detach().flatten(2).std(dim=2, correction=0)[:, :, None, None, None]
    return float(params["noise_scale"])
