"""Training a noise model: :func:`fit_unoise` (validation, caching, metadata) and its checks."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainage.errors import ConfigError, DimensionError, InputError
from brainage.explain._core import model_device_dtype, positive_int
from brainage.explain.unoise.calibration import calibrate_noise_scale
from brainage.explain.unoise.network import NORMS
from brainage.explain.unoise.noise_model import (
    UNoiseModel,
    as_cpu_batch,
    predictor_fingerprint,
    tensor_hash,
)
from brainage.explain.unoise.training import _train
from brainage.utils import stable_hash

__all__ = ["ALGORITHM_VERSION", "fit_unoise"]

#: Version of the U-Noise training algorithm; part of the cache hash (bump when results change).
ALGORITHM_VERSION = 2  # 2: calibrated noise scale by default

TARGETS = ("age", "prediction")


def fit_unoise(
    predictor: nn.Module,
    x_train,
    y_train=None,
    x_val=None,
    y_val=None,
    pretrain_epochs: int = 10,
    epochs: int = 50,
    batch_size: int = 2,
    lr: float = 1e-4,
    vmin: float = 1.0,
    vmax: float = 5.0,
    r: float = 0.1,
    seed: int = 0,
    out_path: str | Path | None = None,
    progress: Callable | None = None,
    *,
    noise_scale: float | str = "calibrated",
    calibration_years: float = 1.0,
    target: str = "age",
    lr_step: int | None = 10,
    lr_gamma: float = 0.1,
    base_channels: int = 16,
    levels: int = 5,
    norm: str = "instance",
    device=None,
    amp: bool = False,
) -> UNoiseModel:
    """Train a 3D U-Noise noise model for a frozen age predictor (paper 002; METHODS §8).

    Stage 1 pretrains the U-Net as an autoencoder (voxel-wise MSE of its linear output to ``x``)
    for ``pretrain_epochs``; stage 2 trains it for ``epochs`` with the loss
    ``mean_batch (f(x + σ·ε) − y)² − r · mean_voxels log m``, ``m = sigmoid(U-Net(x))``,
    ``σ = (m · (vmax − vmin) + vmin) · s`` (see :mod:`brainage.explain.unoise` for ``s`` and
    ``y``). Both stages use Adam (lr 1e-4 in the paper, divided by 10 every 10 epochs),
    mini-batches of ``batch_size`` (paper: 2) shuffled per epoch. With validation data, the
    stage-2 epoch with the lowest validation loss (fixed noise draw) is kept; otherwise the last.

    ``predictor`` is put in eval mode with ``requires_grad`` off for stage 2 and restored
    afterwards (training flags and ``requires_grad`` of every parameter), also on error.

    Parameters
    ----------
    predictor : torch.nn.Module
        Trained age regressor ``f``: (n, c, i, j, k) → (n, 1) or (n,), years. Not modified.
    x_train : ndarray or Tensor, shape (n, c, i, j, k)
        Training volumes on the predictor's grid (brainage: min-max scaled to [0, 1] in the brain).
    y_train : array-like, shape (n,), years, optional
        Chronological ages; required for ``target="age"``.
    x_val, y_val : optional
        Validation volumes (m, c, i, j, k) and ages (m,), years: model selection per epoch.
    pretrain_epochs : int ≥ 0
        Autoencoder epochs (not given in the paper; 10 by default).
    epochs : int ≥ 1
        Noise-training epochs (paper: 50).
    batch_size : int
        Paper: 2.
    lr : float
        Initial Adam learning rate of both stages (paper: 1e-4).
    vmin, vmax : float
        Noise SD range (paper: 1 and 5, in units of ``s``); ``0 ≤ vmin < vmax``.
    r : float
        Weight of the noise term (paper: 0.1), in years² (the prediction term is in years²).
    seed : int
        Seeds U-Net initialisation, shuffling and the noise ε; same seed → same model
        (bit-identical on the CPU; on CUDA up to the non-determinism of cuDNN kernels). Global
        random state is left untouched.
    out_path : str or Path, optional
        ``.pt`` file to save the model to (plus a ``.json`` with the metadata, whose ``hash``
        identifies predictor, data and parameters). The model is always trained: skipping
        finished work is the stage engine's job (its ``noise`` stage).
    progress : callable, optional
        Called as ``progress(stage, epoch, n_epochs, metrics)`` after every epoch, ``stage`` in
        {"pretrain", "noise"}, ``metrics`` a dict of floats.
    noise_scale : "calibrated", "auto" or float > 0
        ``s``: "calibrated" (default) = :func:`calibrate_noise_scale` on up to 32 training
        volumes; "auto" = the SD of each volume (per channel, over all voxels), the paper's
        z-scored units; a number = a fixed scale in input intensity units.
    calibration_years : float > 0
        With ``noise_scale="calibrated"``: the largest mean change (years) of the prediction that
        the noise floor ``v_min · s`` may cause.
    target : {"age", "prediction"}
        ``y`` = the true age (paper) or the clean prediction ``f(x)``.
    lr_step : int or None
        Divide the learning rate by ``1 / lr_gamma`` every ``lr_step`` epochs (paper: 10);
        None or 0 = constant.
    lr_gamma : float
        Learning-rate factor per step (paper: 0.1).
    base_channels, levels, norm :
        U-Net architecture (see :class:`UNet3D`; paper: 16, 5).
    device : str or torch.device, optional
        Default: the predictor's device.
    amp : bool
        bfloat16 autocast on CUDA (ignored elsewhere).

    Returns
    -------
    UNoiseModel
        The trained noise model (on ``device``) with its metadata (history, best epoch, seconds).

    Raises
    ------
    ConfigError
        Invalid parameters, or ``target="age"`` without ages.
    DimensionError, InputError
        Malformed volumes or ages (wrong shape, non-finite values, mismatched counts).
    """
    if not isinstance(predictor, nn.Module):
        raise TypeError(f"'predictor' must be a torch.nn.Module; got {type(predictor).__name__}")
    params = _check_fit_params(
        pretrain_epochs=pretrain_epochs,
        epochs=epochs,
        batch_size=batch_size,
        lr=lr,
        vmin=vmin,
        vmax=vmax,
        r=r,
        seed=seed,
        noise_scale=noise_scale,
        calibration_years=calibration_years,
        target=target,
        lr_step=lr_step,
        lr_gamma=lr_gamma,
        base_channels=base_channels,
        levels=levels,
        norm=norm,
        amp=amp,
    )
    xt = as_cpu_batch(x_train, "x_train")
    yt = _as_ages(y_train, "y_train", xt.shape[0]) if y_train is not None else None
    if target == "age" and yt is None:
        raise ConfigError(
            "'y_train' (ages, years) is required with target='age' (the paper's setting); "
            "give the ages or use target='prediction'"
        )
    xv = yv = None
    if x_val is not None:
        xv = as_cpu_batch(x_val, "x_val")
        if tuple(xv.shape[1:]) != tuple(xt.shape[1:]):
            raise DimensionError(
                f"'x_val' has shape (m, c, i, j, k) = {tuple(xv.shape)}; 'x_train' has "
                f"{tuple(xt.shape)}: channels and grid must match"
            )
        yv = _as_ages(y_val, "y_val", xv.shape[0]) if y_val is not None else None
        if target == "age" and yv is None:
            raise ConfigError("'y_val' (ages, years) is required with 'x_val' and target='age'")
    elif y_val is not None:
        raise ConfigError("'y_val' was given without 'x_val'")

    arch = {
        "in_channels": int(xt.shape[1]),
        "base_channels": base_channels,
        "levels": levels,
        "norm": norm,
    }
    inputs = {
        "predictor": predictor_fingerprint(predictor),
        "x_train": tensor_hash(xt),
        "y_train": None if yt is None else tensor_hash(yt),
        "x_val": None if xv is None else tensor_hash(xv),
        "y_val": None if yv is None else tensor_hash(yv),
        "input_shape": [int(s) for s in xt.shape[2:]],
        "n_train": int(xt.shape[0]),
        "n_val": 0 if xv is None else int(xv.shape[0]),
    }
    run_hash = stable_hash("unoise", ALGORITHM_VERSION, arch, params, inputs)
    if device is None:
        device = model_device_dtype(predictor)[0]
    device = torch.device(device)

    if out_path is not None:
        out_path = Path(out_path)

    train_params = dict(params)
    if params["noise_scale"] == "calibrated":
        train_params["noise_scale"] = calibrate_noise_scale(
            predictor,
            xt[:32],
            vmin=params["vmin"],
            max_change=params["calibration_years"],
            seed=params["seed"],
            device=device,
        )
    net, meta_train = _train(predictor, xt, yt, xv, yv, arch, train_params, device, progress)
    meta_train["noise_scale_used"] = train_params["noise_scale"]
    meta = {
        "method": "unoise",
        "reference": "Bintsi et al. 2021 (paper 002), 3D U-Noise; Koker et al. 2021 (U-Noise)",
        "algorithm_version": ALGORITHM_VERSION,
        "hash": run_hash,
        "architecture": arch,
        "params": params,
        "inputs": inputs,
        **meta_train,
    }
    model = UNoiseModel(net, meta)
    if out_path is not None:
        model.save(out_path)
    return model


def _check_fit_params(**p) -> dict:
    """Validate the training parameters and return them as a JSON-serialisable dict."""
    out = {}
    pe = p["pretrain_epochs"]
    if isinstance(pe, bool) or not isinstance(pe, (int, np.integer)) or pe < 0:
        raise ConfigError(f"'pretrain_epochs' must be an integer ≥ 0; got {pe!r}")
    out["pretrain_epochs"] = int(pe)
    for key in ("epochs", "batch_size", "base_channels", "levels"):
        out[key] = positive_int(key, p[key])
    for key in ("lr", "vmin", "vmax", "r", "lr_gamma"):
        v = p[key]
        if isinstance(v, bool) or not isinstance(v, (int, float, np.number)):
            raise ConfigError(f"'{key}' must be a finite number; got {v!r}")
        if not math.isfinite(v):
            raise ConfigError(f"'{key}' must be a finite number; got {v!r}")
        out[key] = float(v)
    if out["lr"] <= 0:
        raise ConfigError(f"'lr' must be > 0; got {out['lr']}")
    if not 0 <= out["vmin"] < out["vmax"]:
        raise ConfigError(
            f"'vmin' and 'vmax' must satisfy 0 ≤ vmin < vmax; got {out['vmin']}, {out['vmax']}"
        )
    if out["r"] < 0:
        raise ConfigError(f"'r' must be ≥ 0; got {out['r']}")
    if not 0 < out["lr_gamma"] <= 1:
        raise ConfigError(f"'lr_gamma' must be in (0, 1]; got {out['lr_gamma']}")
    seed = p["seed"]
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise ConfigError(f"'seed' must be an int; got {seed!r}")
    out["seed"] = int(seed)
    ns = p["noise_scale"]
    expected = "'calibrated', 'auto' or a number > 0"
    if isinstance(ns, str):
        if ns not in ("auto", "calibrated"):
            raise ConfigError(f"'noise_scale' must be {expected}; got {ns!r}")
        out["noise_scale"] = ns
    elif isinstance(ns, bool) or not isinstance(ns, (int, float, np.number)) or not ns > 0:
        raise ConfigError(f"'noise_scale' must be {expected}; got {ns!r}")
    else:
        out["noise_scale"] = float(ns)
    cy = p["calibration_years"]
    if isinstance(cy, bool) or not isinstance(cy, (int, float, np.number)) or not cy > 0:
        raise ConfigError(f"'calibration_years' must be a number > 0; got {cy!r}")
    out["calibration_years"] = float(cy)
    if p["target"] not in TARGETS:
        raise ConfigError(f"'target' must be one of {TARGETS}; got {p['target']!r}")
    out["target"] = p["target"]
    step = p["lr_step"]
    if step is None or step == 0:
        out["lr_step"] = None
    else:
        out["lr_step"] = positive_int("lr_step", step)
    if p["norm"] not in NORMS:
        raise ConfigError(f"'norm' must be one of {NORMS}; got {p['norm']!r}")
    out["norm"] = p["norm"]
    out["amp"] = bool(p["amp"])
    return out


def _as_ages(ages, name: str, n: int) -> torch.Tensor:
    """Validate ages (n,), years, and return a float32 tensor."""
    a = ages.detach().cpu().numpy() if isinstance(ages, torch.Tensor) else np.asarray(ages)
    if not (np.issubdtype(a.dtype, np.floating) or np.issubdtype(a.dtype, np.integer)):
        raise InputError(f"'{name}' must be numeric ages in years; got dtype {a.dtype}")
    a = a.astype(np.float64).reshape(-1) if a.ndim == 2 and 1 in a.shape else a.astype(np.float64)
    if a.shape != (n,):
        raise DimensionError(f"'{name}' must have shape ({n},) (one age per volume); got {a.shape}")
    if not np.isfinite(a).all():
        raise InputError(
            f"'{name}' contains missing or infinite ages", fix="drop subjects without age"
        )
    return torch.from_numpy(a.astype(np.float32))
