"""3D ResNet regressors (ResNet-18/34 with basic blocks; papers 000, 002, 004)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

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


@register_model("resnet")
class ResNet3D(nn.Module):
    """3D ResNet with basic blocks and one linear output neuron (age, years).

    Parameters
    ----------
    input_shape : sequence of int, length 3
        Spatial input shape (unused by the layers; kept for a uniform model signature).
    in_channels : int
        Number of modalities.
    layers : sequence of int
        Blocks per stage: (2, 2, 2, 2) = ResNet-18, (3, 4, 6, 3) = ResNet-34.
    widths : sequence of int
        Channels per stage.
    mean_age : float
        Initial output bias, years.

    Notes
    -----
    Input : tensor, shape (n, c, i, j, k); output : tensor, shape (n, 1), years. The stages are
    ``layer1`` … ``layer4``; paper 004 places Grad-CAM on ``layer3``.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (54, 64, 54),
        in_channels: int = 1,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (16, 32, 64, 128),
        mean_age: float = 50.0,
    ) -> None:
        super().__init__()
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
                blocks.append(BasicBlock3D(c_in, width, stride=2 if (b == 0 and s > 0) else 1))
                c_in = width
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
