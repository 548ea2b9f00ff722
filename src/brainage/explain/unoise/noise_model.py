"""The trained noise model: :class:`UNoiseModel`, its checkpoint I/O and fingerprints.

A checkpoint is one ``.pt`` file holding ``{"state_dict": …, "metadata": …}`` — tensors and plain
JSON-like values only, so that it is read with ``torch.load(..., weights_only=True)`` (nothing
unpickled) — plus a ``.json`` copy of the metadata beside it. The metadata's ``"hash"`` ties the
checkpoint to the predictor (:func:`predictor_fingerprint`), the data (:func:`tensor_hash`) and
the training parameters it was made with.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainage.errors import DimensionError, InputError
from brainage.explain._core import as_volume_batch, positive_int
from brainage.explain.unoise.network import UNet3D
from brainage.io.atomic import atomic_path, write_json

__all__ = ["UNoiseModel", "load_unoise", "predictor_fingerprint"]


class UNoiseModel:
    """A trained U-Noise noise model: the U-Net plus the metadata of its training.

    Parameters
    ----------
    net : UNet3D
        Trained noise U-Net (outputs mask logits).
    metadata : dict
        Training record written by :func:`~brainage.explain.unoise.fit_unoise` (architecture,
        parameters, input hashes, predictor fingerprint, per-epoch history, ``"hash"``).

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
        xt = as_cpu_batch(x, "x")
        self._check_volumes(xt)
        batch_size = positive_int("batch_size", batch_size)
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
        last. The ``.pt`` holds tensors and JSON-like values only (readable with
        ``torch.load(..., weights_only=True)``).

        Parameters
        ----------
        path : str or Path
            Destination ``.pt`` file; parent folders must exist or be creatable.

        Returns
        -------
        Path
            ``path``.
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

    The file is read with ``torch.load(..., weights_only=True)``: only tensors and plain values,
    no arbitrary objects are unpickled.

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


def predictor_fingerprint(model: nn.Module, length: int = 16) -> str:
    """SHA-256 of a model's state dict (names, shapes, dtypes, bytes), shortened to ``length``.

    Parameters
    ----------
    model : torch.nn.Module
        The predictor.
    length : int
        Hex digits kept.

    Returns
    -------
    str
        Identifies the predictor's weights (stored in a noise model's metadata and checked by
        :func:`~brainage.explain.unoise.unoise`).
    """
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().to("cpu").contiguous()
        h.update(f"{name}|{tuple(t.shape)}|{t.dtype}|".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()[:length]


def tensor_hash(t: torch.Tensor, length: int = 16) -> str:
    """SHA-256 of a tensor's shape and float32 values, shortened to ``length`` hex digits."""
    h = hashlib.sha256(f"{tuple(t.shape)}|".encode())
    h.update(t.detach().to("cpu", torch.float32).contiguous().numpy())  # buffer, no copy
    return h.hexdigest()[:length]


def as_cpu_batch(volumes, name: str) -> torch.Tensor:
    """Validate volumes (n, c, i, j, k) and return a float32 CPU tensor (no copy where possible).

    :func:`brainage.explain._core.as_volume_batch`, detached and on the CPU as float32.
    """
    return as_volume_batch(volumes, name).detach().to("cpu", torch.float32)
