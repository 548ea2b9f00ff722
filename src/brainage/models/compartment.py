"""A base model that sees one brain compartment only (region sub-ensembles, paper 001 type ii).

Paper 001 (MLens type ii) trains sub-ensembles on the MNI-space input masked to one of three brain
regions. :class:`CompartmentModel` wraps any registered architecture: it crops the full template
grid to the compartment's bounding box (plus a margin) and multiplies by the compartment mask, so
the wrapped network is built for, and spends its arithmetic on, the box only (the cerebellum box
is 16 % of the 4 mm grid, cortex 74 %, subcortex 57 %). It takes and explains full volumes:
gradients, LRP and occlusion of the wrapper are zero outside the compartment by construction.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

#: Attributes of the wrapped network that the trainer and the explainers read through the wrapper.
_DELEGATED = frozenset(
    {"output_layer", "set_output_bias", "soft_labels", "bin_centers", "bin_start", "bin_width",
     "n_bins", "covering_bins", "extend_bins", "bin_conv"}
)  # fmt: skip


def compartment_box(mask: np.ndarray, margin: int = 1) -> tuple[tuple[int, int], ...]:
    """Bounding box of a mask, widened by ``margin`` voxels and clipped to the grid.

    Parameters
    ----------
    mask : ndarray of bool, shape (i, j, k)
    margin : int
        Voxels added on each side.

    Returns
    -------
    tuple of (start, stop) per axis
        Voxel index ranges (stop exclusive).

    Raises
    ------
    ValueError
        The mask is empty.
    """
    idx = np.argwhere(mask)
    if idx.size == 0:
        raise ValueError("the compartment mask is empty")
    lo = np.maximum(idx.min(axis=0) - margin, 0)
    hi = np.minimum(idx.max(axis=0) + 1 + margin, mask.shape)
    return tuple((int(a), int(b)) for a, b in zip(lo, hi, strict=True))


class CompartmentModel(nn.Module):
    """Wrap a network so that it predicts age from one brain compartment.

    Parameters
    ----------
    net : torch.nn.Module
        The wrapped architecture, built for input shape ``box`` (the crop), output (n, 1) years.
    mask : ndarray of bool, shape (i, j, k)
        Compartment mask on the full model grid (:func:`brainage.atlas.compartment_mask`).
    compartment : str
        Its name (``"cortex"``, ``"subcortex"``, ``"cerebellum"``), recorded for provenance.
    box : tuple of (start, stop), optional
        Crop box (default :func:`compartment_box` of ``mask``).

    Notes
    -----
    Input ``x`` : tensor, shape (n, c, i, j, k) on the full grid; output : (n, 1), years. The input
    is cropped to ``box`` and zeroed outside the mask before ``net`` sees it.
    """

    def __init__(self, net: nn.Module, mask: np.ndarray, compartment: str, box=None) -> None:
        super().__init__()
        mask = np.asarray(mask, bool)
        self.net = net
        self.compartment = str(compartment)
        self.input_shape = tuple(int(s) for s in mask.shape)
        self.box = tuple(box) if box is not None else compartment_box(mask)
        crop = mask[tuple(slice(a, b) for a, b in self.box)]
        self.register_buffer("mask", torch.tensor(crop, dtype=torch.float32)[None, None])

    @property
    def box_slices(self) -> tuple[slice, slice, slice]:
        """The crop box as slices of the full grid's (i, j, k) axes."""
        return tuple(slice(a, b) for a, b in self.box)

    def crop(self, x: torch.Tensor) -> torch.Tensor:
        """Full-grid volumes (n, c, i, j, k) → masked crops (n, c, *box shape)."""
        return x[(..., *self.box_slices)] * self.mask.to(x.dtype)

    def uncrop(self, y: torch.Tensor) -> torch.Tensor:
        """Crop-grid maps (n, c, *box shape) → full grid (zero outside the box), masked."""
        out = y.new_zeros((*y.shape[:2], *self.input_shape))
        out[(..., *self.box_slices)] = y * self.mask.to(y.dtype)
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Predict age, shape (n, 1), years, from full-grid volumes (n, c, i, j, k)."""
        return self.net(self.crop(x))

    def log_probs(self, x: torch.Tensor) -> torch.Tensor:
        """Age-bin log-probabilities of a soft-label wrapped network, from full-grid volumes."""
        return self.net.log_probs(self.crop(x))

    @property
    def gradcam_layers(self) -> dict[str, int]:
        """The wrapped network's 2D Grad-CAM layers (``net.`` prefixed), if it declares any."""
        declared = getattr(self.net, "gradcam_layers", None) or {}
        return {f"net.{k}": v for k, v in dict(declared).items()}

    @property
    def input_layers(self):
        """The wrapped network's first layers for LRP (``net.`` prefixed), or None."""
        names = getattr(self.net, "input_layers", None)
        return None if names is None else tuple(f"net.{n}" for n in names)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name in _DELEGATED:
                return getattr(super().__getattr__("net"), name)
            raise


def compartment_crop_shape(compartment: str, resolution_mm: float, input_shape) -> tuple:
    """Shape (i, j, k) of a compartment's crop box, the input shape of the wrapped network.

    Parameters
    ----------
    compartment : str
        See :data:`brainage.atlas.compartments.COMPARTMENTS`.
    resolution_mm : float
        Template grid resolution of the input.
    input_shape : sequence of int, length 3
        Full grid shape; must equal the template grid's.

    Raises
    ------
    ValueError
        ``input_shape`` is not the template grid of ``resolution_mm``.
    """
    from brainage.atlas.compartments import compartment_mask

    mask = compartment_mask(compartment, resolution_mm)
    if tuple(mask.shape) != tuple(int(s) for s in input_shape):
        raise ValueError(
            f"compartment masks live on the template grid {mask.shape} at {resolution_mm} mm; "
            f"the model input has shape {tuple(input_shape)}"
        )
    return tuple(b - a for a, b in compartment_box(mask))


def for_compartment(net: nn.Module, compartment: str, resolution_mm: float) -> CompartmentModel:
    """Wrap ``net`` (built for :func:`compartment_crop_shape`) as a :class:`CompartmentModel`."""
    from brainage.atlas.compartments import compartment_mask

    return CompartmentModel(net, compartment_mask(compartment, resolution_mm), compartment)
