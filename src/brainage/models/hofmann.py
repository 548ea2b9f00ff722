"""The small 3D CNN of Hofmann et al. 2021 (paper 001, METHODS §3)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from brainage.models.registry import register_model


@register_model("hofmann")
class HofmannCNN(nn.Module):
    """Hofmann 3D CNN: 5 conv blocks, flatten, dense 64, one linear output neuron (age, years).

    Each block is Conv3d (kernel 3³ for blocks 1–4, 1³ for block 5, 'same' padding) →
    [BatchNorm3d] → LeakyReLU(0.2) → MaxPool3d(kernel 3, stride 2, padding 1). Then flatten,
    dropout (training only), Linear(…, 64) → LeakyReLU, Linear(64, 1). The output bias is set to
    the training mean age by :meth:`set_output_bias` (paper 001), so that for LRP the summed
    relevance ≈ prediction − bias.

    Parameters
    ----------
    input_shape : sequence of int, length 3
        Spatial input shape (i, j, k) in voxels, e.g. (54, 64, 54) for the 3 mm crop box.
    in_channels : int
        Number of modalities (1 for T1w).
    filters : sequence of int, length 5
        Filters per block (paper: 16, 16, 32, 64, 32).
    dense : int
        Units of the hidden dense layer (paper: 64).
    dropout : float
        Dropout before the dense layers (paper: 0.5).
    batch_norm : bool
        Insert BatchNorm3d after each convolution (not in the paper; helps small cohorts; merged
        into the convolutions by the LRP canonizer so relevance is still conserved).
    negative_slope : float
        LeakyReLU slope (paper: 0.2); 0 gives ReLU.
    mean_age : float
        Initial output bias, years.

    Notes
    -----
    Input ``x`` : tensor, shape (n, in_channels, i, j, k); output : tensor, shape (n, 1), years.
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (54, 64, 54),
        in_channels: int = 1,
        filters: Sequence[int] = (16, 16, 32, 64, 32),
        dense: int = 64,
        dropout: float = 0.5,
        batch_norm: bool = True,
        negative_slope: float = 0.2,
        mean_age: float = 50.0,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(s) for s in input_shape)
        layers: list[nn.Module] = []
        c_in = in_channels
        for b, c_out in enumerate(filters):
            k = 1 if b == len(filters) - 1 else 3
            layers.append(nn.Conv3d(c_in, c_out, kernel_size=k, padding=k // 2))
            if batch_norm:
                layers.append(nn.BatchNorm3d(c_out))
            layers.append(nn.LeakyReLU(negative_slope))
            layers.append(nn.MaxPool3d(kernel_size=3, stride=2, padding=1))
            c_in = c_out
        self.features = nn.Sequential(*layers)
        spatial = list(self.input_shape)
        for _ in filters:
            spatial = [(s - 1) // 2 + 1 for s in spatial]
        n_flat = c_in * spatial[0] * spatial[1] * spatial[2]
        self.regressor = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(n_flat, dense),
            nn.LeakyReLU(negative_slope),
            nn.Linear(dense, 1),
        )
        for m in self.modules():
            if isinstance(m, nn.Conv3d):
                nn.init.kaiming_normal_(m.weight, a=negative_slope, nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        self.set_output_bias(mean_age)

    @property
    def output_layer(self) -> nn.Linear:
        """The final Linear(dense, 1) layer whose bias is the mean age."""
        return self.regressor[-1]

    def set_output_bias(self, mean_age: float) -> None:
        """Set the output neuron's bias to ``mean_age`` (years)."""
        with torch.no_grad():
            self.output_layer.bias.fill_(float(mean_age))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict age in years, shape (n, 1), from volumes of shape (n, c, i, j, k)."""
        return self.regressor(self.features(x))
