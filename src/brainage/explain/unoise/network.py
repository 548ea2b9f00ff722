"""The noise model's architecture: a 3D U-Net with 'same' convolutions (paper 002; METHODS §8)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from brainage.errors import ConfigError, DimensionError
from brainage.explain._core import positive_int

__all__ = ["UNet3D"]

#: Normalisations a :class:`UNet3D` can use after each convolution.
NORMS = ("instance", "batch", "none")


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
        in_channels = positive_int("in_channels", in_channels)
        base_channels = positive_int("base_channels", base_channels)
        levels = positive_int("levels", levels)
        if out_channels is None:
            out_channels = in_channels
        out_channels = positive_int("out_channels", out_channels)
        if norm not in NORMS:
            raise ConfigError(f"'norm' must be one of {NORMS}; got {norm!r}")
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
