import numpy as np
import pandas as pd
import pytest
import torch

from brainage.config import load_config, seeds_of
from brainage.errors import ConfigError
from brainage.models import build_model
from brainage.train import (
    TrainConfig,
    fold_target_scaling,
    load_model,
    predict_volumes,
    train_model,
)


def _data(n=24, shape=(12, 14, 10), seed=0):
    rng = np.random.default_rng(seed)
    ages = rng.uniform(20, 80, n)
    x = rng.normal(0, 0.1, (n, 1, *shape)).astype(np.float32)
    x[:, 0, 3:8, 3:9, 2:7] += ((ages - 50) / 30)[:, None, None, None]
    return x, ages


def _cfg(**kw):
    base = dict(
        epochs=6,
        patience=10,
        batch_size=6,
        augment=[],
        model_params={"filters": (4, 4, 8, 8, 4), "dense": 8},
    )
    base.update(kw)
    return TrainConfig(**base)


def test_fold_target_scaling_matches_affine_map():
    m = build_model(
        "hofmann", input_shape=(12, 14, 10), filters=(4, 4, 4, 4, 4), dense=8, mean_age=0.0
    ).eval()
    x = torch.randn(3, 1, 12, 14, 10)
    z = m(x).detach()
    fold_target_scaling(m, 47.0, 12.5)
    torch.testing.assert_close(m(x).detach(), 47.0 + 12.5 * z)
    assert m.output_layer.bias.item() == pytest.approx(47.0)


def test_training_learns_is_seeded_and_bias_is_mean_age(tmp_path):
    x, ages = _data()
    r1 = train_model(x[:18], ages[:18], x[18:], ages[18:], _cfg(), seed=5)
    r2 = train_model(x[:18], ages[:18], x[18:], ages[18:], _cfg(), seed=5)
    pd.testing.assert_frame_equal(r1.log.drop(columns="seconds"), r2.log.drop(columns="seconds"))
    # output bias = training mean age (held fixed, paper 001)
    assert r1.model.output_layer.bias.item() == pytest.approx(ages[:18].mean(), rel=1e-5)
    assert r1.log["train_mae"].iloc[-1] < r1.log["train_mae"].iloc[0]


def test_channels_last_is_the_same_training_in_another_memory_order():
    x, ages = _data()
    a = train_model(x[:18], ages[:18], x[18:], ages[18:], _cfg(channels_last=True), seed=5)
    b = train_model(x[:18], ages[:18], x[18:], ages[18:], _cfg(channels_last=False), seed=5)
    # float32 sums in another order: the curves agree to rounding (which SGD amplifies a
    # little epoch by epoch), not bit for bit; a different model would differ by years
    np.testing.assert_allclose(a.log["val_mae"].iloc[0], b.log["val_mae"].iloc[0], rtol=2e-3)
    np.testing.assert_allclose(a.log["val_mae"], b.log["val_mae"], rtol=1e-2)
    pa = a.model(torch.as_tensor(x[18:])).detach().numpy()
    pb = b.model(torch.as_tensor(x[18:])).detach().numpy()
    np.testing.assert_allclose(pa, pb, atol=0.5)
    assert a.model.output_layer.weight.is_contiguous()  # returned in the default format


def test_training_resumes_from_checkpoint(tmp_path):
    x, ages = _data()
    full = train_model(
        x[:18], ages[:18], x[18:], ages[18:], _cfg(), seed=2, out_dir=tmp_path / "full"
    )
    # a run "killed" after 3 epochs: train 3 epochs, keep only the checkpoint
    part_dir = tmp_path / "part"
    calls = []

    def stop_after_3(epoch, total, mae):
        calls.append(epoch)
        if epoch == 3:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_model(
            x[:18],
            ages[:18],
            x[18:],
            ages[18:],
            _cfg(),
            seed=2,
            out_dir=part_dir,
            progress=stop_after_3,
        )
    assert (part_dir / "checkpoint.pt").exists() and not (part_dir / "model.json").exists()
    resumed = train_model(x[:18], ages[:18], x[18:], ages[18:], _cfg(), seed=2, out_dir=part_dir)
    np.testing.assert_allclose(resumed.log["val_mae"], full.log["val_mae"], rtol=1e-5)
    model, meta = load_model(part_dir)
    np.testing.assert_allclose(
        predict_volumes(model, x[18:]), predict_volumes(full.model, x[18:]), rtol=1e-5
    )
    assert meta["seed"] == 2 and not (part_dir / "checkpoint.pt").exists()
    # the checkpoint holds only tensors and plain values: a run folder cannot execute code
    ckpt = tmp_path / "ckpt.pt"

    class Stop(Exception):
        pass

    def stop(epoch, total, mae):
        raise Stop

    with pytest.raises(Stop):
        train_model(x[:18], ages[:18], x[18:], ages[18:], _cfg(), 2, None, stop, checkpoint=ckpt)
    assert set(torch.load(ckpt, weights_only=True)) >= {"model", "optimizer", "rows", "epoch"}


