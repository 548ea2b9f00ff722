"""3D U-Noise: learned voxel-wise noise masks as importance maps (paper 002; METHODS §8).

Bintsi et al. (2021), "Voxel-level importance maps for interpretable brain age estimation",
extending U-Noise (Koker et al. 2021, arXiv:2101.05791) to 3D regression. A 3D U-Net (the *noise
model*) is trained, with the age predictor ``f`` frozen, to add as much Gaussian noise as
possible to every voxel without harming ``f``'s prediction. Voxels that tolerate little noise are
important: ``importance = 1 − m`` where ``m = sigmoid(U-Net(x)) ∈ (0, 1)`` is the noise mask.

Training (:func:`fit_unoise`) has two stages, as in the paper:

1. *Pretraining* — the U-Net is trained as an autoencoder (voxel-wise MSE between its linear
   output and ``x``), so that it starts from features of brain structure.
2. *Noise training* — ``f`` frozen (eval mode, ``requires_grad`` off; both restored afterwards)::

       m       = sigmoid(U-Net(x))                               mask, shape of x
       σ       = (m · (v_max − v_min) + v_min) · s                noise SD per voxel
       x_noisy = x + σ · ε,          ε ~ N(0, 1) (seeded)
       L       = mean_batch (f(x_noisy) − y)² − r · mean_voxels log m

   with ``v_min = 1``, ``v_max = 5``, ``r = 0.1`` (paper). The paper's Eq. (1) is typeset as
   ``X + f_ψ(X)(v_max − v_min)ε + v_min``; its text says the mask is *scaled to* [v_min, v_max]
   and *then* multiplied by ε, which is what is implemented (a constant ``+ v_min`` shift of the
   image would make no sense).

**Target y.** The paper trains with "an input image X and label y", the MSE "between the
chronological and biological age", i.e. the *true age*: ``target="age"`` (default). With
``target="prediction"`` the clean prediction ``f(x)`` is used instead (the map then explains the
model's output rather than its accuracy, and subjects without a known age can be used).

**Intensity scale.** The paper normalised each image to zero mean and unit variance, so its
``v_min``, ``v_max`` are in units of the image's standard deviation. brainage inputs are min-max
scaled to [0, 1] inside the brain (0 outside), whose whole-volume SD is ≈ 0.2–0.35. The noise SD is
therefore multiplied by ``s``: ``noise_scale="auto"`` (default) uses, per volume and channel, the
SD of ``x`` over all voxels — exactly the paper's setting expressed in our intensity units
(equivalent to z-scoring each volume, adding the paper's noise and undoing the z-scoring).
A number uses that fixed ``s`` for every volume (``1.0`` = the paper's values read literally in
input units). ``noise_scale="calibrated"`` (brainage's default) picks the largest
``s = s_auto / 2^k`` at which the *least* noise the mask allows, ``v_min · s`` everywhere,
changes the predictor's output by at most ``calibration_years`` (1 year) on average
(:func:`calibrate_noise_scale`). Reason: for a predictor trained on a few hundred scans without
noise augmentation the paper's floor is destructive — on the 400-phantom cohort at 4 mm, noise of
1 image SD everywhere raised the validation MAE from 3.2 to 16.9 years (the mean-age predictor's
level), so every mask ruins the prediction and the noise model learns nothing but ``m → 0``
(uniform importance). The paper's predictor (UK Biobank, 13 750 scans) may tolerate it; ours do
not.

The U-Net is trained once per predictor and saved (:func:`fit_unoise` with ``out_path``; a second
call with identical inputs and parameters loads it instead of retraining); maps of new volumes
are then one forward pass (:func:`unoise_importance`, or the registered method ``"unoise"``).
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import json
import math
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from brainage.errors import ConfigError, DimensionError, InputError, did_you_mean
from brainage.io.atomic import atomic_path, write_json
from brainage.utils import check_random_state, stable_hash

__all__ = [
    "UNet3D",
    "UNoiseModel",
    "fit_unoise",
    "load_unoise",
    "predictor_fingerprint",
    "unoise",
    "unoise_importance",
]

#: Version of the U-Noise training algorithm; part of the cache hash (bump when results change).
ALGORITHM_VERSION = 2  # 2: calibrated noise scale by default

_NORMS = ("instance", "batch", "none")
_TARGETS = ("age", "prediction")


# ----------------------------------------------------------------------------------------------
# Architecture
# ----------------------------------------------------------------------------------------------


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    if kind == "batch":
        return nn.BatchNorm3d(channels)
    return nn.Identity()


class _DoubleConv(nn.Sequential):
    """(Conv3d 3³ → norm → LeakyReLU) × 2, 'same' padding."""

    def __init__(self, c_in: int, c_out: int, norm: str) -> None:
        bias = norm == "none"
        super().__init__(
            nn.Conv3d(c_in, c_out, kernel_size=3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.LeakyReLU(0.01, inplace=True),
            nn.Conv3d(c_out, c_out, kernel_size=3, padding=1, bias=bias),
            _norm(norm, c_out),
            nn.LeakyReLU(0.01, inplace=True),
        )


class UNet3D(nn.Module):
    """3D U-Net (Ronneberger et al. 2015, in 3D) used as the U-Noise noise model (paper 002).

    ``levels`` resolution levels; level ``l`` (0-based) has ``base_channels · 2**l`` channels
    (paper: 5 levels, 16 channels after the first layer → 16, 32, 64, 128, 256). Encoder: a double
    convolution per level, MaxPool3d(2) between levels. Decoder: ConvTranspose3d(2, stride 2),
    concatenation with the encoder's skip connection, double convolution. Output: a 1³
    convolution to ``out_channels`` *linear* outputs (reconstruction during pretraining, mask
    logits afterwards).

    Any input shape works: the volume is zero-padded (symmetrically; 0 is the background of
    brainage inputs) so that every axis is a multiple of ``2**(levels − 1)`` and at least
    ``2**levels`` voxels (so the bottleneck has ≥ 2 voxels per axis, which instance
    normalisation needs), and the output is cropped back to the input's shape.

    Parameters
    ----------
    in_channels : int
        Input channels (modalities; 1 for T1w).
    base_channels : int
        Channels after the first layer (paper: 16), doubled at every level.
    levels : int
        Resolution levels, i.e. ``levels − 1`` down- and up-sampling steps (paper: 5; the paper's
        "number of blocks … is 5" is read as 5 levels, METHODS §8).
    out_channels : int or None
        Output channels; default ``in_channels`` (one mask channel per input channel).
    norm : {"instance", "batch", "none"}
        Normalisation after each convolution (instance: independent of the tiny batch sizes of
        3D training, paper batch size 2).

    Notes
    -----
    Input: tensor, shape (n, in_channels, i, j, k); output: tensor, shape
    (n, out_channels, i, j, k), same voxel grid.
    """

    def __init__(
        self,
        in_channels: int = 1,
        base_channels: int = 16,
        levels: int = 5,
        out_channels: int | None = None,
        norm: str = "instance",
    ) -> None:
        super().__init__()
        in_channels = _positive_int("in_channels", in_channels)
        base_channels = _positive_int("base_channels", base_channels)
        levels = _positive_int("levels", levels)
        if out_channels is None:
            out_channels = in_channels
        out_channels = _positive_int("out_channels", out_channels)
        if norm not in _NORMS:
            raise ConfigError(f"'norm' must be one of {_NORMS}; got {norm!r}")
        self.in_channels = in_channels
        self.base_channels = base_channels
        self.levels = levels
        self.out_channels = out_channels
        self.norm = norm
        chans = [base_channels * 2**lev for lev in range(levels)]
        self.down = nn.ModuleList()
        c_in = in_channels
        for c in chans:
            self.down.append(_DoubleConv(c_in, c, norm))
            c_in = c
        self.pool = nn.MaxPool3d(2)
        self.up = nn.ModuleList()
        self.dec = nn.ModuleList()
        for lev in range(levels - 1, 0, -1):
            self.up.append(nn.ConvTranspose3d(chans[lev], chans[lev - 1], kernel_size=2, stride=2))
            self.dec.append(_DoubleConv(2 * chans[lev - 1], chans[lev - 1], norm))
        self.head = nn.Conv3d(chans[0], out_channels, kernel_size=1)

    @property
    def multiple(self) -> int:
        """Every padded axis is a multiple of this many voxels (``2**(levels − 1)``)."""
        return 2 ** (self.levels - 1)

    def padded_shape(self, shape) -> tuple[int, int, int]:
        """Spatial shape (voxels) an input of spatial ``shape`` is zero-padded to."""
        f = self.multiple
        return tuple(max(math.ceil(s / f) * f, 2 * f) for s in shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map (n, in_channels, i, j, k) to (n, out_channels, i, j, k) linear outputs."""
        if x.ndim != 5 or x.shape[1] != self.in_channels:
            raise DimensionError(
                f"UNet3D input must have shape (n, {self.in_channels}, i, j, k); "
                f"got {tuple(x.shape)}"
            )
        shape = tuple(x.shape[2:])
        target = self.padded_shape(shape)
        before = [(t - s) // 2 for s, t in zip(shape, target, strict=True)]
        after = [t - s - b for s, t, b in zip(shape, target, before, strict=True)]
        if any(target[d] != shape[d] for d in range(3)):
            x = F.pad(x, (before[2], after[2], before[1], after[1], before[0], after[0]))
        skips = []
        for lev, block in enumerate(self.down):
            if lev > 0:
                x = self.pool(x)
            x = block(x)
            skips.append(x)
        for up, dec, skip in zip(self.up, self.dec, reversed(skips[:-1]), strict=True):
            x = dec(torch.cat([up(x), skip], dim=1))
        x = self.head(x)
        return x[
            :,
            :,
            before[0] : before[0] + shape[0],
            before[1] : before[1] + shape[1],
            before[2] : before[2] + shape[2],
        ]


# ----------------------------------------------------------------------------------------------
# The trained noise model
# ----------------------------------------------------------------------------------------------


class UNoiseModel:
    """A trained U-Noise noise model: the U-Net plus the metadata of its training.

    Parameters
    ----------
    net : UNet3D
        Trained noise U-Net (outputs mask logits).
    metadata : dict
        Training record written by :func:`fit_unoise` (architecture, parameters, input hashes,
        predictor fingerprint, per-epoch history, ``"hash"``).

    Attributes
    ----------
    input_shape : tuple of int or None
        Spatial shape (i, j, k) of the training volumes (the predictor's grid).
    hash : str
        Hash of everything that determined the training (predictor, data, parameters).
    """

    def __init__(self, net: UNet3D, metadata: dict) -> None:
        self.net = net
        self.metadata = metadata

    @property
    def input_shape(self) -> tuple[int, ...] | None:
        """Spatial training shape (i, j, k), voxels."""
        shape = self.metadata.get("inputs", {}).get("input_shape")
        return None if shape is None else tuple(int(s) for s in shape)

    @property
    def hash(self) -> str:
        """Hash of predictor, data and parameters the model was trained with."""
        return str(self.metadata.get("hash", ""))

    @property
    def params(self) -> dict:
        """Training parameters (``vmin``, ``vmax``, ``r``, ``seed``, …)."""
        return dict(self.metadata.get("params", {}))

    def to(self, device) -> UNoiseModel:
        """Move the U-Net to ``device`` (in place) and return ``self``."""
        self.net.to(device)
        return self

    @torch.no_grad()
    def mask_logits(self, x, batch_size: int = 2) -> torch.Tensor:
        """Return the U-Net logits ``z`` (mask ``m = sigmoid(z)``), shape (n, c, i, j, k).

        float32, on the CPU.
        """
        xt = _as_batch(x, "x")
        self._check_volumes(xt)
        batch_size = _positive_int("batch_size", batch_size)
        device = next(self.net.parameters()).device
        was_training = self.net.training
        self.net.eval()
        try:
            out = [
                self.net(xt[s : s + batch_size].to(device, torch.float32)).float().cpu()
                for s in range(0, xt.shape[0], batch_size)
            ]
        finally:
            self.net.train(was_training)
        return torch.cat(out)

    def mask(self, x, batch_size: int = 2) -> np.ndarray:
        """Noise mask ``m ∈ (0, 1)``: ndarray, shape (n, c, i, j, k), float32 (input voxel grid)."""
        return torch.sigmoid(self.mask_logits(x, batch_size)).numpy()

    def importance(self, x, batch_size: int = 2) -> np.ndarray:
        """Return the importance ``1 − m`` (as ``sigmoid(−z)``): shape (n, c, i, j, k), float32."""
        return torch.sigmoid(-self.mask_logits(x, batch_size)).numpy()

    def _check_volumes(self, xt: torch.Tensor) -> None:
        if xt.shape[1] != self.net.in_channels:
            raise DimensionError(
                f"'x' has {xt.shape[1]} channels; the noise model was trained on "
                f"{self.net.in_channels}",
                fix="give volumes with the modalities the noise model was trained on",
            )
        if self.input_shape is not None and tuple(xt.shape[2:]) != self.input_shape:
            raise DimensionError(
                f"'x' has spatial shape {tuple(xt.shape[2:])}; the noise model was trained on the "
                f"predictor's grid {self.input_shape}",
                fix="give volumes on the grid the predictor and the noise model were trained on",
            )

    def save(self, path: str | Path) -> Path:
        """Write the model to ``path`` (``.pt``) and its metadata to ``path`` with ``.json``.

        Both are written atomically, the ``.pt`` (state dict and metadata) first, the ``.json``
        last. Returns ``path``.
        """
        path = Path(path)
        state = {k: v.detach().cpu() for k, v in self.net.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save({"state_dict": state, "metadata": self.metadata}, tmp)
        write_json(_json_path(path), self.metadata)
        return path


def _json_path(path: Path) -> Path:
    return path.with_suffix(".json") if path.suffix != ".json" else path.with_suffix(".meta.json")


def load_unoise(path: str | Path, device="cpu") -> UNoiseModel:
    """Load a noise model saved by :func:`fit_unoise` / :meth:`UNoiseModel.save`.

    Parameters
    ----------
    path : str or Path
        The ``.pt`` file (state dict and metadata).
    device : str or torch.device
        Where to put the U-Net.

    Returns
    -------
    UNoiseModel

    Raises
    ------
    InputError
        The file does not exist or is not a brainage U-Noise model.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(
            "U-Noise model file not found",
            fix="fit one with brainage.explain.unoise.fit_unoise(..., out_path=PATH)",
            path=path,
        )
    try:
        blob = torch.load(path, map_location="cpu", weights_only=True)
        meta = blob["metadata"]
        arch = meta["architecture"]
        net = UNet3D(**arch)
        net.load_state_dict(blob["state_dict"])
    except Exception as exc:  # noqa: BLE001 - any failure means "not a readable model"
        raise InputError(
            f"not a readable brainage U-Noise model ({type(exc).__name__}: {exc})",
            fix="refit it with brainage.explain.unoise.fit_unoise",
            path=path,
        ) from exc
    net.eval()
    return UNoiseModel(net.to(device), meta)


def unoise_importance(noise_model: UNoiseModel, x, batch_size: int = 2) -> np.ndarray:
    """U-Noise importance map ``1 − m`` of volumes (paper 002).

    Parameters
    ----------
    noise_model : UNoiseModel
        Trained by :func:`fit_unoise` (or loaded by :func:`load_unoise`).
    x : ndarray or Tensor, shape (n, c, i, j, k)
        Volumes on the predictor's grid (the space the noise model was trained in).
    batch_size : int
        Volumes per forward pass.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Importance in (0, 1) per voxel, in the input's voxel space: 1 − (tolerated noise level,
        rescaled to (0, 1)). High = the predictor cannot tolerate noise there.

    Raises
    ------
    TypeError
        ``noise_model`` is not a :class:`UNoiseModel`.
    DimensionError
        ``x`` is not 5D, or has another channel count or spatial shape than the training volumes.
    """
    if not isinstance(noise_model, UNoiseModel):
        raise TypeError(
            f"'noise_model' must be a UNoiseModel (from fit_unoise or load_unoise); got "
            f"{type(noise_model).__name__}"
        )
    return noise_model.importance(x, batch_size=batch_size)


# ----------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------


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
    ``σ = (m · (vmax − vmin) + vmin) · s`` (see the module docstring for ``s`` and ``y``). Both
    stages use Adam (lr 1e-4 in the paper, divided by 10 every 10 epochs), mini-batches of
    ``batch_size`` (paper: 2) shuffled per epoch. With validation data, the stage-2 epoch with
    the lowest validation loss (fixed noise draw) is kept; otherwise the last.

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
        ``.pt`` file to save the model to (plus a ``.json`` with the metadata). If it already
        holds a model with the same hash (predictor, data, all parameters), that model is
        loaded and returned without training.
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
    xt = _as_batch(x_train, "x_train")
    yt = _as_ages(y_train, "y_train", xt.shape[0]) if y_train is not None else None
    if target == "age" and yt is None:
        raise ConfigError(
            "'y_train' (ages, years) is required with target='age' (the paper's setting); "
            "give the ages or use target='prediction'"
        )
    xv = yv = None
    if x_val is not None:
        xv = _as_batch(x_val, "x_val")
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
        "x_train": _tensor_hash(xt),
        "y_train": None if yt is None else _tensor_hash(yt),
        "x_val": None if xv is None else _tensor_hash(xv),
        "y_val": None if yv is None else _tensor_hash(yv),
        "input_shape": [int(s) for s in xt.shape[2:]],
        "n_train": int(xt.shape[0]),
        "n_val": 0 if xv is None else int(xv.shape[0]),
    }
    run_hash = stable_hash("unoise", ALGORITHM_VERSION, arch, params, inputs)
    if device is None:
        device = _module_device(predictor)
    device = torch.device(device)

    if out_path is not None:
        out_path = Path(out_path)
        if out_path.is_file():
            try:
                cached = load_unoise(out_path, device=device)
            except InputError as exc:
                warnings.warn(f"{exc}; retraining", stacklevel=2)
            else:
                if cached.hash == run_hash:
                    return cached

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


def _train(predictor, xt, yt, xv, yv, arch, params, device, progress):
    """Run both training stages; return the U-Net (eval mode) and the training record."""
    rng = check_random_state(params["seed"])
    init_seed, noise_seed, val_seed = (int(s) for s in rng.integers(0, 2**31 - 1, size=3))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(init_seed)
        net = UNet3D(**arch)
    net.to(device)
    pdtype = _module_dtype(predictor)
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
    pred = _column(predictor((xb + sigma * eps).to(pdtype))).float()
    if params["target"] == "prediction":
        with torch.no_grad():
            yb = _column(predictor(xb.to(pdtype))).float()
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


@torch.no_grad()
def calibrate_noise_scale(
    predictor: nn.Module,
    x,
    vmin: float = 1.0,
    max_change: float = 1.0,
    seed: int = 0,
    max_halvings: int = 16,
    device=None,
) -> float:
    """Largest noise scale ``s`` whose noise floor leaves the predictor's output nearly unchanged.

    Tries ``s = s_auto / 2^k`` for k = 0, 1, …, ``max_halvings``, where ``s_auto`` is the mean SD
    of the volumes (the paper's z-scored unit), and returns the first ``s`` for which Gaussian
    noise of SD ``vmin · s`` in every voxel changes the prediction by at most ``max_change``
    years on average, ``mean |f(x + vmin·s·ε) − f(x)| ≤ max_change`` (one fixed noise draw). This
    makes the least noise the U-Noise mask can ask for harmless, so that the noise model has
    room to learn where more is tolerated (see the module docstring).

    Parameters
    ----------
    predictor : torch.nn.Module
        Frozen age regressor, output (n, 1) or (n,), years. Left unchanged.
    x : ndarray or Tensor, shape (n, c, i, j, k)
        Calibration volumes (brainage: up to 32 training volumes).
    vmin : float ≥ 0
        Lower end of the noise range (paper: 1). With 0 the floor is no noise: ``s_auto``.
    max_change : float > 0
        Tolerated mean absolute change of the prediction, years.
    seed : int
        Seed of the noise draw.
    max_halvings : int
        Largest k tried; the last ``s`` is returned if none passes.
    device : optional
        Default: the predictor's device.

    Returns
    -------
    float
        ``s`` in input intensity units.

    Raises
    ------
    DimensionError, InputError
        ``x`` is not a 5D batch of finite volumes.
    """
    xt = _as_batch(x, "x")
    if device is None:
        device = _module_device(predictor)
    pdtype = _module_dtype(predictor)
    s_auto = float(xt.flatten(2).std(dim=2, correction=0).mean())
    if vmin == 0 or s_auto == 0:
        return s_auto if s_auto > 0 else 1.0
    gen = torch.Generator().manual_seed(int(seed))
    eps = torch.randn(xt.shape, generator=gen)

    def predict(volumes: torch.Tensor) -> torch.Tensor:
        """Predictions (n,), years, in batches of 4 volumes."""
        return torch.cat(
            [
                _column(predictor(volumes[i : i + 4].to(device, pdtype))).float().cpu()
                for i in range(0, volumes.shape[0], 4)
            ]
        )

    was_training = predictor.training
    predictor.eval()
    try:
        clean = predict(xt)
        for k in range(max_halvings + 1):
            scale = s_auto / 2**k
            if float((predict(xt + vmin * scale * eps) - clean).abs().mean()) <= max_change:
                break
    finally:
        predictor.train(was_training)
    return float(scale)


def _noise_scale(xb: torch.Tensor, params: dict):
    """``s`` of the module docstring: per-volume-and-channel SD ("auto") or a constant."""
    if params["noise_scale"] == "auto":
        return xb.detach().flatten(2).std(dim=2, correction=0)[:, :, None, None, None]
    return float(params["noise_scale"])


def _column(out) -> torch.Tensor:
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the predictor must return a tensor; got {type(out).__name__}")
    if out.ndim == 2 and out.shape[1] == 1:
        return out[:, 0]
    if out.ndim == 1:
        return out
    raise InputError(
        "the predictor's output must have shape (n, 1) or (n,) (age, years); "
        f"got {tuple(out.shape)}"
    )


class _frozen:
    """Context manager: predictor in eval mode with ``requires_grad`` off; all restored on exit."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model

    def __enter__(self) -> nn.Module:
        self.training = [(m, m.training) for m in self.model.modules()]
        self.grads = [(p, p.requires_grad) for p in self.model.parameters()]
        self.model.eval()
        for p, _ in self.grads:
            p.requires_grad_(False)
        return self.model

    def __exit__(self, *exc) -> None:
        for p, flag in self.grads:
            p.requires_grad_(flag)
        for m, flag in self.training:
            m.training = flag


# ----------------------------------------------------------------------------------------------
# The registered explanation method
# ----------------------------------------------------------------------------------------------


def unoise(
    model: nn.Module,
    x,
    noise_model: UNoiseModel | None = None,
    noise_model_path: str | Path | None = None,
    batch_size: int = 2,
    check_predictor: bool = True,
    **fit_params,
):
    """3D U-Noise importance of ``model``'s prediction: ``1 − m`` (paper 002; METHODS §8).

    The noise model must have been trained for this predictor beforehand with
    :func:`fit_unoise` (training needs the training cohort and takes minutes to hours; it is
    done once per predictor and saved). The map is then one U-Net forward pass; ``model`` itself
    is only used to check that the noise model belongs to it.

    Parameters
    ----------
    model : torch.nn.Module
        The age predictor explained (output (n, 1), years).
    x : Tensor or ndarray, shape (n, c, i, j, k)
        Input volumes on the predictor's grid.
    noise_model : UNoiseModel, optional
        A trained noise model.
    noise_model_path : str or Path, optional
        Or the ``.pt`` file written by :func:`fit_unoise` (``out_path``).
    batch_size : int
        Volumes per U-Net forward pass.
    check_predictor : bool
        Raise if the noise model was trained for a predictor with other weights (compared by a
        fingerprint of its state dict).
    **fit_params
        Training parameters of :func:`fit_unoise` (e.g. ``vmin``, ``vmax``, ``r``, ``seed``) that
        the noise model is expected to have been trained with; a mismatch raises. Lets a
        configuration hold the method's parameters in one place.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Importance in (0, 1) in the input's voxel space (high = little noise tolerated).

    Raises
    ------
    ConfigError
        No noise model given (fit one with :func:`fit_unoise`), a missing noise-model file, a
        noise model trained for another predictor or with other ``fit_params``, or an unknown
        ``fit_params`` name.
    DimensionError
        ``x`` does not match the noise model's channels or grid.
    """
    if noise_model is None and noise_model_path is None:
        raise ConfigError(
            "U-Noise needs a noise model trained for this predictor: fit one with "
            "brainage.explain.unoise.fit_unoise(predictor, x_train, y_train, out_path=PATH) and "
            "pass noise_model=<the result> or noise_model_path=PATH"
        )
    if noise_model is None:
        path = Path(noise_model_path)
        if not path.is_file():
            raise ConfigError(
                f"'noise_model_path' {str(path)!r} does not exist; fit a noise model with "
                "brainage.explain.unoise.fit_unoise(predictor, x_train, y_train, out_path=PATH)"
            )
        noise_model = load_unoise(path)
    elif not isinstance(noise_model, UNoiseModel):
        raise TypeError(
            f"'noise_model' must be a UNoiseModel (from fit_unoise or load_unoise); got "
            f"{type(noise_model).__name__}"
        )
    _check_expected_params(noise_model, fit_params)
    if check_predictor:
        expected = noise_model.metadata.get("inputs", {}).get("predictor")
        got = predictor_fingerprint(model)
        if expected != got:
            raise ConfigError(
                f"the noise model was trained for another predictor (fingerprint {expected} ≠ "
                f"{got}); fit one for this model with brainage.explain.unoise.fit_unoise"
            )
    xt = _as_batch(x, "x")
    device = _module_device(model) if isinstance(model, nn.Module) else torch.device("cpu")
    noise_model.to(device)
    return noise_model.importance(xt, batch_size=batch_size)


_NOT_TRAINING_PARAMS = {
    "predictor",
    "x_train",
    "y_train",
    "x_val",
    "y_val",
    "out_path",
    "progress",
    "device",
}


def _check_expected_params(noise_model: UNoiseModel, fit_params: dict) -> None:
    allowed = [k for k in inspect.signature(fit_unoise).parameters if k not in _NOT_TRAINING_PARAMS]
    trained = noise_model.params
    trained.update(noise_model.metadata.get("architecture", {}))
    for key, value in fit_params.items():
        if key not in allowed:
            raise ConfigError(f"'unoise' has no parameter {key!r}; {did_you_mean(key, allowed)}")
        if key in trained and json.dumps(trained[key]) != json.dumps(value):
            raise ConfigError(
                f"the noise model was trained with {key}={trained[key]!r}, not {value!r}; refit it "
                "with brainage.explain.unoise.fit_unoise or drop the parameter"
            )


try:  # register as "unoise" when the registry of explanation methods exists
    from brainage.explain._core import register_method as _register_method
except ImportError:  # pragma: no cover - registry not built yet
    _register_method = None
if _register_method is not None:
    unoise = _register_method("unoise")(unoise)


# ----------------------------------------------------------------------------------------------
# Validation and hashing helpers
# ----------------------------------------------------------------------------------------------


def predictor_fingerprint(model: nn.Module, length: int = 16) -> str:
    """SHA-256 of a model's state dict (names, shapes, dtypes, bytes), shortened to ``length``."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:length]


def _tensor_hash(t: torch.Tensor, length: int = 16) -> str:
    h = hashlib.sha256(f"{tuple(t.shape)}|".encode())
    h.update(t.detach().to("cpu", torch.float32).contiguous().numpy())  # buffer, no copy
    return h.hexdigest()[:length]


def _module_device(model: nn.Module) -> torch.device:
    for t in list(model.parameters()) + list(model.buffers()):
        return t.device
    return torch.device("cpu")


def _module_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"'{name}' must be a positive integer; got {value!r}")
    return int(value)


def _check_fit_params(**p) -> dict:
    """Validate the training parameters and return them as a JSON-serialisable dict."""
    out = {}
    pe = p["pretrain_epochs"]
    if isinstance(pe, bool) or not isinstance(pe, (int, np.integer)) or pe < 0:
        raise ConfigError(f"'pretrain_epochs' must be an integer ≥ 0; got {pe!r}")
    out["pretrain_epochs"] = int(pe)
    for key in ("epochs", "batch_size", "base_channels", "levels"):
        out[key] = _positive_int(key, p[key])
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
    if p["target"] not in _TARGETS:
        raise ConfigError(f"'target' must be one of {_TARGETS}; got {p['target']!r}")
    out["target"] = p["target"]
    step = p["lr_step"]
    if step is None or step == 0:
        out["lr_step"] = None
    else:
        out["lr_step"] = _positive_int("lr_step", step)
    if p["norm"] not in _NORMS:
        raise ConfigError(f"'norm' must be one of {_NORMS}; got {p['norm']!r}")
    out["norm"] = p["norm"]
    out["amp"] = bool(p["amp"])
    return out


def _as_batch(volumes, name: str) -> torch.Tensor:
    """Validate volumes (n, c, i, j, k) and return a float32 CPU tensor (no copy where possible)."""
    from brainage.explain._core import as_volume_batch

    return as_volume_batch(volumes, name).detach().to("cpu", torch.float32)


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
