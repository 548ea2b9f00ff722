"""General linear model with permutation inference: designs, contrasts, Freedman–Lane, batches.

Implements the permutation framework of Winkler et al. 2014 ("Permutation inference for the
general linear model", NeuroImage 92) as FSL ``randomise`` does (METHODS §10; paper 001 tests
relevance maps with randomise):

- the design ``X`` (n × p) is partitioned for a contrast ``C`` (p × s) into the effects of
  interest ``X C (C' (X'X)⁻¹ C)⁻¹``-style columns and nuisance columns ``Z`` spanning the rest of
  the model (Winkler 2014, appendix A, after Beckmann et al. 2001);
- nuisance covariates are handled by Freedman–Lane: the data are residualised on ``Z``, the
  residuals permuted (or sign-flipped), and the full model refitted — exact under the null for
  exchangeable errors, and the method with the best error control in Winkler's comparison;
- one-sample tests (an intercept-only design) and designs assuming symmetric errors use sign
  flipping instead of permutation;
- exchangeability blocks (e.g. site or fold) restrict permutations to within each block;
- a block of ``B`` permutations is fitted with one matrix product: the permuted residuals'
  projections on an orthonormal basis of the model give every contrast estimate and every
  residual sum of squares (``‖P r‖² = ‖r‖²`` for permutations and sign flips), so the cost is
  one ``(B·p × n) @ (n × V)`` product per block instead of ``B`` least-squares fits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import linalg

from brainage.errors import InputError
from brainage.utils import check_random_state


@dataclass(frozen=True)
class PartitionedModel:
    """A design partitioned for one contrast (Winkler et al. 2014, appendix A).

    Attributes
    ----------
    interest : ndarray, shape (n, s)
        Regressors of interest (their coefficients are the contrast's effects).
    nuisance : ndarray, shape (n, p − s)
        Nuisance regressors (possibly zero columns).
    rank : int
        Rank s of the contrast (1: a t-test; > 1: an F-test).
    """

    interest: np.ndarray
    nuisance: np.ndarray
    rank: int

    @property
    def model(self) -> np.ndarray:
        """The full reparametrised design ``[interest, nuisance]``, shape (n, p)."""
        return np.hstack([self.interest, self.nuisance])


def partition_design(design, contrast) -> PartitionedModel:
    """Partition a design matrix for a contrast (Beckmann et al. 2001; Winkler et al. 2014).

    Parameters
    ----------
    design : array-like, shape (n, p)
        Design matrix ``X`` (include an intercept column if the model has one).
    contrast : array-like, shape (p,) or (s, p)
        Contrast vector (t-test) or matrix of s rows (F-test).

    Returns
    -------
    PartitionedModel
        ``interest = X D C (C' D C)⁻¹`` and ``nuisance = X D Cv (Cv' D Cv)⁻¹`` with ``D =
        (X'X)⁻¹`` and ``Cv`` the part of the contrast's null space orthogonal to it under ``D``;
        the contrast's estimate in the original model equals the coefficients of ``interest``.

    Raises
    ------
    InputError
        Shapes do not match, the design is rank-deficient, or the contrast is not estimable.
    """
    x = np.asarray(design, float)
    c = np.atleast_2d(np.asarray(contrast, float)).T  # (p, s)
    if x.ndim != 2 or c.shape[0] != x.shape[1]:
        raise InputError(
            f"the contrast has {c.shape[0]} entries but the design has {x.shape[1]} columns"
        )
    n, p = x.shape
    if np.linalg.matrix_rank(x) < p:
        raise InputError(
            f"the design ({n} subjects × {p} regressors) is rank-deficient: two regressors are "
            "collinear or one is constant besides the intercept",
            "drop the redundant column",
        )
    d = np.linalg.inv(x.T @ x)
    s = np.linalg.matrix_rank(c)
    if s < c.shape[1]:
        raise InputError("the contrast's rows are linearly dependent")
    cu = linalg.null_space(c.T)  # (p, p − s)
    interest = x @ d @ c @ np.linalg.inv(c.T @ d @ c)
    if cu.shape[1] == 0:
        nuisance = np.zeros((n, 0))
    else:
        cv = cu - c @ np.linalg.inv(c.T @ d @ c) @ c.T @ d @ cu
        nuisance = x @ d @ cv @ np.linalg.pinv(cv.T @ d @ cv)
    return PartitionedModel(interest, nuisance, int(s))


# ------------------------------------------------------------------ permutations


def _check_blocks(blocks, n: int) -> np.ndarray:
    if blocks is None:
        return np.zeros(n, int)
    b = np.asarray(blocks)
    if b.shape != (n,):
        raise InputError(
            f"exchangeability blocks must have one entry per subject ({n}); got {b.shape}"
        )
    return np.unique(b, return_inverse=True)[1]


def n_possible(n: int, sign_flip: bool, blocks=None) -> float:
    """Count the distinct rearrangements: 2ⁿ sign flips, or ∏ nᵦ! permutations within blocks."""
    from math import lgamma

    if sign_flip:
        return float(2.0**n)
    b = _check_blocks(blocks, n)
    return float(np.exp(sum(lgamma(np.sum(b == k) + 1) for k in np.unique(b))))


@dataclass
class Rearrangements:
    """A seeded generator of permutations or sign flips, in blocks of rows (bounded memory).

    Row 0 of the first block is always the identity (the observed statistic). Every further row
    is drawn at random (with replacement among the possible rearrangements, as FSL randomise does
    when it cannot enumerate them all).

    Parameters
    ----------
    n : int
        Subjects.
    n_perm : int
        Random rearrangements besides the identity.
    sign_flip : bool
        Sign flips (one-sample tests, symmetric errors) instead of permutations.
    blocks : array-like, shape (n,), optional
        Exchangeability blocks: subjects are permuted only within their block (sign flips are
        drawn per subject, so blocks do not restrict them).
    seed : int
    """

    n: int
    n_perm: int
    sign_flip: bool = False
    blocks: np.ndarray | None = None
    seed: int = 0

    def __post_init__(self):
        self._blocks = _check_blocks(self.blocks, self.n)
        self._members = [np.flatnonzero(self._blocks == k) for k in np.unique(self._blocks)]

    def batches(self, size: int = 64):
        """Yield ``(kind, array)`` blocks: permutation indices (B, n) or signs (B, n) of ±1."""
        rng = check_random_state(self.seed)
        total, done = self.n_perm + 1, 0
        while done < total:
            b = min(size, total - done)
            if self.sign_flip:
                out = rng.choice(np.array([-1.0, 1.0]), size=(b, self.n))
            else:
                out = np.empty((b, self.n), int)
                for row in range(b):
                    perm = np.arange(self.n)
                    for idx in self._members:
                        perm[idx] = idx[rng.permutation(idx.size)]
                    out[row] = perm
            if done == 0:
                out[0] = 1.0 if self.sign_flip else np.arange(self.n)
            done += b
            yield out


# ------------------------------------------------------------------ the batched GLM


#: Bytes of one voxel chunk of the batched product (about an L2/L3 cache's worth).
VOXEL_CHUNK_BYTES = 2 << 20


@dataclass
class BatchedGLM:
    """Freedman–Lane fits of one contrast for a block of permutations with one matrix product.

    Parameters
    ----------
    data : array-like, shape (n, V)
        One row per subject (e.g. relevance at V in-mask voxels).
    design : array-like, shape (n, p)
    contrast : array-like, shape (p,) or (s, p)

    Notes
    -----
    With ``M = [interest, nuisance]`` (n × p), an orthonormal basis ``Q`` of ``M`` (n × p) and
    ``R = (I − H_Z) Y`` the data residualised on the nuisance: for a rearrangement ``P`` the
    permuted data ``P R`` (plus ``H_Z Y``, which lies in the model and changes nothing) give
    ``β̂ = (M'M)⁻¹ M' P R``, ``SSE = ‖P R‖² − ‖Q' P R‖² = ‖R‖² − ‖Q' P R‖²``, and
    ``t = c'β̂ / √(SSE/(n − p) · c'(M'M)⁻¹c)`` (F for rank-s contrasts).
    """

    data: np.ndarray
    design: np.ndarray
    contrast: np.ndarray

    def __post_init__(self):
        y = np.asarray(self.data, float)
        if y.ndim == 1:
            y = y[:, None]
        self.y = y
        self.part = partition_design(self.design, self.contrast)
        m = self.part.model
        n, p = m.shape
        if y.shape[0] != n:
            raise InputError(f"the data have {y.shape[0]} rows but the design has {n} subjects")
        if n - p < 1:
            raise InputError(f"{n} subjects cannot fit {p} regressors with residual freedom")
        z = self.part.nuisance
        if z.shape[1]:
            qz = np.linalg.qr(z)[0]
            self.resid = y - qz @ (qz.T @ y)
        else:
            self.resid = y
        self.q = np.linalg.qr(m)[0]  # (n, p)
        self.pinv_interest = np.linalg.pinv(m)[: self.part.rank]  # (s, n)
        self.pinv_q = self.pinv_interest @ self.q  # (s, p)
        self.mm_inv = np.linalg.inv(m.T @ m)[: self.part.rank, : self.part.rank]
        self.ss_total = np.einsum("nv,nv->v", self.resid, self.resid)
        self.dof = n - p

    @property
    def rank(self) -> int:
        """Rank of the contrast (1: t statistics; > 1: F statistics)."""
        return self.part.rank

    def statistics(self, rearrangement: np.ndarray, sign_flip: bool) -> np.ndarray:
        """Compute t (rank 1) or F statistics for a block of rearrangements.

        Parameters
        ----------
        rearrangement : ndarray, shape (B, n)
            Permutation indices, or signs (±1) with ``sign_flip``.
        sign_flip : bool

        Returns
        -------
        ndarray, shape (B, V)
        """
        r = np.asarray(rearrangement)
        s, p = self.rank, self.q.shape[1]
        if sign_flip:  # (P R) = diag(signs) R: fold the signs into the row operators
            qp = self.q.T[None] * r[:, None, :]  # (B, p, n)
        else:  # (P R)_i = R_{perm(i)}: column perm(i) of the operator takes row i → scatter
            inv = np.argsort(r, axis=1)
            qp = np.take_along_axis(self.q.T[None], inv[:, None, :], axis=2)
        b = r.shape[0]
        ops = qp.reshape(b * p, -1)
        n_vox = self.resid.shape[1]
        out = np.empty((b, n_vox))
        # voxel chunks keep the (B·p, chunk) product in cache: the work is memory-bound otherwise
        step = max(256, VOXEL_CHUNK_BYTES // (8 * b * p))
        for lo in range(0, n_vox, step):
            hi = min(lo + step, n_vox)
            proj = (ops @ self.resid[:, lo:hi]).reshape(b, p, -1)  # one matrix product per chunk
            # pinv(M) = pinv(M) Q Qᵀ (Q spans M): the contrast estimate comes from the projection
            cope = self.pinv_q @ proj  # (B, s, chunk)
            ss = np.einsum("bpv,bpv->bv", proj, proj)
            sigma2 = np.maximum(self.ss_total[None, lo:hi] - ss, 1e-300) / self.dof
            if s == 1:
                out[:, lo:hi] = cope[:, 0] / np.sqrt(sigma2 * self.mm_inv[0, 0])
            else:
                w = np.linalg.inv(self.mm_inv)
                num = np.einsum("bsv,st,btv->bv", cope, w, cope) / s
                out[:, lo:hi] = num / sigma2
        return out
