"""3D ResNet regressors: ResNet-18/34 (basic blocks) and ResNet-50/101/152 (bottleneck blocks).

Papers 000, 002 and 004 use 3D ResNet-18 and ResNet-50 (METHODS §3); the architecture is that of
He et al. (2016), Deep residual learning for image recognition (CVPR), with 3D convolutions.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.models.registry import register_model


class BasicBlock3D(nn.Module):
    """Residual basic block: conv3-BN-ReLU-conv3-BN, plus identity/projection skip, then ReLU.

    The skip addition is the ``Sum`` step that an LRP canonizer must handle so that relevance is
    split between the two branches instead of being counted twice.
    """

    expansion = 1

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv3d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm3d(c_out)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv3d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out)
            )
        self.relu_out = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to x, shape (n, c_in, i, j, k)."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu_out(out + identity)


class Bottleneck3D(nn.Module):
    """Residual bottleneck block (He et al. 2016): conv1³-BN-ReLU-conv3³-BN-ReLU-conv1³-BN, skip.

    ``conv1`` (1×1×1) reduces ``c_in`` to ``width`` channels, ``conv2`` (3×3×3, carrying the
    stride, as in torchvision's "ResNet v1.5") works at ``width``, ``conv3`` (1×1×1) expands to
    ``width · expansion`` = 4 · ``width`` output channels. A projection shortcut (1×1×1 conv + BN)
    is used when the stride or the channel count changes; the sum is followed by ReLU. Each ReLU
    is its own module (Guided Backprop hooks modules; LRP canonizers rewrite ``forward``).
    """

    expansion = 4

    def __init__(self, c_in: int, width: int, stride: int = 1) -> None:
        super().__init__()
        c_out = width * self.expansion
        self.conv1 = nn.Conv3d(c_in, width, 1, bias=False)
        self.bn1 = nn.BatchNorm3d(width)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv3d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm3d(width)
        self.relu2 = nn.ReLU()
        self.conv3 = nn.Conv3d(width, c_out, 1, bias=False)
        self.bn3 = nn.BatchNorm3d(c_out)
        self.downsample = None
        if stride != 1 or c_in != c_out:
            self.downsample = nn.Sequential(
                nn.Conv3d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm3d(c_out)
            )
        self.relu_out = nn.ReLU()

    def residual(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the residual branch alone (no skip); output shape (n, 4·width, i', j', k')."""
        out = self.relu1(self.bn1(self.conv1(x)))
        out = self.relu2(self.bn2(self.conv2(out)))
        return self.bn3(self.conv3(out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Apply the block to x, shape (n, c_in, i, j, k)."""
        identity = x if self.downsample is None else self.downsample(x)
        return self.relu_out(self.residual(x) + identity)


BLOCKS = {"basic": BasicBlock3D, "bottleneck": Bottleneck3D}

#: Standard depths (He et al. 2016, Table 1): depth → (blocks per stage, block type).
DEPTHS = {
    18: ((2, 2, 2, 2), "basic"),
    34: ((3, 4, 6, 3), "basic"),
    50: ((3, 4, 6, 3), "bottleneck"),
    101: ((3, 4, 23, 3), "bottleneck"),
    152: ((3, 8, 36, 3), "bottleneck"),
}


def _resolve_depth(depth, layers, block) -> tuple[tuple[int, ...], str]:
    """Blocks per stage and block type from ``depth`` and/or explicit ``layers``/``block``."""
    if depth is not None:
        if isinstance(depth, bool) or depth not in DEPTHS:
            raise ConfigError(
                f"'depth' must be one of {', '.join(map(str, DEPTHS))} or None; got {depth!r}"
            )
        preset_layers, preset_block = DEPTHS[depth]
        if layers is not None and tuple(layers) != preset_layers:
            raise ConfigError(
                f"'layers' {tuple(layers)} contradicts 'depth' {depth} (layers {preset_layers}); "
                "give one of them"
            )
        if block is not None and block != preset_block:
            raise ConfigError(
                f"'block' {block!r} contradicts 'depth' {depth} (block {preset_block!r}); "
                "give one of them"
            )
        return preset_layers, preset_block
    layers = (2, 2, 2, 2) if layers is None else tuple(int(n) for n in layers)
    block = "basic" if block is None else block
    if block not in BLOCKS:
        raise ConfigError(f"'block' must be one of {', '.join(BLOCKS)}; got {block!r}")
    return layers, block


@register_model("resnet")
class ResNet3D(nn.Module):
    """3D ResNet with basic or bottleneck blocks and one linear output neuron (age, years).

    Stem Conv3d(7³, stride 2) → BN → ReLU → MaxPool3d(3, stride 2); stages ``layer1`` …
    ``layerS`` of residual blocks (the first block of every stage after the first has stride 2);
    global average pooling; Linear(…, 1) whose bias is the mean age (He et al. 2016, in 3D).

    Parameters
    ----------
    input_shape : sequence of int, length 3
        Spatial input shape (unused by the layers; kept for a uniform model signature).
    in_channels : int
        Number of modalities.
    layers : sequence of int or None
        Blocks per stage: (2, 2, 2, 2) = ResNet-18, (3, 4, 6, 3) = ResNet-34 (basic) or
        ResNet-50 (bottleneck). None: from ``depth``, else (2, 2, 2, 2).
    widths : sequence of int
        Channels per stage; a bottleneck stage outputs 4 × its width (standard ResNets:
        (64, 128, 256, 512); the default is a quarter of that).
    block : {"basic", "bottleneck"} or None
        :class:`BasicBlock3D` (two 3³ convolutions) or :class:`Bottleneck3D` (1³ → 3³ → 1³,
        expansion 4). None: from ``depth``, else ``"basic"``.
    depth : {18, 34, 50, 101, 152} or None
        Standard preset (:data:`DEPTHS`) that sets ``layers`` and ``block``; an explicit
        ``layers`` or ``block`` that contradicts it raises.
    mean_age : float
        Initial output bias, years.

    Raises
    ------
    ConfigError
        Unknown ``block`` or ``depth``, or ``layers``/``block`` contradicting ``depth``.

    Notes
    -----
    Input : tensor, shape (n, c, i, j, k); output : tensor, shape (n, 1), years. The stages are
    ``layer1`` … ``layer4``; paper 004 places Grad-CAM on ``layer3``. With the defaults
    (``layers=None, block=None, depth=None``) the model, its module names and its state dict
    are those of the basic-block ResNet-18 of earlier versions.

    References
    ----------
    He K., Zhang X., Ren S., Sun J. (2016), Deep residual learning for image recognition, CVPR.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (54, 64, 54),
        in_channels: int = 1,
        layers: Sequence[int] | None = None,
        widths: Sequence[int] = (16, 32, 64, 128),
        block: str | None = None,
        depth: int | None = None,
        mean_age: float = 50.0,
    ) -> None:
        super().__init__()
        layers, block = _resolve_depth(depth, layers, block)
        block_cls = BLOCKS[block]
        self.block = block
        self.input_shape = tuple(int(s) for s in input_shape)
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
            nn.BatchNorm3d(widths[0]),
            nn.ReLU(),
            nn.MaxPool3d(3, stride=2, padding=1),
        )
        c_in = widths[0]
        for s, (n_blocks, width) in enumerate(zip(layers, widths, strict=True)):
            blocks = []
            for b in range(n_blocks):
                blocks.append(block_cls(c_in, width, stride=2 if (b == 0 and s > 0) else 1))
                c_in = width * block_cls.expansion
            setattr(self, f"layer{s + 1}", nn.Sequential(*blocks))
        self.n_stages = len(layers)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, 1)
        with torch.no_grad():
            self.fc.bias.fill_(float(mean_age))

    @property
    def output_layer(self) -> nn.Linear:
        """The final Linear layer whose bias is the mean age."""
        return self.fc

    def set_output_bias(self, mean_age: float) -> None:
        """Set the output neuron's bias to ``mean_age`` (years)."""
        with torch.no_grad():
            self.fc.bias.fill_(float(mean_age))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict age in years, shape (n, 1), from volumes of shape (n, c, i, j, k)."""
        x = self.stem(x)
        for s in range(self.n_stages):
            x = getattr(self, f"layer{s + 1}")(x)
        return self.fc(self.flatten(self.pool(x)))
