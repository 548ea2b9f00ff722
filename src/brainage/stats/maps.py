"""The voxelwise analyses of paper 001 on relevance maps, and cluster tables (METHODS §10).

:func:`analysis_design` turns relevance maps and the cohort into the data, design and contrast of
one analysis; :func:`cluster_table` lists the clusters of voxels significant after FWE correction
with their size, peak statistic, peak MNI152 coordinates and atlas label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from brainage.errors import InputError

#: Analyses and what they test.
ANALYSES = {
    "one_sample": "|relevance| above the subject's whole-brain mean (sign flips)",
    "young_old": "signed relevance, old (≥ old_min) minus young (≤ young_max)",
    "gap": "signed relevance vs. the brain-age gap, covariates age and age² (≥ gap_min_age)",
}

#: How signed maps are made comparable across subjects before a test on them.
SIGNED_NORMALISATIONS = {
    "centred": "minus the subject's mean over the brain, over its mean |relevance|",
    "scaled": "over the subject's mean |relevance| only",
}

#: Columns of a cluster table.
CLUSTER_COLUMNS = [
    "cluster", "sign", "n_voxels", "volume_mm3", "peak_stat", "peak_tfce", "min_p_fwe",
    "peak_x", "peak_y", "peak_z", "peak_region", "regions",
]  # fmt: skip


@dataclass
class AnalysisData:
    """Inputs of one permutation test (or why it cannot run)."""

    data: np.ndarray | None
    design: np.ndarray | None
    contrast: np.ndarray | None
    subjects: list
    blocks: np.ndarray | None
    description: str
    skipped: str | None = None
    two_sided: bool = True


def _scale(maps: np.ndarray, mask: np.ndarray, signed: str = "scaled") -> np.ndarray:
    """Each subject's in-mask map over its mean |relevance| (scale-free), optionally centred.

    ``signed="centred"`` first subtracts the subject's mean over the mask: signed relevance sums
    to roughly the prediction minus a reference (LRP's conservation), so without centring a group
    or gap contrast mostly restates that older brains get higher predictions, at every voxel.
    """
    x = maps[:, mask].astype(np.float64)
    scale = np.abs(x).mean(axis=1)
    scale[scale == 0] = 1.0
    if signed == "centred":
        x = x - x.mean(axis=1, keepdims=True)
    elif signed != "scaled":
        raise ValueError(f"unknown signed normalisation {signed!r}")
    return (x / scale[:, None]).astype(np.float32)


def _blocks_and_subjects(folds, subjects: list, use: np.ndarray) -> tuple:
    """Exchangeability blocks of the used subjects (None unless ≥ 2 blocks) and their ids."""
    blocks = None if folds is None else np.asarray(folds)[use]
    if blocks is not None and len(np.unique(blocks)) < 2:
        blocks = None
    return blocks, [s for s, u in zip(subjects, use, strict=True) if u]


def _label_at(atlas, ijk) -> str:
    """Atlas region name at voxel ``ijk`` (``"(no label)"`` outside every region)."""
    value = int(atlas.labels[tuple(ijk)])
    return atlas.names.get(value, "") if value else "(no label)"


def analysis_design(
    analysis: str,
    maps: np.ndarray,
    mask: np.ndarray,
    subjects: list,
    ages: np.ndarray,
    gaps: np.ndarray,
    folds: np.ndarray | None,
    young_max: float = 40.0,
    old_min: float = 60.0,
    gap_min_age: float = 50.0,
    min_subjects: int = 6,
    signed: str = "centred",
) -> AnalysisData:
    """Build the data, design and contrast of one analysis of paper 001.

    Parameters
    ----------
    analysis : {"one_sample", "young_old", "gap"}
        See :data:`ANALYSES`.
    maps : ndarray, shape (n, i, j, k)
        Relevance maps in template space (one per subject).
    mask : ndarray of bool, shape (i, j, k)
        Brain mask; the data are its voxels.
    subjects : list of str, length n
    ages, gaps : ndarray, shape (n,)
        Chronological age and brain-age gap, years (NaN: unknown; such subjects are left out).
    folds : ndarray of int, shape (n,), optional
        Exchangeability blocks (the cross-fitting fold of each subject), or None.
    young_max, old_min, gap_min_age : float
        Years.
    min_subjects : int
        Fewer subjects (per group for ``young_old``) skip the analysis.
    signed : {"centred", "scaled"}
        Normalisation of the signed maps of ``young_old`` and ``gap``
        (:data:`SIGNED_NORMALISATIONS`).

    Returns
    -------
    AnalysisData
        ``data`` shape (n_used, V): ``one_sample``: |R| / mean|R| − 1 (0 = the subject's average
        relevance; a one-sample test on |R| itself is degenerate, since |R| ≥ 0); otherwise the
        signed maps normalised as ``signed`` says. The one-sample test is one-sided
        (where relevance is above average), the others two-sided.

    Raises
    ------
    ValueError
        Unknown ``analysis``.
    """
    ages = np.asarray(ages, float)
    gaps = np.asarray(gaps, float)
    use = np.ones(len(subjects), bool)
    if analysis == "one_sample":
        data = np.abs(_scale(maps, mask)) - 1.0
        design, contrast = np.ones((len(subjects), 1)), np.array([1.0])
        desc = ANALYSES[analysis]
    elif analysis == "young_old":
        young, old = ages <= young_max, ages >= old_min
        use = young | old
        if young.sum() < min_subjects or old.sum() < min_subjects:
            why = (
                f"needs ≥ {min_subjects} subjects ≤ {young_max:g} and ≥ {old_min:g} years; "
                f"has {int(young.sum())} and {int(old.sum())}"
            )
            return AnalysisData(None, None, None, [], None, ANALYSES[analysis], why)
        data = _scale(maps[use], mask, signed)
        design = np.column_stack([np.ones(use.sum()), old[use].astype(float)])
        contrast = np.array([0.0, 1.0])
        desc = (
            f"old (≥ {old_min:g} y, n = {int(old.sum())}) minus young "
            f"(≤ {young_max:g} y, n = {int(young.sum())})"
        )
    elif analysis == "gap":
        use = (ages >= gap_min_age) & np.isfinite(gaps)
        if use.sum() < max(min_subjects, 8):
            why = (
                f"needs ≥ {max(min_subjects, 8)} subjects ≥ {gap_min_age:g} years with a gap; "
                f"has {int(use.sum())}"
            )
            return AnalysisData(None, None, None, [], None, ANALYSES[analysis], why)
        a = ages[use]
        ac = a - a.mean()
        design = np.column_stack([np.ones(use.sum()), gaps[use], ac, ac**2 - np.mean(ac**2)])
        contrast = np.array([0.0, 1.0, 0.0, 0.0])
        data = _scale(maps[use], mask, signed)
        desc = (
            f"brain-age gap, covariates age and age² (subjects ≥ {gap_min_age:g} y, "
            f"n = {int(use.sum())})"
        )
    else:
        raise ValueError(f"unknown analysis {analysis!r}")
    blocks, used = _blocks_and_subjects(folds, subjects, use)
    # the one-sample test asks where relevance is high: its positive tail
    two_sided = analysis != "one_sample"
    return AnalysisData(data, design, contrast, used, blocks, desc, None, two_sided)


def _column_values(values: pd.Series, column: str) -> tuple[np.ndarray, list | None]:
    """Read a cohort column as floats (NaN: unknown), with its two levels if it is binary."""
    raw = values.replace({"n/a": np.nan, "": np.nan})
    numeric = pd.to_numeric(raw, errors="coerce")
    known = raw.dropna()
    levels = sorted(known.astype(str).unique())
    if numeric.notna().sum() == len(known) and len(levels) > 2:
        return numeric.to_numpy(float), None
    if len(levels) != 2:
        raise InputError(
            f"cohort column {column!r} has {len(levels)} distinct values "
            f"({', '.join(levels[:6])}{', …' if len(levels) > 6 else ''}); a contrast or covariate "
            "needs a numeric column or one with exactly two levels",
            "give 'levels: [a, b]' to compare two of them, or pick another column",
        )
    return _levels_code(raw, levels), levels


def _levels_code(raw: pd.Series, levels: list) -> np.ndarray:
    """0 for ``levels[0]``, 1 for ``levels[1]``, NaN otherwise."""
    text = raw.astype(str).where(raw.notna(), None)
    code = np.full(len(raw), np.nan)
    code[(text == str(levels[0])).to_numpy()] = 0.0
    code[(text == str(levels[1])).to_numpy()] = 1.0
    return code


def covariate_matrix(cohort: pd.DataFrame, names, ages: np.ndarray) -> tuple[np.ndarray, list]:
    """Nuisance columns of a design from cohort columns, centred (NaN rows: unknown).

    Parameters
    ----------
    cohort : pandas.DataFrame
        One row per subject, aligned with ``ages``.
    names : list of str
        Cohort columns; ``age`` is chronological age and ``age2`` its centred square.
    ages : ndarray, shape (n,)

    Returns
    -------
    ndarray, shape (n, len(names)), and the column descriptions.

    Raises
    ------
    InputError
        A column is missing from the cohort, or is neither numeric nor binary.
    """
    cols, desc = [], []
    ac = ages - np.nanmean(ages)
    for name in names:
        if name == "age":
            x, d = ac, "age"
        elif name == "age2":
            x, d = ac**2 - np.nanmean(ac**2), "age²"
        else:
            if name not in cohort:
                raise InputError(
                    f"covariate {name!r} is not a cohort column (columns: "
                    f"{', '.join(map(str, cohort.columns))})",
                    "name a column of participants.tsv, or 'age' / 'age2'",
                )
            x, levels = _column_values(cohort[name], name)
            d = name if levels is None else f"{name} ({levels[1]} vs {levels[0]})"
            x = x - np.nanmean(x)
        cols.append(x)
        desc.append(d)
    n = len(ages)
    return (np.column_stack(cols) if cols else np.zeros((n, 0))), desc


def contrast_design(
    spec,
    maps: np.ndarray,
    mask: np.ndarray,
    subjects: list,
    cohort: pd.DataFrame,
    ages: np.ndarray,
    folds: np.ndarray | None,
    signed: str = "centred",
    min_subjects: int = 6,
) -> AnalysisData:
    """Build a user contrast on signed relevance maps from a cohort column (e.g. sex, diagnosis).

    A binary column (or the two ``spec.levels`` of a categorical one) gives a two-sample test,
    ``levels[1]`` minus ``levels[0]``; a numeric column a regression slope. Covariates enter as
    nuisance (Freedman–Lane), as in paper 001's diabetic vs. healthy contrast.

    Parameters
    ----------
    spec : brainage.config.StatsContrast
        ``name``, ``column``, ``levels``, ``covariates``, ``min_age``, ``max_age``.
    maps, mask, subjects, ages, folds, signed, min_subjects
        As in :func:`analysis_design`.
    cohort : pandas.DataFrame
        Cohort columns, one row per subject of ``subjects``.

    Returns
    -------
    AnalysisData
        Two-sided test; skipped (with the reason) when a group has fewer than ``min_subjects``.

    Raises
    ------
    InputError
        The column is missing, or has the wrong number of levels.
    """
    column = spec.column
    if column not in cohort:
        raise InputError(
            f"stats contrast {spec.name!r}: {column!r} is not a cohort column (columns: "
            f"{', '.join(map(str, cohort.columns))})",
            "name a column of participants.tsv in stats.contrasts",
        )
    ages = np.asarray(ages, float)
    if spec.levels:
        levels = [str(v) for v in spec.levels]
        x = _levels_code(cohort[column].replace({"n/a": np.nan}), levels)
    else:
        x, levels = _column_values(cohort[column], column)
    nuisance, cov_desc = covariate_matrix(cohort, spec.covariates, ages)
    use = np.isfinite(x) & np.all(np.isfinite(nuisance), axis=1)
    if any(c in ("age", "age2") for c in spec.covariates) or spec.min_age or spec.max_age:
        use &= np.isfinite(ages)
    if spec.min_age is not None:
        use &= ages >= spec.min_age
    if spec.max_age is not None:
        use &= ages <= spec.max_age
    what = f"{levels[1]} minus {levels[0]}" if levels else f"slope of {column}"
    desc = f"signed relevance, {column}: {what}"
    if cov_desc:
        desc += f", covariates {', '.join(cov_desc)}"
    if levels:
        counts = [int(((x == k) & use).sum()) for k in (0, 1)]
        desc += f" (n = {counts[1]} and {counts[0]})"
        if min(counts) < min_subjects:
            why = f"needs ≥ {min_subjects} subjects per level of {column}; has {counts}"
            return AnalysisData(None, None, None, [], None, desc, why)
    elif use.sum() < max(min_subjects, len(cov_desc) + 4):
        return AnalysisData(None, None, None, [], None, desc,
                            f"needs more subjects with {column}; has {int(use.sum())}")  # fmt: skip
    if not levels:
        desc += f" (n = {int(use.sum())})"
    xs = x[use] if levels else x[use] - x[use].mean()
    nus = nuisance[use] - nuisance[use].mean(axis=0) if nuisance.shape[1] else nuisance[use]
    design = np.column_stack([np.ones(use.sum()), xs, nus])
    contrast = np.zeros(design.shape[1])
    contrast[1] = 1.0
    blocks, used = _blocks_and_subjects(folds, subjects, use)
    return AnalysisData(_scale(maps[use], mask, signed), design, contrast, used, blocks, desc)


def _share(x: float) -> str:
    return "< 1 %" if x < 0.005 else f"{100 * x:.0f} %"


def _covered_regions(atlas, members: np.ndarray, n: int = 3) -> str:
    """Name the atlas regions holding most of a cluster's voxels: ``"A 40 %, B 25 %"``."""
    values, counts = np.unique(np.asarray(atlas.labels)[members], return_counts=True)
    total = counts.sum()
    keep = values > 0
    order = np.argsort(-counts[keep], kind="stable")[:n]
    parts = [f"{atlas.names.get(int(v), str(v))} {_share(c / total)}"
             for v, c in zip(values[keep][order], counts[keep][order], strict=True)]  # fmt: skip
    unlabelled = counts[~keep].sum()
    if unlabelled and unlabelled / total >= 0.2:
        parts.append(f"unlabelled {100 * unlabelled / total:.0f} %")
    return ", ".join(parts)


def cluster_table(
    stat: np.ndarray,
    tfce: np.ndarray,
    p_fwe: np.ndarray,
    affine: np.ndarray,
    atlas=None,
    alpha: float = 0.05,
    connectivity: int = 26,
) -> pd.DataFrame:
    """Clusters of voxels with FWE-corrected p ≤ ``alpha``, per sign, largest first.

    Parameters
    ----------
    stat, tfce, p_fwe : ndarray, shape (i, j, k)
        Statistic, TFCE and FWE p maps on the template grid (p = 1 outside the mask).
    affine : ndarray, shape (4, 4)
        Voxel → MNI152NLin2009aSym mm.
    atlas : brainage.atlas.Atlas, optional
        Labels the peak voxel.
    alpha : float
    connectivity : {6, 18, 26}

    Returns
    -------
    pandas.DataFrame
        :data:`CLUSTER_COLUMNS`; coordinates in mm; ``regions``: the atlas regions holding most
        of the cluster's voxels, with their share (a large cluster's peak alone says little).
    """
    from scipy import ndimage

    rank = {6: 1, 18: 2, 26: 3}[connectivity]
    structure = ndimage.generate_binary_structure(3, rank)
    voxel_mm3 = float(abs(np.linalg.det(affine[:3, :3])))
    rows = []
    for sign, name in ((1, "positive"), (-1, "negative")):
        sig = (p_fwe <= alpha) & (np.sign(stat) == sign)
        labels, n = ndimage.label(sig, structure)
        for k in range(1, n + 1):
            vox = np.argwhere(labels == k)
            values = stat[labels == k] * sign
            peak = vox[int(np.argmax(values))]
            xyz = affine @ np.r_[peak, 1.0]
            region, covered = "", ""
            if atlas is not None:
                region = _label_at(atlas, peak)
                covered = _covered_regions(atlas, labels == k)
            rows.append({
                "sign": name, "n_voxels": len(vox), "volume_mm3": len(vox) * voxel_mm3,
                "peak_stat": float(stat[tuple(peak)]), "peak_tfce": float(tfce[tuple(peak)]),
                "min_p_fwe": float(p_fwe[labels == k].min()),
                "peak_x": float(xyz[0]), "peak_y": float(xyz[1]), "peak_z": float(xyz[2]),
                "peak_region": region, "regions": covered,
            })  # fmt: skip
    table = pd.DataFrame(rows, columns=[c for c in CLUSTER_COLUMNS if c != "cluster"])
    table = table.sort_values("n_voxels", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "cluster", np.arange(1, len(table) + 1))
    return table


#: Columns of a peak table.
PEAK_COLUMNS = ["cluster", "peak_x", "peak_y", "peak_z", "peak_stat", "cluster_mm3", "p_fwe",
                "region"]  # fmt: skip


def peak_table(
    stat: np.ndarray,
    p_fwe: np.ndarray,
    affine: np.ndarray,
    atlas=None,
    alpha: float = 0.05,
    min_distance: float = 8.0,
) -> pd.DataFrame:
    """Peaks and sub-peaks of the significant clusters, labelled with an atlas.

    Uses nilearn's :func:`nilearn.reporting.get_clusters_table` (peaks, then sub-peaks at least
    ``min_distance`` mm apart, like FSL ``cluster``) on the statistic map restricted to voxels
    with FWE p ≤ ``alpha``.

    Parameters
    ----------
    stat, p_fwe : ndarray, shape (i, j, k)
        Statistic and FWE p maps on the template grid.
    affine : ndarray, shape (4, 4)
        Voxel → MNI152NLin2009aSym mm.
    atlas : brainage.atlas.Atlas, optional
    alpha, min_distance : float

    Returns
    -------
    pandas.DataFrame
        :data:`PEAK_COLUMNS`; ``cluster`` is nilearn's id (``2a``: a sub-peak of cluster 2),
        coordinates in mm.
    """
    import warnings

    import nibabel as nib
    from nilearn.reporting import get_clusters_table

    shown = np.where(p_fwe <= alpha, stat, 0).astype(np.float32)
    if not shown.any():
        return pd.DataFrame(columns=PEAK_COLUMNS)
    with warnings.catch_warnings():  # "a (sub)peak falls outside the cluster body": handled
        warnings.simplefilter("ignore", UserWarning)
        table = get_clusters_table(nib.Nifti1Image(shown, affine), stat_threshold=1e-6,
                                   two_sided=True, min_distance=min_distance)  # fmt: skip
    inv = np.linalg.inv(affine)
    rows = []
    for r in table.to_dict("records"):
        ijk = np.rint(inv @ np.array([r["X"], r["Y"], r["Z"], 1.0]))[:3].astype(int)
        ijk = tuple(np.clip(ijk, 0, np.array(stat.shape) - 1))
        region = ""
        if atlas is not None:
            region = _label_at(atlas, ijk)
        size = r["Cluster Size (mm3)"]
        rows.append({"cluster": str(r["Cluster ID"]), "peak_x": r["X"], "peak_y": r["Y"],
                     "peak_z": r["Z"], "peak_stat": float(r["Peak Stat"]),
                     "cluster_mm3": float(size) if str(size).strip() else np.nan,
                     "p_fwe": float(p_fwe[ijk]), "region": region})  # fmt: skip
    return pd.DataFrame(rows, columns=PEAK_COLUMNS)
