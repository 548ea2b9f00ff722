"""The explain registry and protocol: validation, batching, ensembles, hook removal, flips."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm
from torch import nn

from brainage.errors import ConfigError, DimensionError, InputError
from brainage.explain import METHODS, explain, explain_ensemble, list_methods, register_method
from brainage.models import HofmannCNN, ProjectionCNN, ResNet3D

torch.set_num_threads(1)

SHAPE = (24, 28, 22)
ALL = ("guided_backprop", "lrp", "integrated_gradients", "gradcam", "smoothgrad", "occlusion")
CHEAP = {  # small settings so every method runs in well under a second
    "guided_backprop": {},
    "lrp": {},
    "integrated_gradients": {"n_steps": 4},
    "gradcam": {},
    "smoothgrad": {"nt_samples": 3},
    "occlusion": {"window": (8, 14, 11)},
}


def hofmann(seed: int = 0) -> HofmannCNN:
    torch.manual_seed(seed)
    model = HofmannCNN(input_shape=SHAPE, filters=(4, 4, 8, 8, 4), dense=8).double()
    return randomize_batchnorm(model, seed)


def resnet(seed: int = 0) -> ResNet3D:
    torch.manual_seed(seed)
    model = ResNet3D(input_shape=SHAPE, layers=(1, 1, 1, 1), widths=(4, 8, 8, 16)).double()
    return randomize_batchnorm(model, seed)


def projection(seed: int = 0) -> ProjectionCNN:
    torch.manual_seed(seed)
    model = ProjectionCNN(input_shape=SHAPE, widths=(4, 8, 8), dense=8).double()
    return randomize_batchnorm(model, seed)


def volumes(seed: int, n: int = 1, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *shape, generator=g, dtype=torch.float64)


def test_registry_lists_all_methods():
    assert set(ALL) <= set(list_methods())
    assert list_methods() == sorted(METHODS)


@pytest.mark.parametrize("method", ALL)
def test_protocol_shape_dtype_and_batch_independence(method):
    model = hofmann(1)
    x = volumes(1, n=3)
    together = explain(model, x, method, batch_size=3, **CHEAP[method])
    assert together.shape == x.shape and together.dtype == np.float32
    assert np.isfinite(together).all() and np.abs(together).max() > 0
    one_by_one = explain(model, x.numpy(), method, batch_size=1, **CHEAP[method])
    np.testing.assert_allclose(together, one_by_one, rtol=1e-4, atol=1e-6 * np.abs(together).max())
    direct = METHODS[method](model, x[:1], **CHEAP[method])  # the registry protocol
    np.testing.assert_allclose(direct, together[:1], rtol=1e-4, atol=1e-6 * np.abs(together).max())


def test_unknown_method_and_parameter_names():
    model = hofmann()
    x = volumes(0)
    with pytest.raises(ConfigError, match="did you mean 'guided_backprop'"):
        explain(model, x, "guided_backprob")
    with pytest.raises(ConfigError, match="did you mean 'n_steps'"):
        explain(model, x, "integrated_gradients", nsteps=3)
    with pytest.raises(ConfigError, match="batch_size"):
        explain(model, x, "lrp", batch_size=0)


def test_input_validation():
    model = hofmann()
    with pytest.raises(DimensionError, match=r"\(n, c, i, j, k\)"):
        explain(model, np.zeros(SHAPE), "lrp")
    with pytest.raises(DimensionError):
        explain(model, np.zeros((1, *SHAPE)), "lrp")
    bad = np.zeros((1, 1, *SHAPE))
    bad[0, 0, 1, 2, 3] = np.nan
    with pytest.raises(InputError, match="NaN"):
        explain(model, bad, "lrp")
    with pytest.raises(TypeError, match="numpy array or torch tensor"):
        explain(model, [[1.0]], "lrp")
    two_outputs = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), 2)).double()
    with pytest.raises(InputError, match=r"shape \(n, 1\)"):
        explain(two_outputs, volumes(0), "guided_backprop")


def test_explain_ensemble_is_the_mean_of_base_maps():
    models = [hofmann(s) for s in (0, 1, 2)]
    x = volumes(3, n=2)
    maps = [explain(m, x, "lrp") for m in models]
    np.testing.assert_allclose(
        explain_ensemble(models, x, "lrp"), np.mean(maps, axis=0), rtol=1e-5, atol=1e-9
    )
    # LRP of the ensemble sums to the mean deviation from the base models' output biases
    with torch.no_grad():
        dev = np.mean([(m.eval()(x)[:, 0] - m.output_layer.bias).numpy() for m in models], axis=0)
    np.testing.assert_allclose(
        explain_ensemble(models, x, "lrp").reshape(2, -1).sum(1), dev, rtol=0.01
    )
    # integrated gradients are linear in the model: the ensemble map is the mean model's map
    mean_model = MeanModel(models)
    ig = {"n_steps": 8}
    np.testing.assert_allclose(
        explain_ensemble(models, x, "integrated_gradients", **ig),
        explain(mean_model, x, "integrated_gradients", **ig),
        rtol=1e-4,
        atol=1e-7,
    )
    with pytest.raises(ConfigError, match="at least one"):
        explain_ensemble([], x, "lrp")


class MeanModel(nn.Module):
    def __init__(self, models):
        super().__init__()
        self.members = nn.ModuleList(models)

    def forward(self, x):
        return torch.stack([m(x) for m in self.members]).mean(0)


def test_register_method_adds_a_method_with_the_protocol():
    name = "test_input_times_gradient"

    @register_method(name)
    def input_times_gradient(model, x, scale: float = 1.0):
        x = x.requires_grad_(True)
        (g,) = torch.autograd.grad(model(x).sum(), x)
        return scale * g * x

    try:
        model = hofmann()
        x = volumes(4)
        a = explain(model, x, name, scale=2.0)
        assert a.shape == x.shape and a.dtype == np.float32
        with pytest.raises(ConfigError, match="did you mean 'scale'"):
            explain(model, x, name, scal=2.0)
    finally:
        METHODS.pop(name)


# --------------------------------------------------------------------------------------------
# Hooks, modes and parameters are left exactly as found (captum's test_hook_removal, stricter)


class Bomb(nn.Module):
    """Identity that raises in forward or in backward when armed."""

    def __init__(self) -> None:
        super().__init__()
        self.mode = None
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        if self.mode == "forward" and self.calls >= 2 or self.mode == "forward-first":
            raise RuntimeError("boom in forward")
        if self.mode == "backward":
            return _RaiseInBackward.apply(x)
        return x


class _RaiseInBackward(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        raise RuntimeError("boom in backward")


def with_bomb(kind: str) -> tuple[nn.Module, Bomb]:
    bomb = Bomb()
    if kind == "hofmann":
        model = hofmann(5)
        model.features.insert(3, bomb)  # after the first LeakyReLU, before its max pooling
    elif kind == "resnet":
        model = resnet(5)
        model.layer2.append(bomb)
    else:  # 2.5D: above the coronal Grad-CAM layer, so that its backward pass reaches the bomb
        model = projection(5)
        model.coronal.pool = nn.Sequential(bomb, model.coronal.pool)
    return model, bomb


def snapshot(model: nn.Module) -> dict:
    return {
        "names": [n for n, _ in model.named_modules()],
        "training": {n: m.training for n, m in model.named_modules()},
        "params": {
            n: (id(p), p.detach().clone(), p.requires_grad) for n, p in model.named_parameters()
        },
        "buffers": {n: b.detach().clone() for n, b in model.named_buffers()},
        "forward_attr": [n for n, m in model.named_modules() if "forward" in vars(m)],
        "grads": {n: p.grad for n, p in model.named_parameters()},
    }


def assert_untouched(model: nn.Module, before: dict) -> None:
    for name, module in model.named_modules():
        for hooks in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
        ):
            assert len(getattr(module, hooks)) == 0, f"{name}.{hooks} not empty"
    after = snapshot(model)
    assert after["names"] == before["names"]
    assert after["training"] == before["training"]
    assert after["forward_attr"] == before["forward_attr"] == []
    assert after["params"].keys() == before["params"].keys()
    for n, (pid, value, requires_grad) in before["params"].items():
        pid2, value2, requires_grad2 = after["params"][n]
        assert pid2 == pid, n
        assert torch.equal(value2, value), n
        assert requires_grad2 == requires_grad, n
    for n, value in before["buffers"].items():
        assert torch.equal(after["buffers"][n], value), n
    assert all(g is None for g in after["grads"].values())


def prepare(model: nn.Module) -> None:
    model.train()  # a model in training mode must come back in training mode
    next(model.parameters()).requires_grad_(False)  # a frozen parameter must stay frozen


@pytest.mark.parametrize("kind", ["hofmann", "resnet", "projection"])
@pytest.mark.parametrize("method", ALL)
def test_no_hook_left_after_normal_use(kind, method):
    model, _ = with_bomb(kind)
    prepare(model)
    before = snapshot(model)
    out = explain(model, volumes(6), method, **CHEAP[method])
    assert np.isfinite(out).all()
    assert_untouched(model, before)


@pytest.mark.parametrize("failure", ["forward", "forward-first", "backward"])
@pytest.mark.parametrize("kind", ["hofmann", "resnet", "projection"])
@pytest.mark.parametrize("method", ALL)
def test_no_hook_left_after_an_error_mid_explanation(kind, method, failure):
    model, bomb = with_bomb(kind)
    prepare(model)
    before = snapshot(model)
    bomb.mode = failure
    params = dict(CHEAP[method])
    if method == "gradcam":  # a layer below the bomb, so that the backward pass reaches it
        layers = {"hofmann": "features.0", "resnet": "stem.0", "projection": "coronal.features"}
        params["layer"] = layers[kind]
    raised = False
    try:
        explain(model, volumes(7), method, **params)
    except RuntimeError as err:
        raised = True
        assert "boom" in str(err)
    # single-forward methods never reach a second-call failure; occlusion has no backward
    assert raised or failure == "forward" or (method, failure) == ("occlusion", "backward")
    bomb.mode = None
    assert_untouched(model, before)
    # and the model still explains correctly afterwards
    clean, _ = with_bomb(kind)
    clean.load_state_dict(model.state_dict())
    np.testing.assert_allclose(
        explain(model, volumes(8), method, **params),
        explain(clean, volumes(8), method, **params),
        rtol=1e-5,
        atol=1e-9,
    )


# --------------------------------------------------------------------------------------------
# A left-right symmetric model gives left-right flipped maps for a flipped input


class SymmetricNet(nn.Module):
    """Equivariant to flipping axis i: kernels symmetric in i, odd pooling grid, global average."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv3d(1, 4, 3, padding=1)
        self.bn1 = nn.BatchNorm3d(4)
        self.act1 = nn.LeakyReLU(0.2)
        self.pool = nn.MaxPool3d(3, stride=2, padding=1)
        self.conv2 = nn.Conv3d(4, 6, 3, padding=1)
        self.act2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(6, 1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_((conv.weight + conv.weight.flip(2)) / 2)
            self.bn1.running_mean.uniform_(-0.2, 0.2)
            self.bn1.running_var.uniform_(0.5, 1.5)
            self.fc.bias.fill_(40.0)

    @property
    def output_layer(self):
        return self.fc

    def forward(self, x):
        x = self.pool(self.act1(self.bn1(self.conv1(x))))
        return self.fc(self.flatten(self.gap(self.act2(self.conv2(x)))))


FLIP_CASES = [
    ("guided_backprop", {}),
    ("lrp", {"composite": "epsilon_plus_flat"}),
    ("lrp", {"composite": "epsilon_gamma_box"}),
    ("lrp", {"composite": "alpha1_beta0"}),
    ("integrated_gradients", {"n_steps": 8}),
    ("gradcam", {"layer": "conv2"}),
    ("occlusion", {"window": (3, 4, 7), "stride": (3, 2, 7)}),
]


@pytest.mark.parametrize(("method", "params"), FLIP_CASES)
def test_flipped_input_gives_flipped_map(method, params):
    model = SymmetricNet(9).double().eval()
    grid = (9, 8, 7)  # flip axis i has odd length so the stride-2 pooling grid is symmetric
    x = volumes(10, n=2, shape=grid)
    xf = x.flip(2)
    with torch.no_grad():
        torch.testing.assert_close(model(xf), model(x))  # the model is flip-invariant
    a = explain(model, x, method, **params)
    b = explain(model, xf, method, **params)
    assert np.abs(a - a[:, :, ::-1]).max() > 1e-6 * np.abs(a).max()  # maps are not symmetric
    np.testing.assert_allclose(b, a[:, :, ::-1], rtol=1e-5, atol=1e-6 * np.abs(a).max())


def test_guard_cleans_up_after_a_misbehaving_method():
    # a method that leaves a hook, swaps a parameter's storage and unfreezes it, then fails
    name = "test_misbehaving"

    @register_method(name)
    def misbehaving(model, x):
        conv = model.features[0]
        conv.register_forward_hook(lambda *args: None)
        conv.register_full_backward_hook(lambda *args: None)
        conv.weight.data = torch.zeros_like(conv.weight)
        model.features[1].running_var.data = torch.ones_like(model.features[1].running_var)
        next(model.parameters()).requires_grad_(True)
        model.train()
        model.features[2].extra = nn.Identity()  # a canonizer-like submodule and forward
        model.features[2].forward = lambda x: x
        raise RuntimeError("boom in method")

    try:
        model = hofmann(3).eval()
        next(model.parameters()).requires_grad_(False)
        before = snapshot(model)
        with pytest.raises(RuntimeError, match="boom in method"):
            explain(model, volumes(0), name)
        assert_untouched(model, before)
    finally:
        METHODS.pop(name)


def test_device_and_dtype_follow_the_model():
    model = hofmann(6)
    x = volumes(6)
    a = explain(model, x, "lrp")
    b = explain(model, x.float().numpy(), "lrp", device="cpu")  # cast to the model's float64
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7 * np.abs(a).max())
    assert next(model.parameters()).device.type == "cpu"
