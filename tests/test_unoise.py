"""3D U-Noise (paper 002, METHODS §8): architecture, training protocol, known answer, caching."""

from __future__ import annotations

import importlib
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from brainage.errors import ConfigError, DimensionError
from brainage.explain._core import seeded
from brainage.models import HofmannCNN

# the module (the package may also export a function named ``unoise``)
U = importlib.import_module("brainage.explain.unoise")

SHAPE = (16, 20, 12)  # deliberately unequal axes
CUBE = (slice(4, 8), slice(12, 16), slice(3, 7))  # 4×4×4 voxels the toy predictor looks at
TINY = {"base_channels": 4, "levels": 3, "batch_size": 2, "lr": 1e-2}


class CubeMean(nn.Module):
    """Toy predictor: age = 50 · mean(x inside CUBE) + 20 (a weight parameter, to be frozen)."""

    def __init__(self) -> None:
        super().__init__()
        w = torch.zeros(1, 1, *SHAPE)
        w[(0, 0, *CUBE)] = 1.0
        self.w = nn.Parameter(w / w.sum())

    def forward(self, x):
        return ((x * self.w).flatten(1).sum(1) * 50.0 + 20.0)[:, None]


def _cohort(n=6, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.uniform(0, 1, (n, 1, *SHAPE)).astype(np.float32)
    with torch.no_grad():
        y = CubeMean()(torch.from_numpy(x))[:, 0].numpy().astype(np.float64)
    return x, y


def _cube_mask():
    inside = np.zeros(SHAPE, bool)
    inside[CUBE] = True
    return inside


def _auc(score, label):
    from scipy.stats import rankdata

    r = rankdata(score)
    n1, n0 = label.sum(), (~label).sum()
    return (r[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0)


# ---------------------------------------------------------------------------------------- U-Net


@pytest.mark.parametrize("shape", [(7, 9, 11), (17, 20, 13), (16, 20, 12)])
def test_unet_keeps_shape_and_crops_where_it_padded(shape):
    with seeded(0, torch.device("cpu")):  # no global random state is touched
        net = U.UNet3D(in_channels=1, base_channels=4, levels=5).eval()
    x = torch.randn(2, 1, *shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        out = net(x)
    assert out.shape == x.shape
    # Oracle: padding by hand to the padded grid, running the net and cropping gives the same map.
    target = net.padded_shape(shape)
    assert all(t % 16 == 0 and t >= 32 for t in target)
    before = [(t - s) // 2 for s, t in zip(shape, target, strict=True)]
    xp = torch.zeros(2, 1, *target)
    sl = tuple(slice(b, b + s) for b, s in zip(before, shape, strict=True))
    xp[(slice(None), slice(None), *sl)] = x
    with torch.no_grad():
        ref = net(xp)[(slice(None), slice(None), *sl)]
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_unet_paper_architecture():
    net = U.UNet3D()  # paper: 5 levels, 16 channels after the first layer, doubling
    assert [blk[0].out_channels for blk in net.down] == [16, 32, 64, 128, 256]
    assert net.head.out_channels == 1 and net.multiple == 16
    with pytest.raises(ConfigError, match="norm"):
        U.UNet3D(norm="group")


# ------------------------------------------------------------------------------- noise equation


def test_noise_loss_implements_equations_1_and_2():
    with seeded(1, torch.device("cpu")):
        net = U.UNet3D(base_channels=2, levels=2)
    seen = {}

    class Record(nn.Module):
        def forward(self, x):
            seen["x"] = x.detach().clone()
            return x.flatten(1).mean(1, keepdim=True) * 0 + 30.0

    x = torch.rand(2, 1, *SHAPE, dtype=torch.float32, generator=torch.Generator().manual_seed(1))
    x = x * 0.8
    y = torch.tensor([31.0, 27.0])
    params = {"vmin": 1.0, "vmax": 5.0, "r": 0.1, "noise_scale": "auto", "target": "age"}
    gen = torch.Generator().manual_seed(7)
    terms = U._noise_loss(net, Record(), x, y, params, gen, torch.float32)
    with torch.no_grad():
        logits = net(x)
    m = torch.sigmoid(logits)
    eps = torch.randn(x.shape, generator=torch.Generator().manual_seed(7))
    s = x.flatten(2).std(dim=2, correction=0)[:, :, None, None, None]  # paper: image SD units
    expected = x + (m * 4.0 + 1.0) * s * eps
    torch.testing.assert_close(seen["x"], expected, rtol=1e-5, atol=1e-5)
    loss = ((30.0 - y) ** 2).mean() - 0.1 * torch.log(m).mean()
    torch.testing.assert_close(terms["loss"].detach(), loss, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------------------------ training


def test_predictor_untouched_and_restored_even_on_error():
    x, y = _cohort(4)
    with seeded(0, torch.device("cpu")):
        pred = HofmannCNN(input_shape=SHAPE, mean_age=40.0)
    pred.train()
    pred.regressor[-1].weight.requires_grad_(False)  # a mixed pattern of flags must survive
    before = {k: v.clone() for k, v in pred.state_dict().items()}
    flags = {k: p.requires_grad for k, p in pred.named_parameters()}
    U.fit_unoise(pred, x, y, pretrain_epochs=1, epochs=1, **TINY)
    for k, v in pred.state_dict().items():  # weights and BatchNorm running statistics
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)
    assert {k: p.requires_grad for k, p in pred.named_parameters()} == flags
    assert pred.training and all(m.training for m in pred.modules())

    def boom(stage, *_):
        if stage == "noise":
            raise RuntimeError("interrupted")

    with pytest.raises(RuntimeError, match="interrupted"):
        U.fit_unoise(pred, x, y, pretrain_epochs=0, epochs=1, progress=boom, **TINY)
    assert {k: p.requires_grad for k, p in pred.named_parameters()} == flags
    assert pred.training


def test_reproducible_for_a_seed():
    x, y = _cohort(4)
    f = CubeMean()
    state = torch.get_rng_state()
    a = U.fit_unoise(f, x, y, pretrain_epochs=1, epochs=2, seed=3, **TINY)
    assert torch.equal(torch.get_rng_state(), state)  # global random state untouched
    b = U.fit_unoise(f, x, y, pretrain_epochs=1, epochs=2, seed=3, **TINY)
    c = U.fit_unoise(f, x, y, pretrain_epochs=1, epochs=2, seed=4, **TINY)
    np.testing.assert_array_equal(U.unoise_importance(a, x), U.unoise_importance(b, x))
    assert a.hash == b.hash != c.hash
    assert not np.allclose(U.unoise_importance(a, x), U.unoise_importance(c, x))


def test_fit_leaves_global_random_state_untouched():
    # every stage that draws random numbers: calibration, initialisation, shuffling, noise,
    # validation noise
    x, y = _cohort(6)
    torch_state = torch.get_rng_state()
    np_state = np.random.get_state()
    py_state = random.getstate()
    cuda_states = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
    U.fit_unoise(CubeMean(), x[:4], y[:4], x[4:], y[4:], pretrain_epochs=1, epochs=1, **TINY)
    assert torch.equal(torch.get_rng_state(), torch_state)
    after = np.random.get_state()
    assert after[0] == np_state[0] and np.array_equal(after[1], np_state[1])
    assert after[2:] == np_state[2:]
    assert random.getstate() == py_state
    if cuda_states is not None:
        for a, b in zip(torch.cuda.get_rng_state_all(), cuda_states, strict=True):
            assert torch.equal(a, b)


def test_no_global_seeding_in_the_source():
    package = Path(U.__file__).parent
    forbidden = (
        "torch.manual_seed",
        "torch.cuda.manual_seed",
        "np.random.seed",
        "numpy.random.seed",
        "random.seed(",
        "set_rng_state",
    )
    for source in sorted(package.glob("*.py")):
        text = source.read_text()
        for call in forbidden:
            assert call not in text, f"{source.name} calls {call}"
        # checkpoints are only read with weights_only=True (no unpickling of arbitrary objects)
        for call in text.split("torch.load(")[1:]:
            assert "weights_only=True" in call.split(")")[0], f"{source.name}: torch.load"


def test_known_answer_importance_concentrates_on_the_voxels_the_predictor_reads():
    x, y = _cohort(8)
    model = U.fit_unoise(
        CubeMean(),
        x,
        y,
        pretrain_epochs=2,
        epochs=10,
        lr=1e-2,
        base_channels=8,
        levels=3,
        lr_step=None,
        seed=0,
    )
    imp = U.unoise_importance(model, x)
    assert imp.shape == x.shape and imp.dtype == np.float32
    assert ((imp > 0) & (imp < 1)).all()
    np.testing.assert_allclose(imp + model.mask(x), 1.0, atol=1e-6)  # importance = 1 − m
    inside = _cube_mask()
    for i in range(len(x)):
        assert imp[i, 0][inside].mean() > imp[i, 0][~inside].mean() + 0.3
        assert _auc(imp[i, 0].ravel(), inside.ravel()) > 0.95
    noise_epochs = [h for h in model.metadata["history"] if h["stage"] == "noise"]
    assert len(noise_epochs) == 10 and model.metadata["best_epoch"] == 10


def test_validation_selects_best_epoch_and_target_prediction_needs_no_ages():
    x, y = _cohort(6)
    model = U.fit_unoise(
        CubeMean(),
        x[:4],
        None,
        x[4:],
        None,
        pretrain_epochs=0,
        epochs=3,
        target="prediction",
        **TINY,
    )
    hist = [h for h in model.metadata["history"] if h["stage"] == "noise"]
    best = min(range(3), key=lambda e: hist[e]["val_loss"]) + 1
    assert model.metadata["best_epoch"] == best
    assert all(np.isfinite(h["val_mae_noisy"]) for h in hist)


def test_save_reload_and_hash(tmp_path):
    x, y = _cohort(4)
    f = CubeMean()
    path = tmp_path / "unoise" / "noise_model.pt"
    calls = []
    kw = {"pretrain_epochs": 1, "epochs": 1, **TINY}
    a = U.fit_unoise(f, x, y, out_path=path, progress=lambda *args: calls.append(args), **kw)
    assert len(calls) == 2 and path.is_file()
    meta = json.loads(path.with_suffix(".json").read_text())
    assert meta["hash"] == a.hash and meta["params"]["vmin"] == 1.0
    loaded = U.load_unoise(path)
    blob = torch.load(path, map_location="cpu", weights_only=True)  # nothing unpickled
    assert set(blob) == {"state_dict", "metadata"} and blob["metadata"]["hash"] == a.hash
    np.testing.assert_array_equal(U.unoise_importance(loaded, x), U.unoise_importance(a, x))
    # the hash names predictor, data and parameters: another parameter or predictor changes it
    b = U.fit_unoise(f, x, y, out_path=path, r=0.2, **kw)
    g = CubeMean()
    with torch.no_grad():
        g.w.mul_(1.0001)
    c = U.fit_unoise(g, x, y, out_path=path, r=0.2, **kw)
    assert len({a.hash, b.hash, c.hash}) == 3
    assert json.loads(path.with_suffix(".json").read_text())["hash"] == c.hash


# ------------------------------------------------------------------------- method and errors


def test_method_requires_a_trained_noise_model_and_checks_it(tmp_path):
    x, y = _cohort(4)
    f = CubeMean()
    with pytest.raises(ConfigError, match="fit_unoise"):
        U.unoise(f, x)
    with pytest.raises(ConfigError, match="fit_unoise"):
        U.unoise(f, x, noise_model_path=tmp_path / "missing.pt")
    nm = U.fit_unoise(f, x, y, pretrain_epochs=0, epochs=1, out_path=tmp_path / "n.pt", **TINY)
    ref = U.unoise_importance(nm, x)
    np.testing.assert_array_equal(U.unoise(f, x, noise_model=nm), ref)
    np.testing.assert_array_equal(U.unoise(f, x, noise_model_path=tmp_path / "n.pt", r=0.1), ref)
    with pytest.raises(ConfigError, match="r=0.1"):
        U.unoise(f, x, noise_model=nm, r=0.5)
    with pytest.raises(ConfigError, match="did you mean 'vmax'"):
        U.unoise(f, x, noise_model=nm, vmaxx=5.0)
    g = CubeMean()
    with torch.no_grad():
        g.w.mul_(2.0)
    with pytest.raises(ConfigError, match="another predictor"):
        U.unoise(g, x, noise_model=nm)
    with pytest.raises(DimensionError, match="grid"):
        U.unoise_importance(nm, np.zeros((1, 1, 16, 20, 13), np.float32))


def test_registered_method():
    core = pytest.importorskip("brainage.explain._core")
    x, y = _cohort(4)
    f = CubeMean()
    nm = U.fit_unoise(f, x, y, pretrain_epochs=0, epochs=1, **TINY)
    assert "unoise" in core.METHODS
    out = core.METHODS["unoise"](f, torch.from_numpy(x), noise_model=nm)
    np.testing.assert_array_equal(out, U.unoise_importance(nm, x))
    with pytest.raises(ConfigError, match="fit_unoise"):
        core.METHODS["unoise"](f, x)


def test_input_validation():
    x, y = _cohort(2)
    f = CubeMean()
    with pytest.raises(ConfigError, match="y_train"):
        U.fit_unoise(f, x, None)
    with pytest.raises(ConfigError, match="vmin"):
        U.fit_unoise(f, x, y, vmin=5.0, vmax=1.0)
    with pytest.raises(ConfigError, match="noise_scale"):
        U.fit_unoise(f, x, y, noise_scale="image")
    with pytest.raises(DimensionError, match="5D"):
        U.fit_unoise(f, x[:, 0], y)
    with pytest.raises(DimensionError, match="y_train"):
        U.fit_unoise(f, x, y[:1])
    with pytest.raises(TypeError, match="UNoiseModel"):
        U.unoise_importance("model.pt", x)


def test_calibrated_noise_scale_known_answer():
    """CubeMean averages 64 voxels: noise of SD σ changes it by 50·σ/8 · √(2/π) ≈ 4.99 σ on
    average, so with max_change 0.5 y the first passing halving of s_auto (≈ 0.289) is s_auto/4
    (1.44 and 0.72 y fail, 0.36 y passes)."""
    x, _ = _cohort(32, seed=3)
    f = CubeMean()
    s_auto = float(torch.from_numpy(x).flatten(2).std(dim=2, correction=0).mean())
    s = U.calibrate_noise_scale(f, x, vmin=1.0, max_change=0.5, seed=0)
    assert s == pytest.approx(s_auto / 4)
    assert U.calibrate_noise_scale(f, x, vmin=1.0, max_change=5.0) == pytest.approx(s_auto)
    assert U.calibrate_noise_scale(f, x, vmin=0.0) == pytest.approx(s_auto)
    assert f.w.requires_grad and f.training  # left as it was


def test_fit_records_the_calibrated_scale():
    x, y = _cohort(4)
    nm = U.fit_unoise(CubeMean(), x, y, pretrain_epochs=0, epochs=1, **TINY)
    used = nm.metadata["noise_scale_used"]
    assert nm.metadata["params"]["noise_scale"] == "calibrated"
    assert used == pytest.approx(U.calibrate_noise_scale(CubeMean(), x, seed=0))
    with pytest.raises(ConfigError, match="calibration_years"):
        U.fit_unoise(CubeMean(), x, y, calibration_years=0)
