"""LRP (zennit) on brainage's models: conservation, canonizers, the torchvision shim."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain import METHODS, explain
from brainage.models import HofmannCNN, ResNet3D

torch.set_num_threads(1)

SHAPE = (24, 28, 22)
COMPOSITES = ("epsilon_plus_flat", "epsilon_gamma_box", "alpha1_beta0")


def randomize_batchnorm(model: nn.Module, seed: int) -> nn.Module:
    """Non-trivial running statistics and affine parameters (as after training)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm3d):
                n = m.num_features
                m.running_mean.copy_(0.3 * torch.randn(n, generator=g))
                m.running_var.copy_(0.5 + torch.rand(n, generator=g))
                m.weight.copy_(0.5 + torch.rand(n, generator=g))
                m.bias.copy_(0.1 * torch.randn(n, generator=g))
    return model


def volume(seed: int, n: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *SHAPE, generator=g, dtype=torch.float64)


def hofmann(seed: int, **kw) -> HofmannCNN:
    torch.manual_seed(seed)
    kw = {"filters": (4, 4, 8, 8, 4), "dense": 8, "mean_age": 47.5, **kw}
    model = HofmannCNN(input_shape=SHAPE, **kw).double()
    return randomize_batchnorm(model, seed).eval()


def resnet(seed: int) -> ResNet3D:
    # the default ResNet-18 widths: narrow toy ResNets at 1x1x1 resolution have neurons whose
    # bias-free positive pre-activation is exactly 0, where z+ rules drop relevance (documented)
    torch.manual_seed(seed)
    model = ResNet3D(input_shape=SHAPE, mean_age=61.0).double()
    return randomize_batchnorm(model, seed).eval()


def deviation(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    with torch.no_grad():
        return (model(x)[:, 0] - model.output_layer.bias).numpy()


@pytest.mark.parametrize("composite", COMPOSITES)
@pytest.mark.parametrize("seed", [0, 1])
def test_conservation_hofmann_with_batchnorm(composite, seed):
    model = hofmann(seed)
    x = volume(seed, n=2)
    target = deviation(model, x)
    assert np.all(np.abs(target) > 0.05)  # a meaningful deviation from the mean age
    rel = explain(model, x, "lrp", composite=composite)
    sums = rel.reshape(2, -1).sum(axis=1)
    np.testing.assert_allclose(sums, target, rtol=0.01)


@pytest.mark.parametrize("seed", [0, 1])
def test_conservation_resnet_with_canonizer(seed):
    model = resnet(seed)
    x = volume(seed)
    target = deviation(model, x)
    rel = explain(model, x, "lrp")
    np.testing.assert_allclose(rel.sum(), target[0], rtol=0.01)


def test_resnet_without_canonizer_violates_conservation():
    # autograd copies relevance into both branches of each of the 8 skip connections
    model = resnet(0)
    x = volume(0)
    target = deviation(model, x)[0]
    rel = explain(model, x, "lrp", canonizers=None)
    assert abs(rel.sum() - target) > 0.5 * abs(target)
    rel = explain(model, x, "lrp", canonizers="auto")
    assert abs(rel.sum() - target) < 0.01 * abs(target)


def test_zero_bias_false_absorbs_relevance_in_biases():
    model = hofmann(0)
    x = volume(0)
    with torch.no_grad():
        f = model(x)[0, 0].item()
    rel = explain(model, x, "lrp", zero_bias=False)
    target = deviation(model, x)[0]
    # starts from f(x) (~47 years) and the biases absorb most of it: neither sum is conserved
    assert abs(rel.sum() - target) > 0.01 * abs(target)
    assert abs(rel.sum() - f) > 0.01 * abs(f)


def test_canonized_forward_equals_original_forward():
    from brainage.explain.canonizers import default_canonizers
    from brainage.explain.lrp import make_composite

    model = resnet(2)
    x = volume(2)
    with torch.no_grad():
        before = model(x)
    composite = make_composite("epsilon_plus_flat", x, canonizers=default_canonizers())
    with composite.context(model) as canonized, torch.no_grad():
        assert any(n.endswith("canonizer_sum") for n, _ in canonized.named_modules())
        during = canonized(x)
    with torch.no_grad():
        after = model(x)
    # zennit's merged BatchNorm keeps its eps: x / sqrt(1 + eps) ~ (1 - 5e-6) x per BatchNorm
    bias = model.output_layer.bias.detach()
    torch.testing.assert_close(during - bias, before - bias, rtol=1e-4, atol=1e-12)
    torch.testing.assert_close(after, before, rtol=0, atol=0)
    assert not any(n.endswith("canonizer_sum") for n, _ in model.named_modules())


def test_batchnorm_merge_is_undone():
    model = hofmann(3)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    ids = {k: id(p) for k, p in model.named_parameters()}
    explain(model, volume(3), "lrp")
    for k, v in model.state_dict().items():
        assert torch.equal(v, state[k]), k
    assert ids == {k: id(p) for k, p in model.named_parameters()}


def test_relevance_is_per_sample():
    model = hofmann(4)
    x = volume(4, n=3)
    together = explain(model, x, "lrp", batch_size=3)
    alone = np.concatenate([explain(model, x[i : i + 1], "lrp") for i in range(3)])
    np.testing.assert_allclose(together, alone, rtol=1e-5, atol=1e-9)


def test_lrp_of_a_linear_model_is_weight_times_input():
    # f(x) = w·x + b: the epsilon rule (dense layers) gives R_v = w_v x_v, Σ R = f(x) - b
    lin = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(SHAPE)), 1)).double()
    with torch.no_grad():
        lin[1].bias.fill_(40.0)
    x = volume(5)
    rel = METHODS["lrp"](lin, x, composite="alpha1_beta0")
    expected = (lin[1].weight.reshape(1, 1, *SHAPE) * x).detach().numpy()
    np.testing.assert_allclose(rel, expected, rtol=1e-4, atol=1e-9)


def test_unknown_composite_and_canonizer_values():
    model = hofmann(0)
    with pytest.raises(ConfigError, match="did you mean 'alpha1_beta0'"):
        explain(model, volume(0), "lrp", composite="alpha1beta0")
    with pytest.raises(ConfigError, match="canonizers"):
        explain(model, volume(0), "lrp", canonizers="resnet")


def test_zennit_shim_leaves_no_fake_torchvision():
    code = (
        "import importlib.util, sys\n"
        "from brainage.explain._zennit import import_zennit\n"
        "z = import_zennit()\n"
        "assert hasattr(z, 'composites') and hasattr(z, 'canonizers')\n"
        "assert not [k for k in sys.modules if k.split('.')[0] == 'torchvision']\n"
        "has_tv = importlib.util.find_spec('torchvision') is not None\n"
        "if not has_tv:\n"
        "    try:\n"
        "        import torchvision\n"
        "    except ImportError:\n"
        "        pass\n"
        "    else:\n"
        "        raise SystemExit('a fake torchvision is importable')\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


@pytest.mark.parametrize("composite", COMPOSITES[1:])
def test_composite_variants_are_registered_methods(composite):
    """``lrp_<composite>`` is :func:`lrp` with that composite, and rejects a ``composite`` key."""
    from brainage.explain._core import check_method

    model, x = hofmann(0), volume(0, n=2)
    np.testing.assert_array_equal(
        explain(model, x, f"lrp_{composite}"), explain(model, x, "lrp", composite=composite)
    )
    check_method(f"lrp_{composite}", {"epsilon": 1e-6})
    with pytest.raises(ConfigError, match="no parameter 'composite'"):
        check_method(f"lrp_{composite}", {"composite": "alpha1_beta0"})
