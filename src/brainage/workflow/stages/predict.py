"""Stage ``predict``: base models → ridge head → age-bias correction → interval (METHODS §5–§6).

Per outer fold (one "fold" in a hold-out run) the ridge head and the age-bias correction are
fitted on that fold's validation subjects only (the correction on out-of-fold head predictions),
and applied to the subjects the fold holds out. With cross-fitting every subject with age is
thus predicted by models, a head and a correction that never saw it; subjects without age get
the mean over all folds. The calibrated interval ``brain_age_lower/upper`` is cross-conformal on
the out-of-fold residuals (each fold calibrated on the others), or split-conformal on the
validation subjects of a hold-out run. In ``brainage predict`` (``mode="apply"``) the fitted heads,
corrections and interval of the ``--model`` run are applied, averaged over its folds. Writes
``predictions.tsv`` (+ its data dictionary ``predictions.json``), ``metrics.tsv`` and, in a run,
``ensemble.json`` and ``bias_correction.json``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from brainage.ensemble import (
    AgeBiasCorrection,
    ConformalInterval,
    MultiLevelHead,
    base_spread,
    cross_conformal_interval,
    ensemble_uncertainty,
    fit_ensemble_head,
    fit_multilevel_head,
    head_from_dict,
    interval_scores,
    regression_metrics,
)
from brainage.io.atomic import write_json, write_tsv
from brainage.io.scans import read_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.train import (
    fold_model_items,
    is_network,
    model_folds,
    model_seed,
    parse_model_item,
    sub_ensemble,
)

#: Columns of ``metrics.tsv`` (written, with no rows, also when no subject has an age).
METRIC_COLUMNS = ["model", "split", "fold", "n", "mae", "rmse", "r"]


def read_predictions(ctx: RunContext):
    """Read the run's ``predictions.tsv`` (via the ``predict`` record), by participant_id."""
    path = ctx.record("predict", "ensemble").output(ctx.layout, "predictions")
    return read_tsv(path).set_index("participant_id")


def load_models(ctx: RunContext, items=None):
    """Return base models, their metadata and names (``seed-<n>``), in seed order.

    Parameters
    ----------
    items : list of str, optional
        Train items to load (default: the hold-out models, or those of every fold).
    """
    from brainage.train import load_model

    if items is None:
        items = [i for f in model_folds(ctx) for i in fold_model_items(ctx, f)]
    out = []
    for item in items:
        rec = ctx.record("train", item)
        model, meta = load_model(rec.output(ctx.models, "model.json").parent)
        out.append((parse_model_item(item)[1], model, meta))
    return out


def _fitted(ctx: RunContext) -> tuple[dict, ConformalInterval | None]:
    """Heads, corrections (per fold) and interval of the ``--model`` run (``apply`` mode)."""
    rec = ctx.record("fitted", "ensemble")
    info = json.loads(rec.output(ctx.models, "ensemble").read_text())
    if "folds" not in info:  # a hold-out run of brainage < 0.3
        bias = json.loads(rec.output(ctx.models, "bias_correction").read_text())
        info["folds"] = [{"fold": None, "head": info["head"], "bias_correction": bias}]
    fits = {
        f["fold"]: (
            head_from_dict(f["head"]),
            AgeBiasCorrection.from_dict(f["bias_correction"]),
        )
        for f in info["folds"]
    }
    interval = ConformalInterval.from_dict(info["interval"]) if "interval" in info else None
    return fits, interval


