"""Training one base model: seeded, early-stopped, checkpointed, resumable (METHODS §3)."""

from __future__ import annotations

import copy
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from brainage.io.atomic import atomic_path, write_json, write_tsv
from brainage.models import build_model
from brainage.train.config import MODEL_DEFAULTS, TrainConfig, is_soft_label_model
from brainage.train.pretrained import checkpoint_sha256, initial_model
from brainage.utils import select_device

__all__ = [  # TrainConfig, MODEL_DEFAULTS and is_soft_label_model live in train.config
    "MODEL_DEFAULTS",
    "TrainConfig",
    "TrainResult",
    "fold_target_scaling",
    "is_soft_label_model",
    "kl_soft_label_loss",
    "load_model",
    "predict_volumes",
    "save_model",
    "train_model",
]


@dataclass
class TrainResult:
    """What training one base model produced.

    Attributes
    ----------
    model : torch.nn.Module
        Best model (lowest validation MAE), eval mode, outputs age in years.
    log : pandas.DataFrame
        One row per epoch: epoch, train_loss, train_mae, val_mae, lr, seconds.
    best_epoch : int
    best_val_mae : float
        Years.
    path : Path or None
        Folder holding ``model.pt``, ``model.json`` and ``training_log.tsv``.
    """

    model: nn.Module
    log: pd.DataFrame
    best_epoch: int
    best_val_mae: float
    path: Path | None = None


def fold_target_scaling(model: nn.Module, mean: float, sd: float) -> None:
    """Fold ``age = mean + sd · z`` into the output layer, so the model outputs years.

    The output layer ``z = w·h + b`` becomes ``age = (sd·w)·h + (sd·b + mean)``. With the
    output bias held at 0 during standardised training, the folded bias is the training mean age.
    """
    layer = model.output_layer
    with torch.no_grad():
        layer.weight.mul_(sd)
        layer.bias.mul_(sd).add_(mean)


def _loss_fn(name: str):
    return nn.MSELoss() if name == "mse" else nn.L1Loss()


