"""The 2.5D projection baseline (paper 004): 3D maps by construction, Grad-CAM, LRP, registry."""

from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm
from torch import nn

from brainage.errors import ConfigError
from brainage.explain import explain, list_methods
from brainage.explain.gradcam import default_layer
from brainage.models import MODELS, build_model, check_model_params
from brainage.models.projection import AxisProjection, ProjectionCNN

SHAPE = (12, 20, 16)  # i, j, k deliberately unequal so that axis mix-ups cannot hide
CHEAP = {
    "integrated_gradients": {"n_steps": 4},
    "smoothgrad": {"nt_samples": 3},
    "occlusion": {"window": 4},
}


def model_(seed: int = 0, projection: str = "mean", **kw) -> ProjectionCNN:
    torch.manual_seed(seed)
    params = {"widths": (4, 8, 8), "dense": 8, "mean_age": 40.0} | kw
    model = ProjectionCNN(input_shape=SHAPE, projection=projection, **params).double()
    return randomize_batchnorm(model, seed).eval()


def volumes(seed: int, n: int = 2, shape=SHAPE) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *shape, generator=g, dtype=torch.float64)


def input_gradient(fn, x: torch.Tensor) -> torch.Tensor:
    x = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(fn(x).sum(), x)
    return g


def interaction(a: np.ndarray) -> np.ndarray:
    """Double difference over (i, j) of maps (n, c, i, j, k): 0 iff a = f(i, k) + g(j, k)."""
    return a - a.mean(2, keepdims=True) - a.mean(3, keepdims=True) + a.mean((2, 3), keepdims=True)


# ---------------------------------------------------------------------------------- the model


def test_projection_module_axes_and_modes():
    x = volumes(0)
    torch.testing.assert_close(AxisProjection(1)(x), x.mean(3))  # coronal: (n, c, i, k)
    torch.testing.assert_close(AxisProjection(0)(x), x.mean(2))  # sagittal: (n, c, j, k)
    torch.testing.assert_close(AxisProjection(2, "max")(x), x.amax(4))
    assert AxisProjection(1)(x).shape == (2, 1, 12, 16)
    with pytest.raises(ConfigError, match="'axis' must be 0, 1 or 2"):
        AxisProjection(3)
    with pytest.raises(ConfigError, match="'mode' must be one of mean, max"):
        AxisProjection(0, "median")


def test_forward_shape_output_bias_and_registry():
    assert MODELS["projection2d"] is ProjectionCNN
    model = build_model("projection2d", input_shape=(40, 48, 40), mean_age=55.0)
    assert model.output_layer is model.fc and float(model.fc.bias.detach()) == 55.0
    with torch.no_grad():
        out = model.eval()(torch.randn(3, 1, 40, 48, 40))
    assert out.shape == (3, 1) and torch.isfinite(out).all()
    # configurable parameters are known to the configuration check
    check_model_params("projection2d", {"widths": [8, 16], "dense": 32, "dropout": 0.3})
    with pytest.raises(ConfigError, match="did you mean 'widths'"):
        check_model_params("projection2d", {"width": [8]})
    with pytest.raises(ConfigError, match="'dropout' must be in"):
        ProjectionCNN(dropout=1.0)
    # two input channels and another grid: the branches end in global pooling
    two = ProjectionCNN(input_shape=(9, 7, 11), in_channels=2, widths=(3,), dense=4).eval()
    with torch.no_grad():
        assert two(torch.randn(1, 2, 9, 7, 11)).shape == (1, 1)


def test_coronal_branch_gradient_is_the_projected_gradient_spread_along_j():
    model = model_(1)
    x = volumes(2)
    g = input_gradient(model.coronal, x)
    # known answer: d/dx of a function of the mean over j is its gradient on the (i, k) image / J
    p = x.mean(3).requires_grad_(True)
    branch = model.coronal
    (gp,) = torch.autograd.grad(branch.flatten(branch.pool(branch.features(p))).sum(), p)
    torch.testing.assert_close(g, (gp / SHAPE[1])[:, :, :, None, :].expand_as(g))
    assert g.std(dim=3).max() < 1e-12 * g.abs().max()  # constant along j …
    assert g.std(dim=2).max() > 1e-3 * g.abs().max()  # … but not along i or k
    gs = input_gradient(model.sagittal, x)
    assert gs.std(dim=2).max() < 1e-12 * gs.abs().max()  # the sagittal branch: constant along i
    # the oracle can fail: with a maximum intensity projection the gradient is not constant
    g_max = input_gradient(model_(1, projection="max").coronal, x)
    assert g_max.std(dim=3).max() > 0.1 * g_max.abs().max()


