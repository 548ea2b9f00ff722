"""Training one base model: seeded, early-stopped, checkpointed, resumable (METHODS §3)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, model_validator
from torch import nn

from brainage.io.atomic import atomic_path, write_json, write_tsv
from brainage.models import build_model, check_model_params
from brainage.schema import Section
from brainage.utils import select_device


class TrainConfig(Section):
    """Training hyper-parameters of one base model.

    Defaults are tuned for small cohorts on a CPU (METHODS §3, "small cohorts"): the Hofmann CNN
    with BatchNorm, standardised targets, AdamW with weight decay, a cosine learning-rate schedule,
    flip/affine augmentation and early stopping on validation MAE. ``TrainConfig.paper()`` gives the
    configuration of paper 001 (no BatchNorm, Adam lr 5e-4, raw-age MSE, no augmentation).

    Attributes
    ----------
    model : str
        Registered architecture (``"hofmann"``, ``"resnet"``).
    model_params : dict
        Keyword arguments of the architecture.
    resolution_mm : float
        Input grid resolution in mm (the crop box of :func:`brainage.space.template_grid`).
    epochs : int
        Maximum number of epochs.
    patience : int
        Early stopping: stop after this many epochs without a better validation MAE.
    batch_size : int
    lr : float
        Peak learning rate.
    weight_decay : float
        Decoupled weight decay (AdamW).
    schedule : {"cosine", "constant"}
    loss : {"mse", "mae"}
        Loss on the (standardised) age.
    standardize_targets : bool
        Train on (age − mean) / sd and fold the scaling into the output layer afterwards.
    augment : list of str
        Names for :func:`brainage.data.build_augmentation` (``[]`` = none).
    device : str
        ``"auto"`` (CUDA, MPS, else CPU) or a torch device string.
    amp : bool
        Mixed precision on CUDA.
    """

    section_path: ClassVar[str] = "train"

    model: str = "hofmann"
    model_params: dict[str, Any] = Field(default_factory=lambda: {"dropout": 0.2})
    resolution_mm: Annotated[float, Field(ge=0.5, le=16)] = 4.0
    epochs: Annotated[int, Field(ge=1)] = 60
    patience: Annotated[int, Field(ge=1)] = 30
    batch_size: Annotated[int, Field(ge=1)] = 8
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: Literal["mse", "mae"] = "mse"
    standardize_targets: bool = True
    augment: list[Literal["flip", "affine", "elastic"]] = Field(
        default_factory=lambda: ["flip", "affine"]
    )
    device: str = "auto"
    amp: bool = True

    @model_validator(mode="after")
    def _check_model(self) -> TrainConfig:
        check_model_params(self.model, self.model_params)
        return self

    @classmethod
    def paper(cls) -> TrainConfig:
        """Return the plain configuration of paper 001 (Hofmann et al. 2021)."""
        return cls(
            model_params={"batch_norm": False},
            lr=5e-4,
            weight_decay=0.0,
            schedule="constant",
            standardize_targets=False,
            augment=[],
        )


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

    Returns
    -------
    TrainResult

    Notes
    -----
    The output bias is fixed at the training mean age (paper 001; in standardised training it
    is held at 0 and the scaling is folded in afterwards, see :func:`fold_target_scaling`), so
    an LRP relevance map sums to the predicted age minus the training mean age.
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
            None if checkpoint is None else Path(checkpoint),
        )  # fmt: skip


def _fit(
    x_train, y_train, x_val, y_val, config, seed, out_dir, progress, meta_extra, device, ckpt_path
):  # fmt: skip
    """Run the training loop of :func:`train_model` (torch's global generator already seeded)."""
    y_train = np.asarray(y_train, dtype=np.float64)
    mean = float(y_train.mean())
    sd = float(y_train.std()) if config.standardize_targets else 1.0
    sd = sd if sd > 1e-6 else 1.0
    init_bias = 0.0 if config.standardize_targets else mean
    model_params = {"input_shape": x_train.shape[2:], "in_channels": x_train.shape[1]}
    model_params.update(config.model_params)
    model = build_model(config.model, mean_age=init_bias, **model_params).to(device)
    model.output_layer.bias.requires_grad_(False)  # bias fixed at the mean age
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
    loss_fn = _loss_fn(config.loss)
    from brainage.data.augment import build_augmentation

    transform = build_augmentation(config.augment)
    generator = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x_train)
    zt = torch.as_tensor((y_train - mean) / sd if config.standardize_targets else y_train).float()

    rows: list[dict] = []
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
        start_epoch = ckpt["epoch"] + 1

    def to_years(z: np.ndarray) -> np.ndarray:
        return z * sd + (mean if config.standardize_targets else 0.0)

    for epoch in range(start_epoch, config.epochs + 1):
        if bad >= config.patience:
            break
        t0 = time.perf_counter()
        model.train()
        order = torch.randperm(len(xt), generator=generator)
        losses, abs_err, n_seen = 0.0, 0.0, 0
        for start in range(0, len(order), config.batch_size):
            idx = order[start : start + config.batch_size]
            if len(idx) < 2 and any(
                isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()
            ):
                continue  # BatchNorm cannot train on a batch of one
            xb = _augment_batch(xt[idx], transform).to(device, non_blocking=True)
            zb = zt[idx].to(device)
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast(device.type, enabled=use_amp):
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
            }
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
            }
            with atomic_path(ckpt_path) as tmp:
                torch.save(state, tmp)
        if progress is not None:
            progress(epoch, config.epochs, val_mae)

    if best_state is not None:
        model.load_state_dict(best_state)
    if config.standardize_targets:
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
            "seed": seed,
            "train_mean_age": mean,
            "train_sd_age": sd,
            "best_epoch": best_epoch,
            "best_val_mae": best_mae,
            "n_train": len(x_train),
            "n_validation": len(x_val),
            "config": config.to_dict(),
            **(meta_extra or {}),
        }
        save_model(model, meta, out_dir)
    if ckpt_path is not None:
        ckpt_path.unlink(missing_ok=True)
    return result


def save_model(model: nn.Module, meta: dict, out_dir: str | Path) -> None:
    """Write ``model.pt`` (state dict) then ``model.json`` (architecture + metadata), atomically."""
    out_dir = Path(out_dir)
    with atomic_path(out_dir / "model.pt") as tmp:
        torch.save(model.state_dict(), tmp)
    write_json(out_dir / "model.json", meta)


def load_model(path: str | Path) -> tuple[nn.Module, dict]:
    """Load a base model saved by :func:`train_model`.

    Parameters
    ----------
    path : str or Path
        Folder with ``model.json`` and ``model.pt``.

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
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, meta
