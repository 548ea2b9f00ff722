"""Training-time augmentation with TorchIO (paper 000, METHODS §4)."""

from __future__ import annotations

from collections.abc import Sequence

from brainage.errors import ConfigError, did_you_mean

AUGMENTATIONS = ("flip", "affine", "elastic")


def build_augmentation(names: Sequence[str], p: float = 0.8):
    """Build the TorchIO transform that applies one of ``names`` to a sample.

    Parameters
    ----------
    names : sequence of {"flip", "affine", "elastic"}
        ``flip``: random left–right flip (axis 0 = x in RAS template space); ``affine``: random
        rotation −10°…10° with ±5 % scaling and ±4 voxels translation; ``elastic``: random
        elastic deformation with 7 control points and at most 7.5 voxels displacement (paper
        000's values, given there in mm at 1 mm voxels). The tensors carry no affine, so TorchIO
        reads these distances in voxels of the model grid: at 4 mm, ±16 mm and up to 30 mm (the
        defaults were chosen by validation MAE at 4 mm with exactly these settings; TorchIO
        warns that such an elastic displacement may fold the grid). Empty: no augmentation.
    p : float
        Probability that a sample is augmented at all.

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
            transforms[tio.RandomAffine(degrees=10, scales=0.05, translation=4)] = 1.0
        elif name == "elastic":
            transforms[tio.RandomElasticDeformation(num_control_points=7, max_displacement=7.5)] = (
                1.0
            )
        else:
            raise ConfigError(f"unknown augmentation {name!r}; {did_you_mean(name, AUGMENTATIONS)}")
    return tio.OneOf(transforms, p=p)
