"""Stage ``predict``: base-model predictions → ridge head → age-bias correction (METHODS §5–§6).

In a run (``mode="run"``) the head and the correction are fitted on the validation subjects only
(out-of-fold within validation, so the correction never sees predictions fitted to the same
ages); test subjects are never used for fitting. In ``brainage predict`` (``mode="apply"``) the
fitted head and correction of the ``--model`` run are applied. Writes ``predictions.tsv``,
``metrics.tsv`` and, in a run, ``ensemble.json`` and ``bias_correction.json``.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from brainage.ensemble import (
    AgeBiasCorrection,
    RidgeHead,
    ensemble_uncertainty,
    fit_ensemble_head,
    regression_metrics,
)
from brainage.io.atomic import write_json, write_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage


def prediction_table(participant_ids, ages, base, brain_age, correction, split, names):
    """Build the ``predictions.tsv`` table.

    Parameters
    ----------
    participant_ids : sequence of str, length n
    ages : ndarray, shape (n,)
        Chronological age, years (NaN = unknown).
    base : ndarray, shape (n, n_models)
        Base-model predictions, years.
    brain_age : ndarray, shape (n,)
        Ensemble prediction, years.
    correction : AgeBiasCorrection
        Fitted correction; its ``recommended_`` column defines the brain-age gap.
    split : str or sequence of str
    names : sequence of str, length n_models
        Base-model names (``seed-<n>``), one extra column ``brain_age_<name>`` each.

    Returns
    -------
    pandas.DataFrame
        Columns ``participant_id, age, brain_age, brain_age_corrected, brain_age_gap,
        uncertainty, split, brain_age_<name>…``.
    """
    corrected = correction.transform(brain_age)
    use = corrected if correction.recommended_ == "brain_age_corrected" else brain_age
    pred = pd.DataFrame(
        {
            "participant_id": list(participant_ids),
            "age": ages,
            "brain_age": brain_age,
            "brain_age_corrected": corrected,
            "brain_age_gap": use - ages,
            "uncertainty": ensemble_uncertainty(base),
            "split": split,
        }
    )
    for j, name in enumerate(names):
        pred[f"brain_age_{name}"] = base[:, j]
    return pred


def load_models(ctx: RunContext):
    """Return the base models in use, their metadata and names (``seed-<n>``), in seed order."""
    from brainage.train import load_model

    out = []
    for item, rec in sorted(ctx.stage_records("train").items(), key=lambda kv: kv[1].seed):
        model, meta = load_model(rec.output(ctx.models, "model.json").parent)
        out.append((item, model, meta))
    return out


class PredictStage(Stage):
    """See the module docstring."""

    name = "predict"
    version = "1"
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
            "bias_correction": c.bias_correction.to_dict(),
            "seed": c.seed,
        }

    def inputs(self, ctx: RunContext, item: str) -> dict:
        ages, split = ctx.ages(), ctx.split_of()
        return {"subjects": [[p, ages[p], split.get(p)] for p in ctx.ok_subjects()]}

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return ctx.config.seed

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.train import predict_volumes
        from brainage.utils import select_device

        layout = ctx.layout
        x, rows = ctx.volumes()
        pids = [p for p in ctx.ok_subjects() if p in rows]
        x = np.asarray(x[np.array([rows[p] for p in pids])])
        models = load_models(ctx)
        device = select_device(ctx.config.train.device)
        names = [name for name, _, _ in models]
        base = np.column_stack(
            [predict_volumes(m.to(device), x, device=device) for _, m, _ in models]
        )
        all_ages = ctx.ages()
        ages = np.array([all_ages[p] for p in pids], float)
        split = np.array([ctx.split_of()[p] for p in pids], dtype=object)
        outputs = {}
        train_mean = float(np.mean([meta["train_mean_age"] for _, _, meta in models]))
        if ctx.mode == "apply":
            fitted = ctx.record("fitted", "ensemble")
            ens_info = json.loads(fitted.output(ctx.models, "ensemble").read_text())
            head = RidgeHead.from_dict(ens_info["head"])
            bc = AgeBiasCorrection.from_dict(
                json.loads(fitted.output(ctx.models, "bias_correction").read_text())
            )
            ens = head.predict(base)
        else:
            c = ctx.config
            val = split == "validation"
            head, head_info = fit_ensemble_head(
                base[val], ages[val], c.ensemble.ridge_alpha, c.ensemble.ridge_positive, seed=c.seed
            )
            ens = head.predict(base)
            if head_info["kind"] == "ridge":  # out-of-fold head predictions for validation
                ens[val] = head.cross_val_predict(base[val], ages[val], seed=c.seed)
            b = c.bias_correction
            bc = AgeBiasCorrection(b.min_slope, b.n_bootstrap, c.seed).fit(ages[val], ens[val])
            bias = bc.to_dict()
            bias["gap_from"] = bc.recommended_
            outputs["bias_correction"] = write_json(layout.file("bias_correction.json"), bias)
            outputs["ensemble"] = write_json(
                layout.file("ensemble.json"),
                {
                    "base_models": [
                        layout.relative(ctx.layout.model_dir(int(n.split("-")[1]))) for n in names
                    ],
                    "names": names,
                    "head": head.to_dict(),
                    "head_choice": head_info,
                    "train_mean_age": train_mean,
                    "resolution_mm": ctx.config.train.resolution_mm,
                },
            )
        pred = prediction_table(pids, ages, base, ens, bc, split, names)
        corrected = pred["brain_age_corrected"].to_numpy()
        metrics = []
        for s in ("train", "validation", "test", "predict"):
            sel = (split == s) & np.isfinite(ages)
            if not sel.any():
                continue
            cols = [(n, base[sel, j]) for j, n in enumerate(names)]
            cols += [("ensemble", ens[sel]), ("ensemble_corrected", corrected[sel])]
            cols += [("mean_age_baseline", np.full(sel.sum(), train_mean))]
            for name, values in cols:
                metrics.append({"model": name, "split": s, **regression_metrics(ages[sel], values)})
        outputs["predictions"] = write_tsv(layout.file("predictions.tsv"), pred)
        outputs["metrics"] = write_tsv(layout.file("metrics.tsv"), pd.DataFrame(metrics))
        return ItemResult(outputs, seed=self.seed(ctx, item))
