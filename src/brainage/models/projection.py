"""2.5D baseline: 2D CNNs on mean intensity projections of the volume (paper 004, Appendix D).

Paper 004 compares its 3D ResNet with the "2.5D" approach of Langner et al. (2019): the 3D
volume is projected onto the coronal and the sagittal plane and 2D networks regress age from the
projections. Here the projections are computed *inside* the model (:class:`AxisProjection`), so
the model takes the same 3D input as every other brainage model, and every explanation method
returns a 3D map in template space: gradients (Guided Backprop, Integrated Gradients,
SmoothGrad), LRP (zennit) and occlusion pass through the mean projection, which spreads each
projected pixel's relevance uniformly along the projection axis; Grad-CAM spreads the branches'
2D maps back along their projection axes (see :attr:`ProjectionCNN.gradcam_layers`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.models.registry import register_model

_MODES = ("mean", "max")


class AxisProjection(nn.Module):
    """Intensity projection of volumes along one spatial axis.

    Parameters
    ----------
    axis : {0, 1, 2}
        Spatial axis projected out: 0 = i (left-right; gives a sagittal image (j, k)),
        1 = j (posterior-anterior; gives a coronal image (i, k)), 2 = k (gives an axial image).
    mode : {"mean", "max"}
        Mean intensity projection (paper 004 / Langner et al. 2019; linear, so relevance and
        gradients are spread uniformly along ``axis``) or maximum intensity projection (routes
        them to the maximal voxel of each ray).

    Notes
    -----
    Input : tensor, shape (n, c, i, j, k); output : tensor, shape (n, c, a, b), the two remaining
    spatial axes in their input order (same units as the input).
    """

    def __init__(self, axis: int, mode: str = "mean") -> None:
        super().__init__()
        if isinstance(axis, bool) or axis not in (0, 1, 2):
            raise ConfigError(f"'axis' must be 0, 1 or 2 (i, j, k); got {axis!r}")
        if mode not in _MODES:
            raise ConfigError(f"'mode' must be one of {', '.join(_MODES)}; got {mode!r}")
        self.axis = int(axis)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Project x, shape (n, c, i, j, k), to shape (n, c, a, b)."""
        if self.mode == "mean":
            return x.mean(dim=2 + self.axis)
        return x.amax(dim=2 + self.axis)

    def extra_repr(self) -> str:
        """Axis and mode, for ``print(model)``."""
        return f"axis={self.axis}, mode={self.mode!r}"


