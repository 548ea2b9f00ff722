"""Multi-level ensembles (paper 001, MLens type ii): compartments, compartment models, the
two-level head, and a cross-fitted run with region sub-ensembles."""

import json

import numpy as np
import pandas as pd
import pytest
import torch

from brainage.atlas.compartments import COMPARTMENTS, compartment_labels, compartment_mask
from brainage.ensemble import MultiLevelHead, fit_multilevel_head, head_from_dict
from brainage.models import build_model
from brainage.models.compartment import (
    CompartmentModel,
    compartment_box,
    compartment_crop_shape,
    for_compartment,
)
from brainage.space import template_array


@pytest.mark.parametrize("res", [4.0, 2.0])
def test_compartments_partition_the_brain_mask(res):
    brain = template_array("mask", res)
    masks = [compartment_mask(c, res) for c in COMPARTMENTS]
    total = np.sum(masks, axis=0)
    assert (total[brain] == 1).all() and (total[~brain] == 0).all()  # disjoint, cover the brain
    sizes = [m.sum() / brain.sum() for m in masks]
    assert all(s > 0.05 for s in sizes)
    # anatomy: the cerebellum lies below and behind the cerebral cortex (RAS voxel axes)
    cortex, cerebellum = (np.argwhere(m).mean(axis=0) for m in (masks[0], masks[2]))
    assert cerebellum[2] < cortex[2] - 5 / res * 4 and cerebellum[1] < cortex[1]
    # the deep nuclei fall in the subcortical compartment; WM too
    wm = template_array("wm", res) >= 0.5
    assert (compartment_labels(res)[wm & brain] != 1).all()


def _tiny_hofmann(shape):
    return build_model(
        "hofmann", input_shape=shape, filters=(4, 4, 4, 4, 4), dense=8, mean_age=50.0
    )


def test_compartment_model_sees_only_its_compartment():
    torch.manual_seed(0)
    mask = compartment_mask("cerebellum", 4.0)
    shape = compartment_crop_shape("cerebellum", 4.0, mask.shape)
    box = compartment_box(mask)
    assert shape == tuple(b - a for a, b in box) and np.prod(shape) < 0.25 * mask.size
    model = for_compartment(_tiny_hofmann(shape), "cerebellum", 4.0).eval()
    x = torch.randn(2, 1, *mask.shape)
    # the output equals the wrapped network on the masked crop
    m = torch.tensor(mask)
    crop = (x * m)[(..., *[slice(a, b) for a, b in box])]
    torch.testing.assert_close(model(x), model.net(crop))
    # changing voxels outside the compartment changes nothing
    y = torch.where(m, x, torch.randn_like(x))
    torch.testing.assert_close(model(x), model(y))
    with pytest.raises(ValueError, match="template grid"):
        compartment_crop_shape("cortex", 4.0, (10, 10, 10))


@pytest.mark.parametrize("method", ["guided_backprop", "lrp", "gradcam", "integrated_gradients"])
def test_relevance_of_a_compartment_model_is_zero_outside_it(method):
    from brainage.explain import explain

    torch.manual_seed(1)
    mask = compartment_mask("subcortex", 4.0)
    shape = compartment_crop_shape("subcortex", 4.0, mask.shape)
    model = for_compartment(_tiny_hofmann(shape), "subcortex", 4.0).eval()
    x = np.random.default_rng(0).random((2, 1, *mask.shape), dtype=np.float32)
    maps = explain(model, x, method)
    assert maps.shape == x.shape
    assert np.abs(maps[:, 0][:, ~mask]).max() == 0
    assert np.abs(maps[:, 0][:, mask]).max() > 0