class PredictStage(Stage):
    """See the module docstring."""

    name = "predict"
    version = "3"
    requires = ("splits", "volumes", "train")

    def items(self, ctx: RunContext) -> list[str]:
        return ["ensemble"]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        deps = [("volumes", "stack"), *[("train", i) for i in ctx.stage_records("train")]]
        if ctx.mode == "apply":
            deps.append(("fitted", "ensemble"))
        return deps

    def params(self, ctx: RunContext, item: str) -> dict:
        if ctx.mode == "apply":
            return {"mode": "apply"}
        c = ctx.config
        return {
            "ridge_alpha": c.ensemble.ridge_alpha,
            "ridge_positive": c.ensemble.ridge_positive,
            "interval": c.ensemble.interval,
            "interval_level": c.ensemble.interval_level,
            "bias_correction": c.bias_correction.to_dict(),
            "seed": c.seed,
        }

    def inputs(self, ctx: RunContext, item: str) -> dict:
        ages, split = ctx.ages(), ctx.split_of()
        subjects = [[p, ages[p], split.get(p), ctx.fold_of(p)] for p in ctx.ok_subjects()]
        return {"subjects": subjects}

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return ctx.config.seed

    def _fit_fold(self, ctx, fold, pids, ages, rows_of, x, device, fitted) -> dict:
        """Predict the subjects a fold is responsible for; fit (or apply) its head + correction."""
        from brainage.train import predict_volumes

        c = ctx.config
        items = fold_model_items(ctx, fold)
        roles = ctx.roles.get(fold) if ctx.mode == "run" and fold is not None else None
        if roles is None:  # hold-out run or brainage predict: every subject
            idx = np.arange(len(pids))
        else:  # validation (to fit the head) and the subjects the fold predicts
            wanted = ("validation", "test", "predict")
            idx = np.array([i for i, p in enumerate(pids) if roles.get(p) in wanted], dtype=int)
        models = load_models(ctx, items)
        xb = np.asarray(x[np.array([rows_of[pids[i]] for i in idx])])
        base = np.column_stack(
            [predict_volumes(m.to(device), xb, device=device) for _, m, _ in models]
        )
        a = ages[idx]
        out = {
            "fold": fold,
            "items": items,
            "names": [n for n, _, _ in models],
            "pos": {int(i): k for k, i in enumerate(idx)},
            "base": base,
            "train_mean_age": float(np.mean([meta["train_mean_age"] for _, _, meta in models])),
        }
        if fitted is not None:
            head, bc = fitted[fold]
            ens = head.predict(base)
        else:
            if roles is None:
                val = np.array([ctx.split_of()[pids[i]] == "validation" for i in idx])
            else:
                val = np.array([roles[pids[i]] == "validation" for i in idx])
            e = c.ensemble
            networks = [is_network(i) for i in items]
            groups = [sub_ensemble(n) for n in out["names"]]
            if len(set(groups)) > 1:  # region sub-ensembles: the multi-level head (MLens)
                head, out["head_choice"], val_pred = fit_multilevel_head(
                    base[val], a[val], groups, networks, e.ridge_alpha, e.ridge_positive, c.seed
                )
                ens = head.predict(base)
                ens[val] = val_pred  # out-of-sample (stacked) validation predictions
            else:
                head, out["head_choice"] = fit_ensemble_head(
                    base[val], a[val], e.ridge_alpha, e.ridge_positive, seed=c.seed,
                    networks=networks,
                )  # fmt: skip
                ens = head.predict(base)
                if out["head_choice"]["kind"] == "ridge":  # out-of-fold head predictions
                    ens[val] = head.cross_val_predict(base[val], a[val], seed=c.seed)
            b = c.bias_correction
            bc = AgeBiasCorrection(b.min_slope, b.n_bootstrap, c.seed).fit(a[val], ens[val])
        if isinstance(head, MultiLevelHead):
            out["sub"], out["groups"] = head.sub_predict(base), head.groups
        corrected = bc.transform(ens)
        out.update(head=head, bc=bc, ens=ens, corrected=corrected)
        out["use"] = corrected if bc.recommended_ == "brain_age_corrected" else ens
        return out

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.utils import select_device

        layout, c = ctx.layout, ctx.config
        x, rows_of = ctx.volumes()
        pids = [p for p in ctx.ok_subjects() if p in rows_of]
        all_ages, all_splits = ctx.ages(), ctx.split_of()
        ages = np.array([all_ages[p] for p in pids], float)
        split = np.array([all_splits[p] for p in pids], dtype=object)
        device = select_device(c.train.device)
        folds = model_folds(ctx)
        crossfit = folds != [None]
        fitted, interval = _fitted(ctx) if ctx.mode == "apply" else (None, None)
        fits = [self._fit_fold(ctx, f, pids, ages, rows_of, x, device, fitted) for f in folds]
        names = fits[0]["names"]
        if any(f["names"] != names for f in fits):
            raise RuntimeError(f"folds have different base models: {[f['names'] for f in fits]}")
        own = np.array([(ctx.fold_of(p) or 0) if ctx.mode == "run" else 0 for p in pids])

        def values_of(i: int, field: str) -> list:
            """Subject i's ``field`` from its own fold, or from every fold for one in none."""
            return [
                f[field][f["pos"][i]] for f in fits if own[i] in (0, f["fold"]) and i in f["pos"]
            ]

        def combine(field: str) -> np.ndarray:
            """Per subject: its own fold's value, else the mean over the folds."""
            return np.array([np.mean(values_of(i, field), axis=0) for i in range(len(pids))])

        brain_age, corrected, use = combine("ens"), combine("corrected"), combine("use")
        base = combine("base")
        cnn = np.array([model_seed(n) is not None for n in names])  # the CNN columns

        def gather(field: str, cols=None) -> list[np.ndarray]:
            """Per subject: its fold's values (all folds' for subjects in none), concatenated."""
            return [
                np.concatenate([v if cols is None else v[cols] for v in values_of(i, field)])
                for i in range(len(pids))
            ]

        def t_width(values: list[np.ndarray]) -> np.ndarray:
            return np.array([ensemble_uncertainty(b[None])[0] for b in values])

        every_base = gather("base", cnn)  # the CNN predictions of each subject
        spread = np.array([base_spread(b[None])[0] for b in every_base])
        groups = fits[0].get("groups")  # sub-ensembles of a multi-level ensemble, or None
        sub_columns: dict[str, np.ndarray] = {}
        if groups:  # MLens: uncertainty across sub-ensembles, and within each (paper 001)
            uncertainty = t_width(gather("sub"))
            member = np.array([sub_ensemble(n) for n in names])
            sub = combine("sub")
            for g_i, g in enumerate(groups):
                sub_columns[f"brain_age_ensemble-{g}"] = sub[:, g_i]
                sub_columns[f"uncertainty_ensemble-{g}"] = t_width(
                    gather("base", cnn & (member == g))
                )
        else:
            uncertainty = t_width(every_base)
        baseline = np.array(
            [
                np.mean([f["train_mean_age"] for f in fits if own[i] in (0, f["fold"])])
                for i in range(len(pids))
            ]
        )
        kind, level = c.ensemble.interval, c.ensemble.interval_level
        if ctx.mode == "apply":
            if interval is None:
                lower = upper = np.full(len(pids), np.nan)
            else:
                lower, upper = interval.predict(brain_age, spread)
        elif crossfit:
            lower, upper, interval = cross_conformal_interval(
                ages, brain_age, spread, own, kind, level
            )
        else:
            val = split == "validation"
            interval = ConformalInterval(kind, level).fit(ages[val], brain_age[val], spread[val])
            lower, upper = interval.predict(brain_age, spread)

        pred = pd.DataFrame({"participant_id": pids, "age": ages})
        if crossfit:
            pred["fold"] = own
        pred["brain_age"] = brain_age
        pred["brain_age_corrected"] = corrected
        pred["brain_age_gap"] = use - ages
        pred["uncertainty"] = uncertainty
        pred["brain_age_lower"] = lower
        pred["brain_age_upper"] = upper
        pred["split"] = split
        for j, name in enumerate(names):
            pred[f"brain_age_{name}"] = base[:, j]
        for column, values in sub_columns.items():
            pred[column] = values
        if groups:
            scored_cols = [sub_columns[f"brain_age_ensemble-{g}"] for g in groups]
            m_base = np.column_stack([base, *scored_cols])
            m_names = [*names, *[f"ensemble-{g}" for g in groups]]
        else:
            m_base, m_names = base, names
        metrics = _metrics(
            ages, split, own, m_base, m_names, brain_age, corrected, baseline, crossfit
        )
        scored = np.isfinite(ages) & np.isin(split, ["test"])
        interval_fit = interval_scores(ages[scored], lower[scored], upper[scored])
        outputs = {
            # its data dictionary (predictions.json) from brainage.io.dictionary
            "predictions": write_tsv(layout.file("predictions.tsv"), pred),
            "dictionary": layout.file("predictions.json"),
            "metrics": write_tsv(
                layout.file("metrics.tsv"), pd.DataFrame(metrics, columns=METRIC_COLUMNS)
            ),
        }
        if ctx.mode == "run":
            outputs.update(self._write_fits(ctx, fits, interval, interval_fit, crossfit))
        return ItemResult(outputs, {"interval": interval_fit}, seed=self.seed(ctx, item))

    def _write_fits(self, ctx, fits, interval, interval_fit, crossfit) -> dict:
        layout = ctx.layout
        fold_info, biases = [], []
        for f in fits:
            bias = {**f["bc"].to_dict(), "gap_from": f["bc"].recommended_}
            biases.append({"fold": f["fold"], **bias})
            fold_info.append(
                {
                    "fold": f["fold"],
                    "items": f["items"],
                    "base_models": [
                        layout.relative(layout.model_dir(parse_model_item(i)[1], f["fold"]))
                        for i in f["items"]
                    ],
                    "head": f["head"].to_dict(),
                    "head_choice": f["head_choice"],
                    "bias_correction": bias,
                    "train_mean_age": f["train_mean_age"],
                }
            )
        bias_file = biases[0] if not crossfit else _bias_summary(biases)
        ensemble = {
            "scheme": "kfold" if crossfit else "holdout",
            "names": fits[0]["names"],
            "sub_ensembles": fits[0].get("groups") or ["brain"],
            "folds": fold_info,
            "interval": {**interval.to_dict(), "scores": interval_fit},
            "train_mean_age": float(np.mean([f["train_mean_age"] for f in fits])),
            "resolution_mm": ctx.config.train.resolution_mm,
        }
        return {
            "bias_correction": write_json(layout.file("bias_correction.json"), bias_file),
            "ensemble": write_json(layout.file("ensemble.json"), ensemble),
        }