class ProjectionBranch(nn.Module):
    """One 2.5D branch: projection → 2D conv blocks → global average pool → features.

    Blocks are Conv2d(3×3, 'same' padding, no bias) → BatchNorm2d → ReLU, each followed by
    MaxPool2d(kernel 3, stride 2, padding 1) except the last one, whose output (``features``) is
    the branch's Grad-CAM layer.

    Parameters
    ----------
    axis : {0, 1, 2}
        Input axis projected out (see :class:`AxisProjection`).
    in_channels : int
        Input modalities.
    widths : sequence of int
        Channels of the conv blocks.
    projection : {"mean", "max"}
        Projection mode.

    Notes
    -----
    Input : tensor, shape (n, c, i, j, k); output : tensor, shape (n, widths[-1]).
    """

    def __init__(
        self, axis: int, in_channels: int, widths: Sequence[int], projection: str = "mean"
    ) -> None:
        super().__init__()
        self.project = AxisProjection(axis, projection)
        layers: list[nn.Module] = []
        c_in = int(in_channels)
        for b, width in enumerate(widths):
            layers += [
                nn.Conv2d(c_in, int(width), 3, padding=1, bias=False),
                nn.BatchNorm2d(int(width)),
                nn.ReLU(),
            ]
            if b < len(widths) - 1:
                layers.append(nn.MaxPool2d(3, stride=2, padding=1))
            c_in = int(width)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.out_channels = c_in

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Branch features, shape (n, widths[-1]), of volumes x, shape (n, c, i, j, k)."""
        return self.flatten(self.pool(self.features(self.project(x))))


@register_model("projection2d")
class ProjectionCNN(nn.Module):
    """2.5D age regressor on coronal and sagittal mean intensity projections (paper 004).

    The baseline of paper 004 (Appendix D, after Langner et al. 2019): the volume is averaged
    along j (coronal projection, an image on the (i, k) plane) and along i (sagittal projection,
    on the (j, k) plane); each projection goes through its own 2D CNN branch
    (:class:`ProjectionBranch`: conv-BN-ReLU-maxpool blocks, global average pooling); the two
    feature vectors are concatenated → dropout (training only) → Linear(…, dense) → ReLU →
    Linear(dense, 1), whose bias is the mean age. (Paper 004 uses a VGG16 per projection on
    whole-body images; the small default widths here train fast on a CPU at 4 mm, 40×48×40.)

    Because the projections are part of the model, its input and every relevance map are 3D
    volumes in template space: gradient-based maps and LRP relevance of a projected pixel are
    spread uniformly along the projection axis (each voxel of a ray gets 1/length of it), so
    the coronal branch contributes a map constant along j and the sagittal branch one constant
    along i. Grad-CAM uses :attr:`gradcam_layers`.

    Parameters
    ----------
    input_shape : sequence of int, length 3
        Spatial input shape (i, j, k) in voxels (unused by the layers, which end in global
        pooling; kept for the uniform model signature).
    in_channels : int
        Number of modalities (1 for T1w).
    widths : sequence of int
        Channels of the conv blocks of each branch (both branches alike).
    dense : int
        Units of the hidden dense layer.
    dropout : float
        Dropout probability before the dense layer, in [0, 1).
    projection : {"mean", "max"}
        Projection of the volume (paper 004: mean intensity projection).
    mean_age : float
        Initial output bias, years.

    Notes
    -----
    Input ``x`` : tensor, shape (n, in_channels, i, j, k) in template space (i left-right, j
    posterior-anterior, k inferior-superior); output : tensor, shape (n, 1), years.

    References
    ----------
    Paper 004 (``shared/papers/004_*``), Appendix D "Comparison to 2.5D"; Langner T. et al. (2019),
    Identifying morphological indicators of aging with neural networks on large-scale whole-body
    MRI, IEEE Trans. Med. Imaging 39(5).
    """

    def __init__(
        self,
        input_shape: Sequence[int] = (40, 48, 40),
        in_channels: int = 1,
        widths: Sequence[int] = (16, 32, 64, 64),
        dense: int = 64,
        dropout: float = 0.2,
        projection: str = "mean",
        mean_age: float = 50.0,
    ) -> None:
        super().__init__()
        widths = tuple(int(w) for w in widths)
        if not widths or min(widths) < 1:
            raise ConfigError(f"'widths' must be one or more positive ints; got {widths!r}")
        if not 0.0 <= float(dropout) < 1.0:
            raise ConfigError(f"'dropout' must be in [0, 1); got {dropout!r}")
        self.input_shape = tuple(int(s) for s in input_shape)
        self.coronal = ProjectionBranch(1, in_channels, widths, projection)  # image (i, k)
        self.sagittal = ProjectionBranch(0, in_channels, widths, projection)  # image (j, k)
        self.dropout = nn.Dropout(float(dropout))
        self.dense = nn.Linear(2 * widths[-1], int(dense))
        self.act = nn.ReLU()
        self.fc = nn.Linear(int(dense), 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, nonlinearity="relu")
        self.set_output_bias(mean_age)

    @property
    def output_layer(self) -> nn.Linear:
        """The final Linear(dense, 1) layer whose bias is the mean age."""
        return self.fc

    @property
    def gradcam_layers(self) -> dict[str, int]:
        """Grad-CAM layers (2D outputs) → the input axis their branch projected out.

        ``{"coronal.features": 1, "sagittal.features": 0}``: the coronal branch's CAM lives on
        the (i, k) plane and is repeated along j; the sagittal one lives on (j, k) and is
        repeated along i (see :func:`brainage.explain.gradcam.gradcam`).
        """
        return {
            "coronal.features": self.coronal.project.axis,
            "sagittal.features": self.sagittal.project.axis,
        }

    @property
    def input_layers(self) -> tuple[str, ...]:
        """Names of the first convolution of each branch (they see the projected input).

        LRP gives both the first-layer rule (flat / Z^B) of its composite, instead of only the
        first convolution in module order.
        """
        return ("coronal.features.0", "sagittal.features.0")

    def set_output_bias(self, mean_age: float) -> None:
        """Set the output neuron's bias to ``mean_age`` (years)."""
        with torch.no_grad():
            self.fc.bias.fill_(float(mean_age))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict age in years, shape (n, 1), from volumes of shape (n, c, i, j, k)."""
        h = torch.cat([self.coronal(x), self.sagittal(x)], dim=1)
        return self.fc(self.act(self.dense(self.dropout(h))))
