"""Do models use white-matter lesions? Relevance in lesions vs. expected (paper 003; METHODS §10).

Paper 003 (poster on LIFE-Adult, n = 654 subjects with > 30 lesion voxels): LRP maps and
binarised white-matter-lesion (WML) maps, both in MNI152 2 mm space; per subject, the mean
relevance over the lesion voxels is compared with the *expected relevance per voxel*, the mean
relevance of all brain voxels with positive relevance; a paired t-test across subjects and the
paired effect size d (reported: M_diff = 0.001, d = 0.90, t(653) = 22.95, p < .001).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from scipy import stats as sps

from brainage.errors import ConfigError, DimensionError
from brainage.evaluate._checks import (
    as_mask,
    as_subject_maps,
    participant_ids_or_default,
)
from brainage.io import write_tsv

_ALTERNATIVES = ("two-sided", "greater", "less")

#: Summary fields of :func:`lesion_relevance_test` (the keys besides ``subjects``).
SUMMARY_FIELDS = (
    "n_subjects",
    "n_excluded",
    "min_lesion_voxels",
    "mean_lesion_relevance",
    "mean_expected_relevance",
    "mean_difference",
    "t",
    "df",
    "p",
    "d",
    "alternative",
)


def lesion_relevance_test(
    maps,
    lesion_masks,
    brain,
    min_lesion_voxels: int = 30,
    participant_ids=None,
    absolute: bool = False,
    alternative: str = "two-sided",
) -> dict:
    """Paired test of mean relevance in lesion voxels against the expected relevance per voxel.

    For each subject s with more than ``min_lesion_voxels`` lesion voxels inside the brain:

    * ``lesion_relevance`` = mean of r over lesion ∩ brain;
    * ``expected_relevance`` = mean of r over the brain voxels with r > 0 (paper 003's "average
      relevance of all brain voxels with positive relevance");
    * ``difference`` = lesion − expected.

    Across the included subjects: paired t-test (:func:`scipy.stats.ttest_rel`, df = n − 1) and
    Cohen's d for paired samples, ``d = mean(difference) / sd(difference)`` (sd with ddof = 1).

    Parameters
    ----------
    maps : ndarray, shape (n, i, j, k) or (n, 1, i, j, k)
        Relevance maps (signed, e.g. LRP; paper 003: in MNI152 2 mm space), on the same grid as
        the masks.
    lesion_masks : ndarray of bool, shape (n, i, j, k)
        Binarised lesion masks per subject (threshold probabilistic maps first).
    brain : ndarray of bool, shape (i, j, k) or (n, i, j, k)
        Brain mask (shared or per subject); lesion voxels outside it are ignored.
    min_lesion_voxels : int
        Subjects need strictly more lesion voxels than this (paper 003: 30).
    participant_ids : sequence of str, optional
        Subject labels (default "0", "1", …).
    absolute : bool
        Use ``|r|`` instead of the signed relevance (for unsigned methods).
    alternative : {"two-sided", "greater", "less"}
        Alternative hypothesis about lesion − expected.

    Returns
    -------
    dict
        ``n_subjects`` (included), ``n_excluded``, ``min_lesion_voxels``,
        ``mean_lesion_relevance``, ``mean_expected_relevance``, ``mean_difference``, ``t``,
        ``df``, ``p``, ``d``, ``alternative`` (``t``, ``p`` and ``d`` are NaN with fewer than 2
        included subjects or when all differences are equal), and ``subjects``: a DataFrame
        with one row per subject (``participant_id``, ``n_lesion_voxels``,
        ``lesion_relevance``, ``expected_relevance``, ``difference``, ``included``). A subject
        without positive relevance in the brain has no expected relevance and is excluded.

    Raises
    ------
    ConfigError
        ``min_lesion_voxels`` negative or not an integer, or unknown ``alternative``.
    DimensionError
        Shapes that do not match.
    InputError
        Non-finite maps, non-binary masks, wrong number of ids.
    """
    if (
        isinstance(min_lesion_voxels, bool)
        or not isinstance(min_lesion_voxels, (int, np.integer))
        or min_lesion_voxels < 0
    ):
        raise ConfigError(f"'min_lesion_voxels' must be an integer ≥ 0; got {min_lesion_voxels!r}")
    if alternative not in _ALTERNATIVES:
        raise ConfigError(f"'alternative' must be one of {_ALTERNATIVES}; got {alternative!r}")
    r = as_subject_maps("maps", maps)
    n, grid = r.shape[0], r.shape[1:]
    les = as_mask("lesion_masks", lesion_masks, 4)
    if les.shape != r.shape:
        raise DimensionError(
            f"'lesion_masks' has shape {les.shape}; expected {r.shape} to match 'maps'"
        )
    b = as_mask("brain", brain, (3, 4))
    if b.shape[-3:] != grid or (b.ndim == 4 and b.shape[0] != n):
        raise DimensionError(f"'brain' has shape {b.shape}; expected {grid} or {(n, *grid)}")
    ids = participant_ids_or_default(participant_ids, n)
    if absolute:
        r = np.abs(r)

    rows = []
    for s in range(n):
        bs = b[s] if b.ndim == 4 else b
        rs = r[s]
        in_lesion = les[s] & bs
        n_lesion = int(in_lesion.sum())
        positive = rs[bs][rs[bs] > 0]
        lesion_mean = float(rs[in_lesion].mean()) if n_lesion else float("nan")
        expected = float(positive.mean()) if positive.size else float("nan")
        rows.append(
            {
                "participant_id": ids[s],
                "n_lesion_voxels": n_lesion,
                "lesion_relevance": lesion_mean,
                "expected_relevance": expected,
                "difference": lesion_mean - expected,
                "included": bool(n_lesion > min_lesion_voxels and np.isfinite(expected)),
            }
        )
    subjects = pd.DataFrame(rows)
    inc = subjects[subjects["included"]]
    a = inc["lesion_relevance"].to_numpy(float)
    e = inc["expected_relevance"].to_numpy(float)
    diff = a - e
    k = len(inc)
    nan = float("nan")
    t = p = d = nan
    if k >= 2:
        sd = diff.std(ddof=1)
        if sd > 0:
            res = sps.ttest_rel(a, e, alternative=alternative)
            t, p = float(res.statistic), float(res.pvalue)
            d = float(diff.mean() / sd)
    return {
        "n_subjects": k,
        "n_excluded": n - k,
        "min_lesion_voxels": int(min_lesion_voxels),
        "mean_lesion_relevance": float(a.mean()) if k else nan,
        "mean_expected_relevance": float(e.mean()) if k else nan,
        "mean_difference": float(diff.mean()) if k else nan,
        "t": t,
        "df": k - 1 if k >= 2 else nan,
        "p": p,
        "d": d,
        "alternative": alternative,
        "subjects": subjects,
    }


def write_lesion_table(results, out_dir) -> Path:
    """Write lesion-test results to ``OUT/evaluation/lesions.tsv`` (+ per-subject table) atomically.

    ``lesions.tsv`` has one row per method with the summary fields of
    :func:`lesion_relevance_test`; ``lesions_subjects.tsv`` holds the per-subject rows (with a
    ``method`` column).

    Parameters
    ----------
    results : dict
        One result of :func:`lesion_relevance_test`, or a dict method name → result.
    out_dir : str or Path
        The run's output folder ``OUT``.

    Returns
    -------
    Path
        Path of ``lesions.tsv``.

    Raises
    ------
    TypeError
        ``results`` is neither a result nor a dict of results.
    """
    if not isinstance(results, dict):
        raise TypeError(
            "'results' must be a lesion_relevance_test result or a dict of them; "
            f"got {type(results).__name__}"
        )
    if "subjects" in results and "t" in results:
        results = {"": results}
    summaries, subject_tables = [], []
    for method, res in results.items():
        if not isinstance(res, dict) or "subjects" not in res:
            raise TypeError(f"'results[{method!r}]' is not a lesion_relevance_test result")
        summaries.append({"method": method, **{key: res[key] for key in SUMMARY_FIELDS}})
        subject_tables.append(res["subjects"].assign(method=method))
    from brainage.io.layout import RunLayout

    layout = RunLayout(Path(out_dir))
    subjects = pd.concat(subject_tables, ignore_index=True)
    subjects = subjects[["method", *[c for c in subjects.columns if c != "method"]]]
    write_tsv(layout.lesion_subjects, subjects)
    path = write_tsv(layout.lesion_table, pd.DataFrame(summaries))
    return path