def kl_soft_label_loss(log_probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """KL divergence KL(target ‖ p) of soft labels, averaged over the batch (Peng et al. 2021).

    Parameters
    ----------
    log_probs : Tensor, shape (n, n_bins)
        The model's log-probabilities of the age bins (``model.log_probs(x)``).
    target : Tensor, shape (n, n_bins)
        Soft labels (rows summing to 1, e.g. ``model.soft_labels(ages, sigma)``).

    Returns
    -------
    Tensor, shape ()
        (1/n) Σ_i Σ_b t_ib · (log t_ib − log p_ib), nats; terms with t_ib = 0 count 0.
    """
    return nn.functional.kl_div(log_probs, target, reduction="batchmean")


def _augment_batch(x: torch.Tensor, transform) -> torch.Tensor:
    if transform is None:
        return x
    return torch.stack([transform(sample) for sample in x])


@torch.no_grad()
def predict_volumes(model: nn.Module, volumes, batch_size: int = 16, device=None) -> np.ndarray:
    """Predict age for volumes.

    Parameters
    ----------
    model : torch.nn.Module
        Outputs age in years, shape (n, 1).
    volumes : ndarray or tensor, shape (n, c, i, j, k)
        Preprocessed volumes on the model's grid.
    batch_size : int
    device : torch.device, optional
        Default: the device of the model's parameters.

    Returns
    -------
    ndarray, shape (n,)
        Predicted ages, years (float64).
    """
    model.eval()
    if device is None:
        device = next(model.parameters()).device
    out = []
    for start in range(0, len(volumes), batch_size):
        xb = torch.as_tensor(np.array(volumes[start : start + batch_size], dtype=np.float32)).to(
            device
        )
        out.append(model(xb).float().reshape(-1).cpu().numpy())
    return np.concatenate(out).astype(np.float64) if out else np.zeros(0)


def _target_scaling(config: TrainConfig, y_train: np.ndarray) -> tuple[bool, float, float]:
    """Whether targets are standardised, and the training mean and sd of the ages (years)."""
    soft = is_soft_label_model(config.model, config.model_params)
    standardize = config.standardize_targets and not soft  # soft-label bins are in years
    mean = float(np.mean(y_train))
    sd = float(np.std(y_train)) if standardize else 1.0
    return standardize, mean, (sd if sd > 1e-6 else 1.0)


def train_model(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    seed: int,
    out_dir: str | Path | None = None,
    progress=None,
    meta_extra: dict | None = None,
    checkpoint: str | Path | None = None,
    compartment: str | None = None,
    monitor: tuple[np.ndarray, np.ndarray] | None = None,
) -> TrainResult:
    """Train one base model with early stopping on the validation MAE.

    Parameters
    ----------
    x_train : ndarray, shape (n_train, c, i, j, k), float32
        Preprocessed volumes on ``template_grid(config.resolution_mm)``.
    y_train : ndarray, shape (n_train,)
        Ages in years.
    x_val : ndarray, shape (n_val, c, i, j, k)
    y_val : ndarray, shape (n_val,)
    config : TrainConfig
    seed : int
        Seeds initialisation, batch order, dropout and augmentation.
    out_dir : str or Path, optional
        Folder for ``training_log.tsv``, ``model.pt`` and ``model.json`` (written last).
        The model is always trained (skipping finished work is the stage engine's job).
    progress : callable, optional
        Called as ``progress(epoch, n_epochs, val_mae)`` after every epoch.
    meta_extra : dict, optional
        Further entries for ``model.json`` (e.g. the hash of the inputs).
    checkpoint : str or Path, optional
        Resume file, written every epoch atomically (default ``out_dir/checkpoint.pt``); when it
        exists training resumes from its last finished epoch. It holds only tensors and plain
        values (read with ``torch.load(weights_only=True)``); it is removed when training ends.
        Name it by the inputs (the stage engine uses the item's cache key) so that a checkpoint
        of other data is never resumed.
    compartment : str, optional
        Train on one brain compartment (``"cortex"``, ``"subcortex"``, ``"cerebellum"``; paper
        001's region sub-ensembles): the architecture is built for the compartment's crop box
        and wrapped in a :class:`brainage.models.compartment.CompartmentModel`, which takes the
        full volumes. Recorded in ``model.json`` so that :func:`load_model` rebuilds it.
    monitor : tuple of ndarray, optional
        ``(x_test, y_test)`` whose MAE is logged every epoch as ``test_mae`` (with
        ``config.log_test_mae``); never used for early stopping or model selection.

    Returns
    -------
    TrainResult

    Notes
    -----
    The output bias is fixed at the training mean age (paper 001; in standardised training it
    is held at 0 and the scaling is folded in afterwards, see :func:`fold_target_scaling`), so
    an LRP relevance map sums to the predicted age minus the training mean age. A soft-label
    model (``loss: kl``) has no output neuron: it is trained on Gaussian soft labels of the ages
    in years (no standardisation) and predicts the expected age over its bins, which are first
    widened to cover the training ages (``model.json`` records the bins used). With
    ``config.init_from`` the weights start from that checkpoint (see :class:`TrainConfig`).
    """
    out_dir = Path(out_dir) if out_dir is not None else None
    if checkpoint is None and out_dir is not None:
        checkpoint = out_dir / "checkpoint.pt"

    device = select_device(config.device)
    # every random draw (initialisation, dropout, augmentation) comes from torch's generator,
    # seeded here inside a fork so that the caller's global random state is left untouched
    forked = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=forked):
        torch.manual_seed(seed)
        return _fit(
            x_train, y_train, x_val, y_val, config, seed, out_dir, progress, meta_extra, device,
            None if checkpoint is None else Path(checkpoint), compartment, monitor,
        )  # fmt: skip


