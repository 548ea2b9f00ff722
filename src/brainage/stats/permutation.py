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


class _NullTally:
    """What the p-values of one statistic need, in O(V + n_perm) memory.

    The first row ever added is the observed map; every later row is a rearrangement, scored as
    |value| for a two-sided test. Kept: per-voxel exceedance counts and each rearrangement's
    maximum over voxels (the FWE null), never the full null distribution.
    """

    def __init__(self, n_voxels: int, two_sided: bool) -> None:
        self.two_sided = two_sided
        self.count = np.zeros(n_voxels, np.int64)
        self.maxima: list[float] = []
        self.observed: np.ndarray | None = None
        self._ref: np.ndarray | None = None

    def _score(self, x: np.ndarray) -> np.ndarray:
        return np.abs(x) if self.two_sided else x

    def add(self, rows: np.ndarray) -> None:
        """Add a block of maps, shape (B, V)."""
        if self.observed is None:
            self.observed = rows[0].copy()
            self._ref = self._score(self.observed)
            rows = rows[1:]
        score = self._score(rows)
        self.count += np.sum(score >= self._ref - 1e-12 * np.abs(self._ref), axis=0)
        self.maxima.extend(score.max(axis=1).tolist())

    @property
    def null_max(self) -> np.ndarray:
        """Maximum over voxels of each rearrangement, shape (n_perm,)."""
        return np.asarray(self.maxima)

    def p_uncorrected(self) -> np.ndarray:
        """``(1 + #{null ≥ observed}) / (1 + n_perm)`` per voxel."""
        return (1.0 + self.count) / (1.0 + len(self.maxima))

    def p_fwe(self) -> np.ndarray:
        """``(1 + #{max* ≥ observed}) / (1 + n_perm)`` per voxel."""
        null = np.sort(self.null_max)
        ranks = np.searchsorted(null, self._ref, side="left")
        return (1.0 + (null.size - ranks)) / (1.0 + null.size)


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
    tally = _NullTally(v, two_sided)
    tally_tfce = _NullTally(v, two_sided) if tfce else None
    done = 0
    for block in gen.batches(batch_size):
        stats = glm.statistics(block, bool(sign_flip))  # (B, V); row 0 of the first: observed
        tally.add(stats)
        if tfce:
            tally_tfce.add(_enhance(stats, mask, two_sided, tfce_e, tfce_h, connectivity, n_jobs))
        done += block.shape[0]
        if progress is not None:
            progress(done, n_perm + 1)
    result = PermutationResult(
        stat=tally.observed,
        p_uncorrected=tally.p_uncorrected(),
        p_fwe=tally.p_fwe(),
        null_max=tally.null_max,
    )
    if tfce:
        result.tfce = tally_tfce.observed
        result.null_max_tfce = tally_tfce.null_max
        result.p_tfce_uncorrected = tally_tfce.p_uncorrected()
        result.p_tfce_fwe = tally_tfce.p_fwe()
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
    from brainage.stats.tfce import tfce_masked

    values = stats if two_sided else np.maximum(stats, 0)
    out = tfce_masked(values, mask, e, h, connectivity, two_sided=two_sided, n_jobs=n_jobs)
    return out.astype(np.float64)
