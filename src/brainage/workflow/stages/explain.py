"""Stages ``noise`` (3D U-Noise noise models, paper 002) and ``explain`` (METHODS §8).

``explain`` has one item per method × subject (``"lrp/sub-01"``), computed in batches of
``explain.batch_size`` subjects. A subject is explained by the base models that predict it
(:func:`~brainage.workflow.stages.train.explaining_items`: with cross-fitting those of the fold
that holds it out, which never saw it; all folds' for a subject without age), with that fold's
reference image and noise models. A map is keyed by the method's parameters and code
(:func:`brainage.explain._core.method_fingerprint`), those base models, the subject's
preprocessing and, where used, the reference image and the noise models. Each base model's map
goes to ``explain/method-<m>/seed-<n>/`` and their mean (the ensemble map, paper 001) to
``explain/method-<m>/``, as NIfTI in template space on the model grid. With several input
channels (``preprocess.modalities``, e.g. T1w + FLAIR) these maps are the sum over the channels
(relevance of a voxel), and the ensemble map of each channel is written beside them
(``desc-<m>FLAIR``; output ``ensemble_<modality>`` of the record). Methods without channel
resolution (Grad-CAM, occlusion: ``per_channel`` of :func:`brainage.explain.register_method`)
write their one map; a method that gives every channel the same relevance (LRP with a Flat
first-layer rule, such as the default ``lrp``) writes only the voxel map.
"""

from __future__ import annotations

import numpy as np

from brainage.config import TRAINING_MEAN
from brainage.io.nifti import save_nifti
from brainage.workflow.stage import ItemResult, RunContext, Stage, subject_of
from brainage.workflow.stages.train import (
    explaining_items,
    is_explainer,
    parse_model_item,
    reference_item,
)

UNOISE = "unoise"


def explained_subjects(ctx: RunContext) -> list[str]:
    """Subjects to explain: ``explain.subjects`` of the run (every subject in ``apply`` mode)."""
    if ctx.mode == "apply":
        return [p for p in ctx.ok_subjects() if ("preprocess", p) in ctx.records]
    which = ctx.config.explain.subjects
    splits = {"test": ("test",), "heldout": ("validation", "test"), "all": None}[which]
    pids = ctx.ok_subjects() if splits is None else ctx.subjects_in(*splits)
    return [p for p in pids if ("preprocess", p) in ctx.records]


def _folds_of(items: list[str]) -> list[int | None]:
    """Outer folds of base-model items, in order of appearance."""
    return list(dict.fromkeys(parse_model_item(i)[0] for i in items))


def _uses_reference(params: dict) -> bool:
    return isinstance(params.get("baseline"), str) and params["baseline"] == TRAINING_MEAN


class NoiseStage(Stage):
    """One 3D U-Noise noise model per base model (only when ``unoise`` is a method)."""

    name = "noise"
    version = "1"
    requires = ("splits", "volumes", "train")

    def items(self, ctx: RunContext) -> list[str]:
        if UNOISE not in ctx.config.explain.methods or ctx.mode == "apply":
            return []
        return sorted(i for i in ctx.stage_records("train") if is_explainer(i))

    def _fit_subjects(self, ctx: RunContext, item: str) -> tuple[list[str], list[str]]:
        n = ctx.config.explain.unoise_fit.n_subjects
        fold = parse_model_item(item)[0]
        return ctx.subjects_in("train", fold=fold)[:n], ctx.subjects_in("validation", fold=fold)

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        tr, va = self._fit_subjects(ctx, item)
        return [("train", item), *[("preprocess", p) for p in tr + va]]

    def params(self, ctx: RunContext, item: str) -> dict:
        from brainage.explain.unoise import ALGORITHM_VERSION

        return {"fit": ctx.config.explain.unoise_fit.to_dict(), "algorithm": ALGORITHM_VERSION}

    def inputs(self, ctx: RunContext, item: str) -> dict:
        ages = ctx.ages()
        tr, va = self._fit_subjects(ctx, item)
        return {"subjects": [[p, ages[p]] for p in tr + va]}

    def seed(self, ctx: RunContext, item: str) -> int:
        return ctx.config.seed

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.explain.unoise import fit_unoise
        from brainage.train import load_model

        rec = ctx.record("train", item)
        model, meta = load_model(rec.output(ctx.models, "model.json").parent)
        tr, va = self._fit_subjects(ctx, item)
        ages = ctx.ages()
        fold, name = parse_model_item(item)
        path = ctx.layout.noise_model(name, fold)
        for old in (path, path.with_suffix(".json")):
            old.unlink(missing_ok=True)  # a model of other inputs goes first
        fit_unoise(
            model,
            ctx.stack(tr),
            np.array([ages[p] for p in tr]),
            ctx.stack(va),
            np.array([ages[p] for p in va]),
            seed=ctx.config.seed,
            out_path=path,
            **ctx.config.explain.unoise_fit.fit_params(),
        )
        outputs = {"noise_model": path}
        if path.with_suffix(".json").exists():
            outputs["sidecar"] = path.with_suffix(".json")
        return ItemResult(outputs, seed=ctx.config.seed)


