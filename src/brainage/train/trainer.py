"""Training one base model: seeded, early-stopped, checkpointed, resumable (METHODS §3)."""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from brainage.errors import ConfigError
from brainage.io.atomic import atomic_path, write_json, write_tsv
from brainage.models import MODELS, build_model, check_model_params
from brainage.schema import Section
from brainage.train.pretrained import checkpoint_sha256, initial_model
from brainage.utils import select_device

#: ``train.model_params`` when none are given, per architecture (measured for small cohorts:
#: dropout 0.2 rather than the paper's 0.5 for the Hofmann CNN, METHODS §3).
MODEL_DEFAULTS: dict[str, dict[str, Any]] = {"hofmann": {"dropout": 0.2}}


class TrainConfig(Section):
    """Training hyper-parameters of one base model.

    Defaults are tuned for small cohorts on a CPU (METHODS §3, "small cohorts"): the Hofmann CNN
    with BatchNorm, standardised targets, AdamW with weight decay, a cosine learning-rate schedule,
    flip/affine augmentation and early stopping on validation MAE. ``TrainConfig.paper()`` gives the
    configuration of paper 001 (no BatchNorm, Adam lr 5e-4, raw-age MSE, no augmentation).

    Attributes
    ----------
    model : str
        Registered architecture: ``"hofmann"`` (paper 001), ``"resnet"`` (3D ResNet, papers
        000/002/004) or ``"sfcn"`` (Peng et al. 2021; ``model_params.output: soft_label`` for
        the paper's age bins, which requires ``loss: kl``).
    model_params : dict
        Keyword arguments of the architecture; when not given, :data:`MODEL_DEFAULTS` of it.
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
    loss : {"mse", "mae", "kl"}
        ``"mse"``/``"mae"``: on the (standardised) age of a model with one output neuron.
        ``"kl"``: KL(soft label ‖ predicted bin distribution) of a soft-label model (one that
        has ``log_probs``, e.g. ``sfcn`` with ``output: soft_label``), Peng et al. 2021; the
        only loss allowed for such a model.
    soft_label_sigma : float
        Standard deviation of the Gaussian soft label around each age, years (``loss: kl``;
        paper: 1). The bins are widened, never narrowed, until every training age lies ≥ 2σ
        inside them (see :func:`brainage.models.sfcn.covering_bins`).
    standardize_targets : bool
        Train on (age − mean) / sd and fold the scaling into the output layer afterwards.
        Ignored with ``loss: kl`` (the age bins are in years).
    init_from : str or None
        Fine-tune from this checkpoint instead of a random initialisation: a brainage
        ``model.pt``, a plain state dict, a dict with a ``state_dict`` key or a
        ``torch.nn.DataParallel`` state dict (leading ``module.`` stripped), read with
        ``torch.load(weights_only=True)`` (no code is unpickled; nothing is downloaded). It must
        fit ``model`` and ``model_params`` (e.g. the published UK Biobank SFCN,
        ``run_20190719_00_epoch_best_mae.p``: ``model: sfcn``, ``output: soft_label``, the
        default 40 bins of 1 year from 42, inputs 1 × 160 × 192 × 160 at 1 mm MNI,
        skull-stripped). Soft-label bins are then extended to the cohort's ages
        (:meth:`brainage.models.SFCN.extend_bins`); a regression output layer is taken to
        predict years and is rescaled to the (standardised) targets with its bias set to the
        training mean age. Made absolute when the configuration is read. Cached training
        results are keyed by the SHA-256 of the file's bytes.
    augment : list of str
        Names for :func:`brainage.data.build_augmentation` (``[]`` = none). Default flip, affine
        and elastic, chosen on the validation subjects of the IXI folds
        (``bench/bench_architectures.py``: pooled validation MAE 6.26 years with elastic
        deformation against 6.74 without, 6.44 against 7.25 over the last 10 epochs; better in 4
        of 5 folds; about 1.4× the training time).
    device : str
        ``"auto"`` (CUDA, MPS, else CPU) or a torch device string.
    amp : bool
        Mixed precision on CUDA.
    channels_last : bool
        Train 3D CNNs in the channels-last memory format (``torch.channels_last_3d``): the same
        arithmetic in another order, 1.4× the volumes per second of the Hofmann CNN on one CPU
        thread at 4 mm (``bench/bench_train.py``). Models with 2D layers train as they are.
    """

    section_path: ClassVar[str] = "train"

    model: str = "hofmann"
    model_params: dict[str, Any] = Field(default_factory=lambda: dict(MODEL_DEFAULTS["hofmann"]))
    resolution_mm: Annotated[float, Field(ge=0.5, le=16)] = 4.0
    epochs: Annotated[int, Field(ge=1)] = 60
    patience: Annotated[int, Field(ge=1)] = 30
    batch_size: Annotated[int, Field(ge=1)] = 8
    lr: Annotated[float, Field(gt=0)] = 2e-3
    weight_decay: Annotated[float, Field(ge=0)] = 1e-3
    schedule: Literal["cosine", "constant"] = "cosine"
    loss: Literal["mse", "mae", "kl"] = "mse"
    soft_label_sigma: Annotated[float, Field(gt=0)] = 1.0
    standardize_targets: bool = True
    init_from: str | None = None
    augment: list[Literal["flip", "affine", "elastic"]] = Field(
        default_factory=lambda: ["flip", "affine", "elastic"]
    )
    device: str = "auto"
    amp: bool = True
    channels_last: bool = True

    @model_validator(mode="before")
    @classmethod
    def _architecture_defaults(cls, data: Any) -> Any:
        # model_params not given: the defaults brainage chose for that architecture
        if isinstance(data, dict) and "model_params" not in data:
            data = {
                **data,
                "model_params": dict(MODEL_DEFAULTS.get(data.get("model", "hofmann"), {})),
            }
        return data

    @field_validator("init_from")
    @classmethod
    def _absolute_init_from(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.strip():
            raise ValueError("'train.init_from' must be a file path or null; got ''")
        return os.path.abspath(os.path.expanduser(value))

    @model_validator(mode="after")
    def _check_model(self) -> TrainConfig:
        check_model_params(self.model, self.model_params)
        if getattr(MODELS[self.model], "closed_form", False):
            raise ConfigError(
                f"'train.model': {self.model!r} is fitted in closed form, not trained; add it "
                "to the ensemble with 'ensemble.learners' instead"
            )
        check = getattr(MODELS[self.model], "check_params", None)
        if check is not None:
            check(dict(self.model_params))
        soft = is_soft_label_model(self.model, self.model_params)
        if self.loss == "kl" and not soft:
            raise ConfigError(
                "'train.loss': 'kl' needs a soft-label model (one with log_probs over age bins, "
                "e.g. train.model: sfcn with train.model_params.output: soft_label); got model "
                f"{self.model!r} with model_params {dict(self.model_params)!r}"
            )
        if soft and self.loss != "kl":
            raise ConfigError(
                f"'train.loss' must be 'kl' for the soft-label model {self.model!r} (its output "
                f"is a distribution over age bins); got {self.loss!r}"
            )
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


def is_soft_label_model(name: str, params: dict | None) -> bool:
    """Whether architecture ``name`` with ``params`` predicts a distribution over age bins.

    A model class is soft-label when it has ``log_probs``; one that has an output switch says
    which through its ``is_soft_label(params)`` (``SFCN``: ``output: soft_label``).
    """
    cls = MODELS[name]
    if not callable(getattr(cls, "log_probs", None)):
        return False
    switch = getattr(cls, "is_soft_label", None)
    return True if switch is None else bool(switch(dict(params or {})))


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
            None if checkpoint is None else Path(checkpoint), compartment,
        )  # fmt: skip


def _fit(
    x_train, y_train, x_val, y_val, config, seed, out_dir, progress, meta_extra, device, ckpt_path,
    compartment=None,
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

    transform = build_augmentation(config.augment)
    generator = torch.Generator().manual_seed(seed)
    xt = torch.as_tensor(x_train)
    zt = torch.as_tensor((y_train - mean) / sd if standardize else y_train).float()

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
        return z * sd + (mean if standardize else 0.0)

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
            xb = xb.contiguous(memory_format=fmt)
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
    if meta.get("compartment"):  # a region sub-ensemble's base model
        from brainage.models.compartment import for_compartment

        model = for_compartment(model, meta["compartment"], meta["resolution_mm"])
    model.load_state_dict(torch.load(path / "model.pt", map_location="cpu", weights_only=True))
    model.eval()
    return model, meta
