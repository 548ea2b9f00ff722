"""The voxelwise analyses of paper 001 on relevance maps, and cluster tables (METHODS §10).

:func:`analysis_design` turns relevance maps and the cohort into the data, design and contrast of
one analysis; :func:`cluster_table` lists the clusters of voxels significant after FWE correction
with their size, peak statistic, peak MNI152 coordinates and atlas label.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

#: Analyses and what they test.
ANALYSES = {
    "one_sample": "|relevance| above the subject's whole-brain mean (sign flips)",
    "young_old": "signed relevance, old (≥ old_min) minus young (≤ young_max)",
    "gap": "signed relevance vs. the brain-age gap, covariates age and age² (≥ gap_min_age)",
}

#: Columns of a cluster table.
CLUSTER_COLUMNS = [
    "cluster", "sign", "n_voxels", "volume_mm3", "peak_stat", "peak_tfce", "min_p_fwe",
    "peak_x", "peak_y", "peak_z", "peak_region",
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


def _scale(maps: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Each subject's map divided by its mean |relevance| in the mask (scale-free maps)."""
    scale = np.abs(maps[:, mask]).mean(axis=1)
    scale[scale == 0] = 1.0
    return maps[:, mask] / scale[:, None]


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

    Returns
    -------
    AnalysisData
        ``data`` shape (n_used, V): ``one_sample``: |R| / mean|R| − 1 (0 = the subject's average
        relevance; a one-sample test on |R| itself is degenerate, since |R| ≥ 0); otherwise the
        signed maps divided by each subject's mean |R|. The one-sample test is one-sided
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
        data = _scale(maps[use], mask)
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
        data = _scale(maps[use], mask)
        desc = (
            f"brain-age gap, covariates age and age² (subjects ≥ {gap_min_age:g} y, "
            f"n = {int(use.sum())})"
        )
    else:
        raise ValueError(f"unknown analysis {analysis!r}")
    blocks = None if folds is None else np.asarray(folds)[use]
    if blocks is not None and len(np.unique(blocks)) < 2:
        blocks = None
    used = [s for s, u in zip(subjects, use, strict=True) if u]
    # the one-sample test asks where relevance is high: its positive tail
    two_sided = analysis != "one_sample"
    return AnalysisData(data, design, contrast, used, blocks, desc, None, two_sided)


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
        :data:`CLUSTER_COLUMNS`; coordinates in mm.
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
            region = ""
            if atlas is not None:
                value = int(atlas.labels[tuple(peak)])
                region = atlas.names.get(value, "") if value else "(no label)"
            rows.append({
                "sign": name, "n_voxels": len(vox), "volume_mm3": len(vox) * voxel_mm3,
                "peak_stat": float(stat[tuple(peak)]), "peak_tfce": float(tfce[tuple(peak)]),
                "min_p_fwe": float(p_fwe[labels == k].min()),
                "peak_x": float(xyz[0]), "peak_y": float(xyz[1]), "peak_z": float(xyz[2]),
                "peak_region": region,
            })  # fmt: skip
    table = pd.DataFrame(rows, columns=[c for c in CLUSTER_COLUMNS if c != "cluster"])
    table = table.sort_values("n_voxels", ascending=False, kind="stable").reset_index(drop=True)
    table.insert(0, "cluster", np.arange(1, len(table) + 1))
    return table
