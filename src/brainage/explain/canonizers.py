"""zennit canonizers for brainage's architectures (used by LRP, :mod:`brainage.explain.lrp`).

A canonizer temporarily rewrites a model into an equivalent form on which the LRP rules conserve
relevance, and reverts it afterwards (zennit's ``Composite`` applies canonizers on entering its
context and removes them in ``finally``). Importing this module imports zennit (through the
torchvision shim of :mod:`brainage.explain._zennit`).

* :class:`zennit.canonizers.SequentialMergeBatchNorm` merges each BatchNorm3d (eval mode, running
  statistics) into the Conv3d/Linear right before it (HofmannCNN, ResNet3D stems, blocks and
  projection shortcuts), so that no rule sees a BatchNorm. (zennit leaves the merged BatchNorm
  with its ``eps``, so it scales by 1/sqrt(1 + eps) ≈ 1 − 5·10⁻⁶ instead of exactly 1: the
  canonized model's output differs by that relative amount per BatchNorm, which is negligible.)
* :class:`BasicBlock3DCanonizer` replaces the skip addition ``out + identity`` of
  :class:`brainage.models.resnet.BasicBlock3D` by a zennit ``Sum`` module over the stacked
  branches. The ``Sum`` gets the LRP ``Norm`` rule, which splits relevance between the two
  branches in proportion to their contributions; without it autograd copies the full relevance
  into *both* branches and the total grows at every skip connection.
* :class:`Bottleneck3DCanonizer` does the same for :class:`brainage.models.resnet.Bottleneck3D`
  (ResNet-50 and deeper).
"""

from __future__ import annotations

import torch

from brainage.explain._zennit import import_zennit
from brainage.models.resnet import BasicBlock3D, Bottleneck3D

zennit = import_zennit()
from zennit.canonizers import AttributeCanonizer, SequentialMergeBatchNorm  # noqa: E402
from zennit.layer import Sum  # noqa: E402

__all__ = ["BasicBlock3DCanonizer", "Bottleneck3DCanonizer", "default_canonizers"]


class BasicBlock3DCanonizer(AttributeCanonizer):
    """Route the skip addition of every ``BasicBlock3D`` through a zennit ``Sum`` module.

    Follows zennit's ``ResNetBasicBlockCanonizer`` for torchvision: the block gets a
    ``canonizer_sum`` submodule and an instance-level ``forward`` that computes
    ``relu_out(Sum(stack([identity, out], -1)))``, numerically the same as the original
    ``relu_out(out + identity)``. Both attributes are deleted again by :meth:`remove`.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, BasicBlock3D):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> BasicBlock3DCanonizer:
        """Return a fresh instance (one per block)."""
        return self.__class__()

    @staticmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Canonized ``BasicBlock3D.forward``: the addition is a ``Sum`` module."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = self.canonizer_sum(torch.stack([identity, out], dim=-1))
        return self.relu_out(out)


class Bottleneck3DCanonizer(AttributeCanonizer):
    """Route the skip addition of every ``Bottleneck3D`` through a zennit ``Sum`` module.

    As :class:`BasicBlock3DCanonizer`: the canonized ``forward`` computes
    ``relu_out(Sum(stack([identity, residual(x)], -1)))``, numerically the original
    ``relu_out(residual(x) + identity)``; the attributes are deleted again by :meth:`remove`.
    """

    def __init__(self) -> None:
        super().__init__(self._attribute_map)

    @classmethod
    def _attribute_map(cls, name, module):
        if isinstance(module, Bottleneck3D):
            return {"forward": cls.forward.__get__(module), "canonizer_sum": Sum()}
        return None

    def copy(self) -> Bottleneck3DCanonizer:
        """Return a fresh instance (one per block)."""
        return self.__class__()

    @staticmethod
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Canonized ``Bottleneck3D.forward``: the addition is a ``Sum`` module."""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.canonizer_sum(torch.stack([identity, self.residual(x)], dim=-1))
        return self.relu_out(out)


def default_canonizers() -> list:
    """Canonizers applied by LRP with ``canonizers="auto"``: BatchNorm merging + residual Sum.

    Each only acts on modules it recognises, so the list suits HofmannCNN, ResNet3D (basic and
    bottleneck blocks), the 2.5D ProjectionCNN and plain convolutional models alike.
    """
    return [SequentialMergeBatchNorm(), BasicBlock3DCanonizer(), Bottleneck3DCanonizer()]
