"""The permutation engine: GLM against statsmodels, Freedman–Lane error control, blocks, TFCE."""

import numpy as np
import pytest
import statsmodels.api as sm
from scipy import ndimage, stats

from brainage.errors import InputError
from brainage.stats.glm import BatchedGLM, Rearrangements, n_possible, partition_design
from brainage.stats.permutation import permutation_test


def _design(n, seed=0):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    group = rng.integers(0, 2, n).astype(float)
    x = np.column_stack([np.ones(n), group, age, (age - 50) ** 2 / 100])
    return x, rng


def test_t_and_f_equal_statsmodels_for_observed_and_rearranged_data():
    x, rng = _design(30)
    y = rng.normal(size=(30, 6)) + 0.5 * x[:, 1:2] + 0.02 * x[:, 2:3]
    c = np.array([0, 1, 0, 0.0])
    glm = BatchedGLM(y, x, c)
    t = glm.statistics(np.arange(30)[None], False)[0]
    ref = [sm.OLS(y[:, v], x).fit().t_test(c).tvalue.item() for v in range(6)]
    np.testing.assert_allclose(t, ref, atol=1e-10)
    # a permutation of the nuisance residuals, and a sign flip, refitted on the full model
    m, r = glm.part.model, glm.resid
    perm, signs = rng.permutation(30), rng.choice([-1.0, 1.0], 30)
    t_perm = glm.statistics(perm[None], False)[0]
    t_flip = glm.statistics(signs[None], True)[0]
    np.testing.assert_allclose(t_perm, [sm.OLS(r[perm, v], m).fit().tvalues[0] for v in range(6)])
    np.testing.assert_allclose(
        t_flip, [sm.OLS(r[:, v] * signs, m).fit().tvalues[0] for v in range(6)]
    )
    # F for the age and age² terms together; p of the observed t from the t distribution
    cf = np.array([[0, 0, 1, 0], [0, 0, 0, 1.0]])
    f = BatchedGLM(y, x, cf).statistics(np.arange(30)[None], False)[0]
    ref_f = [float(np.squeeze(sm.OLS(y[:, v], x).fit().f_test(cf).fvalue)) for v in range(6)]
    np.testing.assert_allclose(f, ref_f, rtol=1e-9)
    # a batch equals its rows one by one
    batch = np.stack([np.arange(30), perm, rng.permutation(30)])
    rows = np.stack([glm.statistics(b[None], False)[0] for b in batch])
    np.testing.assert_allclose(glm.statistics(batch, False), rows, atol=1e-12)


def test_partition_keeps_the_contrast_estimate():
    x, rng = _design(25, 1)
    y = rng.normal(size=25)
    c = np.array([0, 1, -0.5, 0.0])
    part = partition_design(x, c)
    beta = np.linalg.lstsq(x, y, rcond=None)[0]
    gamma = np.linalg.lstsq(part.model, y, rcond=None)[0]
    assert gamma[0] == pytest.approx(c @ beta)
    # same model space: identical fitted values
    np.testing.assert_allclose(part.model @ gamma, x @ beta, atol=1e-10)
    with pytest.raises(InputError, match="rank-deficient"):
        partition_design(np.column_stack([x, x[:, 1]]), np.r_[c, 0])
    with pytest.raises(InputError, match="contrast has 3"):
        partition_design(x, [0, 1, 0])


def test_rearrangements_are_seeded_start_with_identity_and_respect_blocks():
    blocks = np.repeat([0, 1, 2], 4)
    gen = Rearrangements(12, 50, blocks=blocks, seed=3)
    first = np.concatenate(list(gen.batches(16)))
    assert first.shape == (51, 12) and (first[0] == np.arange(12)).all()
    again = np.concatenate(list(Rearrangements(12, 50, blocks=blocks, seed=3).batches(7)))
    np.testing.assert_array_equal(first, again)  # batch size does not change the stream
    for perm in first:  # every subject stays in its block
        assert (blocks[perm] == blocks).all()
    assert len({tuple(p) for p in first}) > 40
    flips = np.concatenate(list(Rearrangements(12, 20, sign_flip=True, seed=0).batches()))
    assert (flips[0] == 1).all() and set(np.unique(flips)) == {-1.0, 1.0}
    assert n_possible(12, False, blocks) == pytest.approx(24.0**3)
    assert n_possible(10, True) == 1024


