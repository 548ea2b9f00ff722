"""Benchmark: our voxelwise permutation engine vs nilearn ``permuted_ols(tfce=True)``.

Both arms get identical data, design and permutations, the same thread count and the same TFCE
neighbourhood (6-connectivity, which nilearn hard-codes):

- data: ``--n-subjects`` (default 100) synthetic maps on the 2 mm MNI brain mask (≈ 235k voxels
  of ``brainage.space.template_array("mask", 2.0)``): Gaussian white noise smoothed on the full
  grid (σ = 1.5 voxels, unit SD in the mask), plus an age effect in one spherical blob and a
  nuisance-covariate effect in another; the nuisance covariate is correlated with age (ρ 0.6),
  so Freedman–Lane matters (fitting age alone would show a spurious age effect in blob 2).
  Model ``y ~ 1 + age + nuisance``, contrast: age, two-sided. Seeded.
- permutations: nilearn draws its own from ``random_state`` and cannot be handed a list, and
  our ``Rearrangements`` only draws from a seed. So the bench replicates nilearn's RNG usage
  exactly (``check_random_state(random_state)``; one ``randint(1, 2³¹ − 2)`` seed per joblib
  chunk, in chunk order; per permutation ``rng.permutation(n)`` applied *cumulatively* to the
  design rows, ``tested = tested[idx]``) and turns each cumulative design shuffle ``c`` into
  our data-row permutation ``argsort(c)`` (regressing ``R`` on ``X[c]`` is regressing
  ``R[argsort(c)]`` on ``X``). Our arm then runs the real ``permutation_test`` with
  ``brainage.stats.permutation.Rearrangements`` monkeypatched (``unittest.mock.patch.object``,
  only inside this bench) by a subclass that yields the identity plus that list — everything
  else (batched GLM, exact TFCE, tallies, p-values) is the engine's own code. The per-permutation
  null max |t| of the two arms are compared to prove the permutations are shared.
- threads: both arms run under ``threadpool_limits(--threads)``; ours with ``n_jobs=threads``
  (TFCE threads), nilearn with ``n_jobs=threads`` (loky processes, one BLAS thread each).

Reported: seconds per permutation and in total per arm; max |Δt| of the observed t maps; TFCE
agreement once nilearn's values are scaled by its step (nilearn sums ``e^E h^H`` over 100 steps
of ``dh = max|t|/100`` — the maximum over both tails of each map — without multiplying by
``dh``); per-permutation null maxima; FWE p of t and of TFCE (max |Δp| against the Monte-Carlo
SE); then a projection for 5,000 permutations of 141 subjects with our engine's defaults
(26-connectivity, two-sided): measured with ``--full-5000``, else extrapolated from
``--proj-perm`` permutations. The last line is ``speed ratio N×`` (nilearn s/perm ÷ ours).

Usage::

    python bench/bench_tfce.py                       # 100 subjects, 100 perms, 2 threads
    python bench/bench_tfce.py --n-perm 20 --proj-perm 50       # quick look
    python bench/bench_tfce.py --full-5000           # really run 5,000 perms × 141 subjects
"""

from __future__ import annotations

import argparse
import contextlib
import time
from unittest import mock

import numpy as np
from scipy import ndimage
from threadpoolctl import threadpool_limits

import brainage.stats.permutation as permutation_module
from brainage.space import template_array, template_grid
from brainage.stats.glm import Rearrangements
from brainage.stats.permutation import permutation_test
from brainage.stats.tfce import tfce_stepped

SIGMA = 1.5  # smoothing of the noise, voxels
RHO = 0.6  # correlation of the nuisance covariate with age


