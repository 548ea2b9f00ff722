"""Left and right: the mid-sagittal mirror of the template grid, the flip augmentation, atlas
hemispheres and explanation maps of a model that is mirror-invariant by construction
(issue 11: the antisymmetric LRP maps of the IXI run)."""

import copy
import re

import numpy as np
import pytest
import torch
from torch import nn

from brainage.data.augment import build_augmentation
from brainage.explain import explain
from brainage.space import mirror_x, template_array, template_grid


def _x_mm(resolution):
    a = template_grid(resolution).affine
    return a[0, 3] + a[0, 0] * np.arange(template_grid(resolution).shape[0])


@pytest.mark.parametrize("resolution", [2.0, 4.0])
def test_mirror_maps_x_to_minus_x_and_the_symmetric_template_onto_itself(resolution):
    grid = template_grid(resolution)
    x = _x_mm(resolution)
    assert x[0] == -80 and x[-1] != 80  # the crop box is not symmetric about x = 0 ...
    mask = template_array("mask", resolution) > 0
    assert (mask != mask[::-1]).sum() > 0.02 * mask.sum()  # ... so an array flip is no mirror
    assert (mirror_x(mask.astype(float), resolution) > 0.5).sum() == mask.sum()
    np.testing.assert_array_equal(mirror_x(mask.astype(float), resolution) > 0.5, mask)
    # a point at x = +20 mm goes to x = −20 mm
    delta = np.zeros(grid.shape)
    i = int(np.argmin(np.abs(x - 20)))
    delta[i, 10, 10] = 1.0
    out = mirror_x(delta, resolution)
    assert x[np.nonzero(out)[0][0]] == pytest.approx(-x[i])
    # an involution wherever the mirror stays in the box; torch and numpy agree
    v = np.random.default_rng(0).normal(size=grid.shape)
    twice = mirror_x(mirror_x(v, resolution), resolution)
    inside = np.abs(-x - x[0]) < 1e-6 + (len(x) - 1) * resolution  # mirror inside the box
    np.testing.assert_allclose(twice[inside], v[inside])
    t = mirror_x(torch.as_tensor(v[None, None]), resolution)
    np.testing.assert_allclose(t.numpy()[0, 0], mirror_x(v, resolution))


def test_flip_augmentation_is_the_midline_mirror():
    transform = build_augmentation(["flip"], p=1.0, voxel_mm=4.0)
    x = torch.as_tensor(np.random.default_rng(1).normal(size=(1, 40, 48, 40)).astype(np.float32))
    torch.testing.assert_close(transform(x), mirror_x(x, 4.0, axis=1))


@pytest.mark.parametrize("atlas", ["harvard_oxford", "aal"])
def test_atlas_regions_named_left_and_right_lie_at_negative_and_positive_x(atlas):
    from brainage.atlas import load_atlas

    a = load_atlas(atlas, template_grid(2.0))
    x = _x_mm(2.0)
    checked = 0
    for value in a.present_labels:
        name = a.names[int(value)]
        left = bool(re.search(r"(^Left|_L$)", name))
        right = bool(re.search(r"(^Right|_R$)", name))
        if not (left or right):
            continue
        centre = x[np.nonzero(a.labels == value)[0]].mean()
        assert (centre < 0) if left else (centre > 0), (name, centre)
        checked += 1
    assert checked >= 40


class MirrorInvariant(nn.Module):
    """f(x) = g(x) + g(mirror(x)): invariant under the midline mirror by construction.

    The mirrored branch is a copy of g (LRP rules need each module called once per forward).
    """

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.g = nn.Sequential(nn.Conv3d(1, 3, 3, padding=1), nn.ReLU(), nn.AvgPool3d(4),
                               nn.Flatten(), nn.Linear(3 * 10 * 12 * 10, 1))  # fmt: skip
        self.g_mirrored = copy.deepcopy(self.g)

    def forward(self, x):
        return self.g(x) + self.g_mirrored(mirror_x(x, 4.0, axis=2))


@pytest.mark.parametrize(("method", "params"), [
    ("guided_backprop", {}),
    ("integrated_gradients", {"n_steps": 8}),
])  # fmt: skip
def test_the_map_of_a_mirrored_brain_is_the_mirrored_map(method, params):
    brain = template_array("t1w", 4.0) * (template_array("mask", 4.0) > 0)
    rng = np.random.default_rng(2)
    x = torch.as_tensor((brain * rng.uniform(0.7, 1.3, brain.shape))[None, None]).double()
    model = MirrorInvariant().double().eval()
    xm = mirror_x(x, 4.0, axis=2)
    with torch.no_grad():
        torch.testing.assert_close(model(xm), model(x))
    a = np.asarray(explain(model, x, method, **params)).reshape(x.shape[2:])
    b = np.asarray(explain(model, xm, method, **params)).reshape(x.shape[2:])
    x_mm = _x_mm(4.0)
    inside = np.abs(-x_mm - x_mm[0]) < 1e-6 + (len(x_mm) - 1) * 4.0
    assert np.abs(a - mirror_x(a, 4.0)).max() > 1e-3 * np.abs(a).max()  # the map is lateralised
    np.testing.assert_allclose(b[inside], mirror_x(a, 4.0)[inside], atol=1e-6 * np.abs(a).max())


class SymmetricKernels(nn.Module):
    """Convolutions with kernels symmetric in x, no striding, global average: invariant under
    reversal and shifts, hence under the midline mirror for brains that do not touch the box
    edge; every module is called once (an LRP-friendly chain)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv1 = nn.Conv3d(1, 3, 3, padding=1)
        self.act1 = nn.ReLU()
        self.conv2 = nn.Conv3d(3, 4, 3, padding=1)
        self.act2 = nn.ReLU()
        self.gap = nn.AdaptiveAvgPool3d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(4, 1)
        with torch.no_grad():
            for conv in (self.conv1, self.conv2):
                conv.weight.copy_((conv.weight + conv.weight.flip(2)) / 2)

    @property
    def output_layer(self):
        return self.fc

    def forward(self, x):
        x = self.act2(self.conv2(self.act1(self.conv1(x))))
        return self.fc(self.flatten(self.gap(x)))


@pytest.mark.parametrize("composite", ["epsilon_plus_flat", "alpha1_beta0"])
def test_lrp_map_of_a_mirrored_brain_is_the_mirrored_map(composite):
    brain = template_array("t1w", 4.0) * (template_array("mask", 4.0) > 0)
    rng = np.random.default_rng(5)
    x = torch.as_tensor((brain * rng.uniform(0.7, 1.3, brain.shape))[None, None]).double()
    model = SymmetricKernels().double().eval()
    xm = mirror_x(x, 4.0, axis=2)
    with torch.no_grad():
        torch.testing.assert_close(model(xm), model(x))
    a = np.asarray(explain(model, x, "lrp", composite=composite)).reshape(x.shape[2:])
    b = np.asarray(explain(model, xm, "lrp", composite=composite)).reshape(x.shape[2:])
    assert np.abs(a - mirror_x(a, 4.0)).max() > 1e-3 * np.abs(a).max()
    # the brain reaches 2 voxels from the box edge; the flat and z+ rules spread relevance into
    # the zero padding there, whose distance to the brain differs by the one-voxel shift of the
    # mirror: compare slabs 4 … 36 (x = −64 … +64 mm), whose mirrors are ≥ 3 slabs from an edge
    interior = slice(4, 37)
    np.testing.assert_allclose(b[interior], mirror_x(a, 4.0)[interior], atol=1e-6 * np.abs(a).max())
