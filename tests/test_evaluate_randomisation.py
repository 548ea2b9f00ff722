"""Cascading model randomisation (Adebayo et al. 2018): fail, pass, and no side effects."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr
from torch import nn

from brainage.errors import ConfigError, DimensionError
from brainage.evaluate import cascading_randomisation, randomisation_summary, spearman

SHAPE = (7, 8, 9)


def make_data(n: int, seed: int):
    """Volumes and a target that depends only on the mean intensity of one block."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand((n, 1, *SHAPE), generator=g)
    y = (x[:, :, 2:5, 2:5, 3:6].mean(dim=(1, 2, 3, 4)) - 0.5) * 10
    return x, y[:, None]


def tiny_cnn(batch_norm: bool = False) -> nn.Sequential:
    torch.manual_seed(0)
    layers = [nn.Conv3d(1, 4, 3, padding=1)]
    if batch_norm:
        layers.append(nn.BatchNorm3d(4))
    layers += [nn.ReLU(), nn.Conv3d(4, 4, 3, padding=1), nn.ReLU(), nn.Flatten()]
    layers.append(nn.Linear(4 * int(np.prod(SHAPE)), 1))
    return nn.Sequential(*layers)


@pytest.fixture(scope="module")
def trained_cnn() -> nn.Sequential:
    """A tiny CNN fitted for a few Adam steps (trained-ish: its gradients depend on its weights)."""
    model = tiny_cnn()
    x, y = make_data(32, 1)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-2)
    for _ in range(50):
        opt.zero_grad()
        loss = ((model(x) - y) ** 2).mean()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model


def gradient(model: nn.Module, volumes) -> np.ndarray:
    """Stand-in explanation method: the plain input gradient of the predicted output."""
    x = torch.as_tensor(volumes).detach().clone().requires_grad_(True)
    model(x).sum().backward()
    return x.grad.detach().numpy()


def edge_detector(model: nn.Module, volumes) -> np.ndarray:
    """A 'method' that ignores the model: it returns the input itself."""
    return torch.as_tensor(volumes).numpy().copy()


def test_spearman_matches_scipy():
    rng = np.random.default_rng(0)
    a = np.round(rng.standard_normal(500), 1)
    b = a + rng.standard_normal(500)
    assert spearman(a, b) == pytest.approx(spearmanr(a, b).statistic, abs=1e-12)
    assert spearman(a, a) == pytest.approx(1.0)
    assert spearman(a, -a) == pytest.approx(-1.0)
    assert spearman(a, np.zeros(500)) == 0.0
    assert np.isnan(spearman(np.ones(3), np.ones(3)))


def test_edge_detector_fails_the_check(trained_cnn):
    x, _ = make_data(3, 2)
    table = cascading_randomisation(trained_cnn, x, edge_detector, seed=0)
    assert list(table["step"]) == [0, 1, 2, 3]
    assert np.allclose(table["spearman"], 1.0)
    assert table.attrs["randomisation_spearman"] == pytest.approx(1.0)
    assert table.attrs["passes_randomisation"] is False


def test_gradient_of_trained_cnn_changes_and_model_is_untouched(trained_cnn):
    x, _ = make_data(4, 2)
    before = {k: v.detach().clone() for k, v in trained_cnn.state_dict().items()}
    params_before = [id(p) for p in trained_cnn.parameters()]
    trained_cnn.train()
    table = cascading_randomisation(trained_cnn, x, gradient, seed=0)
    # the original model: same values, same parameter objects, same mode, no hooks
    after = trained_cnn.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert [id(p) for p in trained_cnn.parameters()] == params_before
    assert trained_cnn.training
    assert all(not m._forward_hooks for m in trained_cnn.modules())
    assert all(p.grad is None for p in trained_cnn.parameters())

    assert table["spearman"].iloc[0] == pytest.approx(1.0)
    final = table.attrs["randomisation_spearman"]
    assert final == pytest.approx(table["spearman"].iloc[-1])
    assert final < 0.5
    assert table.attrs["passes_randomisation"] is True
    assert (table["spearman"].iloc[1:] < 0.9).all()
    assert table["n_subjects"].eq(4).all()
    assert randomisation_summary(table) == {
        "randomisation_spearman": final,
        "passes_randomisation": True,
    }
    assert randomisation_summary(table, threshold=final / 2)["passes_randomisation"] is False