class ExplainStage(Stage):
    """See the module docstring."""

    name = "explain"
    version = "1"
    requires = ("splits", "preprocess", "volumes", "train", "reference", "noise")

    def items(self, ctx: RunContext) -> list[str]:
        pids = explained_subjects(ctx)
        pids = sorted(pids, key=lambda p: ctx.fold_of(p) or 0)  # batches within one fold
        return [f"{m}/{p}" for m in ctx.config.explain.methods for p in pids]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        method, pid = item.split("/", 1)
        models = explaining_items(ctx, pid)
        deps = [("train", i) for i in models]
        deps.append(("preprocess", pid))  # the subject's input (not the whole stack)
        if _uses_reference(ctx.config.explain.method_params(method)):
            deps += [("reference", reference_item(f)) for f in _folds_of(models)]
        if method == UNOISE:
            deps += [("noise", i) for i in models if ("noise", i) in ctx.records]
        return deps

    def params(self, ctx: RunContext, item: str) -> dict:
        from brainage.explain._core import method_fingerprint

        method = item.split("/", 1)[0]
        return {
            "method": method,
            "params": ctx.config.explain.method_params(method),
            "code": method_fingerprint(method),
        }

    def batch_size(self, ctx: RunContext) -> int:
        return ctx.config.explain.batch_size

    def _loaded(self, key: tuple, load):
        """Models, reference and noise models, read once per run (``key``: their record keys)."""
        cache = self.__dict__.setdefault("_cache", {})
        if key not in cache:
            cache[key] = load()
        return cache[key]

    def compute_batch(self, ctx: RunContext, items, keys) -> list:
        results = {}
        groups: dict[tuple, list[str]] = {}
        for i in items:  # one group per method and set of explaining models (fold)
            method, pid = i.split("/", 1)
            groups.setdefault((method, tuple(explaining_items(ctx, pid))), []).append(i)
        for (method, models), group in groups.items():
            maps = self._explain(ctx, method, list(models), [subject_of(i) for i in group])
            results.update(zip(group, maps, strict=True))
        return [results[i] for i in items]

    def _explain(
        self, ctx: RunContext, method: str, items: list[str], pids: list[str]
    ) -> list[ItemResult]:
        import torch

        from brainage.explain import METHODS, explain
        from brainage.space import template_grid
        from brainage.workflow.stages.predict import load_models
        from brainage.workflow.stages.train import load_reference

        train_keys = tuple(ctx.record("train", i).key for i in items)
        models = self._loaded(("models", train_keys), lambda: load_models(ctx, items))
        params = ctx.config.explain.method_params(method)
        if _uses_reference(params):
            folds = _folds_of(items)
            ref_keys = tuple(ctx.record("reference", reference_item(f)).key for f in folds)
            fold = folds[0] if len(folds) == 1 else None
            params["baseline"] = self._loaded(
                ("reference", ref_keys), lambda: load_reference(ctx, fold)
            )
        per_model = [dict(params) for _ in models]
        if method == UNOISE:
            from brainage.explain.unoise import load_unoise

            for pm, item in zip(per_model, items, strict=True):
                name = item
                rec = ctx.records.get(("noise", item))
                if rec is None:
                    from brainage.errors import InputError

                    raise InputError(
                        f"the run {ctx.models.root} has no 3D U-Noise noise model for {name}",
                        "explain that run with unoise first: brainage explain --run RUN "
                        "--methods unoise",
                    )
                path = rec.output(ctx.models, "noise_model")
                pm["noise_model"] = self._loaded(("noise", rec.key), lambda p=path: load_unoise(p))
        grid = template_grid(ctx.layout.resolution_mm)
        vols = torch.as_tensor(ctx.stack(pids))
        bs = len(pids)
        maps = [
            explain(m, vols, method, batch_size=bs, **pm)
            for (_, m, _), pm in zip(models, per_model, strict=True)
        ]
        by_name: dict[str, list[int]] = {}  # seed-<n> → its models (one per fold)
        for j, (name, _, _) in enumerate(models):
            by_name.setdefault(name, []).append(j)
        modalities = ctx.config.preprocess.modalities
        per_channel = METHODS[method].per_channel  # else one map repeated over the channels

        def voxel(m):  # (channels, i, j, k) → the relevance of each voxel
            return m.sum(axis=0) if per_channel else m[0]

        results = []
        for c, pid in enumerate(pids):
            meta = {"space": "MNI152NLin2009aSym", "method": method}
            outputs = {}
            for name, js in by_name.items():  # maps summed over the input channels
                path = ctx.layout.relevance(method, pid, name)
                save_nifti(
                    np.mean([voxel(maps[j][c]) for j in js], axis=0),
                    grid.affine,
                    path,
                    metadata={**meta, "models": [items[j] for j in js]},
                )
                outputs[name] = path
            mean = np.mean([mp[c] for mp in maps], axis=0)  # (channels, i, j, k)
            path = ctx.layout.relevance(method, pid)
            save_nifti(voxel(mean), grid.affine, path, metadata={**meta, "models": items})
            outputs["ensemble"] = path
            if len(mean) > 1 and per_channel and not _same_channels(mean):  # one per channel
                for ch, modality in enumerate(modalities):
                    path = ctx.layout.relevance(method, pid, modality=modality)
                    save_nifti(mean[ch], grid.affine, path,
                               metadata={**meta, "channel": modality})  # fmt: skip
                    outputs[f"ensemble_{modality}"] = path
            results.append(ItemResult(outputs))
        return results


