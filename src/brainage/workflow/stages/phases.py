"""Stage ``phases``: relevance maps at the training phases of paper 000 (METHODS §7).

With ``train.phases`` (validation-MAE thresholds, years) every CNN saves the weights of the first
epoch reaching each threshold (:func:`brainage.train.train_model`). This stage has one item per
phase: every explained subject is explained (with the first explanation method that is not
U-Noise) by its fold's base models *at that phase*, the maps are z-normalised per subject inside
the brain mask (paper 000) and averaged into the test-set mean map of the phase,
``phases/phase-<k>_method-<m>_…_stat-mean_relevance.nii.gz``. A phase that one of the base models
never reached has no map (its record says ``reached: false``): a run's phase map always comes
from every fold. ``phases/phases.tsv`` lists every base model's phase checkpoints.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from brainage.config import TRAINING_MEAN
from brainage.io.atomic import write_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.explain import UNOISE, explained_subjects
from brainage.workflow.stages.train import explaining_items, is_explainer, parse_model_item

#: Columns of ``phases/phases.tsv``.
PHASE_FILE_COLUMNS = ["model", "fold", "phase", "threshold", "epoch", "val_mae", "train_loss",
                      "test_mae"]  # fmt: skip


def phase_method(ctx: RunContext) -> str | None:
    """Explanation method of the phase maps: the first of ``explain.methods`` but U-Noise."""
    return next((m for m in ctx.config.explain.methods if m != UNOISE), None)


def model_phases(ctx: RunContext, item: str) -> list[dict]:
    """Return the phase checkpoints of a base model (``model.json``'s ``phases``)."""
    meta = ctx.record("train", item).output(ctx.layout, "model.json")
    return json.loads(meta.read_text()).get("phases", [])


class PhasesStage(Stage):
    """See the module docstring."""

    name = "phases"
    version = "2"  # 2: explained in batches of explain.batch_size (running sum)
    requires = ("splits", "volumes", "train", "reference")

    def items(self, ctx: RunContext) -> list[str]:
        if ctx.mode != "run" or not ctx.config.train.phases or phase_method(ctx) is None:
            return []
        return [f"phase-{k}" for k in range(1, len(ctx.config.train.phases) + 1)]

    def _models(self, ctx: RunContext) -> list[str]:
        return sorted(i for i in ctx.stage_records("train") if is_explainer(i))

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        deps = [("train", i) for i in self._models(ctx)]
        deps += [("preprocess", p) for p in explained_subjects(ctx)]
        if self._uses_reference(ctx):
            deps += [("reference", i) for i in sorted(ctx.stage_records("reference"))]
        return deps

    def params(self, ctx: RunContext, item: str) -> dict:
        from brainage.explain._core import method_fingerprint

        method = phase_method(ctx)
        return {"method": method, "params": ctx.config.explain.method_params(method),
                "code": method_fingerprint(method), "normalise": "zscore"}  # fmt: skip

    def _uses_reference(self, ctx: RunContext) -> bool:
        baseline = ctx.config.explain.method_params(phase_method(ctx)).get("baseline")
        return isinstance(baseline, str) and baseline == TRAINING_MEAN

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        import torch

        from brainage.explain import explain
        from brainage.io.nifti import save_nifti
        from brainage.population import normalise_maps
        from brainage.space import template_array, template_grid
        from brainage.train import load_model
        from brainage.workflow.stages.train import load_reference

        k = int(item.split("-")[1])
        method = phase_method(ctx)
        path = ctx.layout.phase_map(k, method)
        path.unlink(missing_ok=True)  # a map of other inputs never outlives its record
        reached = {i: {p["phase"]: p for p in model_phases(ctx, i)} for i in self._models(ctx)}
        missing = [i for i, ph in reached.items() if k not in ph]
        epochs = {i: ph[k]["epoch"] for i, ph in reached.items() if k in ph}
        values = {"phase": k, "threshold": ctx.config.train.phases[k - 1], "method": method,
                  "epochs": epochs, "reached": not missing}  # fmt: skip
        if missing:
            return ItemResult({}, values | {"missing": missing})
        groups: dict[tuple, list[str]] = {}
        for pid in explained_subjects(ctx):
            groups.setdefault(tuple(explaining_items(ctx, pid)), []).append(pid)
        res = ctx.layout.resolution_mm
        mask = template_array("mask", res).astype(bool)
        total, pids = np.zeros(mask.shape, np.float64), []
        bs = max(1, ctx.config.explain.batch_size)
        for models, group in groups.items():
            params = ctx.config.explain.method_params(method)
            if self._uses_reference(ctx):
                folds = {parse_model_item(i)[0] for i in models}
                params["baseline"] = load_reference(ctx, folds.pop() if len(folds) == 1 else None)
            loaded = []
            for i in models:
                folder = ctx.record("train", i).output(ctx.layout, "model.json").parent
                loaded.append(load_model(folder, reached[i][k]["file"])[0])
            for start in range(0, len(group), bs):  # a running sum: memory of one batch
                chunk = group[start : start + bs]
                vols = torch.as_tensor(ctx.stack(chunk))
                maps = np.mean([explain(m, vols, method, batch_size=bs, **params)
                                for m in loaded], axis=0)[:, 0]  # fmt: skip
                total += normalise_maps(maps, mask, "zscore").sum(axis=0)
                pids += chunk
        if not pids:
            return ItemResult({}, values | {"reached": False, "n_subjects": 0})
        mean = total / len(pids)
        save_nifti(mean.astype(np.float32), template_grid(res).affine, path,
                   metadata={"space": "MNI152NLin2009aSym", "method": method, "phase": k,
                             "normalise": "zscore", "subjects": pids})  # fmt: skip
        return ItemResult({"map": path}, values | {"n_subjects": len(pids)})

    def finish(self, ctx: RunContext) -> None:
        if not self.items(ctx):
            return
        rows = []
        for i in self._models(ctx):
            fold, name = parse_model_item(i)
            for p in model_phases(ctx, i):
                rows.append({"model": name, "fold": "n/a" if fold is None else fold,
                             **{c: p.get(c) for c in PHASE_FILE_COLUMNS[2:]}})  # fmt: skip
        write_tsv(ctx.layout.phase_table, pd.DataFrame(rows, columns=PHASE_FILE_COLUMNS))
