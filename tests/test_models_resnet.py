"""3D ResNets: basic and bottleneck blocks, depth presets, parameter counts, Grad-CAM, LRP."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import randomize_batchnorm
from torch import nn

from brainage.errors import ConfigError
from brainage.explain import explain
from brainage.explain.gradcam import default_layer
from brainage.models import build_model
from brainage.models.resnet import BasicBlock3D, Bottleneck3D, ResNet3D

SHAPE = (24, 28, 22)  # deliberately unequal axes
STANDARD = (64, 128, 256, 512)


def resnet_parameter_count(layers, block, widths, in_channels, n_out, dims) -> int:
    """Oracle from the layer formulas (He et al. 2016, Table 1): conv k^d·c_in·c_out, BN 2c.

    Stem conv 7^d (no bias) + BN; per block two 3^d convs (basic) or 1^d → 3^d → 1^d convs with
    4× expansion (bottleneck), each with BN; a 1^d projection conv + BN where the stride or the
    channel count changes; a dense output layer with bias.
    """

    def conv(k, c_in, c_out):
        return k**dims * c_in * c_out

    def bn(c):
        return 2 * c

    total = conv(7, in_channels, widths[0]) + bn(widths[0])
    c_in = widths[0]
    for s, (n_blocks, w) in enumerate(zip(layers, widths, strict=True)):
        for b in range(n_blocks):
            stride = 2 if (b == 0 and s > 0) else 1
            if block == "basic":
                c_out = w
                total += conv(3, c_in, w) + bn(w) + conv(3, w, w) + bn(w)
            else:
                c_out = 4 * w
                total += conv(1, c_in, w) + bn(w) + conv(3, w, w) + bn(w)
                total += conv(1, w, c_out) + bn(c_out)
            if stride != 1 or c_in != c_out:
                total += conv(1, c_in, c_out) + bn(c_out)
            c_in = c_out
    return total + c_in * n_out + n_out


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def test_oracle_reproduces_the_published_2d_imagenet_counts():
    # torchvision's ResNet-18/34/50 (3 input channels, 1000 classes): the oracle is right
    assert resnet_parameter_count((2, 2, 2, 2), "basic", STANDARD, 3, 1000, 2) == 11_689_512
    assert resnet_parameter_count((3, 4, 6, 3), "basic", STANDARD, 3, 1000, 2) == 21_797_672
    assert resnet_parameter_count((3, 4, 6, 3), "bottleneck", STANDARD, 3, 1000, 2) == 25_557_032


@pytest.mark.parametrize(
    ("depth", "layers", "block", "expected"),
    [
        (18, (2, 2, 2, 2), "basic", 33_160_513),
        (34, (3, 4, 6, 3), "basic", 63_470_145),
        (50, (3, 4, 6, 3), "bottleneck", 46_157_121),
    ],
)
def test_parameter_counts_at_standard_widths(depth, layers, block, expected):
    oracle = resnet_parameter_count(layers, block, STANDARD, 1, 1, 3)
    assert oracle == expected
    with torch.device("meta"):  # counts only: no memory, no initialisation cost
        by_depth = ResNet3D(widths=STANDARD, depth=depth)
        explicit = ResNet3D(widths=STANDARD, layers=layers, block=block)
    assert n_params(by_depth) == n_params(explicit) == oracle


def test_defaults_and_module_names_are_unchanged():
    torch.manual_seed(0)
    default = ResNet3D()
    assert default.block == "basic"
    assert n_params(default) == resnet_parameter_count(
        (2, 2, 2, 2), "basic", (16, 32, 64, 128), 1, 1, 3
    )
    keys = list(default.state_dict())
    with torch.device("meta"):
        assert list(ResNet3D(depth=18).state_dict()) == keys
        assert list(ResNet3D(layers=(2, 2, 2, 2), block="basic").state_dict()) == keys
    # names of checkpoints written before bottleneck blocks existed
    for key in (
        "stem.0.weight",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.running_var",
        "layer2.0.downsample.0.weight",
        "layer4.1.conv2.weight",
        "fc.bias",
    ):
        assert key in keys
    assert all(
        isinstance(b, BasicBlock3D) for s in range(1, 5) for b in getattr(default, f"layer{s}")
    )


def test_bottleneck_block_structure_and_shape():
    block = Bottleneck3D(16, 8, stride=2).eval()
    assert [m.kernel_size for m in (block.conv1, block.conv2, block.conv3)] == [
        (1, 1, 1),
        (3, 3, 3),
        (1, 1, 1),
    ]
    assert block.conv2.stride == (2, 2, 2)  # ResNet v1.5: the stride on the 3³ convolution
    x = torch.randn(2, 16, 7, 6, 5)
    with torch.no_grad():
        out = block(x)
        ref = torch.relu(block.residual(x) + block.downsample(x))
    assert out.shape == (2, 32, 4, 3, 3)
    torch.testing.assert_close(out, ref)
    assert Bottleneck3D(32, 8).downsample is None  # identity skip when nothing changes


def test_resnet50_forward_shape_bias_and_registry():
    torch.manual_seed(0)
    model = build_model("resnet", input_shape=SHAPE, depth=50, widths=(4, 8, 8, 16), mean_age=42)
    assert isinstance(model.layer1[0], Bottleneck3D) and len(model.layer3) == 6
    assert model.output_layer is model.fc and model.fc.in_features == 64
    assert float(model.output_layer.bias.detach()) == 42.0
    with torch.no_grad():
        out = model.eval()(torch.randn(3, 1, *SHAPE))
    assert out.shape == (3, 1) and torch.isfinite(out).all()


def test_depth_and_block_errors():
    with pytest.raises(ConfigError, match="'block' must be one of basic, bottleneck"):
        ResNet3D(block="bottle")
    with pytest.raises(ConfigError, match="'depth' must be one of 18, 34, 50"):
        ResNet3D(depth=42)
    with pytest.raises(ConfigError, match="'layers'.*contradicts 'depth' 50"):
        ResNet3D(depth=50, layers=(2, 2, 2, 2))
    with pytest.raises(ConfigError, match="'block' 'basic' contradicts 'depth' 50"):
        ResNet3D(depth=50, block="basic")


def small_resnet50(seed: int) -> ResNet3D:
    torch.manual_seed(seed)
    model = ResNet3D(input_shape=SHAPE, depth=50).double()
    return randomize_batchnorm(model, seed).eval()


def test_gradcam_on_layer3_of_resnet50():
    model = small_resnet50(0)
    x = torch.randn(2, 1, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    assert default_layer(model) == "layer3"
    cam = explain(model, x, "gradcam")
    assert cam.shape == x.shape and np.isfinite(cam).all() and np.abs(cam).max() > 0
    np.testing.assert_allclose(cam, explain(model, x, "gradcam", layer="layer3"))
    assert not np.allclose(cam, explain(model, x, "gradcam", layer="layer2"))


@pytest.mark.parametrize("seed", [0, 1])
def test_lrp_conservation_through_bottleneck_blocks(seed):
    model = small_resnet50(seed)
    x = torch.randn(
        2, 1, *SHAPE, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    with torch.no_grad():
        dev = (model(x)[:, 0] - model.fc.bias).numpy()
    total = explain(model, x, "lrp").reshape(2, -1).sum(1)
    # z⁺ drops the relevance of the few neurons whose positive pre-activation is exactly 0
    # (more frequent behind 1×1×1 convolutions); about 1 % at these widths
    np.testing.assert_allclose(total, dev, rtol=0.03)
    # without the Bottleneck3D canonizer every skip connection doubles the relevance
    doubled = explain(model, x, "lrp", canonizers=None).reshape(2, -1).sum(1)
    assert np.all(np.abs(doubled / dev) > 10)


def test_bottleneck_canonizer_keeps_the_forward_and_is_removed():
    from brainage.explain.canonizers import Bottleneck3DCanonizer

    model = small_resnet50(2)
    x = torch.randn(1, 1, *SHAPE, dtype=torch.float64)
    with torch.no_grad():
        ref = model(x)
    instances = Bottleneck3DCanonizer().apply(model)
    try:
        assert len(instances) == 16  # one per bottleneck block of ResNet-50
        assert all(hasattr(b, "canonizer_sum") for b in model.layer2)
        with torch.no_grad():
            torch.testing.assert_close(model(x), ref)
    finally:
        for instance in instances:
            instance.remove()
    assert not any("forward" in vars(m) or hasattr(m, "canonizer_sum") for m in model.modules())