def _same_channels(maps: np.ndarray) -> bool:
    """Whether every channel of ``maps`` (c, i, j, k) holds the same relevance, bit for bit.

    LRP whose first layer uses the Flat rule (``lrp``'s default ``epsilon_plus_flat``,
    ``epsilon_alpha2_beta1_flat``) spreads a voxel's relevance equally over its channels: its
    channel maps say nothing about the channel and are not written.
    """
    return all(np.array_equal(maps[0], maps[k]) for k in range(1, len(maps)))


def relevance_stack(
    ctx: RunContext, method: str, model: str = "ensemble"
) -> tuple[list, np.ndarray]:
    """Explained subjects of ``method`` and their maps, shape (n, i, j, k), float32.

    ``model``: a record output, ``"ensemble"``, ``"seed-<n>"`` or ``"ensemble_<modality>"`` (one
    channel's map, in runs with several modalities).
    """
    import nibabel as nib

    recs = [
        (subject_of(i), r)
        for i, r in ctx.stage_records("explain").items()
        if i.split("/", 1)[0] == method
    ]
    order = {p: k for k, p in enumerate(explained_subjects(ctx))}
    recs = sorted((x for x in recs if x[0] in order), key=lambda x: order[x[0]])
    pids = [p for p, _ in recs]
    if not recs:
        return pids, np.zeros((0, *template_shape(ctx)), np.float32)
    stack = np.stack(
        [
            np.asarray(nib.load(str(r.output(ctx.layout, model))).dataobj, np.float32)
            for _, r in recs
        ]
    )
    return pids, stack


def template_shape(ctx: RunContext) -> tuple[int, int, int]:
    """Shape of the model grid."""
    from brainage.space import template_grid

    return tuple(template_grid(ctx.layout.resolution_mm).shape)
