"""Region tables on per-subject native label maps (e.g. the DLMUSE parcellation of each scan).

A template-space atlas (:mod:`brainage.atlas`) gives every subject the same regions after
registration. A per-subject parcellation in the subject's own scan (a BIDS derivatives ``dseg``,
such as DLMUSE) follows each brain's anatomy instead. To use it, the subject's relevance map,
which lives in template space (``MNI152NLin2009aSym``, on the model grid), is pulled onto the
label map's grid with the subject's saved inverse transform
(:func:`brainage.preprocess.warp_to_native`, linear interpolation); the labels themselves are
never resampled. Then, per label, the warped relevance is summarised (:func:`native_region_values`)
and the per-subject tables are averaged into one ranked table (:func:`native_region_table`)::

    maps = find_label_maps(bids_root, cohort.participant_ids)
    per_subject = {
        pid: native_region_values(relevance_path[pid], prep_rows[pid], path, maps.names)
        for pid, path in maps.paths.items()
    }
    table = native_region_table(per_subject)

Normalisation
-------------
Relevance maps of different subjects (and models) have arbitrary, different scales. Each
subject's warped map is therefore divided by its mean absolute value over the labelled voxels
(``normalise="mean_abs"``): a region value of 2 means "twice the subject's average relevance
density in the labelled brain", whatever the map's unit, the number of voxels of the native grid
or the subject's head size. Zero stays zero and the sign is kept (unlike a z-score, which would
move the zero to the subject's mean and make region means of an absolute map signed).
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from brainage.errors import ConfigError, InputError, SpaceMismatchError, did_you_mean
from brainage.io.layout import parse_entities, scan_names

#: Per-subject normalisations understood by :func:`native_region_values`.
NATIVE_NORMALISATIONS = ("mean_abs", "none")

#: Columns of a per-subject table of :func:`native_region_values`, in order.
NATIVE_VALUE_COLUMNS = (
    "region",
    "label",
    "n_voxels",
    "volume_mm3",
    "mean_relevance",
    "sum_relevance",
)

#: Columns of the cohort table of :func:`native_region_table`, in order.
NATIVE_REGION_COLUMNS = (
    "rank",
    "region",
    "label",
    "n_subjects",
    "mean_relevance",
    "sem_relevance",
    "mean_volume_mm3",
)

# ``space-`` values of a dseg file that mean "the subject's own scan" (None: no space entity)
_NATIVE_SPACES = (None, "T1w", "orig")


@dataclass(frozen=True)
class LabelMaps:
    """Per-subject native label maps found in a BIDS derivatives dataset.

    Attributes
    ----------
    name : str
        Folder name of the derivatives dataset, e.g. ``"dlmuse"``.
    root : Path
        The derivatives dataset, ``<bids_root>/derivatives/<name>``.
    paths : dict of str to Path
        Participant id (as given) → its ``dseg`` image, an integer label map in the subject's
        native scanner space (voxel → scanner mm). Only subjects that have one.
    names : dict of int to str
        Label value (> 0) → region name, from the dataset's ``dseg.tsv``.
    missing : list of str
        Participant ids (as given) without a label map.
    description : str
        The ``Name`` of the dataset's ``dataset_description.json`` (empty if absent).
    """

    name: str
    root: Path
    paths: dict[str, Path]
    names: dict[int, str]
    missing: list[str] = field(default_factory=list)
    description: str = ""


# --------------------------------------------------------------------------- finding label maps
def _dseg_files(dataset: Path, participant_id: str) -> list[Path]:
    """Native-space ``dseg`` images of one subject in one derivatives dataset."""
    sub, ses, pre = scan_names(participant_id)
    anat = dataset / sub / (ses or "") / "anat"
    if not anat.is_dir():
        return []
    out = []
    for path in sorted(anat.glob(f"{pre}*_dseg.nii.gz")):
        if parse_entities(path).get("space") in _NATIVE_SPACES:
            out.append(path)
    return out


def read_dseg_tsv(path: str | Path) -> dict[int, str]:
    """Read a BIDS ``dseg.tsv`` label table.

    Parameters
    ----------
    path : str or Path
        Tab-separated file with (at least) the columns ``index`` (integer label value) and
        ``name`` (region name), one row per label.

    Returns
    -------
    dict of int to str
        Label value → region name for every label > 0 (a row for 0, the background, is dropped).

    Raises
    ------
    InputError
        The file is missing or unreadable, lacks a column, has a non-integer or duplicated
        ``index`` or an empty ``name``; the message names the file and what to fix.
    """
    path = Path(path)
    fix = "write a tab-separated dseg.tsv with the columns 'index' (integer label) and 'name'"
    if not path.is_file():
        raise InputError("label table dseg.tsv does not exist", fix, path=path)
    try:
        table = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except Exception as exc:  # pandas raises several types for malformed files
        detail = " ".join(str(exc).split())[:100]
        raise InputError(
            f"cannot read the label table ({type(exc).__name__}: {detail})",
            fix,
            path=path,
        ) from None
    missing = [c for c in ("index", "name") if c not in table.columns]
    if missing:
        raise InputError(
            f"label table lacks the column(s) {', '.join(missing)}; got columns "
            f"{', '.join(map(str, table.columns)) or 'none'}",
            fix,
            path=path,
        )
    index = pd.to_numeric(table["index"].str.strip(), errors="coerce")
    bad = table["index"][index.isna() | (index != np.round(index))]
    if len(bad):
        raise InputError(
            f"label table has a non-integer 'index' value {bad.iloc[0]!r}", fix, path=path
        )
    index = index.astype(np.int64)
    dup = index[index.duplicated()]
    if len(dup):
        raise InputError(
            f"label table lists the index {int(dup.iloc[0])} more than once",
            "give every label value one row",
            path=path,
        )
    names = table["name"].str.strip()
    if (names == "").any():
        raise InputError(
            f"label table has an empty 'name' for index {int(index[names == ''].iloc[0])}",
            fix,
            path=path,
        )
    return {int(k): str(v) for k, v in zip(index, names, strict=True) if int(k) > 0}


def _world_box(img) -> np.ndarray:
    """Bounding box (voxel edges) of an image in world mm, shape (2, 3): lower, upper corner."""
    shape = np.asarray(img.shape[:3], dtype=np.float64)
    corners = np.array(list(itertools.product(*[(-0.5, n - 0.5) for n in shape])))
    world = corners @ np.asarray(img.affine[:3, :3], float).T + np.asarray(img.affine[:3, 3])
    return np.stack([world.min(axis=0), world.max(axis=0)])


def check_scanner_space(label_path: str | Path, t1w_path: str | Path, participant_id=None):
    """Check (headers only) that a label map covers the same scanner-space box as the T1w.

    The two may have different grids (e.g. a 2 mm parcellation of a 1 mm scan); their voxel-edge
    bounding boxes in scanner mm must agree within the larger voxel size of the two.

    Parameters
    ----------
    label_path, t1w_path : str or Path
        The label map and the subject's native T1w (affines: voxel → scanner mm).
    participant_id : str, optional
        Used in the error message.

    Returns
    -------
    float
        Largest difference between the two boxes' corners, in mm.

    Raises
    ------
    SpaceMismatchError
        The boxes differ by more than the tolerance: the label map is not in the T1w's space.
    """
    label_img, t1w_img = nib.load(str(label_path)), nib.load(str(t1w_path))
    tol = max(max(label_img.header.get_zooms()[:3]), max(t1w_img.header.get_zooms()[:3]))
    a, b = _world_box(label_img), _world_box(t1w_img)
    diff = float(np.abs(a - b).max())
    if diff > tol:
        raise SpaceMismatchError(
            f"label map covers the scanner-space box {np.round(a, 1).tolist()} mm, the T1w "
            f"{t1w_path} covers {np.round(b, 1).tolist()} mm (differ by {diff:.1f} mm, "
            f"tolerance {tol:.1f} mm): it is not in the subject's native space",
            "give label maps in the T1w's scanner space (BIDS: no space- entity), or pass "
            "check_space=False if their headers are known to be wrong but the data right",
            participant_id,
            label_path,
        )
    return diff


def find_label_maps(
    bids_root: str | Path, participant_ids, name: str | None = None, check_space: bool = True
) -> LabelMaps | None:
    """Find per-subject native label maps in a BIDS dataset's derivatives.

    A derivatives dataset ``<bids_root>/derivatives/<name>/`` qualifies when it holds
    ``sub-<id>/anat/sub-<id>*_dseg.nii.gz`` for at least one of the subjects, in native space
    (no ``space-`` entity, or ``space-T1w``/``space-orig``; template-space ``dseg`` files are
    ignored). Its label names come from ``<dataset>/dseg.tsv`` (columns ``index``, ``name``).

    Parameters
    ----------
    bids_root : str or Path
        The BIDS dataset (the folder with ``participants.tsv`` and ``derivatives/``).
    participant_ids : iterable of str
        Subjects to look for, with or without the ``sub-`` prefix (e.g. ``cohort.participant_ids``).
    name : str, optional
        Folder name of the derivatives dataset to use (e.g. ``"dlmuse"``); default: the only
        qualifying one.
    check_space : bool
        Check from the headers that each label map covers the same scanner-space box as the
        subject's ``<bids_root>/sub-<id>/anat/sub-<id>*_T1w.nii.gz`` (when there is exactly one);
        see :func:`check_scanner_space`.

    Returns
    -------
    LabelMaps or None
        Paths of the subjects that have a label map, the label names and the dataset; ``None``
        when no derivatives dataset has label maps for any of the subjects (and ``name`` is not
        given).

    Raises
    ------
    InputError
        ``name`` is not a folder of ``derivatives/`` ("did you mean"), or has no label map for
        any subject; several datasets qualify and ``name`` is not given; a subject has several
        native ``dseg`` images; the ``dseg.tsv`` is missing or malformed (see
        :func:`read_dseg_tsv`).
    SpaceMismatchError
        ``check_space`` and a label map is not in its T1w's scanner space.
    """
    bids_root = Path(bids_root)
    if isinstance(participant_ids, str):
        raise ConfigError(
            f"'participant_ids' must be a list of ids, not one string; got {participant_ids!r}"
        )
    pids = [str(p) for p in participant_ids]
    deriv = bids_root / "derivatives"
    available = sorted(p.name for p in deriv.iterdir() if p.is_dir()) if deriv.is_dir() else []
    if name is not None:
        if name not in available:
            raise InputError(
                f"no derivatives dataset {name!r} ({did_you_mean(str(name), available)})"
                if available
                else f"no derivatives dataset {name!r} (there is no derivatives folder)",
                "pass the folder name of a dataset under derivatives/",
                path=deriv / str(name),
            )
        candidates = [name]
    else:
        candidates = available
    found: dict[str, dict[str, list[Path]]] = {}
    for cand in candidates:
        files = {pid: _dseg_files(deriv / cand, pid) for pid in pids}
        files = {pid: f for pid, f in files.items() if f}
        if files:
            found[cand] = files
    if not found:
        if name is not None:
            raise InputError(
                f"derivatives dataset {name!r} has no native-space sub-<id>/anat/sub-<id>*"
                f"_dseg.nii.gz for any of the {len(pids)} subjects",
                "check the dataset, or pass another name",
                path=deriv / name,
            )
        return None
    if len(found) > 1:
        raise InputError(
            f"several derivatives datasets have label maps: {', '.join(found)}",
            "pass name=<one of them>",
            path=deriv,
        )
    chosen, files = next(iter(found.items()))
    root = deriv / chosen
    for pid, paths in files.items():
        if len(paths) > 1:
            raise InputError(
                f"several native label maps: {', '.join(p.name for p in paths)}",
                "keep one sub-<id>*_dseg.nii.gz per subject in this dataset",
                pid,
                paths[0].parent,
            )
    names = read_dseg_tsv(root / "dseg.tsv")
    paths = {pid: f[0] for pid, f in files.items()}
    if check_space:
        for pid, path in paths.items():
            sub, ses, pre = scan_names(pid)
            t1w = sorted((bids_root / sub / (ses or "") / "anat").glob(f"{pre}_*T1w.nii.gz"))
            if len(t1w) == 1:
                check_scanner_space(path, t1w[0], pid)
    description = ""
    desc_file = root / "dataset_description.json"
    if desc_file.is_file():
        try:
            description = str(json.loads(desc_file.read_text(encoding="utf-8")).get("Name", ""))
        except (ValueError, AttributeError):
            description = ""
    return LabelMaps(
        name=chosen,
        root=root,
        paths=paths,
        names=names,
        missing=[p for p in pids if p not in paths],
        description=description,
    )


# --------------------------------------------------------------------------- per-subject values
def _check_names(names) -> dict[int, str]:
    if not isinstance(names, dict) or not names:
        raise ConfigError(
            "'names' must be a non-empty dict of label value to region name (e.g. "
            f"LabelMaps.names); got {type(names).__name__}"
        )
    try:
        out = {int(k): str(v) for k, v in names.items() if int(k) > 0}
    except (TypeError, ValueError):
        raise ConfigError("'names' keys must be integer label values") from None
    if not out:
        raise ConfigError("'names' has no label > 0 (0 is the background)")
    return out


def _label_array(label_path: Path, participant_id) -> tuple[np.ndarray, float]:
    from brainage.io.nifti import load_volume

    img = load_volume(label_path, participant_id, dtype=np.float64)  # clear errors, 3D
    data = np.asarray(img.dataobj)
    if not np.issubdtype(data.dtype, np.integer):
        rounded = np.rint(data)
        if not np.allclose(rounded, data):
            raise InputError(
                "label map holds non-integer values",
                "give an integer label image",
                participant_id,
                label_path,
            )
        data = rounded
    voxel_mm3 = float(abs(np.linalg.det(np.asarray(img.affine, float)[:3, :3])))
    return data.astype(np.int64), voxel_mm3


def native_region_values(
    relevance_img,
    prep_row,
    label_path: str | Path,
    names: dict[int, str],
    absolute: bool = True,
    normalise: str = "mean_abs",
) -> pd.DataFrame:
    """Summarise one subject's relevance map per region of its native label map.

    The template-space map is pulled onto the label map's grid with the subject's inverse
    transform (:func:`brainage.preprocess.warp_to_native`, ``interpolation="linear"``); the
    labels are not resampled. The label map must be in the subject's native scanner space, the
    space the transforms were estimated from (check with :func:`check_scanner_space`;
    :func:`find_label_maps` does).

    Parameters
    ----------
    relevance_img : nibabel.Nifti1Image or str or Path
        3D relevance map in template space (``MNI152NLin2009aSym``; any grid, e.g. the 4 mm model
        grid, its affine says where it is), any unit.
    prep_row : dict or pandas.Series
        The subject's preprocessing row (:func:`brainage.preprocess.preprocess_subject`; needs
        ``inverse_xfm``, template → native).
    label_path : str or Path
        Integer label map, shape (i, j, k), voxel → scanner mm; 0 = background.
    names : dict of int to str
        Label value → region name (e.g. :attr:`LabelMaps.names`). Voxels whose label is not in
        ``names`` count as background (DLMUSE images hold a few such values, e.g. 1 = cortical
        CSF, that its ``dseg.tsv`` does not list).
    absolute : bool
        Summarise ``|R|`` (default; for signed maps whose magnitude matters) instead of ``R``.
    normalise : {"mean_abs", "none"}
        ``"mean_abs"``: divide the warped map by its mean ``|R|`` over the labelled voxels, so
        that subjects are comparable (1 = the subject's average relevance density; see the module
        docstring). ``"none"``: keep the map's unit.

    Returns
    -------
    pandas.DataFrame
        One row per label of ``names`` with at least one voxel, sorted by label; columns
        ``region``, ``label``, ``n_voxels`` (native voxels), ``volume_mm3`` (n_voxels × voxel
        volume, mm³), ``mean_relevance`` and ``sum_relevance`` (mean and sum over the region's
        voxels of the normalised map, ``|R|`` when ``absolute``; sums depend on the native voxel
        size). ``DataFrame.attrs`` records ``participant_id``, ``absolute``, ``normalise``,
        ``scale`` (the divisor, in the map's unit; 1 for ``"none"``) and ``label_map``.

    Raises
    ------
    InputError
        Missing or unreadable files, a non-integer label map, no voxel with a label of
        ``names``, non-finite warped values, or a warped map that is 0 on every labelled voxel
        (the label map is then not in the transforms' native space, or the map is empty).
    ConfigError
        Bad ``names``, ``absolute`` or ``normalise``.
    """
    from brainage.preprocess import warp_to_native

    names = _check_names(names)
    if not isinstance(absolute, (bool, np.bool_)):
        raise ConfigError(f"'absolute' must be True or False; got {absolute!r}")
    if normalise not in NATIVE_NORMALISATIONS:
        raise ConfigError(
            f"'normalise' must be one of {', '.join(NATIVE_NORMALISATIONS)}; got {normalise!r} "
            f"({did_you_mean(str(normalise), NATIVE_NORMALISATIONS)})"
        )
    label_path = Path(label_path)
    try:
        pid = str(prep_row["participant_id"])
    except (KeyError, TypeError, IndexError):
        pid = None
    labels, voxel_mm3 = _label_array(label_path, pid)
    valid = np.array(sorted(names), dtype=np.int64)
    counted = np.isin(labels, valid)
    if not counted.any():
        raise InputError(
            "label map has no voxel with a label listed in the label table",
            "check that the label table (dseg.tsv) belongs to these label maps",
            pid,
            label_path,
        )
    warped = warp_to_native(relevance_img, prep_row, label_path, interpolation="linear")
    values = np.asarray(warped.dataobj, dtype=np.float64)[counted]
    if not np.all(np.isfinite(values)):
        raise InputError(
            "the warped relevance map has NaN or infinite values on the label map",
            "fix the relevance map",
            pid,
            label_path,
        )
    if absolute:
        values = np.abs(values)
    mean_abs = float(np.abs(values).mean())
    if not mean_abs > 0:
        raise InputError(
            "the relevance map, warped to native space, is 0 on every labelled voxel",
            "check that the label map is in the subject's native scanner space (the space the "
            "transforms were estimated from) and that the relevance map is not empty",
            pid,
            label_path,
        )
    scale = mean_abs if normalise == "mean_abs" else 1.0
    values = values / scale
    lab = labels[counted]
    n_bins = int(valid.max()) + 1
    n = np.bincount(lab, minlength=n_bins)
    s = np.bincount(lab, weights=values, minlength=n_bins)
    present = valid[n[valid] > 0]
    table = pd.DataFrame(
        {
            "region": [names[int(k)] for k in present],
            "label": present.astype(int),
            "n_voxels": n[present].astype(int),
            "volume_mm3": n[present] * voxel_mm3,
            "mean_relevance": s[present] / n[present],
            "sum_relevance": s[present],
        }
    )[list(NATIVE_VALUE_COLUMNS)]
    table.attrs = {
        "participant_id": pid,
        "absolute": bool(absolute),
        "normalise": normalise,
        "scale": scale,
        "label_map": str(label_path),
    }
    return table


# --------------------------------------------------------------------------- cohort table
def native_region_table(per_subject: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """Average per-subject native region values over subjects and rank the regions.

    Parameters
    ----------
    per_subject : dict of str to pandas.DataFrame
        Participant id → its table from :func:`native_region_values` (all computed with the same
        ``absolute`` and ``normalise``).

    Returns
    -------
    pandas.DataFrame
        One row per region present in at least one subject, columns ``rank`` (1 = highest
        ``mean_relevance``), ``region``, ``label``, ``n_subjects`` (subjects whose label map has
        the region), ``mean_relevance`` (mean over those subjects of the per-subject region
        mean, normalised units), ``sem_relevance`` (its standard error, ``sd (ddof=1) /
        sqrt(n_subjects)``; NaN for one subject) and ``mean_volume_mm3`` (mean region volume,
        mm³); sorted by rank (ties by label). ``rank``, ``region``, ``label`` and
        ``mean_relevance`` mean what they mean in :func:`brainage.atlas.region_table`.
        ``DataFrame.attrs`` records ``n_subjects``, ``absolute`` and ``normalise``.

    Raises
    ------
    ConfigError
        ``per_subject`` is empty, a value is not a table with the columns of
        :data:`NATIVE_VALUE_COLUMNS`, or the subjects' tables were computed with different
        ``absolute`` or ``normalise``.
    """
    if not isinstance(per_subject, dict) or not per_subject:
        raise ConfigError(
            "'per_subject' must be a non-empty dict of participant id to the table of "
            f"native_region_values; got {type(per_subject).__name__} of length "
            f"{len(per_subject) if hasattr(per_subject, '__len__') else 'n/a'}"
        )
    frames = []
    settings = {}
    for pid, table in per_subject.items():
        if not isinstance(table, pd.DataFrame):
            raise ConfigError(
                f"'per_subject[{pid!r}]' must be a pandas.DataFrame; got {type(table).__name__}"
            )
        missing = [c for c in NATIVE_VALUE_COLUMNS if c not in table.columns]
        if missing:
            raise ConfigError(
                f"'per_subject[{pid!r}]' lacks the column(s) {', '.join(missing)} "
                "(expected a table of native_region_values)"
            )
        for key in ("absolute", "normalise"):
            if key in table.attrs:
                settings.setdefault(key, (table.attrs[key], pid))
                if table.attrs[key] != settings[key][0]:
                    first, first_pid = settings[key]
                    raise ConfigError(
                        f"subjects' tables differ in {key!r}: {first!r} for {first_pid!r}, "
                        f"{table.attrs[key]!r} for {pid!r}; compute them all the same way"
                    )
        frames.append(table[list(NATIVE_VALUE_COLUMNS)].assign(participant_id=str(pid)))
    long = pd.concat(frames, ignore_index=True)
    grouped = long.groupby("label", sort=True)
    out = pd.DataFrame(
        {
            "region": grouped["region"].first(),
            "n_subjects": grouped["participant_id"].nunique(),
            "mean_relevance": grouped["mean_relevance"].mean(),
            "sem_relevance": grouped["mean_relevance"].std(ddof=1)
            / np.sqrt(grouped["mean_relevance"].count()),
            "mean_volume_mm3": grouped["volume_mm3"].mean(),
        }
    ).reset_index()
    out["label"] = out["label"].astype(int)
    out["n_subjects"] = out["n_subjects"].astype(int)
    out = out.sort_values(["mean_relevance", "label"], ascending=[False, True], kind="stable")
    out.insert(0, "rank", np.arange(1, len(out) + 1))
    out = out.reset_index(drop=True)[list(NATIVE_REGION_COLUMNS)]
    out.attrs = {
        "n_subjects": len(per_subject),
        **{k: v[0] for k, v in settings.items()},
    }
    return out
