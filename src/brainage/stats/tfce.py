"""Exact threshold-free cluster enhancement (Smith & Nichols 2009), through the ``tfce`` package.

``TFCE(v) = ∫₀^{h_v} e_v(h)^E h^H dh`` with ``e_v(h)`` the extent (voxels) of the cluster that
holds voxel ``v`` in the map thresholded at ``h``. The ``tfce`` package (C. Gaser, the MATLAB
TFCE toolbox's C core, BSD-3) integrates it exactly on the map's max-tree — no step size ``dh``
— for 6-, 18- or 26-connectivity, over a batch of maps in threads with the GIL released. It
computes in float32. Evaluated for brainage (issue 9): its transform is used; its ``PermutedGLM``
is not (it permutes the raw data, Manly's method, whose error rate is not controlled with a
nuisance covariate; brainage uses Freedman–Lane, :mod:`brainage.stats.glm`).

nilearn's ``permuted_ols(tfce=True)`` instead sums ``e^E h^H`` over 100 steps of ``max|map|/100``
without multiplying by the step, so its values are ≈ ``(100 / max|map|)`` × the integral and the
enhancement of one cluster depends on the height of another.
"""

from __future__ import annotations

import numpy as np

from brainage.errors import InputError

#: Voxel neighbourhoods (face, edge, corner); FSL randomise and the MATLAB toolbox use 26.
CONNECTIVITIES = (6, 18, 26)


def check_connectivity(connectivity: int) -> int:
    """Return ``connectivity`` if it is 6, 18 or 26, else raise :class:`InputError`."""
    if connectivity not in CONNECTIVITIES:
        raise InputError(f"TFCE connectivity must be 6, 18 or 26; got {connectivity!r}")
    return int(connectivity)


def tfce_volumes(
    volumes,
    e: float = 0.5,
    h: float = 2.0,
    connectivity: int = 26,
    two_sided: bool = True,
    n_jobs: int = 1,
) -> np.ndarray:
    """TFCE of a batch of 3D statistic maps.

    Parameters
    ----------
    volumes : array-like, shape (B, i, j, k) or (i, j, k)
        Statistic maps on a voxel grid (0 outside the mask).
    e, h : float
        Extent and height exponents (FSL volumes: E 0.5, H 2).
    connectivity : {6, 18, 26}
    two_sided : bool
        Enhance the negative part too, with negative values (each tail's clusters separately).
    n_jobs : int
        Threads over the B maps.

    Returns
    -------
    ndarray, float64, the shape of ``volumes``
        Units: statistic^H × voxels^E.
    """
    vol = np.asarray(volumes)
    single = vol.ndim == 3
    batch = vol[None] if single else vol
    if batch.ndim != 4:
        raise InputError(f"TFCE needs maps of shape (B, i, j, k); got {vol.shape}")
    whole = np.ones(batch.shape[1:], bool)
    flat = batch.reshape(batch.shape[0], -1)
    out = tfce_masked(flat, whole, e, h, connectivity, two_sided, n_jobs).astype(np.float64)
    out = out.reshape(batch.shape)
    return out[0] if single else out


def tfce_masked(
    stats,
    mask: np.ndarray,
    e: float = 0.5,
    h: float = 2.0,
    connectivity: int = 26,
    two_sided: bool = True,
    n_jobs: int = 1,
) -> np.ndarray:
    """TFCE of a batch of in-mask statistic vectors, without building C-ordered volumes.

    The ``tfce`` core reads volumes column-major; this fills one column-major float32 buffer
    at the mask's Fortran-order voxel indices and gathers the result from it (the same values
    as :func:`tfce_volumes` on the scattered maps, at a fraction of the copying).

    Parameters
    ----------
    stats : ndarray, shape (B, V)
        V = ``mask.sum()`` values per map, in C order of the mask's voxels.
    mask : ndarray of bool, shape (i, j, k)
    e, h, connectivity, two_sided, n_jobs
        As in :func:`tfce_volumes`.

    Returns
    -------
    ndarray, float32, shape (B, V)
    """
    import tfce as tfce_package

    check_connectivity(connectivity)
    stats = np.asarray(stats)
    n_vox = int(np.prod(mask.shape))
    # the mask's voxels in C order, addressed by their column-major (Fortran) flat index
    f_index = np.ravel_multi_index(np.nonzero(mask), mask.shape, order="F")
    buf = np.zeros((n_vox, stats.shape[0]), np.float32, order="F")
    buf[f_index, :] = stats.T
    out = tfce_package.tfce(
        buf.reshape((*mask.shape, stats.shape[0]), order="F"),
        connectivity=connectivity,
        E=float(e),
        H=float(h),
        two_sided=bool(two_sided),
        n_jobs=int(n_jobs),
    )
    flat = np.reshape(np.asarray(out), (n_vox, stats.shape[0]), order="F")
    return flat[f_index, :].T


def tfce_stepped(volume, e=0.5, h=2.0, connectivity=26, n_steps=1000) -> np.ndarray:
    """Slow reference: TFCE of the positive part by a midpoint sum over ``n_steps`` thresholds.

    ``Σ_k e_v(h_k)^E h_k^H Δh`` with ``h_k = (k + ½) Δh``, ``Δh = max/n_steps`` and clusters from
    :func:`scipy.ndimage.label`; converges to the integral as ``Δh → 0`` (the test oracle).

    Parameters
    ----------
    volume : array-like, shape (i, j, k)

    Returns
    -------
    ndarray, float64, shape (i, j, k)
    """
    from scipy import ndimage

    x = np.maximum(np.asarray(volume, float), 0)
    top = x.max()
    out = np.zeros_like(x)
    if top <= 0:
        return out
    rank = {6: 1, 18: 2, 26: 3}[check_connectivity(connectivity)]
    structure = ndimage.generate_binary_structure(3, rank)
    dh = top / n_steps
    for k in range(n_steps):
        level = (k + 0.5) * dh
        labels, n = ndimage.label(x >= level, structure)
        if n == 0:
            continue
        sizes = np.bincount(labels.ravel())
        sizes[0] = 0
        out += np.where(labels > 0, sizes[labels].astype(float) ** e, 0.0) * level**h * dh
    return out