@pytest.mark.parametrize(
    ("method", "params"),
    [
        ("guided_backprop", {}),
        ("smoothgrad", {"nt_samples": 3, "stdevs": 0.1}),
        ("lrp", {}),
        ("lrp", {"composite": "epsilon_gamma_box"}),
        ("lrp", {"composite": "alpha1_beta0"}),
    ],
)
def test_maps_are_a_coronal_plus_a_sagittal_part(method, params):
    # every relevance spread back through the two mean projections has the form
    # R(i, j, k) = Rc(i, k) / J + Rs(j, k) / I: no interaction between i and j
    x = volumes(3)
    r = explain(model_(2), x, method, **params)
    assert np.abs(interaction(r)).max() < 1e-5 * np.abs(r).max()
    r_max = explain(model_(2, projection="max"), x, method, **params)
    assert np.abs(interaction(r_max)).max() > 0.05 * np.abs(r_max).max()


@pytest.mark.parametrize(
    "composite",
    ["epsilon_plus_flat", "epsilon_gamma_box", "alpha1_beta0", "epsilon_alpha2_beta1_flat"],
)
@pytest.mark.parametrize("seed", [0, 1])
def test_lrp_conservation_through_the_projections(composite, seed):
    model = model_(seed, widths=(6, 8, 12), dense=16)
    x = volumes(seed + 10)
    with torch.no_grad():
        dev = (model(x)[:, 0] - 40.0).numpy()
    total = explain(model, x, "lrp", composite=composite).reshape(2, -1).sum(1)
    np.testing.assert_allclose(total, dev, rtol=1e-3)


def test_lrp_gives_both_branch_inputs_the_first_layer_rule():
    from brainage.explain.canonizers import zennit
    from brainage.explain.lrp import make_composite

    model = model_(0)
    x = volumes(0)
    first = {n: m for n, m in model.named_modules() if n in model.input_layers}
    assert sorted(first) == ["coronal.features.0", "sagittal.features.0"]
    for composite, rule in [
        ("epsilon_plus_flat", zennit.rules.Flat),
        ("epsilon_gamma_box", zennit.rules.ZBox),
    ]:
        named = make_composite(composite, x, first_layers=model.input_layers)
        for name, module in first.items():
            assert isinstance(named.module_map({}, name, module), rule), (composite, name)
        # zennit's default would give only the first convolution in module order that rule
        plain = make_composite(composite, x)
        ctx: dict = {}
        rules = [plain.module_map(ctx, n, m) for n, m in model.named_modules()]
        assert sum(isinstance(r, rule) for r in rules) == 1
    # a composite without a first-layer rule is left as it is
    alpha = make_composite("alpha1_beta0", x, first_layers=model.input_layers)
    assert isinstance(
        alpha.module_map({}, "sagittal.features.0", first["sagittal.features.0"]),
        zennit.rules.AlphaBeta,
    )


# ------------------------------------------------------------------------------------ Grad-CAM