def test_compartment_model_trains_saves_and_loads(tmp_path):
    from brainage.train import load_model, train_model
    from brainage.train.trainer import TrainConfig

    rng = np.random.default_rng(0)
    x = rng.random((12, 1, 40, 48, 40), dtype=np.float32)
    y = rng.uniform(20, 80, 12)
    cfg = TrainConfig(epochs=2, augment=[], model_params={"filters": [4, 4, 4, 4, 4], "dense": 8})
    result = train_model(x[:9], y[:9], x[9:], y[9:], cfg, 0, tmp_path, compartment="cortex")
    model, meta = load_model(tmp_path)
    assert isinstance(model, CompartmentModel) and meta["compartment"] == "cortex"
    assert tuple(meta["model_params"]["input_shape"]) == model.net.input_shape
    xt = torch.as_tensor(x[9:])
    torch.testing.assert_close(model(xt), result.model.eval()(xt))
    # the output bias (read through the wrapper) is the training mean age (paper 001)
    assert model.output_layer.bias.item() == pytest.approx(y[:9].mean(), abs=1e-3)


def _subensembles(n=60, seed=0, informative=True):
    """Base predictions: 2 whole-brain CNNs (shared error e), 2 region CNNs each."""
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    e_brain = rng.normal(0, 6, n)
    cols, groups = [], []
    for _ in range(2):
        cols.append(age + e_brain + rng.normal(0, 1, n))
        groups.append("brain")
    for region in ("cortex", "cerebellum"):
        e = rng.normal(0, 6, n)  # independent of the brain error: complementary information
        for _ in range(2):
            cols.append(age + e + rng.normal(0, 1, n) if informative else rng.uniform(20, 80, n))
            groups.append(region)
    return np.column_stack(cols), age, groups


def test_multilevel_head_combines_complementary_sub_ensembles():
    p, age, groups = _subensembles(informative=True)
    head, info, val_pred = fit_multilevel_head(p, age, groups)
    assert head.groups == ["brain", "cerebellum", "cortex"]
    assert head.members == [[0, 1], [4, 5], [2, 3]]
    assert info["kind"] in ("ridge", "mean")  # uses the regions: better than brain alone
    # three independent errors of sd 6: the mean has sd ≈ 6/√3; brain alone ≈ 6
    brain_mae = info["sub_ensembles"]["brain"]["val_mae"]
    assert np.mean(np.abs(val_pred - age)) < 0.8 * brain_mae
    # fresh subjects from the same design: the fitted head generalises
    q, age2, _ = _subensembles(seed=1)
    assert np.mean(np.abs(head.predict(q) - age2)) < 0.8 * np.mean(np.abs(q[:, :2].mean(1) - age2))
    # round trip through JSON gives the same predictions
    again = head_from_dict(json.loads(json.dumps(head.to_dict())))
    assert isinstance(again, MultiLevelHead)
    np.testing.assert_allclose(again.predict(q), head.predict(q))
    np.testing.assert_allclose(head.sub_predict(q)[:, 0], head.heads[0].predict(q[:, :2]))


def test_multilevel_head_falls_back_to_the_whole_brain_when_regions_are_noise():
    p, age, groups = _subensembles(informative=False)
    head, info, val_pred = fit_multilevel_head(p, age, groups)
    assert info["kind"] == "brain"
    np.testing.assert_allclose(head.predict(p), head.sub_predict(p)[:, 0])
    np.testing.assert_allclose(head.top.coef_, [1.0, 0.0, 0.0])


def test_multilevel_validation_predictions_are_out_of_sample():
    p, age, groups = _subensembles(n=40, informative=True)
    head, info, val_pred = fit_multilevel_head(p, age, groups)
    if info["kind"] == "ridge":  # stacked: not the in-sample fit
        assert not np.allclose(val_pred, head.predict(p))
    with pytest.raises(ValueError, match="whole-brain"):
        fit_multilevel_head(p[:, 2:], age, groups[2:])


# ------------------------------------------------------------------ a run with region sub-ensembles


