"""Model-side truth by intervention: how much a model relies on each atlas region.

The reliance of a model on region r for subject s is the change of its prediction when only that
region is replaced by the mean training image: ``f(x_s) − f(x_s with r := reference)`` (years;
positive = the region pushes the predicted age up). It needs no ground truth, so it works on real
scans; it generalises ``bench/bench_effect_reliance.py``, which moves a phantom's effect voxels
forward in age. A relevance map is faithful at the region level when its per-region relevance
(the sum of the map over the region) ranks the regions as the reliance does: the score is the
Spearman correlation of the two across regions (issue 11, item 2).
"""

from __future__ import annotations

import numpy as np

from brainage.errors import ConfigError


def region_reliance(predict, volumes, labels, reference, batch_size: int = 16) -> np.ndarray:
    """Change of each subject's prediction when one region is replaced by the reference.

    Parameters
    ----------
    predict : callable
        ``predict(batch) → ndarray (n,)``, years; ``batch`` float32 shaped like ``volumes``.
    volumes : ndarray, shape (n, c, i, j, k)
    labels : ndarray of int, shape (i, j, k)
        Atlas labels on the model grid (0 = background).
    reference : ndarray, shape (c, i, j, k) or (i, j, k)
        The mean training image.
    batch_size : int
        Perturbed volumes per call of ``predict``.

    Returns
    -------
    ndarray, shape (n, n_regions)
        ``f(x) − f(x with region := reference)`` for the regions in ``np.unique(labels)``
        order (label 0 excluded).
    """
    x = np.asarray(volumes, dtype=np.float32)
    lab = np.asarray(labels)
    if x.ndim != 5 or lab.shape != x.shape[2:]:
        raise ConfigError(f"volumes {x.shape} and labels {lab.shape} do not match")
    ref = np.asarray(reference, dtype=np.float32)
    ref = np.broadcast_to(ref if ref.ndim == 4 else ref[None], x.shape[1:])
    regions = [r for r in np.unique(lab) if r != 0]
    out = np.zeros((x.shape[0], len(regions)))
    for s in range(x.shape[0]):
        base = float(np.asarray(predict(x[s : s + 1]), float)[0])
        preds = []
        for start in range(0, len(regions), batch_size):
            chunk = regions[start : start + batch_size]
            batch = np.repeat(x[s : s + 1], len(chunk), axis=0)
            for b, r in enumerate(chunk):
                inside = lab == r
                batch[b][:, inside] = ref[:, inside]
            preds.append(np.asarray(predict(batch), float))
        out[s] = base - np.concatenate(preds)
    return out


def region_relevance(relevance, labels) -> np.ndarray:
    """Sum of each subject's relevance map over each region.

    Parameters
    ----------
    relevance : ndarray, shape (n, c, i, j, k) or (n, i, j, k)
    labels : ndarray of int, shape (i, j, k)

    Returns
    -------
    ndarray, shape (n, n_regions)
        In ``np.unique(labels)`` order (label 0 excluded).
    """
    rel = np.asarray(relevance, dtype=np.float64)
    rel = rel.sum(axis=1) if rel.ndim == 5 else rel
    lab = np.asarray(labels).ravel()
    regions = [r for r in np.unique(lab) if r != 0]
    flat = rel.reshape(rel.shape[0], -1)
    index = np.searchsorted(regions, lab)
    inside = lab != 0
    out = np.zeros((rel.shape[0], len(regions)))
    for s in range(rel.shape[0]):
        out[s] = np.bincount(index[inside], weights=flat[s, inside], minlength=len(regions))
    return out


def reliance_spearman(relevance_by_region, reliance) -> tuple[float, float]:
    """Spearman correlation of per-region relevance with per-region reliance.

    Parameters
    ----------
    relevance_by_region, reliance : ndarray, shape (n, n_regions)

    Returns
    -------
    per_subject : float
        Mean over subjects of each subject's Spearman ρ across regions (NaN where a subject's
        values are constant).
    population : float
        Spearman ρ of the subject means.
    """
    from scipy import stats

    a = np.asarray(relevance_by_region, float)
    b = np.asarray(reliance, float)
    if a.shape != b.shape or a.shape[1] < 3:
        raise ConfigError(f"need the same (n, ≥ 3 regions) shapes; got {a.shape} and {b.shape}")
    rhos = []
    for s in range(a.shape[0]):
        if np.ptp(a[s]) > 0 and np.ptp(b[s]) > 0:
            rhos.append(stats.spearmanr(a[s], b[s]).statistic)
    per = float(np.mean(rhos)) if rhos else float("nan")
    ma, mb = a.mean(axis=0), b.mean(axis=0)
    pop = float(stats.spearmanr(ma, mb).statistic) if np.ptp(ma) > 0 and np.ptp(mb) > 0 else np.nan
    return per, float(pop)
