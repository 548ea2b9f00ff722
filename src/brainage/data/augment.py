"""Training-time augmentation with TorchIO (paper 000, METHODS §4)."""

from __future__ import annotations

from collections.abc import Sequence

from brainage.errors import ConfigError, did_you_mean

__all__ = ["AUGMENTATIONS", "ELASTIC_MM", "TRANSLATION_MM", "build_augmentation"]

AUGMENTATIONS = ("flip", "affine", "elastic")


#: Largest translation of the ``affine`` augmentation, mm.
TRANSLATION_MM = 4.0
#: Largest displacement of the ``elastic`` augmentation, mm (paper 000).
ELASTIC_MM = 7.5


def build_augmentation(names: Sequence[str], p: float = 0.8, voxel_mm: float = 1.0):
    """Build the TorchIO transform that applies one of ``names`` to a sample.

    Parameters
    ----------
    names : sequence of {"flip", "affine", "elastic"}
        ``flip``: random left–right flip (axis 0 = x in RAS template space); ``affine``: random
        rotation −10°…10° with ±5 % scaling and ±:data:`TRANSLATION_MM` translation;
        ``elastic``: random elastic deformation with 7 control points and at most
        :data:`ELASTIC_MM` displacement (paper 000's values). Empty: no augmentation.
    p : float
        Probability that a sample is augmented at all.
    voxel_mm : float
        Voxel size of the model grid, mm. The tensors carry no affine, so TorchIO reads
        distances in voxels; they are converted here (at 4 mm: ±1 voxel translation and at most
        1.875 voxels of elastic displacement). brainage < 0.2 passed the millimetres as voxels
        (4 × too strong at 4 mm).

    Returns
    -------
    callable or None
        A ``torchio.Transform`` (one of the named transforms per call, ``tio.OneOf``) that takes
        and returns a tensor of shape (c, i, j, k); None when ``names`` is empty. Random draws come
        from torch's global generator, seeded by the training seed.
    """
    import torchio as tio

    if not names:
        return None
    transforms = {}
    for name in names:
        if name == "flip":
            transforms[tio.RandomFlip(axes=(0,), flip_probability=1.0)] = 1.0
        elif name == "affine":
            shift = TRANSLATION_MM / voxel_mm
            transforms[tio.RandomAffine(degrees=10, scales=0.05, translation=shift)] = 1.0
        elif name == "elastic":
            elastic = tio.RandomElasticDeformation(
                num_control_points=7, max_displacement=ELASTIC_MM / voxel_mm
            )
            transforms[elastic] = 1.0
        else:
            raise ConfigError(f"unknown augmentation {name!r}; {did_you_mean(name, AUGMENTATIONS)}")
    return tio.OneOf(transforms, p=p)