def synthetic_cohort(n: int, mask: np.ndarray, seed: int, effect: float = 0.7):
    """Smooth noise maps with an age blob and a nuisance blob; returns (data (n, V), design)."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    age_z = (age - age.mean()) / age.std()
    nuis = RHO * age_z + np.sqrt(1 - RHO**2) * rng.standard_normal(n)
    ijk = np.indices(mask.shape, dtype=float)
    centre = np.array(mask.shape) / 2
    blob_age = np.exp(-np.sum((ijk - (centre + [-12, 5, 4])[:, None, None, None]) ** 2, 0) / 18)
    blob_nuis = np.exp(-np.sum((ijk - (centre + [12, -8, 0])[:, None, None, None]) ** 2, 0) / 18)
    blob_age, blob_nuis = blob_age[mask], blob_nuis[mask]
    data = np.empty((n, int(mask.sum())))
    scale = None
    for i in range(n):
        noise = ndimage.gaussian_filter(rng.standard_normal(mask.shape), SIGMA)[mask]
        scale = scale or 1.0 / noise.std()
        data[i] = scale * noise + effect * age_z[i] * blob_age + effect * nuis[i] * blob_nuis
    design = np.column_stack([np.ones(n), age, nuis])
    return data, design


def nilearn_permutations(n: int, n_perm: int, n_jobs: int, random_state: int) -> np.ndarray:
    """The data-row permutations, (n_perm, n), that ``permuted_ols`` draws (nilearn 0.14).

    ``permuted_ols`` seeds one RandomState per chunk from ``random_state``; each chunk starts
    from the unshuffled design and shuffles it cumulatively, ``tested = tested[perm(n)]``.
    """
    import joblib
    from sklearn.utils import check_random_state

    n_jobs = min(n_jobs, joblib.cpu_count())  # as _sanitize_inputs_permuted_ols
    rng = check_random_state(random_state)
    if n_perm > n_jobs:
        chunks = np.asarray([n_perm / n_jobs] * n_jobs, dtype=int)
        chunks[-1] += n_perm % n_jobs
    else:
        chunks = np.ones(n_perm, dtype=int)
    rows = []
    for size in chunks:
        sub = check_random_state(rng.randint(1, np.iinfo(np.int32).max - 1))
        order = np.arange(n)
        for _ in range(size):
            order = order[sub.permutation(n)]
            rows.append(np.argsort(order))  # design rows order ≡ data rows argsort(order)
    return np.asarray(rows)


def fixed_rearrangements(perms: np.ndarray):
    """A ``Rearrangements`` that yields the identity and then exactly ``perms``."""

    class FixedRearrangements(Rearrangements):
        def batches(self, size: int = 64):
            rows = np.vstack([np.arange(self.n)[None], perms])
            if rows.shape != (self.n_perm + 1, self.n) or self.sign_flip:
                raise ValueError(f"{rows.shape} rearrangements for n_perm={self.n_perm}")
            for start in range(0, rows.shape[0], size):
                yield rows[start : start + size]

    return FixedRearrangements


def run_ours(data, design, mask, n_perm, threads, connectivity, perms=None, seed=0):
    """Our engine (with ``perms`` patched in if given); returns (result, seconds)."""
    contrast = np.array([0.0, 1.0, 0.0])
    kwargs = dict(tfce=True, mask=mask, connectivity=connectivity, seed=seed, n_jobs=threads)
    patch = (
        mock.patch.object(permutation_module, "Rearrangements", fixed_rearrangements(perms))
        if perms is not None
        else contextlib.nullcontext()
    )
    with threadpool_limits(threads), patch:
        t0, c0 = time.perf_counter(), time.process_time()
        res = permutation_test(data, design, contrast, n_perm, two_sided=True, **kwargs)
        res.info["cpu_s"] = time.process_time() - c0
        return res, time.perf_counter() - t0


def run_nilearn(data, design, mask, n_perm, threads, seed):
    """nilearn ``permuted_ols(tfce=True)``, age tested, nuisance + intercept confounds."""
    import nibabel as nib
    from nilearn.maskers import NiftiMasker
    from nilearn.mass_univariate import permuted_ols

    masker = NiftiMasker(nib.Nifti1Image(mask.astype(np.uint8), template_grid(2.0).affine)).fit()
    with threadpool_limits(threads):
        t0 = time.perf_counter()
        out = permuted_ols(
            design[:, [1]],
            data,
            confounding_vars=design[:, [2]],
            model_intercept=True,
            n_perm=n_perm,
            two_sided_test=True,
            random_state=seed,
            n_jobs=threads,
            masker=masker,
            tfce=True,
            verbose=0,
        )
        return out, time.perf_counter() - t0


def fwe_p(observed: np.ndarray, null_max: np.ndarray) -> np.ndarray:
    """``(1 + #{max* ≥ |obs|}) / (1 + n_perm)``."""
    null = np.sort(null_max)
    return (1.0 + null.size - np.searchsorted(null, np.abs(observed), "left")) / (1.0 + null.size)


def report_p(name: str, p_ours: np.ndarray, p_nl: np.ndarray, n_perm: int) -> None:
    dp = np.abs(p_ours - p_nl)
    k = int(np.argmax(dp))
    se_k = np.sqrt(p_ours[k] * (1 - p_ours[k]) / n_perm)
    print(
        f"  {name:<34} max|Δp| {dp.max():.4f}  mean|Δp| {dp.mean():.2e}  "
        f"(MC SE {se_k:.4f} at that voxel, ≤ {np.sqrt(0.25 / n_perm):.4f});  "
        f"p<0.05: {int(np.sum(p_ours < 0.05))} ours, {int(np.sum(p_nl < 0.05))} nilearn"
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n-subjects", type=int, default=100)
    ap.add_argument("--n-perm", type=int, default=100, help="permutations of the comparison")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--proj-subjects", type=int, default=141)
    ap.add_argument("--proj-perm", type=int, default=200, help="timed perms to extrapolate from")
    ap.add_argument("--full-5000", action="store_true", help="measure 5,000 perms directly")
    args = ap.parse_args()
    import nilearn
    import tfce

    mask = template_array("mask", 2.0)
    n, n_perm, th = args.n_subjects, args.n_perm, args.threads
    print(
        f"grid {mask.shape} 2 mm, {int(mask.sum())} voxels; {n} subjects; {n_perm} permutations; "
        f"{th} threads; nilearn {nilearn.__version__}, tfce {tfce.__version__}"
    )
    data, design = synthetic_cohort(n, mask, args.seed)
    print(
        f"design 1 + age + nuisance (r(age, nuisance) = "
        f"{np.corrcoef(design[:, 1], design[:, 2])[0, 1]:.2f}); contrast age, two-sided; "
        "TFCE E 0.5 H 2, 6-connectivity in both arms"
    )
    perms = nilearn_permutations(n, n_perm, th, args.seed)
    print(f"permutations: nilearn's stream replicated ({len(np.unique(perms, axis=0))} distinct)")

    ours, t_ours = run_ours(data, design, mask, n_perm, th, 6, perms=perms)
    nl, t_nl = run_nilearn(data, design, mask, n_perm, th, args.seed)
    s_ours, s_nl = t_ours / n_perm, t_nl / n_perm
    print("\ntiming (observed map + n_perm permutations)")
    print(f"  {'':<10} {'s/perm':>9} {'total s':>9}")
    print(f"  {'ours':<10} {s_ours:9.4f} {t_ours:9.1f}")
    print(f"  {'nilearn':<10} {s_nl:9.4f} {t_nl:9.1f}")

    t_nl_map = nl["t"][0]
    print("\nagreement")
    print(f"  observed t: max|Δt| {np.max(np.abs(ours.stat - t_nl_map)):.2e}")
    h0_t, h0_tfce = nl["h0_max_t"][0], nl["h0_max_tfce"][0]  # per permutation, in order
    rel = np.abs(ours.null_max - h0_t) / h0_t
    print(f"  null max|t| per permutation: max rel Δ {rel.max():.2e} (same permutations)")
    dh = np.max(np.abs(t_nl_map)) / 100  # nilearn: 100 steps up to max over both tails
    tf_nl = nl["tfce"][0] * dh
    print(
        f"  observed TFCE, ours (exact) vs nilearn × dh, dh = max|t|/100 = {dh:.4f}; rel Δ over "
        "voxels with"
    )
    steps = np.abs(t_nl_map) / dh  # nilearn's thresholds below the voxel
    top = np.max(np.abs(ours.tfce))
    for label, sel in (
        ("|TFCE| ≥ 1 % of max", np.abs(ours.tfce) >= 0.01 * top),
        ("|t| ≥ 10 dh (≥ 10 of nilearn's steps)", steps >= 10),
        ("|t| ≥ 20 dh", steps >= 20),
        ("|t| ≥ 50 dh", steps >= 50),
    ):
        rd = np.abs(tf_nl[sel] - ours.tfce[sel]) / np.abs(ours.tfce[sel])
        print(
            f"    {label:<38} {int(sel.sum()):7d} voxels: median {100 * np.median(rd):5.2f} %, "
            f"99th pct {100 * np.percentile(rd, 99):5.2f} %"
        )
    vol = np.zeros(mask.shape)
    vol[mask] = ours.stat
    ref = tfce_stepped(vol, connectivity=6, n_steps=1000)[mask]  # positive tail, midpoint rule
    sel = (ours.stat > 0) & (ours.tfce >= 0.01 * top)
    rd = np.abs(ref[sel] - ours.tfce[sel]) / ours.tfce[sel]
    print(
        f"    (ours vs a 1000-step midpoint sum, positive tail, |TFCE| ≥ 1 % of max: median "
        f"{100 * np.median(rd):.2f} %, 99th pct {100 * np.percentile(rd, 99):.2f} %)"
    )
    rn = np.abs(h0_tfce * h0_t / 100 - ours.null_max_tfce) / ours.null_max_tfce
    print(
        f"  null max TFCE per permutation, ours vs nilearn × (its max|t*|/100): median rel Δ "
        f"{100 * np.median(rn):.2f} %, max {100 * rn.max():.2f} %"
    )
    print(f"FWE p-maps ({n_perm} permutations)")
    report_p("t (max-stat)", ours.p_fwe, 10 ** -nl["logp_max_t"][0], n_perm)
    report_p("TFCE, nilearn as returned", ours.p_tfce_fwe, 10 ** -nl["logp_max_tfce"][0], n_perm)
    p_nl_dh = fwe_p(tf_nl, h0_tfce * h0_t / 100)
    report_p("TFCE, nilearn rescaled by each dh", ours.p_tfce_fwe, p_nl_dh, n_perm)
    print(
        "  (nilearn's TFCE of each map is in units of 1/dh = 100/max|t| of that map, so as "
        "returned its observed and null TFCE are on different scales)"
    )

    n_proj = 5000 if args.full_5000 else args.proj_perm
    data2, design2 = synthetic_cohort(args.proj_subjects, mask, args.seed + 1)
    res2, t_proj = run_ours(data2, design2, mask, n_proj, th, 26, seed=args.seed)
    per, cpu = t_proj / n_proj, res2.info["cpu_s"] / n_proj
    how = "measured" if args.full_5000 else f"extrapolated from {n_proj} timed permutations"
    print(
        f"\nprojection, our engine, {args.proj_subjects} subjects, 26-connectivity, two-sided, "
        f"{th} threads: {per:.4f} s/perm → 5,000 perms {5000 * per / 60:.1f} min ({how}; "
        f"floor ≤ 10 min: {'met' if 5000 * per <= 600 else 'NOT met'})"
    )
    print(
        f"  CPU {cpu:.4f} s/perm over all threads → on {th} otherwise idle cores ≈ "
        f"{5000 * cpu / th / 60:.1f} min (estimate, assumes perfect thread scaling)"
    )
    print(f"speed ratio {s_nl / s_ours:.0f}×")


if __name__ == "__main__":
    main()