def test_cascade_order_output_to_input_and_norm_layers_skipped():
    model = tiny_cnn(batch_norm=True)
    x, _ = make_data(2, 3)
    table = cascading_randomisation(model, x, gradient, seed=1)
    # Sequential names: 0 conv, 1 batchnorm, 2 relu, 3 conv, 4 relu, 5 flatten, 6 linear
    assert list(table["layer"]) == ["", "6", "3", "0"]
    assert list(table["n_randomised"]) == [0, 1, 2, 3]
    only = cascading_randomisation(model, x, gradient, seed=1, layers=["0", "6"])
    assert list(only["layer"]) == ["", "6", "0"]
    with pytest.raises(ConfigError, match="not a module of the model; valid: 0, 1"):
        cascading_randomisation(model, x, gradient, seed=1, layers=["7"])
    with pytest.raises(ConfigError, match="owns no parameters"):
        cascading_randomisation(model, x, gradient, seed=1, layers=["2"])


def test_seeded_and_reproducible(trained_cnn):
    x, _ = make_data(2, 4)
    a = cascading_randomisation(trained_cnn, x, gradient, seed=5)
    b = cascading_randomisation(trained_cnn, x, gradient, seed=5)
    c = cascading_randomisation(trained_cnn, x, gradient, seed=6)
    assert np.array_equal(a["spearman"], b["spearman"])
    assert not np.array_equal(a["spearman"], c["spearman"])
    state = torch.random.get_rng_state()
    cascading_randomisation(trained_cnn, x, gradient, seed=5, init="normal")
    assert torch.equal(state, torch.random.get_rng_state())  # global RNG untouched


def test_mask_restricts_the_comparison(trained_cnn):
    x, _ = make_data(2, 5)
    mask = np.zeros(SHAPE, bool)
    mask[1:6, 1:7, 1:8] = True
    calls = []

    def input_plus_outside_noise(model, volumes):
        """The input inside the mask, fresh noise (another per call) outside it."""
        calls.append(1)
        out = edge_detector(model, volumes)
        noise = np.random.default_rng(len(calls)).standard_normal(out.shape) * 10
        out[:, :, ~mask] = noise[:, :, ~mask]
        return out

    inside = cascading_randomisation(trained_cnn, x, input_plus_outside_noise, seed=0, mask=mask)
    assert np.allclose(inside["spearman"], 1.0)
    everywhere = cascading_randomisation(trained_cnn, x, input_plus_outside_noise, seed=0)
    assert (everywhere["spearman"].iloc[1:] < 0.9).all()
    signed = cascading_randomisation(trained_cnn, x, gradient, seed=0, signed=True)
    assert signed["spearman"].iloc[-1] != pytest.approx(
        cascading_randomisation(trained_cnn, x, gradient, seed=0)["spearman"].iloc[-1]
    )
    with pytest.raises(DimensionError, match="'mask'"):
        cascading_randomisation(trained_cnn, x, gradient, seed=0, mask=mask[:-1])


def test_module_parameters_are_mapped_to_the_copy(trained_cnn):
    x, _ = make_data(2, 6)
    seen = []

    def layer_activation(model, volumes, layer):
        assert any(m is layer for m in model.modules())  # the copy's module, not the original's
        seen.append(layer)
        return gradient(model, volumes)

    cascading_randomisation(trained_cnn, x, layer_activation, seed=0, layer=trained_cnn[0])
    assert seen and all(layer is not trained_cnn[0] for layer in seen)


def test_validation(trained_cnn):
    x, _ = make_data(2, 7)
    with pytest.raises(TypeError, match="'model'"):
        cascading_randomisation("model", x, gradient, seed=0)
    with pytest.raises(DimensionError, match="5D"):
        cascading_randomisation(trained_cnn, x[:, 0], gradient, seed=0)
    with pytest.raises(ConfigError, match="'init'"):
        cascading_randomisation(trained_cnn, x, gradient, seed=0, init="uniform")
    with pytest.raises(ValueError, match="seed"):
        cascading_randomisation(trained_cnn, x, gradient, seed=None)
    with pytest.raises(DimensionError, match="returned shape"):
        cascading_randomisation(trained_cnn, x, lambda m, v: np.zeros((2, 1, 3, 3, 3)), seed=0)


def test_with_registered_explain_method():
    explain = pytest.importorskip("brainage.explain")
    if not hasattr(explain, "explain") or "guided_backprop" not in explain.list_methods():
        pytest.skip("brainage.explain.explain with 'guided_backprop' not available")
    from brainage.models import HofmannCNN

    torch.manual_seed(0)
    model = HofmannCNN(input_shape=(24, 28, 22), filters=(4, 4, 4, 4, 4), dense=8)
    x = torch.rand((2, 1, 24, 28, 22), generator=torch.Generator().manual_seed(0))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    table = cascading_randomisation(model, x, "guided_backprop", seed=0, batch_size=1)
    assert len(table) == 1 + 5 + 2  # 5 convolutions and 2 dense layers (BatchNorm skipped)
    assert table["layer"].iloc[1] == "regressor.4"  # the output layer first
    assert table.attrs["method"] == "guided_backprop"
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