def manual_cam(model: ProjectionCNN, branch: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Slow Grad-CAM of one branch's ``features`` (n, 1, a, b), by a forward hook."""
    store = {}
    handle = branch.features.register_forward_hook(lambda m, i, o: store.update(a=o))
    try:
        out = model(x.clone().requires_grad_(True))
    finally:
        handle.remove()
    (grad,) = torch.autograd.grad(out.sum(), store["a"])
    alpha = grad.mean(dim=(2, 3), keepdim=True)
    return (alpha * store["a"]).sum(1, keepdim=True).detach()


def test_gradcam_spreads_each_branch_along_its_projection_axis():
    model = model_(4)
    x = volumes(5)
    assert default_layer(model) == ("coronal.features", "sagittal.features")
    cam_c = explain(model, x, "gradcam", layer="coronal.features")
    cam_s = explain(model, x, "gradcam", layer="sagittal.features")
    i, j, k = SHAPE
    # oracle: the branch's 2D CAM upsampled bilinearly to (i, k) resp. (j, k), repeated along j / i
    up_c = nn.functional.interpolate(
        manual_cam(model, model.coronal, x), size=(i, k), mode="bilinear", align_corners=False
    )
    up_s = nn.functional.interpolate(
        manual_cam(model, model.sagittal, x), size=(j, k), mode="bilinear", align_corners=False
    )
    expected_c = up_c[:, :, :, None, :].expand(-1, -1, i, j, k)
    expected_s = up_s[:, :, None, :, :].expand(-1, -1, i, j, k)
    np.testing.assert_allclose(cam_c, expected_c.numpy(), rtol=1e-5, atol=1e-10)
    np.testing.assert_allclose(cam_s, expected_s.numpy(), rtol=1e-5, atol=1e-10)
    assert np.abs(cam_c).max() > 0 and np.abs(cam_s).max() > 0
    # the default sums the two branches' 3D maps
    both = explain(model, x, "gradcam")  # float32 maps: compare to float32 precision
    np.testing.assert_allclose(both, cam_c + cam_s, rtol=1e-5, atol=1e-6 * np.abs(both).max())
    np.testing.assert_allclose(
        explain(model, x, "gradcam", layer=["coronal.features", "sagittal.features"]), both
    )
    relu = explain(model, x, "gradcam", layer="coronal.features", relu=True)
    np.testing.assert_allclose(relu, np.maximum(expected_c.numpy(), 0), rtol=1e-5, atol=1e-10)


def test_gradcam_errors_for_undeclared_2d_layers():
    model = model_(0)
    x = volumes(0, n=1)
    with pytest.raises(ConfigError, match="5D tensor .* or a 4D tensor .* 'gradcam_layers'"):
        explain(model, x, "gradcam", layer="coronal.features.0")
    with pytest.raises(ConfigError, match="'layer' must be a module name"):
        explain(model, x, "gradcam", layer=[])


def test_gradcam_of_3d_models_is_unchanged_by_the_2d_path():
    from brainage.models import HofmannCNN

    torch.manual_seed(0)
    model = HofmannCNN(input_shape=SHAPE, filters=(4, 4, 8, 8, 4), dense=8).double().eval()
    x = volumes(6)
    assert default_layer(model) == "features.16"
    one = explain(model, x, "gradcam", layer="features.12")
    np.testing.assert_allclose(explain(model, x, "gradcam", layer=["features.12"]), one)
    np.testing.assert_allclose(
        explain(model, x, "gradcam", layer=["features.12", "features.16"]),
        one + explain(model, x, "gradcam", layer="features.16"),
        rtol=1e-5,
        atol=1e-10,
    )


# ------------------------------------------------------------------------- every method, tiny


def fitted_noise_model(model: nn.Module, x: torch.Tensor):
    unoise = importlib.import_module("brainage.explain.unoise")
    with torch.no_grad():
        y = model(x)[:, 0].numpy()
    tiny = {"base_channels": 4, "levels": 3, "batch_size": 2, "lr": 1e-2}
    return unoise.fit_unoise(model, x.numpy(), y, pretrain_epochs=1, epochs=1, **tiny)


@pytest.mark.parametrize("method", list_methods())
def test_every_registered_method_gives_finite_3d_maps(method):
    model = model_(7).float()
    x = volumes(8, n=2, shape=(16, 20, 16)).float()
    params = dict(CHEAP.get(method, {}))
    if method == "unoise":  # needs a noise model fitted for this predictor (one tiny epoch)
        params["noise_model"] = fitted_noise_model(model, x)
    r = explain(model, x, method, **params)
    assert r.shape == x.shape and r.dtype == np.float32
    assert np.isfinite(r).all() and np.abs(r).max() > 0