@pytest.mark.integration
def test_run_with_region_sub_ensembles(tmp_path):
    from brainage.config import DEMO_OVERRIDES, load_config, merge
    from brainage.io import read_bids
    from brainage.simulate import simulate_cohort
    from brainage.workflow import predict, run
    from brainage.workflow.records import read_records

    bids = simulate_cohort(tmp_path / "bids", n_subjects=30, resolution_mm=4.0, seed=2,
                           progress=False)  # fmt: skip
    parts = pd.read_csv(bids / "participants.tsv", sep="\t", dtype=str)
    parts.loc[0, "age"] = "n/a"  # predicted by every fold
    parts.to_csv(bids / "participants.tsv", sep="\t", index=False)
    tiny = {
        "split": {"n_folds": 3},
        "ensemble": {"n_seeds": 1, "learners": [], "regions": ["cerebellum", "subcortex"]},
        "train": {"epochs": 2, "patience": 2,
                  "model_params": {"filters": [4, 4, 8, 8, 4], "dense": 8}},
        "bias_correction": {"n_bootstrap": 20},
        "explain": {"methods": ["lrp"]},
        "evaluate": {"n_subjects": 2, "randomisation": False},
        "stats": {"n_perm": 99, "young_max": 45, "old_min": 55},
        "population": {"atlases": ["aal"]},
        "run": {"n_jobs": 1, "backend": "serial"},
    }  # fmt: skip
    cfg = load_config(base=merge(DEMO_OVERRIDES, tiny))
    out = tmp_path / "out"
    run(read_bids(bids), out, cfg, progress=False)
    pred = pd.read_csv(out / "predictions.tsv", sep="\t")
    subs = ["brain", "cerebellum", "subcortex"]
    for g in subs:
        assert np.isfinite(pred[f"brain_age_ensemble-{g}"]).all()
        assert (
            pred[f"uncertainty_ensemble-{g}"].isna() | (pred[f"uncertainty_ensemble-{g}"] >= 0)
        ).all()
    assert {"brain_age_region-cerebellum_seed-0", "brain_age_region-subcortex_seed-0"} <= set(pred)
    ens = json.loads((out / "ensemble.json").read_text())
    assert ens["sub_ensembles"] == subs
    for fold in ens["folds"]:
        assert fold["head"]["kind"] == "mlens" and fold["head"]["groups"] == subs
        assert set(fold["head_choice"]["sub_ensembles"]) == set(subs)
        # the fold's ensemble is its two-level head applied to its base models
        head = head_from_dict(fold["head"])
        rows = pred[pred["fold"] == fold["fold"]]
        base = rows[[f"brain_age_{n}" for n in ens["names"]]].to_numpy()
        np.testing.assert_allclose(head.predict(base), rows["brain_age"], atol=1e-3)
    # MLens-level uncertainty: the t-interval across the three sub-ensembles
    from brainage.ensemble import ensemble_uncertainty

    sub = pred[[f"brain_age_ensemble-{g}" for g in subs]].to_numpy()
    known = pred["fold"].to_numpy() > 0
    np.testing.assert_allclose(
        ensemble_uncertainty(sub[known]), pred.loc[known, "uncertainty"], rtol=1e-3, atol=1e-3
    )
    dictionary = json.loads((out / "predictions.json").read_text())
    assert set(dictionary) == set(pred.columns)
    html = (out / "report.html").read_text()
    assert "which sub-ensembles the head relies on" in html
    mae = (pred["brain_age_ensemble-cerebellum"] - pred["age"]).abs().mean()
    assert f"<td>{mae:.2f}</td>" in html  # the cerebellum sub-ensemble's out-of-fold MAE
    metrics = pd.read_csv(out / "metrics.tsv", sep="\t")
    assert {"ensemble-cerebellum", "ensemble-brain"} <= set(metrics["model"])
    # leakage: no region model saw a subject it predicts
    splits = pd.read_csv(out / "splits.tsv", sep="\t")
    records = read_records_of(out, cfg, read_records)
    assert len(records) == 3 * 3  # folds × (1 whole-brain + 2 region CNNs)
    for item, rec in records.items():
        fold = int(item.split("_", 1)[0].split("-")[1])
        seen = {s[0] for s in rec.inputs["subjects"]}
        held = set(splits.loc[splits["fold"] == fold, "participant_id"])
        assert held and not (seen & held), item
    # only the whole-brain CNNs are explained (one map per subject, from its fold's seed-0)
    maps = list((out / "explain").rglob("*_relevance.nii.gz"))
    assert maps and not [m for m in maps if "region" in str(m.relative_to(out))]
    folders = {p.name for p in (out / "explain" / "method-lrp").iterdir() if p.is_dir()}
    assert folders == {"seed-0"}  # per-model maps: the whole-brain CNN only
    # the stats stage's young-vs-old t map equals an OLS fit of the scaled maps (statsmodels)
    _check_young_old_t_map(out, cfg, pred)
    # brainage predict applies each fold's two-level head, averaged over the folds: for the
    # subject without age the run did exactly that, so both must agree
    no_age = pred.loc[pred["age"].isna(), "participant_id"].tolist()
    assert len(no_age) == 1
    predict(out, read_bids(bids).subset(no_age), tmp_path / "applied", progress=False)
    applied = pd.read_csv(tmp_path / "applied" / "predictions.tsv", sep="\t")
    mine = pred[pred["participant_id"] == no_age[0]]
    for col in ["brain_age", *[f"brain_age_ensemble-{g}" for g in subs]]:
        np.testing.assert_allclose(applied[col].to_numpy(), mine[col].to_numpy(), atol=1e-3)


