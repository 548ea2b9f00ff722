"""Voxelwise permutation inference with TFCE and family-wise error control (METHODS §10).

:func:`permutation_test` runs the batched Freedman–Lane GLM of :mod:`brainage.stats.glm` over a
seeded stream of permutations (or sign flips), optionally enhances every statistic map with the
exact TFCE transform (:mod:`brainage.stats.tfce`), and keeps only what the p-values need —
per-voxel exceedance counts and the maximum of each rearrangement — never the full null
distribution (memory O(V + n_perm)). p-values are ``(1 + count) / (1 + n_perm)`` over the
``n_perm`` random rearrangements (the observed one is not counted twice); FWE-corrected p-values
come from the distribution of the maximum over voxels (over both tails for a two-sided test:
the maximum of |statistic|), as FSL ``randomise`` and nilearn ``permuted_ols`` do.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from brainage.errors import InputError
from brainage.stats.glm import BatchedGLM, Rearrangements


@dataclass
class PermutationResult:
    """Maps and null maxima of one contrast (voxel arrays of shape (V,), in-mask order).

    Attributes
    ----------
    stat : ndarray
        t (rank-1 contrast) or F statistic.
    p_uncorrected, p_fwe : ndarray
        Voxelwise and FWE-corrected p of the statistic.
    tfce, p_tfce_uncorrected, p_tfce_fwe : ndarray or None
        TFCE of the statistic (signed for a two-sided t-test: positive tail − negative tail) and
        its p-values; None without TFCE.
    null_max, null_max_tfce : ndarray, shape (n_perm,)
        Maximum over voxels per random rearrangement (FWE null), of the statistic and of TFCE.
    info : dict
        What was done (n_perm, kind, tails, E, H, connectivity, seed, dof, rank).
    """

    stat: np.ndarray
    p_uncorrected: np.ndarray
    p_fwe: np.ndarray
    null_max: np.ndarray
    tfce: np.ndarray | None = None
    p_tfce_uncorrected: np.ndarray | None = None
    p_tfce_fwe: np.ndarray | None = None
    null_max_tfce: np.ndarray | None = None
    info: dict = field(default_factory=dict)


def _fwe(observed: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """``(1 + #{max* ≥ observed}) / (1 + n_perm)`` per voxel."""
    ranks = np.searchsorted(np.sort(null_max), observed, side="left")
    return (1.0 + (null_max.size - ranks)) / (1.0 + null_max.size)


def permutation_test(
    data,
    design,
    contrast,
    n_perm: int = 5000,
    *,
    two_sided: bool = True,
    sign_flip: bool | None = None,
    blocks=None,
    mask: np.ndarray | None = None,
    tfce: bool = False,
    tfce_e: float = 0.5,
    tfce_h: float = 2.0,
    connectivity: int = 26,
    seed: int = 0,
    batch_size: int = 64,
    n_jobs: int = 1,
    progress=None,
) -> PermutationResult:
    """Permutation test of one contrast at every voxel, with TFCE and FWE control.

    Parameters
    ----------
    data : array-like, shape (n, V)
        One row per subject: the values at V voxels (in-mask voxels of ``mask``, C order).
    design : array-like, shape (n, p)
        Design matrix (with an intercept column if the model has one).
    contrast : array-like, shape (p,) or (s, p)
        t contrast, or F contrast of s rows (F-tests are one-sided by nature).
    n_perm : int
        Random rearrangements (FSL's default for publication: 5,000).
    two_sided : bool
        For t contrasts: test both tails (FWE from the maximum of |t| and of |TFCE| over both
        tails). False: the positive tail only (``t > 0``; flip the contrast for the other).
    sign_flip : bool, optional
        Sign flips instead of permutations. Default: True for an intercept-only design (a
        one-sample test, where permuting changes nothing), else False.
    blocks : array-like, shape (n,), optional
        Exchangeability blocks (site, fold): permutations stay within blocks.
    mask : ndarray of bool, shape (i, j, k), optional
        Where the V voxels lie; needed for TFCE (cluster extent is measured on this grid).
    tfce : bool
        Also enhance every statistic map by exact TFCE (Smith & Nichols 2009).
    tfce_e, tfce_h : float
        TFCE extent and height exponents (FSL: E 0.5, H 2).
    connectivity : {6, 18, 26}
        Voxel neighbourhood of TFCE clusters (FSL randomise: 26).
    seed : int
        Seed of the rearrangements (same seed → same p-values).
    batch_size : int
        Rearrangements fitted per matrix product (memory ≈ batch_size × V × 8 bytes × a few).
    n_jobs : int
        Threads of the TFCE transform (over the maps of a batch; the GIL is released).
    progress : callable, optional
        ``progress(done, total)`` after each batch.

    Returns
    -------
    PermutationResult

    Raises
    ------
    InputError
        Shapes do not match, TFCE without a mask, or a bad connectivity.
    """
    x = np.asarray(design, float)
    glm = BatchedGLM(np.asarray(data, float), x, contrast)
    n, v = glm.y.shape
    if sign_flip is None:
        sign_flip = x.shape[1] == 1 and np.allclose(x, x[0])
    if glm.rank > 1:
        two_sided = False
    if tfce:
        from brainage.stats.tfce import check_connectivity

        check_connectivity(connectivity)
        if mask is None or int(np.sum(mask)) != v:
            raise InputError(
                f"TFCE needs the voxel mask of the data ({v} voxels); got "
                f"{'none' if mask is None else int(np.sum(mask))}"
            )
    gen = Rearrangements(n, n_perm, bool(sign_flip), blocks, seed)
    observed = observed_tfce = None
    count = np.zeros(v, np.int64)
    count_tfce = np.zeros(v, np.int64) if tfce else None
    null_max, null_max_tfce = [], []
    done = 0
    for block in gen.batches(batch_size):
        stats = glm.statistics(block, bool(sign_flip))  # (B, V)
        enhanced = (
            _enhance(stats, mask, two_sided, tfce_e, tfce_h, connectivity, n_jobs) if tfce else None
        )
        start = 0
        if observed is None:  # row 0 is the identity: the observed maps
            observed = stats[0].copy()
            observed_tfce = enhanced[0].copy() if tfce else None
            start = 1
        score = np.abs(stats[start:]) if two_sided else stats[start:]
        ref = np.abs(observed) if two_sided else observed
        count += np.sum(score >= ref[None] - 1e-12 * np.abs(ref[None]), axis=0)
        null_max.extend(score.max(axis=1).tolist())
        if tfce:
            tscore = np.abs(enhanced[start:]) if two_sided else enhanced[start:]
            tref = np.abs(observed_tfce) if two_sided else observed_tfce
            count_tfce += np.sum(tscore >= tref[None] - 1e-12 * np.abs(tref[None]), axis=0)
            null_max_tfce.extend(tscore.max(axis=1).tolist())
        done += block.shape[0]
        if progress is not None:
            progress(done, n_perm + 1)
    null_max = np.asarray(null_max)
    ref = np.abs(observed) if two_sided else observed
    result = PermutationResult(
        stat=observed,
        p_uncorrected=(1.0 + count) / (1.0 + n_perm),
        p_fwe=_fwe(ref, null_max),
        null_max=null_max,
    )
    if tfce:
        result.tfce = observed_tfce
        result.null_max_tfce = np.asarray(null_max_tfce)
        result.p_tfce_uncorrected = (1.0 + count_tfce) / (1.0 + n_perm)
        tref = np.abs(observed_tfce) if two_sided else observed_tfce
        result.p_tfce_fwe = _fwe(tref, result.null_max_tfce)
    result.info = {
        "n_perm": int(n_perm),
        "kind": "sign_flip" if sign_flip else "permutation",
        "inference": "Freedman-Lane",
        "two_sided": bool(two_sided),
        "statistic": "t" if glm.rank == 1 else "F",
        "rank": glm.rank,
        "dof": int(glm.dof),
        "blocks": None if blocks is None or sign_flip else int(len(np.unique(blocks))),
        "seed": int(seed),
        "tfce": {"E": tfce_e, "H": tfce_h, "connectivity": connectivity} if tfce else None,
    }
    return result


def _enhance(stats, mask, two_sided, e, h, connectivity, n_jobs=1) -> np.ndarray:
    """TFCE of every row of ``stats`` (B, V) on ``mask``; signed (pos − neg tail) if two-sided."""
    from brainage.stats.tfce import tfce_volumes

    vol = np.zeros((stats.shape[0], *mask.shape), np.float32)
    vol[:, mask] = stats if two_sided else np.maximum(stats, 0)
    return tfce_volumes(vol, e, h, connectivity, two_sided=two_sided, n_jobs=n_jobs)[:, mask]
