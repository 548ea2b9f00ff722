"""Known answers and reference implementations for the gradient and perturbation methods."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain import METHODS, explain
from brainage.models import HofmannCNN

torch.set_num_threads(1)

GRID = (5, 4, 3)  # tiny, deliberately unequal axes
SHAPE = (24, 28, 22)


def volume(seed: int, shape=GRID, n: int = 1, c: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, c, *shape, generator=g, dtype=torch.float64)


# --------------------------------------------------------------------------------------------
# Guided Backpropagation: slow numpy reference on a hand-built conv-LeakyReLU-conv-ReLU-dense net


def tiny_gbp_model(seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv3d(1, 2, 3, padding=1),
        nn.LeakyReLU(0.2),
        nn.Conv3d(2, 2, 3, padding=1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(2 * int(np.prod(GRID)), 1),
    ).double()
    return model.eval()


def conv_loop(x, w, b):
    """Slow 3D convolution, stride 1, zero padding 1: x (C, I, J, K), w (O, C, 3, 3, 3)."""
    c_out = w.shape[0]
    out = np.zeros((c_out, *x.shape[1:]))
    for o, i, j, k in itertools.product(range(c_out), *map(range, x.shape[1:])):
        s = b[o]
        for c, di, dj, dk in itertools.product(range(x.shape[0]), range(3), range(3), range(3)):
            ii, jj, kk = i + di - 1, j + dj - 1, k + dk - 1
            if 0 <= ii < x.shape[1] and 0 <= jj < x.shape[2] and 0 <= kk < x.shape[3]:
                s += w[o, c, di, dj, dk] * x[c, ii, jj, kk]
        out[o, i, j, k] = s
    return out


def conv_loop_backward(g, w, in_channels):
    """Slow gradient of conv_loop w.r.t. its input, for output gradient g (O, I, J, K)."""
    out = np.zeros((in_channels, *g.shape[1:]))
    for o, i, j, k in itertools.product(*map(range, g.shape)):
        for c, di, dj, dk in itertools.product(range(in_channels), range(3), range(3), range(3)):
            ii, jj, kk = i + di - 1, j + dj - 1, k + dk - 1
            if 0 <= ii < g.shape[1] and 0 <= jj < g.shape[2] and 0 <= kk < g.shape[3]:
                out[c, ii, jj, kk] += w[o, c, di, dj, dk] * g[o, i, j, k]
    return out


def gbp_reference(model: nn.Sequential, x: np.ndarray, clamp_leaky: bool = True) -> np.ndarray:
    """Guided backprop by hand: backward of ReLU/LeakyReLU = relu(grad_out * slope(z))."""
    conv1, leaky, conv2, _, _, dense = model
    w1, b1 = conv1.weight.detach().numpy(), conv1.bias.detach().numpy()
    w2, b2 = conv2.weight.detach().numpy(), conv2.bias.detach().numpy()
    z1 = conv_loop(x, w1, b1)
    a1 = np.where(z1 > 0, z1, leaky.negative_slope * z1)
    z2 = conv_loop(a1, w2, b2)
    g_a2 = dense.weight.detach().numpy().reshape(z2.shape)
    g_z2 = np.maximum(g_a2 * (z2 > 0), 0)
    g_a1 = conv_loop_backward(g_z2, w2, w2.shape[1])
    g_z1 = g_a1 * np.where(z1 > 0, 1.0, leaky.negative_slope)
    if clamp_leaky:
        g_z1 = np.maximum(g_z1, 0)
    return conv_loop_backward(g_z1, w1, w1.shape[1])


@pytest.mark.parametrize("seed", [0, 1])
def test_guided_backprop_matches_slow_reference(seed):
    model = tiny_gbp_model(seed)
    x = volume(seed + 10, n=2)
    got = METHODS["guided_backprop"](model, x)
    for s in range(2):
        expected = gbp_reference(model, x[s].numpy())
        np.testing.assert_allclose(got[s], expected, rtol=1e-5, atol=1e-7)


def test_guided_backprop_clamps_leaky_relu_unlike_stock_captum():
    # captum's GuidedBackprop hooks nn.ReLU only; ours also clamps nn.LeakyReLU
    from captum.attr import GuidedBackprop

    model = tiny_gbp_model(0)
    x = volume(10)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        stock = GuidedBackprop(model).attribute(x.clone(), target=0).detach().numpy()[0]
    unclamped = gbp_reference(model, x[0].numpy(), clamp_leaky=False)
    clamped = gbp_reference(model, x[0].numpy(), clamp_leaky=True)
    assert np.abs(unclamped - clamped).max() > 1e-3  # the LeakyReLU clamp matters here
    ours = METHODS["guided_backprop"](model, x)[0]
    np.testing.assert_allclose(ours, clamped, rtol=1e-5, atol=1e-7)
    assert np.abs(stock - ours).max() > 1e-3


# --------------------------------------------------------------------------------------------
# Integrated Gradients: completeness


def small_hofmann(seed: int) -> HofmannCNN:
    torch.manual_seed(seed)
    model = HofmannCNN(input_shape=SHAPE, filters=(4, 4, 8, 8, 4), dense=8, mean_age=45.0)
    return model.double().eval()


@pytest.mark.parametrize("baseline", ["zeros", "mean", 0.5])
def test_integrated_gradients_completeness(baseline):
    model = small_hofmann(0)
    x = volume(1, SHAPE, n=2)
    from brainage.explain._core import make_baseline

    with torch.no_grad():
        delta = (model(x) - model(make_baseline(baseline, x)))[:, 0].numpy()
    assert np.all(np.abs(delta) > 0.1)
    attr = explain(model, x, "integrated_gradients", baseline=baseline, n_steps=32)
    np.testing.assert_allclose(attr.reshape(2, -1).sum(1), delta, rtol=0.01)


def test_integrated_gradients_tensor_baseline_and_internal_batching():
    model = small_hofmann(1)
    x = volume(2, SHAPE)
    base = volume(3, SHAPE)[0] * 0.1  # one (c, i, j, k) volume for every subject
    a = explain(model, x, "integrated_gradients", baseline=base, n_steps=8, internal_batch_size=8)
    b = explain(model, x, "integrated_gradients", baseline=base, n_steps=8, internal_batch_size=3)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-9)
    with torch.no_grad():
        delta = (model(x) - model(base[None]))[0, 0].item()
    assert abs(a.sum() - delta) < 0.05 * abs(delta)
    with pytest.raises(ConfigError, match="baseline"):
        explain(model, x, "integrated_gradients", baseline=base[:, :3])
    with pytest.raises(ConfigError, match="baseline"):
        explain(model, x, "integrated_gradients", baseline="median")


def test_integrated_gradients_of_linear_model_is_exact():
    lin = linear_model(GRID, seed=4)
    x = volume(5)
    attr = explain(lin, x, "integrated_gradients", n_steps=4)
    w = lin[1].weight.detach().reshape(1, 1, *GRID)
    np.testing.assert_allclose(attr, (w * x).numpy(), rtol=1e-6, atol=1e-10)


# --------------------------------------------------------------------------------------------
# Grad-CAM: known answers


class CamNet(nn.Module):
    """x -> [avgpool 2] -> conv 1x1 (K channels, no bias) -> global average -> dense (K -> 1)."""

    def __init__(self, in_channels: int, weights, head, downsample: bool) -> None:
        super().__init__()
        self.down = nn.AvgPool3d(2) if downsample else nn.Identity()
        self.conv = nn.Conv3d(in_channels, len(weights), 1, bias=False)
        self.pool = nn.AdaptiveAvgPool3d(1)
        self.head = nn.Linear(len(weights), 1)
        with torch.no_grad():
            self.conv.weight.copy_(
                torch.as_tensor(weights, dtype=torch.float64).reshape(-1, in_channels, 1, 1, 1)
            )
            self.head.weight.copy_(torch.as_tensor(head, dtype=torch.float64).reshape(1, -1))
            self.head.bias.fill_(50.0)

    def forward(self, x):
        return self.head(self.pool(self.conv(self.down(x))).flatten(1))


def test_gradcam_known_answer_signed_and_relu():
    w = [[1.0], [-2.0], [0.5]]
    v = [0.3, 0.4, -1.0]
    model = CamNet(1, w, v, downsample=False).double()
    x = volume(6, (6, 5, 4), n=2)
    n_vox = 6 * 5 * 4
    # d f / d A_k = v_k / P  =>  cam = sum_k (v_k / P) * w_k * x
    scale = sum(vk * wk[0] for vk, wk in zip(v, w, strict=True)) / n_vox
    expected = scale * x.numpy()
    got = explain(model, x, "gradcam", layer="conv")
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-12)
    assert (got < 0).any() and (got > 0).any()  # signed for regression
    np.testing.assert_allclose(
        explain(model, x, "gradcam", layer="conv", relu=True), np.maximum(expected, 0), atol=1e-12
    )
    # on the layer's own grid the signed map sums to f(x) - b (global average pooling head)
    with torch.no_grad():
        dev = (model(x)[:, 0] - 50.0).numpy()
    np.testing.assert_allclose(got.reshape(2, -1).sum(1), dev, rtol=1e-5, atol=1e-7)


def test_gradcam_upsamples_trilinearly_to_the_input_grid():
    w = [[1.0, 0.5], [-1.5, 2.0]]
    v = [0.7, 0.2]
    model = CamNet(2, w, v, downsample=True).double()
    x = volume(7, (8, 6, 4), n=1, c=2)
    pooled = torch.nn.functional.avg_pool3d(x, 2)
    n_vox = 4 * 3 * 2
    act = torch.einsum("kc,ncijl->nkijl", torch.as_tensor(w, dtype=torch.float64), pooled)
    cam = (torch.as_tensor(v, dtype=torch.float64)[None, :, None, None, None] / n_vox * act).sum(
        1, keepdim=True
    )
    expected = torch.nn.functional.interpolate(cam, size=(8, 6, 4), mode="trilinear")
    got = explain(model, x, "gradcam", layer="conv")
    assert got.shape == (1, 2, 8, 6, 4)
    np.testing.assert_allclose(got[:, 0], expected[:, 0].numpy(), rtol=1e-6, atol=1e-12)
    np.testing.assert_allclose(got[:, 1], got[:, 0])


def test_gradcam_default_layer_and_errors():
    from brainage.explain.gradcam import default_layer
    from brainage.models import ResNet3D

    assert default_layer(ResNet3D(input_shape=SHAPE)) == "layer3"
    assert default_layer(HofmannCNN(input_shape=SHAPE)) == "features.16"
    model = small_hofmann(0)
    x = volume(0, SHAPE)
    assert explain(model, x, "gradcam", layer="features.12").shape == x.shape
    with pytest.raises(ConfigError, match="did you mean 'features.12'"):
        explain(model, x, "gradcam", layer="feature.12")
    with pytest.raises(ConfigError, match="5D"):
        explain(model, x, "gradcam", layer="regressor.2")


# --------------------------------------------------------------------------------------------
# SmoothGrad


def linear_model(grid, seed: int) -> nn.Sequential:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Flatten(), nn.Linear(int(np.prod(grid)), 1)).double()
    with torch.no_grad():
        model[1].bias.fill_(42.0)
    return model.eval()


def test_smoothgrad_of_linear_model_is_the_weight():
    lin = linear_model(GRID, seed=8)
    x = volume(9, n=2)
    got = explain(lin, x, "smoothgrad", nt_samples=5, stdevs=0.3)
    w = lin[1].weight.detach().reshape(1, *GRID).numpy()
    np.testing.assert_allclose(got, np.broadcast_to(w, got.shape), rtol=1e-6)


def test_smoothgrad_zero_noise_is_the_gradient_and_seeding_is_explicit():
    model = small_hofmann(2)
    x = volume(11, SHAPE, n=2)
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).sum(), xg)
    got = explain(model, x, "smoothgrad", nt_samples=2, stdevs=0.0)
    np.testing.assert_allclose(got, grad.numpy(), rtol=1e-5, atol=1e-9)

    state = torch.random.get_rng_state()
    a = explain(model, x, "smoothgrad", nt_samples=4, random_state=3, batch_size=2)
    assert torch.equal(torch.random.get_rng_state(), state)  # global generator untouched
    b = explain(model, x, "smoothgrad", nt_samples=4, random_state=3, batch_size=1)
    c = explain(model, x, "smoothgrad", nt_samples=4, random_state=4)
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-10)  # independent of batching
    assert np.abs(a - c).max() > 1e-6
    assert np.abs(a - grad.numpy()).max() > 1e-6


# --------------------------------------------------------------------------------------------
# Occlusion: slow loop over box positions


def occlusion_reference(model, x, window, stride, baseline=0.0):
    """Definition: each voxel gets the mean of f(x) - f(x with box w at baseline) over its boxes."""
    grid = x.shape[2:]
    starts = []
    for g, w, s in zip(grid, window, stride, strict=True):
        n = int(np.ceil((g - w) / s)) + 1
        starts.append([k * s for k in range(n)])
    total = np.zeros(grid)
    count = np.zeros(grid)
    with torch.no_grad():
        f0 = model(x)[0, 0].item()
        for a, b, c in itertools.product(*starts):
            box = (slice(a, a + window[0]), slice(b, b + window[1]), slice(c, c + window[2]))
            xo = x.clone()
            if isinstance(baseline, np.ndarray):
                xo[(0, slice(None), *box)] = torch.as_tensor(baseline)[(slice(None), *box)]
            else:
                xo[(0, slice(None), *box)] = baseline
            total[box] += f0 - model(xo)[0, 0].item()
            count[box] += 1
    return total / count


@pytest.mark.parametrize(
    ("window", "stride"), [((2, 2, 3), (2, 2, 3)), ((3, 2, 2), (2, 1, 2)), ((2, 3, 2), None)]
)
def test_occlusion_matches_slow_loop(window, stride):
    grid = (7, 8, 9)
    torch.manual_seed(3)
    model = HofmannCNN(input_shape=grid, filters=(2, 2, 2, 2, 2), dense=4).double().eval()
    x = volume(12, grid)
    got = explain(model, x, "occlusion", window=window, stride=stride, perturbations_per_eval=5)
    expected = occlusion_reference(model, x, window, stride or window)
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6, atol=1e-10)


def test_occlusion_of_linear_model_is_windowed_weight_times_input():
    grid = (6, 4, 6)
    lin = linear_model(grid, seed=5)
    x = volume(13, grid)
    got = explain(lin, x, "occlusion", window=(3, 2, 3))
    wx = (lin[1].weight.detach().reshape(grid) * x[0, 0]).numpy()
    expected = np.zeros(grid)
    for a, b, c in itertools.product(range(0, 6, 3), range(0, 4, 2), range(0, 6, 3)):
        box = (slice(a, a + 3), slice(b, b + 2), slice(c, c + 3))
        expected[box] = wx[box].sum()
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6, atol=1e-10)
    np.testing.assert_allclose(got[0, 0], occlusion_reference(lin, x, (3, 2, 3), (3, 2, 3)))


def test_occlusion_with_a_reference_volume_matches_slow_loop():
    """A reference volume (e.g. the mean training image) replaces each box by its own voxels."""
    grid = (7, 8, 9)
    torch.manual_seed(4)
    model = HofmannCNN(input_shape=grid, filters=(2, 2, 2, 2, 2), dense=4).double().eval()
    x = volume(14, grid)
    reference = volume(15, grid)[0].numpy()
    got = explain(model, x, "occlusion", window=(3, 2, 3), stride=(2, 2, 2), baseline=reference)
    expected = occlusion_reference(model, x, (3, 2, 3), (2, 2, 2), baseline=reference)
    np.testing.assert_allclose(got[0, 0], expected, rtol=1e-6, atol=1e-10)
    # occluding with the volume itself changes nothing
    same = explain(model, x, "occlusion", window=3, baseline=x[0].numpy())
    np.testing.assert_allclose(same, 0.0, atol=1e-10)


def test_occlusion_parameter_errors():
    lin = linear_model(GRID, seed=0)
    x = volume(0)
    with pytest.raises(ConfigError, match="must fit"):
        explain(lin, x, "occlusion", window=(6, 1, 1))
    with pytest.raises(ConfigError, match="must not exceed"):
        explain(lin, x, "occlusion", window=2, stride=3)
    with pytest.raises(ConfigError, match="window"):
        explain(lin, x, "occlusion", window=(2, 2))
    with pytest.raises(ConfigError, match="window"):
        explain(lin, x, "occlusion", window=0)
    with pytest.raises(ConfigError, match="finite"):
        explain(lin, x, "occlusion", window=2, baseline=float("nan"))
    with pytest.raises(ConfigError, match="training_mean"):
        explain(lin, x, "occlusion", window=2, baseline="training_mean")