def read_records_of(out, cfg, read_records):
    from brainage.io.layout import RunLayout

    layout = RunLayout(out, cfg.train.resolution_mm)
    return read_records(layout, "train")


def _check_young_old_t_map(out, cfg, pred):
    import nibabel as nib
    import statsmodels.api as sm

    from brainage.io.layout import RunLayout

    layout = RunLayout(out, cfg.train.resolution_mm)
    mask = template_array("mask", 4.0)
    summary = json.loads(layout.stats_table("lrp", "young_old", "summary").read_text())
    assert summary["kind"] == "permutation" and summary["tfce"]["connectivity"] == 26
    t_map = np.asarray(nib.load(str(layout.stats_map("lrp", "young_old", "t"))).dataobj)
    known = pred.dropna(subset=["age"])
    young, old = known[known["age"] <= 45], known[known["age"] >= 55]
    assert summary["n_subjects"] == len(young) + len(old)
    rows = [*young["participant_id"], *old["participant_id"]]
    maps = np.stack(
        [np.asarray(nib.load(str(layout.relevance("lrp", p))).dataobj)[mask] for p in rows]
    )
    # stats.signed "centred": minus the subject's mean over the brain, over its mean |R|
    scale = np.abs(maps).mean(axis=1, keepdims=True)
    maps = (maps - maps.mean(axis=1, keepdims=True)) / scale
    x = np.column_stack([np.ones(len(rows)), np.r_[np.zeros(len(young)), np.ones(len(old))]])
    voxels = np.flatnonzero(np.abs(maps).sum(axis=0) > 0)[:: max(1, mask.sum() // 7)][:5]
    ref = [sm.OLS(maps[:, v], x).fit().tvalues[1] for v in voxels]
    np.testing.assert_allclose(t_map[mask][voxels], ref, rtol=1e-4, atol=1e-4)
    p_fwe = np.asarray(nib.load(str(layout.stats_map("lrp", "young_old", "pfwe"))).dataobj)
    assert p_fwe[mask].min() >= 1 / 100 - 1e-9 and p_fwe[~mask].min() == 1


def test_multilevel_head_keeps_the_whole_brain_unless_clearly_better():
    """One-standard-error rule: near-copies of the whole brain do not replace it."""
    rng = np.random.default_rng(3)
    n = 30
    age = rng.uniform(20, 80, n)
    brain = age + rng.normal(0, 6, n)
    cols = [brain + rng.normal(0, 0.3, n) for _ in range(2)]
    cols += [brain + rng.normal(0, 0.3, n) for _ in range(2)]  # a "region" that adds nothing
    head, info, _ = fit_multilevel_head(np.column_stack(cols), age, ["brain"] * 2 + ["cortex"] * 2)
    assert info["kind"] == "brain"
    np.testing.assert_allclose(head.top.coef_, [1.0, 0.0])