def _fit(
    x_train, y_train, x_val, y_val, config, seed, out_dir, progress, meta_extra, device, ckpt_path,
    compartment=None, monitor=None,
):  # fmt: skip
    """Run the training loop of :func:`train_model` (torch's global generator already seeded)."""
    y_train = np.asarray(y_train, dtype=np.float64)
    soft = is_soft_label_model(config.model, config.model_params)
    standardize, mean, sd = _target_scaling(config, y_train)
    model, model_params = initial_model(config, x_train.shape[1:], y_train, compartment)
    model = model.to(device)
    fmt = torch.contiguous_format
    if config.channels_last and all(p.dim() != 4 for p in model.parameters()):
        fmt = torch.channels_last_3d  # faster 3D convolutions on CPU (bench/bench_train.py)
        model = model.to(memory_format=fmt)
    out_layer = getattr(model, "output_layer", None)
    if out_layer is not None:
        out_layer.bias.requires_grad_(False)  # bias fixed at the mean age
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=config.lr, weight_decay=config.weight_decay)
    total_steps = config.epochs * math.ceil(len(x_train) / config.batch_size)
    if config.schedule == "cosine":
        scheduler = torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=config.lr, total_steps=total_steps, pct_start=0.1
        )
    else:
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda _: 1.0)
    use_amp = bool(config.amp and device.type == "cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_amp)
    loss_fn = None if soft else _loss_fn(config.loss)
    from brainage.data.augment import build_augmentation

    transform = build_augmentation(config.augment, voxel_mm=config.resolution_mm)
    generator = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x_train)
    zt = torch.as_tensor((y_train - mean) / sd if standardize else y_train).float()

    rows: list[dict] = []
    phases: list[dict] = []  # the phase checkpoints saved so far (paper 000)
    start_epoch, best_mae, best_epoch, best_state, bad = 1, float("inf"), 0, None, 0
    if ckpt_path is not None and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=True)
        model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        scheduler.load_state_dict(ckpt["scheduler"])
        generator.set_state(ckpt["generator"])
        torch.set_rng_state(ckpt["torch_rng"])
        rows, best_mae, best_epoch, best_state, bad = (
            ckpt["rows"],
            ckpt["best_mae"],
            ckpt["best_epoch"],
            ckpt["best_state"],
            ckpt["bad"],
        )
        phases = list(ckpt.get("phases", []))
        start_epoch = ckpt["epoch"] + 1

    def to_years(z: np.ndarray) -> np.ndarray:
        return z * sd + (mean if standardize else 0.0)

    for epoch in range(start_epoch, config.epochs + 1):
        if bad >= config.patience:
            break
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        losses, abs_err, n_seen = 0.0, 0.0, 0
        has_bn = any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
        batches = [
            order[i : i + config.batch_size] for i in range(0, len(order), config.batch_size)
        ]
        batches = [b for b in batches if len(b) >= 2 or not has_bn]  # BN needs 2 per batch

        def augmented(idx):
            xb = _augment_batch(xt[idx], transform)
            return (xb.pin_memory() if device.type == "cuda" else xb), idx

        # on a GPU the CPU augmentation of the next batches runs while the GPU computes (the
        # same draws in the same order: the model's own randomness is on the GPU's generator)
        for xb, idx in prefetched(map(augmented, batches), depth=2 if device.type == "cuda" else 0):
            xb = xb.to(device, non_blocking=True).contiguous(memory_format=fmt)
            zb = zt[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
                if soft:  # zb in years; pred = expected age over the bins
                    log_p = model.log_probs(xb).float()
                    loss = kl_soft_label_loss(
                        log_p, model.soft_labels(zb, config.soft_label_sigma).to(log_p.dtype)
                    )
                    pred = (log_p.exp() * model.bin_centers.to(log_p.dtype)).sum(dim=1)
                else:
                    pred = model(xb).reshape(-1).float()
                    loss = loss_fn(pred, zb)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            losses += float(loss.detach()) * len(idx)
            abs_err += float((pred.detach() - zb).abs().sum()) * sd
            n_seen += len(idx)
        val_pred = to_years(predict_volumes(model, x_val, device=device))
        val_mae = float(np.mean(np.abs(val_pred - y_val)))
        row_extra = {}
        if monitor is not None and config.log_test_mae and len(monitor[1]):
            test_pred = to_years(predict_volumes(model, monitor[0], device=device))
            row_extra["test_mae"] = float(np.mean(np.abs(test_pred - np.asarray(monitor[1]))))
        if val_mae < best_mae - 1e-6:
            best_mae, best_epoch, bad = val_mae, epoch, 0
            best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        else:
            bad += 1
        rows.append(
            {
                "epoch": epoch,
                "train_loss": losses / max(n_seen, 1),
                "train_mae": abs_err / max(n_seen, 1),
                "val_mae": val_mae,
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": time.perf_counter() - t0,
                **row_extra,
            }
        )
        phases += _save_phases(
            model, config.phases, phases, rows[-1], out_dir, (standardize, mean, sd)
        )
        if ckpt_path is not None:
            state = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict(),
                "generator": generator.get_state(),
                "torch_rng": torch.get_rng_state(),
                "rows": rows,
                "best_mae": best_mae,
                "best_epoch": best_epoch,
                "best_state": best_state,
                "bad": bad,
                "epoch": epoch,
                "phases": phases,
            }
            with atomic_path(ckpt_path) as tmp:
                torch.save(state, tmp)
        if progress is not None:
            progress(epoch, config.epochs, val_mae)

    model = model.to(memory_format=torch.contiguous_format)  # as a loaded model predicts
    if best_state is not None:
        model.load_state_dict(best_state)
    if standardize:
        fold_target_scaling(model, mean, sd)
    model.eval()
    log = pd.DataFrame(rows)
    result = TrainResult(model.cpu(), log, best_epoch, best_mae, out_dir)
    if out_dir is not None:
        write_tsv(out_dir / "training_log.tsv", log)
        meta = {
            "model": config.model,
            "model_params": {
                k: list(v) if isinstance(v, tuple) else v for k, v in model_params.items()
            },
            "resolution_mm": config.resolution_mm,
            "compartment": compartment,
            "seed": seed,
            "train_mean_age": mean,
            "train_sd_age": sd,
            "best_epoch": best_epoch,
            "best_val_mae": best_mae,
            "n_train": len(x_train),
            "n_validation": len(x_val),
            "n_test_monitored": 0
            if monitor is None or not config.log_test_mae
            else len(monitor[1]),
            "phases": phases,
            "config": config.to_dict(),
            **(
                {"init_from_sha256": checkpoint_sha256(config.init_from)}
                if config.init_from is not None
                else {}
            ),
            **(meta_extra or {}),
        }
        save_model(model, meta, out_dir)
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
    return result