def test_training_leaves_global_random_state_untouched():
    rng = np.random.default_rng(0)
    x = rng.random((10, 1, 8, 8, 8)).astype(np.float32)
    ages = rng.uniform(20, 80, 10)
    state = torch.get_rng_state()
    first = train_model(x[:7], ages[:7], x[7:], ages[7:], _cfg(epochs=2), seed=5)
    assert torch.equal(state, torch.get_rng_state())
    again = train_model(x[:7], ages[:7], x[7:], ages[7:], _cfg(epochs=2), seed=5)
    np.testing.assert_array_equal(first.log["val_mae"], again.log["val_mae"])


def test_train_config_validation():
    with pytest.raises(ConfigError, match="'train.loss'"):
        TrainConfig(loss="huber")
    assert TrainConfig.paper().lr == 5e-4


def test_config_unknown_key_did_you_mean(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        load_config(p)
    p.write_text("ensemble:\n  n_seeds: 4\ntrain:\n  model_params: {dense: 32}\n")
    cfg = load_config(p)
    assert seeds_of(cfg) == [0, 1, 2, 3] and cfg.train.model_params["dense"] == 32


def test_augmentation_distances_are_millimetres_on_the_model_grid():
    """Paper 000's elastic 7.5 mm and the ±4 mm translation are converted to voxels."""
    import torch
    import torchio as tio

    from brainage.data.augment import ELASTIC_MM, TRANSLATION_MM, build_augmentation

    for voxel_mm in (1.0, 4.0):
        one_of = build_augmentation(["affine", "elastic"], voxel_mm=voxel_mm)
        kinds = {type(t): t for t in one_of.transforms_dict}
        elastic = kinds[tio.RandomElasticDeformation]
        assert np.allclose(elastic.max_displacement, ELASTIC_MM / voxel_mm)
        assert elastic.num_control_points == (7, 7, 7)
        affine = kinds[tio.RandomAffine]
        assert np.allclose(np.abs(affine.translation), TRANSLATION_MM / voxel_mm)
    # a translated image moves by at most the converted amount (whole voxels at 4 mm: 1)
    torch.manual_seed(0)
    x = torch.zeros(1, 20, 20, 20)
    x[0, 10, 10, 10] = 1
    shift = tio.RandomAffine(degrees=0, scales=0, translation=TRANSLATION_MM / 4.0)
    for _ in range(5):
        moved = shift(x)
        peak = np.unravel_index(int(moved[0].argmax()), (20, 20, 20))
        assert max(abs(p - 10) for p in peak) <= 1


def test_prefetched_keeps_order_raises_in_place_and_stops_early():
    import threading

    from brainage.train.trainer import prefetched

    for depth in (0, 1, 3):
        assert list(prefetched(iter(range(20)), depth)) == list(range(20))

    def failing():
        yield 1
        raise ValueError("bad batch")

    got = []
    with pytest.raises(ValueError, match="bad batch"):
        for x in prefetched(failing(), 2):
            got.append(x)
    assert got == [1]
    before = threading.active_count()
    gen = prefetched(iter(range(1000)), 2)
    assert next(gen) == 0
    gen.close()  # the producer thread ends although the queue was full
    assert threading.active_count() <= before


def test_phase_checkpoints_are_the_first_epochs_reaching_each_threshold(tmp_path):
    """The saved phase weights reproduce the validation MAE logged at their epoch; the monitored
    test MAE is logged but changes nothing (same log with and without it)."""
    x, ages = _data(n=30)
    log0 = train_model(x[:18], ages[:18], x[18:24], ages[18:24], _cfg(epochs=8), seed=2).log
    val = log0["val_mae"].to_numpy()
    thresholds = sorted({float(np.round(val[0] + 1, 3)), float(np.round(np.median(val), 3)),
                         float(np.round(val.min() - 1, 3))}, reverse=True)  # fmt: skip
    cfg = _cfg(epochs=8, phases=thresholds, log_test_mae=True)
    res = train_model(x[:18], ages[:18], x[18:24], ages[18:24], cfg, seed=2, out_dir=tmp_path,
                      monitor=(x[24:], ages[24:]))  # fmt: skip
    pd.testing.assert_frame_equal(res.log[log0.columns].drop(columns="seconds"),
                                  log0.drop(columns="seconds"))  # fmt: skip
    test_pred = predict_volumes(res.model, x[24:])
    best = res.log.loc[res.log["epoch"] == res.best_epoch, "test_mae"].iloc[0]
    assert np.mean(np.abs(test_pred - ages[24:])) == pytest.approx(best, abs=1e-3)
    meta = __import__("json").loads((tmp_path / "model.json").read_text())
    phases = {p["phase"]: p for p in meta["phases"]}
    for k, thr in enumerate(thresholds, start=1):
        hit = np.flatnonzero(val <= thr)
        if not len(hit):  # never reached: no entry, no file
            assert k not in phases and not (tmp_path / f"phase-{k}.pt").exists()
            continue
        entry = phases[k]
        assert entry["epoch"] == hit[0] + 1 and entry["val_mae"] == pytest.approx(val[hit[0]])
        model, _ = load_model(tmp_path, entry["file"])
        mae = np.mean(np.abs(predict_volumes(model, x[18:24]) - ages[18:24]))
        assert mae == pytest.approx(entry["val_mae"], abs=1e-3)
    assert len(phases) >= 2  # the first two thresholds are reachable by construction
