"""Faithfulness of relevance maps by perturbation: MoRF / LeRF / random curves and AOPC.

Samek et al. (2017, "Evaluating the visualization of what a deep neural network has learned")
remove the most relevant input features first (MoRF) and measure how fast the model's output
falls; the area over the perturbation curve (AOPC) summarises it. For a brain-age regressor
with signed relevance (positive = evidence for an older brain age), removing the voxels of
highest relevance first should *lower* the predicted age (AOPC > 0), removing the lowest
(most negative) first (LeRF) should raise it (AOPC < 0), and a random order lies between; a
map is faithful to the extent that MoRF beats the random order.

"Removing" a voxel replaces it by the mean training image (``imputation="mean"``), the model's
own notion of an average brain, so the perturbed input stays close to the training
distribution. ``"noisy_mean"`` adds Gaussian noise to the replacement, in the spirit of ROAD
(Rong et al. 2022, "A consistent and efficient evaluation strategy for attribution methods"),
whose noisy imputation keeps the removed pattern from being recognisable by its shape.
"""

from __future__ import annotations

import numpy as np

from brainage.errors import ConfigError

#: Orders of removal: most relevant first, least relevant first, random.
ORDERS = ("morf", "lerf", "random")
#: Default fractions of the brain's voxels removed at each step of a curve.
DEFAULT_FRACTIONS = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5)
IMPUTATIONS = ("mean", "noisy_mean")


def removal_order(relevance: np.ndarray, mask: np.ndarray, order: str, rng) -> np.ndarray:
    """Flat indices of the brain voxels in the order they are removed.

    Parameters
    ----------
    relevance : ndarray, shape (i, j, k)
        One subject's map (summed over channels).
    mask : ndarray of bool, shape (i, j, k)
    order : {"morf", "lerf", "random"}
        Highest relevance first, lowest first, or a random permutation (``rng``).
    rng : numpy.random.Generator

    Returns
    -------
    ndarray of int, shape (n_brain_voxels,)
        Ties keep voxel order (stable sort).
    """
    inside = np.flatnonzero(mask.ravel())
    values = relevance.ravel()[inside]
    if order == "morf":
        return inside[np.argsort(-values, kind="stable")]
    if order == "lerf":
        return inside[np.argsort(values, kind="stable")]
    if order == "random":
        return inside[rng.permutation(len(inside))]
    raise ConfigError(f"unknown removal order {order!r}; one of {', '.join(ORDERS)}")


