"""SFCN (Peng et al. 2021): shapes, size, soft labels, KL loss, ``train.init_from`` and its key."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

from brainage.config import load_config
from brainage.errors import ConfigError, InputError
from brainage.explain import explain
from brainage.io.layout import RunLayout
from brainage.models import MODELS, SFCN, build_model
from brainage.models.sfcn import EXTEND_LOG_RATIO, gaussian_soft_labels
from brainage.train import TrainConfig, load_model, predict_volumes, train_model
from brainage.train.pretrained import checkpoint_sha256, read_state_dict
from brainage.train.trainer import initial_model, kl_soft_label_loss
from brainage.workflow.records import cache_key
from brainage.workflow.stage import RunContext
from brainage.workflow.stages.train import TrainStage

SHAPE = (32, 36, 34)  # unequal axes; ≥ 32 voxels for the 5 max-poolings
TINY = (4, 4, 8, 8, 8, 4)  # narrow channels for the explanation runs
PAPER = (32, 64, 128, 256, 256, 64)
SOFT = {"output": "soft_label"}


def volumes(n: int, seed: int = 0, shape=SHAPE, dtype=torch.float32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 1, *shape, generator=g, dtype=dtype)


def published_state_dict(seed: int = 0, n_bins: int = 40, batches_tracked: bool = True) -> dict:
    """Keys and shapes of ``run_20190719_00_epoch_best_mae.p`` (DataParallel), random values.

    Written out from the paper's architecture, not from :class:`SFCN`, so that the key names and
    shapes are an independent statement of the published file.
    """
    g = torch.Generator().manual_seed(seed)
    state = {}
    c_in = 1
    for i, c_out in enumerate(PAPER):
        k = 3 if i < 5 else 1
        p = f"module.feature_extractor.conv_{i}"
        fan_in = c_in * k**3
        state[f"{p}.0.weight"] = torch.randn(c_out, c_in, k, k, k, generator=g) / fan_in**0.5
        state[f"{p}.0.bias"] = 0.1 * torch.randn(c_out, generator=g)
        state[f"{p}.1.weight"] = 1 + 0.1 * torch.randn(c_out, generator=g)
        state[f"{p}.1.bias"] = 0.1 * torch.randn(c_out, generator=g)
        state[f"{p}.1.running_mean"] = 0.1 * torch.randn(c_out, generator=g)
        state[f"{p}.1.running_var"] = 0.5 + torch.rand(c_out, generator=g)
        if batches_tracked:
            state[f"{p}.1.num_batches_tracked"] = torch.tensor(1000)
        c_in = c_out
    state["module.classifier.conv_6.weight"] = torch.randn(n_bins, 64, 1, 1, 1, generator=g)
    state["module.classifier.conv_6.bias"] = torch.randn(n_bins, generator=g)
    return state


def reference_expected_age(state: dict, x: torch.Tensor, bin_start=42.0, width=1.0) -> np.ndarray:
    """Slow functional re-implementation of the published SFCN in eval mode (the oracle)."""
    s = {k.removeprefix("module."): v.double() for k, v in state.items()}
    h = x.double()
    for i in range(6):
        p = f"feature_extractor.conv_{i}"
        h = F.conv3d(h, s[f"{p}.0.weight"], s[f"{p}.0.bias"], padding=1 if i < 5 else 0)
        h = F.batch_norm(
            h, s[f"{p}.1.running_mean"], s[f"{p}.1.running_var"],
            s[f"{p}.1.weight"], s[f"{p}.1.bias"], training=False, eps=1e-5,
        )  # fmt: skip
        if i < 5:
            h = F.max_pool3d(h, 2)
        h = F.relu(h)
    feat = h.mean(dim=(2, 3, 4))  # (n, 64)
    w = s["classifier.conv_6.weight"].reshape(s["classifier.conv_6.weight"].shape[0], -1)
    logits = feat @ w.T + s["classifier.conv_6.bias"]
    probs = torch.softmax(logits, dim=1).numpy()
    centers = bin_start + width * (np.arange(probs.shape[1]) + 0.5)
    return probs @ centers


def sfcn_cfg(path=None, **kw) -> TrainConfig:
    base = dict(
        model="sfcn",
        model_params={"output": "soft_label", "dropout": 0.5},
        loss="kl",
        init_from=None if path is None else str(path),
        epochs=1,
        batch_size=2,
        augment=[],
        lr=1e-4,
    )
    base.update(kw)
    return TrainConfig(**base)


# --------------------------------------------------------------------------------------------
# architecture


def test_registered_and_keys_follow_the_reference():
    assert MODELS["sfcn"] is SFCN
    names = list(SFCN(output="soft_label").state_dict())
    assert names == [k.removeprefix("module.") for k in published_state_dict()]


@pytest.mark.parametrize("output", ["regression", "soft_label"])
def test_forward_returns_years_of_shape_n_by_1(output):
    torch.manual_seed(0)
    model = SFCN(input_shape=SHAPE, channels=TINY, output=output, mean_age=61.0).eval()
    x = volumes(3)
    y = model(x)
    assert y.shape == (3, 1) and torch.isfinite(y).all()
    if output == "regression":
        assert model.output_layer.bias.item() == 61.0
        with torch.no_grad():
            model.output_layer.weight.zero_()
        torch.testing.assert_close(model(x), torch.full((3, 1), 61.0))
    else:
        assert model.output_layer is None
        lp = model.log_probs(x)
        assert lp.shape == (3, 40)
        torch.testing.assert_close(lp.exp().sum(1), torch.ones(3))
        centers = 42.5 + torch.arange(40.0)
        torch.testing.assert_close(model.bin_centers, centers)
        torch.testing.assert_close(y[:, 0], (lp.exp() * centers).sum(1))
        assert ((y > 42) & (y < 82)).all()
        assert "bin_centers" not in model.state_dict()  # the published file has no such key


def test_any_input_size_and_a_clear_error_below_the_minimum():
    model = SFCN(input_shape=(40, 48, 40), channels=TINY).eval()
    assert model(volumes(1, shape=(40, 48, 40))).shape == (1, 1)
    with pytest.raises(ConfigError, match="at least 32 voxels"):
        SFCN(input_shape=(13, 16, 13))


def test_parameter_count_at_full_size_is_about_3_million():
    def expected(n_out: int, head: int) -> int:  # conv weights + biases + BN affine per block
        total, c_in = 0, 1
        for i, c in enumerate(PAPER):
            k = 3 if i < 5 else 1
            total += c_in * c * k**3 + c + 2 * c
            c_in = c
        return total + head

    soft = SFCN(input_shape=(160, 192, 160), output="soft_label")
    reg = SFCN(input_shape=(160, 192, 160), output="regression")
    n_soft = sum(p.numel() for p in soft.parameters())
    n_reg = sum(p.numel() for p in reg.parameters())
    assert n_soft == expected(40, 64 * 40 + 40) == 2_952_936
    assert n_reg == expected(1, 64 + 1) == 2_950_401
    assert n_soft == pytest.approx(3.0e6, rel=0.02)


# --------------------------------------------------------------------------------------------
# soft labels and the KL loss


def test_soft_labels_are_normal_cdf_differences():
    ages = torch.tensor([50.3, 42.2, 81.9], dtype=torch.float64)
    got = gaussian_soft_labels(ages, 42.0, 1.0, 40, sigma=1.0).numpy()

    def phi(z):
        return 0.5 * (1 + math.erf(z / math.sqrt(2)))

    for row, age in zip(got, ages.tolist(), strict=True):
        mass = np.array([phi(42 + b + 1 - age) - phi(42 + b - age) for b in range(40)])
        np.testing.assert_allclose(row, mass / mass.sum(), rtol=1e-10, atol=1e-15)
    np.testing.assert_allclose(got.sum(1), 1.0)
    assert got[0].argmax() == 8  # 50.3 lies in [50, 51)


def test_kl_loss_equals_hand_computation():
    logits = torch.tensor([[0.2, -1.0, 0.5, 0.0], [1.5, 0.1, -0.3, 0.7]], dtype=torch.float64)
    log_p = torch.log_softmax(logits, dim=1)
    target = torch.tensor([[0.0, 0.25, 0.5, 0.25], [0.1, 0.2, 0.3, 0.4]], dtype=torch.float64)
    p = np.exp(logits.numpy()) / np.exp(logits.numpy()).sum(1, keepdims=True)
    t = target.numpy()
    hand = 0.0
    for i in range(2):
        for b in range(4):
            if t[i, b] > 0:
                hand += t[i, b] * math.log(t[i, b] / p[i, b])
    hand /= 2
    assert kl_soft_label_loss(log_p, target).item() == pytest.approx(hand, rel=1e-12)
    assert kl_soft_label_loss(torch.log(target[1:]), target[1:]).item() == pytest.approx(0.0)


def test_kl_loss_config_is_validated():
    with pytest.raises(ConfigError, match="'train.loss': 'kl' needs a soft-label model"):
        TrainConfig(model="hofmann", loss="kl")
    with pytest.raises(ConfigError, match="'train.loss': 'kl' needs a soft-label model"):
        TrainConfig(model="sfcn", loss="kl")  # regression SFCN
    with pytest.raises(ConfigError, match="'train.loss' must be 'kl'"):
        TrainConfig(model="sfcn", model_params=SOFT, loss="mse")
    with pytest.raises(ConfigError, match="'train.model_params.output' must be one of"):
        TrainConfig(model="sfcn", model_params={"output": "softlabel"})
    with pytest.raises(ConfigError, match="did you mean 'n_bins'"):
        TrainConfig(model="sfcn", model_params={"output": "soft_label", "nbins": 50}, loss="kl")
    with pytest.raises(ConfigError, match="'train.soft_label_sigma'"):
        TrainConfig(model="sfcn", model_params=SOFT, loss="kl", soft_label_sigma=0.0)
    cfg = TrainConfig(model="sfcn", model_params=SOFT, loss="kl", init_from="weights.p")
    assert cfg.init_from.endswith("weights.p") and cfg.init_from.startswith("/")


def test_soft_label_training_ignores_standardisation_and_widens_bins(tmp_path):
    rng = np.random.default_rng(0)
    x = volumes(6, seed=1).numpy()
    ages = rng.uniform(25, 75, 6)
    cfg = sfcn_cfg(model_params={"output": "soft_label", "channels": list(TINY)}, epochs=2)
    assert cfg.standardize_targets  # the default, irrelevant for soft labels
    res = train_model(x[:4], ages[:4], x[4:], ages[4:], cfg, seed=3, out_dir=tmp_path)
    model, meta = load_model(tmp_path)
    lo, hi = ages[:4].min() - 2, ages[:4].max() + 2
    assert model.bin_start <= lo and model.bin_start + model.n_bins >= hi
    assert meta["model_params"]["n_bins"] == model.n_bins and meta["train_sd_age"] == 1.0
    np.testing.assert_allclose(predict_volumes(model, x[4:]), predict_volumes(res.model, x[4:]))
    assert np.isfinite(res.log["train_loss"]).all()


# --------------------------------------------------------------------------------------------
# train.init_from


def test_published_checkpoint_loads_and_predicts_the_expectation_over_bins(tmp_path):
    state = published_state_dict(seed=1)
    path = tmp_path / "run_20190719_00_epoch_best_mae.p"
    torch.save(state, path)
    ages = np.array([45.0, 60.0, 78.0])  # inside 42–82 ± 2: the published bins are kept
    model, params = initial_model(sfcn_cfg(path), (1, *SHAPE), ages)
    assert model.n_bins == 40 and model.bin_start == 42.0 and params["n_bins"] == 40
    x = volumes(2, seed=5, dtype=torch.float64)
    got = model.double().eval()(x)[:, 0].detach().numpy()
    np.testing.assert_allclose(got, reference_expected_age(state, x), rtol=1e-10)
    # the same weights as a plain, {"state_dict": …} or old (no num_batches_tracked) file
    plain = {k.removeprefix("module."): v for k, v in state.items()}
    variants = [plain, {"state_dict": state}, published_state_dict(1, batches_tracked=False)]
    for i, obj in enumerate(variants):
        torch.save(obj, tmp_path / f"v{i}.pt")
        m, _ = initial_model(sfcn_cfg(tmp_path / f"v{i}.pt"), (1, *SHAPE), ages)
        np.testing.assert_allclose(m.double().eval()(x)[:, 0].detach().numpy(), got, rtol=1e-12)


def test_bin_extension_keeps_the_pretrained_bins(tmp_path):
    state = published_state_dict(seed=2)
    torch.save(state, tmp_path / "ukb.p")
    ages = np.linspace(20, 86, 12)
    model, params = initial_model(sfcn_cfg(tmp_path / "ukb.p"), (1, *SHAPE), ages)
    # ages ± 2σ = 18 … 88 years: 24 bins added below 42, 6 above 82
    assert (model.bin_start, model.n_bins) == (18.0, 70)
    assert (params["bin_start"], params["n_bins"]) == (18.0, 70)
    torch.testing.assert_close(model.bin_centers, 18.5 + torch.arange(70.0))
    w = model.classifier.conv_6.weight.detach()
    b = model.classifier.conv_6.bias.detach()
    w0, b0 = state["module.classifier.conv_6.weight"], state["module.classifier.conv_6.bias"]
    assert torch.equal(w[24:64], w0) and torch.equal(b[24:64], b0)
    assert torch.equal(w[:24], w0[:1].expand(24, -1, -1, -1, -1))
    assert torch.equal(w[64:], w0[-1:].expand(6, -1, -1, -1, -1))
    torch.testing.assert_close(b[:24], (b0[0] - EXTEND_LOG_RATIO).expand(24))
    torch.testing.assert_close(b[64:], (b0[-1] - EXTEND_LOG_RATIO).expand(6))
    for k, v in state.items():  # the feature extractor is untouched
        if "feature_extractor" in k:
            assert torch.equal(model.state_dict()[k.removeprefix("module.")], v), k
    # the pretrained bins keep their relative probabilities; new bins start 1000× less likely
    x = volumes(2, seed=6)
    model.eval()
    lp = model.log_probs(x).detach()
    ref = SFCN(input_shape=SHAPE, output="soft_label").eval()
    ref.load_state_dict({k.removeprefix("module."): v for k, v in state.items()})
    lp0 = ref.log_probs(x).detach()
    torch.testing.assert_close(lp[:, 24:64] - lp[:, 24:25], lp0 - lp0[:, :1])
    torch.testing.assert_close(lp[:, 0] - lp[:, 24], torch.full((2,), -EXTEND_LOG_RATIO))


def test_fine_tuning_end_to_end_records_the_checkpoint_hash(tmp_path):
    path = tmp_path / "ukb.p"
    torch.save(published_state_dict(seed=3), path)
    rng = np.random.default_rng(1)
    x = volumes(5, seed=2).numpy()
    ages = rng.uniform(20, 86, 5)
    res = train_model(x[:3], ages[:3], x[3:], ages[3:], sfcn_cfg(path), seed=0, out_dir=tmp_path)
    model, meta = load_model(tmp_path)
    assert (
        meta["init_from_sha256"] == checkpoint_sha256(path) and len(meta["init_from_sha256"]) == 64
    )
    assert meta["model_params"]["n_bins"] == model.n_bins > 40
    np.testing.assert_allclose(predict_volumes(model, x[3:]), predict_volumes(res.model, x[3:]))


def test_regression_checkpoint_is_rescaled_to_standardised_targets(tmp_path):
    torch.manual_seed(0)
    src = SFCN(input_shape=SHAPE, channels=TINY, mean_age=55.0).eval()
    torch.save(src.state_dict(), tmp_path / "model.pt")
    ages = np.array([30.0, 40.0, 50.0, 70.0])
    cfg = TrainConfig(
        model="sfcn", model_params={"channels": list(TINY)}, init_from=str(tmp_path / "model.pt")
    )
    model, _ = initial_model(cfg, (1, *SHAPE), ages)
    model.eval()
    sd = ages.std()
    assert model.output_layer.bias.item() == 0.0  # held at 0 in standardised training
    x = volumes(2)
    with torch.no_grad():  # folding back gives the source model, up to its new mean age
        got = model(x) * sd + ages.mean()
        want = src(x) - 55.0 + ages.mean()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-4)


def test_checkpoint_errors_are_clear(tmp_path):
    wrong = published_state_dict(n_bins=30)
    torch.save(wrong, tmp_path / "bins30.p")
    with pytest.raises(InputError) as err:
        initial_model(sfcn_cfg(tmp_path / "bins30.p"), (1, *SHAPE), [50.0, 60.0])
    msg = str(err.value)
    for part in (
        "bins30.p",
        "'classifier.conv_6.weight'",
        "(30, 64, 1, 1, 1)",
        "(40, 64, 1, 1, 1)",
        "n_bins: 30",
    ):
        assert part in msg, (part, msg)
    # another architecture's weights
    torch.save(build_model("hofmann").state_dict(), tmp_path / "hofmann.pt")
    with pytest.raises(InputError, match=r"hofmann\.pt.*does not fit model 'sfcn'.*missing"):
        initial_model(sfcn_cfg(tmp_path / "hofmann.pt"), (1, *SHAPE), [50.0, 60.0])
    # a file that would unpickle code, a missing file, a file without a state dict
    torch.save({"weights": pd.Timestamp("2020-01-01")}, tmp_path / "code.pt")
    with pytest.raises(InputError, match="weights-only"):
        read_state_dict(tmp_path / "code.pt")
    with pytest.raises(InputError, match="not found"):
        read_state_dict(tmp_path / "absent.p")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(InputError, match="no state dict"):
        read_state_dict(tmp_path / "list.pt")


def test_checkpoint_bytes_are_part_of_the_train_cache_key(tmp_path):
    ckpt = tmp_path / "ukb.p"
    ckpt.write_bytes(b"first version")
    pids = [f"sub-{i:02d}" for i in range(4)]
    cohort = pd.DataFrame(
        {
            "participant_id": pids,
            "age": [30.0, 40.0, 50.0, 60.0],
            "t1w": [""] * 4,
            "split": ["train", "train", "validation", "test"],
        }
    )

    def key(init_from):
        train = {"model": "sfcn", "model_params": SOFT, "loss": "kl", "init_from": init_from}
        cfg = load_config(overrides={"split": {"scheme": "holdout"}, "train": train})
        ctx = RunContext(RunLayout(tmp_path / "run"), cfg, cohort)
        stage = TrainStage()
        item = stage.items(ctx)[0]
        params, inputs = stage.params(ctx, item), stage.inputs(ctx, item)
        return cache_key(stage.name, stage.version, item, params, inputs, {}), inputs

    k1, inputs = key(str(ckpt))
    assert inputs["init_from_sha256"] == checkpoint_sha256(ckpt)
    assert key(str(ckpt))[0] == k1
    ckpt.write_bytes(b"second version")
    assert key(str(ckpt))[0] != k1
    assert "init_from_sha256" not in key(None)[1]  # runs without init_from keep their keys
    ckpt.unlink()
    with pytest.raises(InputError, match="cannot read the checkpoint"):
        key(str(ckpt))


# --------------------------------------------------------------------------------------------
# explanation methods run on SFCN (tiny widths)

METHODS = {
    "guided_backprop": {},
    "lrp": {},
    "integrated_gradients": {"n_steps": 4},
    "gradcam": {"layer": "feature_extractor.conv_3"},
    "smoothgrad": {"nt_samples": 3},
    "occlusion": {"window": (16, 18, 17)},
}


@pytest.mark.parametrize("output", ["regression", "soft_label"])
@pytest.mark.parametrize("method", sorted(METHODS))
def test_explanation_methods_run_on_sfcn(method, output):
    torch.manual_seed(0)
    model = SFCN(input_shape=SHAPE, channels=TINY, output=output, mean_age=50.0).double().eval()
    x = volumes(2, seed=3, dtype=torch.float64)
    out = explain(model, x, method, **METHODS[method])
    assert out.shape == x.shape and np.isfinite(out).all()
    if method == "lrp" and output == "regression":  # conservation: Σ R = f(x) − mean age
        with torch.no_grad():
            dev = (model(x)[:, 0] - 50.0).numpy()
        np.testing.assert_allclose(out.reshape(2, -1).sum(1), dev, rtol=1e-3, atol=1e-6)