def _fwe_rate(n_datasets, two_sided, seed):
    """Fraction of pure-noise datasets with any voxel at FWE p ≤ 0.05 (correlated nuisance)."""
    hits = 0
    for d in range(n_datasets):
        rng = np.random.default_rng(seed + d)
        n, v = 20, 30
        nuisance = rng.normal(size=n)
        effect = 0.8 * nuisance + 0.6 * rng.normal(size=n)  # correlated with the nuisance
        x = np.column_stack([np.ones(n), effect, nuisance])
        y = 1.5 * nuisance[:, None] + rng.standard_t(5, size=(n, v))  # nuisance effect, no effect
        res = permutation_test(y, x, [0, 1, 0], n_perm=99, two_sided=two_sided, seed=d)
        hits += bool((res.p_fwe <= 0.05).any())
    return hits / n_datasets


@pytest.mark.slow
@pytest.mark.parametrize("two_sided", [True, False])
def test_fwe_false_positive_rate_is_nominal_with_a_correlated_nuisance(two_sided):
    n = 400
    rate = _fwe_rate(n, two_sided, seed=100 if two_sided else 500)
    lo, hi = stats.binom.ppf([0.005, 0.995], n, 0.05) / n  # 99 % binomial interval
    assert lo <= rate <= hi, rate


def test_sign_flip_one_sample_test_finds_a_shift_and_controls_noise():
    rng = np.random.default_rng(0)
    y = rng.normal(size=(24, 40))
    y[:, :5] += 1.2  # five voxels with a true mean
    res = permutation_test(y, np.ones((24, 1)), [1.0], n_perm=499, seed=1)
    assert res.info["kind"] == "sign_flip"
    assert (res.p_fwe[:5] <= 0.05).all() and (res.p_fwe[5:] > 0.05).mean() > 0.9
    # p-values: in (0, 1], and uncorrected ≤ FWE
    assert (res.p_uncorrected > 0).all() and (res.p_fwe <= 1).all()
    assert (res.p_uncorrected <= res.p_fwe + 1e-12).all()
    # the same seed gives the same p-values
    again = permutation_test(y, np.ones((24, 1)), [1.0], n_perm=499, seed=1, batch_size=17)
    np.testing.assert_array_equal(res.p_fwe, again.p_fwe)


def test_exact_tfce_matches_a_stepped_oracle_converging_at_first_order():
    from brainage.stats.tfce import tfce_stepped, tfce_volumes

    rng = np.random.default_rng(0)
    vol = ndimage.gaussian_filter(rng.normal(size=(16, 16, 16)), 1.5)
    vol /= vol.std()
    for connectivity in (6, 26):
        exact = tfce_volumes(vol, 0.5, 2.0, connectivity, two_sided=False)
        errors = [
            np.abs(exact - tfce_stepped(vol, 0.5, 2.0, connectivity, n)).max() / exact.max()
            for n in (100, 400)
        ]
        assert errors[1] < 0.01 and errors[0] / errors[1] > 2.5  # ≈ 4: first order in Δh
    # two-sided: the negative tail is enhanced on its own, with a negative sign
    both = tfce_volumes(vol, two_sided=True)
    np.testing.assert_allclose(
        both[vol < 0], -tfce_volumes(-vol, two_sided=False)[vol < 0], rtol=1e-4
    )
    # one isolated voxel of height t: ∫₀ᵗ 1 · h² dh = t³ / 3 (float32 inside the package)
    one = np.zeros((5, 5, 5))
    one[2, 2, 2] = 3.0
    assert tfce_volumes(one)[2, 2, 2] == pytest.approx(9.0, rel=1e-5)


def test_tfce_permutation_test_finds_a_planted_cluster():
    rng = np.random.default_rng(4)
    shape = (12, 12, 12)
    mask = np.ones(shape, bool)
    mask[0] = False
    n = 20
    group = np.repeat([0.0, 1.0], n // 2)
    noise = ndimage.gaussian_filter(rng.normal(size=(n, *shape)), (0, 1, 1, 1)) * 3
    blob = np.zeros(shape)
    blob[5:9, 5:9, 5:9] = 1.0
    data = noise + 1.2 * group[:, None, None, None] * blob
    x = np.column_stack([np.ones(n), group])
    res = permutation_test(data[:, mask], x, [0, 1], n_perm=199, mask=mask, tfce=True, seed=0)
    sig = np.zeros(shape, bool)
    sig[mask] = res.p_tfce_fwe <= 0.05
    assert sig[blob > 0].mean() > 0.5 and not sig[blob == 0][mask[blob == 0]].any()
    assert res.info["tfce"] == {"E": 0.5, "H": 2.0, "connectivity": 26}
    assert (
        res.null_max_tfce.shape == (199,)
        and (res.p_tfce_fwe >= res.p_tfce_uncorrected - 1e-12).all()
    )
    with pytest.raises(InputError, match="mask"):
        permutation_test(data[:, mask], x, [0, 1], n_perm=9, tfce=True)
