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


def _midline_flip(voxel_mm: float):
    """Return a TorchIO transform that mirrors a sample about x = 0 mm (``mirror_x``).

    TorchIO's ``RandomFlip`` reverses the array, which on the crop box (x = −80 … 76 mm at 4 mm)
    mirrors about x = −2 mm and shifts the brain by a voxel: a model trained with it sees two
    brain positions and never a true left–right mirror.
    """
    import torchio as tio

    from brainage.space import mirror_x

    class MidlineFlip(tio.Transform):
        def apply_transform(self, subject):
            for image in subject.get_images(intensity_only=False):
                image.set_data(mirror_x(image.data, voxel_mm, axis=1))
            return subject

    return MidlineFlip()


def build_augmentation(names: Sequence[str], p: float = 0.8, voxel_mm: float = 1.0):
    """Build the TorchIO transform that applies one of ``names`` to a sample.

    Parameters
    ----------
    names : sequence of {"flip", "affine", "elastic"}
        ``flip``: left–right mirror about the mid-sagittal plane x = 0 mm of the template
        (:func:`brainage.space.mirror_x`; axis 0 = x in RAS template space); ``affine``: random
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
            transforms[_midline_flip(voxel_mm)] = 1.0
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