def _bias_summary(biases: list[dict]) -> dict:
    """``bias_correction.json`` of a cross-fitted run: a summary over folds, and every fold."""
    slopes = np.array([b["slope"] for b in biases], float)
    recommended = [b["recommended_column"] for b in biases]
    column = max(set(recommended), key=recommended.count)
    warnings = [f"fold {b['fold']}: {w}" for b in biases for w in b.get("warnings", [])]
    return {
        "slope": float(np.median(slopes)),
        "intercept": float(np.median([b["intercept"] for b in biases])),
        "slope_ci": [float(slopes.min()), float(slopes.max())],
        "slope_ci_meaning": "range of the folds' slopes (each fold has its bootstrap CI)",
        "n_validation": int(sum(b.get("n_validation", 0) for b in biases)),
        "val_mae_before": float(np.mean([b["val_mae_before"] for b in biases])),
        "val_mae_after_cv": float(np.mean([b["val_mae_after_cv"] for b in biases])),
        "recommended_column": column,
        "n_folds_recommending": int(recommended.count(column)),
        "warnings": warnings,
        "folds": biases,
    }


def _metrics(ages, split, own, base, names, brain_age, corrected, baseline, crossfit) -> list:
    """Rows of ``metrics.tsv``: per split (``fold`` = all) and, cross-fitted, per outer fold."""
    rows = []

    def add(sel, s, fold):
        cols = [(n, base[sel, j]) for j, n in enumerate(names)]
        cols += [("ensemble", brain_age[sel]), ("ensemble_corrected", corrected[sel])]
        cols += [("mean_age_baseline", baseline[sel])]
        for name, values in cols:
            scores = regression_metrics(ages[sel], values)
            rows.append({"model": name, "split": s, "fold": fold, **scores})

    for s in ("train", "validation", "test", "predict"):
        sel = (split == s) & np.isfinite(ages)
        if sel.any():
            add(sel, s, "all")
    if crossfit:
        for k in sorted(set(own[own > 0].tolist())):
            sel = (own == k) & np.isfinite(ages)
            if sel.any():
                add(sel, "test", str(k))
    return rows