def prefetched(items, depth: int = 2):
    """Yield ``items`` (an iterator) in order, computing up to ``depth`` ahead in a thread.

    ``depth=0`` consumes the iterator in the caller's thread. An exception raised while
    producing an item is raised where that item would have been yielded. Used to overlap the
    CPU augmentation of the next batches with the GPU's work on the current one.
    """
    if depth <= 0:
        yield from items
        return
    import queue
    import threading

    q: queue.Queue = queue.Queue(maxsize=depth)
    done = object()
    stop = threading.Event()

    def produce():
        try:
            for item in items:
                if stop.is_set():
                    return
                q.put((True, item))
        except BaseException as exc:  # handed to the consumer
            q.put((False, exc))
        q.put((True, done))

    worker = threading.Thread(target=produce, daemon=True)
    worker.start()
    try:
        while True:
            ok, item = q.get()
            if not ok:
                raise item
            if item is done:
                return
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(timeout=0.05)


def _save_phases(model, thresholds, saved, row, out_dir, scaling) -> list[dict]:
    """Save the weights of every phase first reached at this epoch (paper 000; see TrainConfig).

    Returns the new entries of ``model.json``'s ``phases``: phase (1-based), threshold, epoch,
    val_mae, train_loss, test_mae (when monitored), file (``phase-<k>.pt``, None without
    ``out_dir``). The weights are those of a finished model: target scaling folded in.
    """
    done = {p["phase"] for p in saved}
    new = []
    for k, threshold in enumerate(thresholds, start=1):
        if k in done or not row["val_mae"] <= threshold:  # NaN (diverged) reaches nothing
            continue
        entry = {"phase": k, "threshold": float(threshold), "epoch": int(row["epoch"]),
                 "val_mae": float(row["val_mae"]), "train_loss": float(row["train_loss"]),
                 "test_mae": row.get("test_mae"), "file": None}  # fmt: skip
        if out_dir is not None:
            standardize, mean, sd = scaling
            snapshot = copy.deepcopy(model).to(memory_format=torch.contiguous_format).cpu()
            if standardize:
                fold_target_scaling(snapshot, mean, sd)
            entry["file"] = f"phase-{k}.pt"
            with atomic_path(Path(out_dir) / entry["file"]) as tmp:
                torch.save(snapshot.state_dict(), tmp)
        new.append(entry)
    return new


def save_model(model: nn.Module, meta: dict, out_dir: str | Path) -> None:
    """Write ``model.pt`` (state dict) then ``model.json`` (architecture + metadata), atomically."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    write_json(out_dir / "model.json", meta)


def load_model(path: str | Path, weights: str = "model.pt") -> tuple[nn.Module, dict]:
    """Load a base model saved by :func:`train_model`.

    Parameters
    ----------
    path : str or Path
        Folder with ``model.json`` and ``model.pt``.
    weights : str
        File of the weights in that folder: ``model.pt`` (the best epoch) or a phase
        checkpoint ``phase-<k>.pt`` (``model.json``'s ``phases``).

    Returns
    -------
    model : torch.nn.Module
        Eval mode, CPU, outputs age in years.
    meta : dict
        Contents of ``model.json``.
    """
    path = Path(path)
    meta = json.loads((path / "model.json").read_text())
    params = dict(meta["model_params"])
    model = build_model(meta["model"], **params)
    if meta.get("compartment"):  # a region sub-ensemble's base model
        from brainage.models.compartment import for_compartment

        model = for_compartment(model, meta["compartment"], meta["resolution_mm"])
    model.load_state_dict(torch.load(path / weights, map_location="cpu", weights_only=True))
    model.eval()
    return model, meta
