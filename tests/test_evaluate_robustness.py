"""Max-sensitivity (captum sensitivity_max) and agreement across methods: known answers."""

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.evaluate.robustness import max_sensitivity, method_agreement

SHAPE = (8, 9, 7)


class Linear(nn.Module):
    """f(x) = Σ w·x + 40: Integrated Gradients from a zero baseline is exactly w ⊙ x."""

    def __init__(self, w):
        super().__init__()
        self.w = nn.Parameter(torch.as_tensor(w, dtype=torch.float32))

    def forward(self, x):
        return (x * self.w).sum(dim=(1, 2, 3, 4)).unsqueeze(1) + 40.0


def _setup(seed=0, n=3):
    rng = np.random.default_rng(seed)
    w = rng.normal(size=(1, *SHAPE))
    x = rng.uniform(0.5, 1.0, size=(n, 1, *SHAPE)).astype(np.float32)
    mask = np.ones(SHAPE, bool)
    mask[:2] = False
    return Linear(w), w, x, mask


def test_max_sensitivity_of_exact_attributions_of_a_linear_model_matches_theory():
    model, w, x, mask = _setup()
    r = 0.05
    got = max_sensitivity(model, x, "integrated_gradients", mask, radius=r, n_samples=4, n_steps=8)
    # Φ(x + δ) − Φ(x) = w ⊙ δ with δ uniform in [−r, r] inside the mask: E‖w ⊙ δ‖² = r²/3 Σ w²;
    # with ~400 voxels the norm concentrates within a few percent of its root-mean-square
    norm = np.sqrt(((w * x) ** 2).sum(axis=(1, 2, 3, 4)))
    expected = r * np.sqrt((w[0][mask] ** 2).sum() / 3) / norm
    assert got.shape == (3,)
    np.testing.assert_allclose(got, expected, rtol=0.08)


def test_noise_outside_the_mask_only_is_no_noise_and_the_seed_fixes_the_result():
    model, w, x, mask = _setup()
    w_out = np.where(mask, 0.0, w)  # the model reads only voxels that get no noise
    blind = Linear(w_out)
    assert np.all(max_sensitivity(blind, x, "integrated_gradients", mask, n_steps=4) < 1e-5)
    state = torch.get_rng_state()
    a = max_sensitivity(model, x, "integrated_gradients", mask, seed=3, n_steps=4)
    b = max_sensitivity(model, x, "integrated_gradients", mask, seed=3, n_steps=4)
    c = max_sensitivity(model, x, "integrated_gradients", mask, seed=4, n_steps=4)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    assert torch.equal(state, torch.get_rng_state())  # the global generator is left alone


def test_the_gradient_of_a_linear_model_does_not_move():
    model, _, x, mask = _setup()
    # Guided Backprop of a model without ReLUs is its gradient w: the same for every input
    assert np.all(max_sensitivity(model, x, "guided_backprop", mask) < 1e-5)


def test_bad_arguments_are_clear():
    model, _, x, mask = _setup()
    with pytest.raises(ConfigError, match="radius"):
        max_sensitivity(model, x, "guided_backprop", mask, radius=0)
    with pytest.raises(ConfigError, match="mask"):
        max_sensitivity(model, x, "guided_backprop", mask[:3])


def test_method_agreement_ranks_regions_pair_by_pair():
    labels = np.arange(1, 8)
    base = pd.DataFrame({"label": labels, "mean_relevance": np.linspace(0, 1, 7)})
    same_order = base.assign(mean_relevance=base["mean_relevance"] ** 3)  # monotone: ρ = 1
    reverse = base.assign(mean_relevance=-base["mean_relevance"])  # ρ = −1
    partial = base.iloc[:5].assign(mean_relevance=[0, 1, 2, 4, 3])  # fewer shared regions
    table = method_agreement({"a": base, "b": same_order, "c": reverse, "d": partial})
    got = {(r.method_a, r.method_b): (r.spearman, r.n_regions) for r in table.itertuples()}
    assert len(got) == 6
    assert got[("a", "b")] == pytest.approx((1.0, 7))
    assert got[("a", "c")] == pytest.approx((-1.0, 7))
    assert got[("a", "d")] == pytest.approx((0.9, 5))
    with pytest.raises(ConfigError, match="label"):
        method_agreement({"a": base, "x": pd.DataFrame({"mean_relevance": [1, 2, 3]})})