def perturbation_curves(
    predict,
    volumes,
    relevance,
    reference,
    mask,
    orders=ORDERS,
    fractions=DEFAULT_FRACTIONS,
    imputation: str = "mean",
    noise: float = 0.1,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """Predictions while the brain is removed in relevance order (MoRF, LeRF, random).

    Parameters
    ----------
    predict : callable
        ``predict(batch) → ndarray (n,)`` of predicted ages in years; ``batch`` is a float32
        array shaped like ``volumes``.
    volumes : ndarray, shape (n, c, i, j, k)
        Model inputs (template space, model grid).
    relevance : ndarray, shape (n, c, i, j, k) or (n, i, j, k)
        Each subject's relevance map (channels are summed to rank voxels).
    reference : ndarray, shape (c, i, j, k) or (i, j, k)
        Replacement values: the mean training image.
    mask : ndarray of bool, shape (i, j, k)
        Brain voxels (only they are removed; the fractions are of their number).
    orders : sequence of {"morf", "lerf", "random"}
    fractions : sequence of float
        Fractions of the brain removed at each step, increasing, starting at 0.
    imputation : {"mean", "noisy_mean"}
        Replacement by the reference, or the reference plus Gaussian noise of SD ``noise`` × the
        SD of the reference inside the brain (fixed per subject, seeded).
    noise : float
    seed : int
        Seeds the random order and the noise; the same seed gives the same curves.

    Returns
    -------
    dict of str to ndarray, shape (n, n_steps)
        Predicted age (years) after each step, per order.

    Raises
    ------
    ConfigError
        Bad order, imputation or fractions; shapes that do not match.
    """
    x = np.asarray(volumes, dtype=np.float32)
    if x.ndim != 5:
        raise ConfigError(f"'volumes' must have shape (n, c, i, j, k); got {x.shape}")
    rel = np.asarray(relevance, dtype=np.float64)
    rel = rel.sum(axis=1) if rel.ndim == 5 else rel
    ref = np.asarray(reference, dtype=np.float32)
    ref = np.broadcast_to(ref if ref.ndim == 4 else ref[None], x.shape[1:])
    mask = np.asarray(mask, dtype=bool)
    if rel.shape != (x.shape[0], *x.shape[2:]) or mask.shape != x.shape[2:]:
        raise ConfigError(
            f"relevance {rel.shape} and mask {mask.shape} must match volumes {x.shape}"
        )
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or fr[0] != 0 or np.any(np.diff(fr) <= 0) or fr[-1] > 1:
        raise ConfigError(f"'fractions' must increase from 0 to at most 1; got {list(fractions)}")
    if imputation not in IMPUTATIONS:
        raise ConfigError(f"'imputation' must be one of {', '.join(IMPUTATIONS)}")
    n_brain = int(mask.sum())
    counts = np.rint(fr * n_brain).astype(int)
    rng = np.random.default_rng(seed)
    out = {}
    spatial = int(np.prod(x.shape[2:]))
    for order in orders:
        curves = np.zeros((x.shape[0], len(counts)))
        for s in range(x.shape[0]):
            fill = ref.reshape(x.shape[1], spatial).copy()
            if imputation == "noisy_mean":
                sd = float(ref.reshape(x.shape[1], spatial)[:, mask.ravel()].std())
                fill += rng.normal(0.0, noise * sd, fill.shape).astype(np.float32)
            idx = removal_order(rel[s], mask, order, rng)
            batch = np.repeat(x[s].reshape(1, x.shape[1], spatial), len(counts), axis=0)
            for step, k in enumerate(counts):
                batch[step][:, idx[:k]] = fill[:, idx[:k]]
            curves[s] = np.asarray(predict(batch.reshape(len(counts), *x.shape[1:])), float)
        out[order] = curves
    return out


def aopc(curves: np.ndarray) -> np.ndarray:
    """Area over the perturbation curve per subject (Samek et al. 2017), years.

    ``AOPC = 1 / (L + 1) · Σ_{k=0..L} (f(x⁰) − f(xᵏ))`` over the ``L + 1`` steps of a curve
    (step 0 = the intact input).

    Parameters
    ----------
    curves : ndarray, shape (n, L + 1)

    Returns
    -------
    ndarray, shape (n,)
    """
    c = np.asarray(curves, dtype=float)
    return (c[:, :1] - c).mean(axis=1)


def mean_with_ci(values, seed: int = 0, n_resamples: int = 2000, level: float = 0.95):
    """Mean of per-subject values with a bootstrap percentile CI across subjects.

    Returns
    -------
    (float, float, float)
        Mean and CI bounds; the bounds are NaN with fewer than 3 finite values.
    """
    from scipy import stats

    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan"), float("nan")
    if v.size < 3 or np.ptp(v) == 0:
        return float(v.mean()), float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    res = stats.bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=level,
                          method="percentile", random_state=rng)  # fmt: skip
    return float(v.mean()), float(res.confidence_interval.low), float(res.confidence_interval.high)


def faithfulness_scores(
    predict, volumes, relevance, reference, mask, seed: int = 0, **kwargs
) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """AOPC of MoRF, LeRF and random removal with bootstrap CIs, and the mean curves.

    Parameters
    ----------
    predict, volumes, relevance, reference, mask, seed
        As :func:`perturbation_curves`; ``kwargs`` go there too (``fractions``, ``imputation``).

    Returns
    -------
    scores : dict of str to float
        ``aopc_morf``, ``aopc_lerf``, ``aopc_random`` (mean over subjects, years) with
        ``…_ci_low`` / ``…_ci_high`` (95 % bootstrap CI across subjects), ``aopc_morf_minus_random``
        with its CI (paired per subject), ``faithfulness_n`` (subjects).
    curves : dict of str to ndarray, shape (n_steps,)
        Mean predicted-age change ``f(xᵏ) − f(x⁰)`` per step and order, plus ``fractions``.
    """
    curves = perturbation_curves(predict, volumes, relevance, reference, mask, seed=seed,
                                 **kwargs)  # fmt: skip
    scores: dict[str, float] = {"faithfulness_n": float(np.asarray(volumes).shape[0])}
    per = {o: aopc(c) for o, c in curves.items()}
    for order, values in per.items():
        m, lo, hi = mean_with_ci(values, seed)
        scores[f"aopc_{order}"], scores[f"aopc_{order}_ci_low"] = m, lo
        scores[f"aopc_{order}_ci_high"] = hi
    if "morf" in per and "random" in per:
        m, lo, hi = mean_with_ci(per["morf"] - per["random"], seed)
        scores.update(aopc_morf_minus_random=m, aopc_morf_minus_random_ci_low=lo,
                      aopc_morf_minus_random_ci_high=hi)  # fmt: skip
    mean_curves = {o: (c - c[:, :1]).mean(axis=0) for o, c in curves.items()}
    mean_curves["fractions"] = np.asarray(kwargs.get("fractions", DEFAULT_FRACTIONS), float)
    return scores, mean_curves
