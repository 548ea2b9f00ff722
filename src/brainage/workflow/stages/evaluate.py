"""Stages ``truth`` (ground-truth masks on the model grid) and ``evaluate`` (METHODS §11).

``evaluate`` has one item per method: the cascading model-randomisation check (Adebayo et al.
2018), the agreement of the base models' maps (top-1 % Dice), and — on simulated cohorts — the
ground-truth scores and the white-matter-lesion test (paper 003). Each item writes its row of
``evaluation/xai.tsv``; :meth:`EvaluateStage.finish` assembles the table from those rows.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd

from brainage.io.atomic import write_json, write_tsv
from brainage.io.scans import read_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.explain import UNOISE, _uses_reference, explained_subjects

#: Masks of a simulated subject: where age acts, and the single simulated effects.
TRUTH_MASKS = ("ageeffect", "ventricles", "cortex", "lesions", "regions")


def _truth_files(ctx: RunContext, pid: str) -> dict:
    from brainage.io.layout import subject_label

    sub = subject_label(pid)
    folder = ctx.truth_dir / sub / "anat"
    out = {}
    for name in TRUTH_MASKS:
        found = sorted(folder.glob(f"{sub}_*desc-{name}_mask.nii*"))
        if found:
            out[name] = found[0]
    found = sorted(folder.glob(f"{sub}_*desc-change_map.nii*"))
    if found:
        out["change"] = found[0]
    return out


def region_truth_atlas(ctx: RunContext) -> str | None:
    """Atlas of the region-level scores: the simulated design's, else the first configured one."""
    if ctx.truth_dir is not None and (ctx.truth_dir / "regions.tsv").exists():
        atlases = read_tsv(ctx.truth_dir / "regions.tsv", dtype=str)["atlas"].unique()
        if len(atlases):
            return str(atlases[0])
    atlases = ctx.config.population.atlases
    return atlases[0] if atlases else None


class TruthStage(Stage):
    """Ground truth of the explained subjects on the model grid: masks (nearest), change map."""

    name = "truth"
    version = "2"  # 2: the continuous change map and the regions mask
    requires = ("splits",)

    def items(self, ctx: RunContext) -> list[str]:
        if ctx.truth_dir is None or not ctx.config.explain.methods:
            return []
        return [p for p in explained_subjects(ctx) if "ageeffect" in _truth_files(ctx, p)]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return []

    def inputs(self, ctx: RunContext, item: str) -> dict:
        from brainage.utils import file_hash

        return {k: file_hash(v, length=32) for k, v in _truth_files(ctx, item).items()}

    def params(self, ctx: RunContext, item: str) -> dict:
        return {"resolution_mm": ctx.layout.resolution_mm}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        import nibabel as nib

        from brainage.io.nifti import save_nifti
        from brainage.space import resample_to_grid, template_grid

        grid = template_grid(ctx.layout.resolution_mm)
        outputs = {}
        for name, path in _truth_files(ctx, item).items():
            out = ctx.layout.truth(item, name)
            if name == "change":
                img = resample_to_grid(nib.load(str(path)), grid, "linear")
                save_nifti(np.asarray(img.dataobj, dtype=np.float32), grid.affine, out)
            else:
                img = resample_to_grid(nib.load(str(path)), grid, "nearest")
                mask = (np.asarray(img.dataobj) > 0.5).astype(np.uint8)
                save_nifti(mask, grid.affine, out, dtype=np.uint8)
            outputs[name] = out
        return ItemResult(outputs)


def _read(paths) -> np.ndarray:
    import nibabel as nib

    return np.stack([np.asarray(nib.load(str(p)).dataobj, dtype=np.float32) for p in paths])


#: Channel of the lesion test (paper 003: white-matter hyperintensities are seen on FLAIR).
LESION_CHANNEL = "FLAIR"


def _lesion_channel(ctx: RunContext, method: str, pids: list[str], stack: np.ndarray):
    """Return the maps of the lesion test: the FLAIR channel's when the run has one, else ``stack``.

    Returns the channel's name (``"FLAIR"``; ``"T1w"`` in a T1w-only run; ``"all"`` for the sum
    over channels when a method has no per-channel maps, e.g. Grad-CAM) and the maps (n, i, j, k).
    """
    modalities = ctx.config.preprocess.modalities
    if len(modalities) == 1:
        return modalities[0], stack
    output = f"ensemble_{LESION_CHANNEL}"
    recs = [ctx.record("explain", f"{method}/{p}") for p in pids]
    if LESION_CHANNEL in modalities and all(output in r.outputs for r in recs):
        return LESION_CHANNEL, _read([r.output(ctx.layout, output) for r in recs])
    return "all", stack


def _faithfulness(ctx: RunContext, method: str, pids: list[str], brain: np.ndarray):
    """Perturbation test and region reliance of one method on the first base model's subjects.

    Up to ``evaluate.faithfulness_subjects`` subjects explained by the same models as the first
    explained subject; that fold's first base model and its own relevance maps; removed voxels
    replaced by the fold's mean training image (:mod:`brainage.evaluate.faithfulness`); the
    reliance on each region of the first atlas (:mod:`brainage.evaluate.reliance`) scored
    against the method's per-region relevance.
    """
    from brainage.evaluate.faithfulness import faithfulness_scores
    from brainage.train.trainer import predict_volumes
    from brainage.workflow.stages.predict import load_models
    from brainage.workflow.stages.train import explaining_items, load_reference, parse_model_item

    ev = ctx.config.evaluate
    items = explaining_items(ctx, pids[0])
    same = [p for p in pids if explaining_items(ctx, p) == items][: ev.faithfulness_subjects]
    fold, name = parse_model_item(items[0])
    model = load_models(ctx, items[:1])[0][1]
    maps = _read([ctx.record("explain", f"{method}/{p}").output(ctx.layout, name) for p in same])
    vols, reference = ctx.stack(same), load_reference(ctx, fold)

    def predict(batch):
        return predict_volumes(model, batch)

    scores, curves = faithfulness_scores(
        predict, vols, maps, reference, brain > 0, seed=ctx.config.seed, imputation=ev.imputation
    )
    regions = None
    atlas_name = region_truth_atlas(ctx)
    if atlas_name:
        from brainage.atlas import load_atlas
        from brainage.evaluate.reliance import region_relevance, region_reliance, reliance_spearman
        from brainage.space import template_grid

        atlas = load_atlas(atlas_name, template_grid(ctx.layout.resolution_mm))
        labels = np.where(brain > 0, atlas.labels, 0)
        reliance = region_reliance(predict, vols, labels, reference)
        by_region = region_relevance(maps, labels)
        per, pop = reliance_spearman(by_region, reliance)
        scores.update(reliance_spearman=per, reliance_spearman_population=pop)
        ids = [int(r) for r in np.unique(labels) if r != 0]
        regions = pd.DataFrame({
            "region": [atlas.names.get(r, str(r)) for r in ids],
            "atlas": atlas.name,
            "relevance": by_region.mean(axis=0),
            "reliance": reliance.mean(axis=0),
        })  # fmt: skip
    return scores, curves, regions


def _unoise_fit_subjects(ctx: RunContext, item: str) -> list[str]:
    """Training subjects of the reduced-budget U-Noise refits of the randomisation check."""
    from brainage.workflow.stages.train import parse_model_item

    n = min(ctx.config.explain.unoise_fit.n_subjects, ctx.config.evaluate.unoise_subjects)
    return ctx.subjects_in("train", fold=parse_model_item(item)[0])[:n]


def _unoise_refit(ctx: RunContext, item: str):
    """U-Noise as a method of ``cascading_randomisation``: a noise model refitted per predictor.

    U-Noise maps come from a noise model trained for one predictor, so randomising the
    predictor's layers means training a new noise model for each randomised predictor (issue 11,
    item 7). Every step, the trained model's included, is refitted with the same reduced budget
    (``evaluate.unoise_subjects`` training subjects, ``evaluate.unoise_epochs`` noise epochs, at
    most one pretraining epoch, no validation) and the same seed, so the steps differ only by the
    predictor.
    """
    from brainage.explain.unoise import fit_unoise, unoise_importance

    ev, fit = ctx.config.evaluate, ctx.config.explain.unoise_fit
    subjects = _unoise_fit_subjects(ctx, item)
    ages = ctx.ages()
    x_fit, y_fit = ctx.stack(subjects), np.array([ages[p] for p in subjects])
    params = fit.fit_params()
    params.update(epochs=min(fit.epochs, ev.unoise_epochs),
                  pretrain_epochs=min(fit.pretrain_epochs, 1))  # fmt: skip

    def explain_with_refit(model, volumes, **_):
        noise_model = fit_unoise(model, x_fit, y_fit, seed=ctx.config.seed, **params)
        return unoise_importance(noise_model, volumes)

    return explain_with_refit


def _sensitivity(ctx: RunContext, method: str, pids: list[str], brain: np.ndarray) -> float:
    """Mean max-sensitivity of one method on the first base model's subjects (captum)."""
    from brainage.evaluate.robustness import max_sensitivity
    from brainage.workflow.stages.predict import load_models
    from brainage.workflow.stages.train import explaining_items, load_reference, parse_model_item

    ev = ctx.config.evaluate
    items = explaining_items(ctx, pids[0])
    same = [p for p in pids if explaining_items(ctx, p) == items][: ev.sensitivity_subjects]
    params = ctx.config.explain.method_params(method)
    if _uses_reference(params):
        params["baseline"] = load_reference(ctx, parse_model_item(items[0])[0])
    model = load_models(ctx, items[:1])[0][1]
    values = max_sensitivity(
        model, ctx.stack(same), method, brain > 0, radius=ev.sensitivity_radius,
        n_samples=ev.sensitivity_samples, seed=ctx.config.seed, **params,
    )  # fmt: skip
    return float(np.mean(values))


def _change_maps(ctx: RunContext, pids: list[str]):
    """Read the explained subjects' true change maps on the model grid, or None (not simulated)."""
    if not pids or not all(("truth", p) in ctx.records for p in pids):
        return None
    recs = [ctx.record("truth", p) for p in pids]
    if not all("change" in r.outputs for r in recs):
        return None
    return _read([r.output(ctx.layout, "change") for r in recs])


def _region_truth(ctx: RunContext, stack, change, brain):
    """Region-level ground-truth scores (:mod:`brainage.evaluate.region_truth`)."""
    from brainage.atlas import load_atlas
    from brainage.evaluate.region_truth import region_truth_scores
    from brainage.space import template_grid

    atlas = load_atlas(region_truth_atlas(ctx), template_grid(ctx.layout.resolution_mm))
    scores, table = region_truth_scores(stack, change, atlas.labels, brain > 0, atlas.names)
    return scores, table.assign(atlas=atlas.name)


class EvaluateStage(Stage):
    """See the module docstring."""

    name = "evaluate"
    # 2: perturbation, reliance; 3: region truth, max-sensitivity, U-Noise refits; 4: lesion channel
    version = "4"
    requires = ("explain", "truth", "reference")

    def items(self, ctx: RunContext) -> list[str]:
        done = {i.split("/", 1)[0] for i in ctx.stage_records("explain")}
        return [m for m in ctx.config.explain.methods if m in done]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        pids = explained_subjects(ctx)
        deps = [
            ("explain", f"{item}/{p}") for p in pids if ("explain", f"{item}/{p}") in ctx.records
        ]
        deps += [("train", i) for i in sorted(ctx.stage_records("train"))]
        deps += [("truth", p) for p in pids if ("truth", p) in ctx.records]
        if item == UNOISE and ctx.config.evaluate.randomisation and pids:
            from brainage.workflow.stages.train import explaining_items

            first = explaining_items(ctx, pids[0])[0]
            deps += [("preprocess", p) for p in _unoise_fit_subjects(ctx, first)]
        uses = _uses_reference(ctx.config.explain.method_params(item))
        if uses or ctx.config.evaluate.faithfulness:
            deps += [("reference", i) for i in sorted(ctx.stage_records("reference"))]
        return deps

    def params(self, ctx: RunContext, item: str) -> dict:
        return {
            "evaluate": ctx.config.evaluate.to_dict(),
            "method_params": ctx.config.explain.method_params(item),
            "seed": ctx.config.seed,
            "region_atlas": region_truth_atlas(ctx),  # region reliance and region truth
        }

    def inputs(self, ctx: RunContext, item: str) -> dict:
        pids = explained_subjects(ctx)
        if item != UNOISE or not ctx.config.evaluate.randomisation or not pids:
            return {}
        from brainage.workflow.stages.train import explaining_items

        ages = ctx.ages()
        subjects = _unoise_fit_subjects(ctx, explaining_items(ctx, pids[0])[0])
        return {"unoise_refit": [[p, ages[p]] for p in subjects]}

    def seed(self, ctx: RunContext, item: str) -> int:
        return ctx.config.seed

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        import torch

        from brainage.evaluate import (
            METRICS,
            cascading_randomisation,
            evaluate_explanations,
            seed_agreement,
        )
        from brainage.population import normalise_maps
        from brainage.space import template_array
        from brainage.stats import lesion_relevance_test
        from brainage.stats.lesions import SUMMARY_FIELDS
        from brainage.workflow.stages.explain import relevance_stack
        from brainage.workflow.stages.predict import load_models
        from brainage.workflow.stages.train import (
            explaining_items,
            is_explainer,
            load_reference,
            parse_model_item,
        )

        method, ev, layout = item, ctx.config.evaluate, ctx.layout
        brain = template_array("mask", layout.resolution_mm)
        pids, stack = relevance_stack(ctx, method)
        outputs, values = {}, {}
        per_seed = []
        networks = [i for i in ctx.stage_records("train") if is_explainer(i)]
        for name in dict.fromkeys(parse_model_item(i)[1] for i in sorted(networks)):  # seed-<n>
            maps = _read(
                [ctx.record("explain", f"{method}/{p}").output(layout, name) for p in pids]
            )
            per_seed.append(normalise_maps(maps, brain).mean(axis=0))
        agreement = seed_agreement(per_seed, brain, ev.top_fraction) if len(per_seed) >= 2 else None
        randomisation = None
        if ev.randomisation and pids:
            # the first base model of the first subject's fold, on subjects it never saw
            items = explaining_items(ctx, pids[0])
            same = [p for p in pids if explaining_items(ctx, p) == items]
            n = min(ev.n_subjects, len(same))
            params = ctx.config.explain.method_params(method)
            if _uses_reference(params):
                params["baseline"] = load_reference(ctx, parse_model_item(items[0])[0])
            vols = torch.as_tensor(ctx.stack(same[:n]))
            model = load_models(ctx, items[:1])[0][1]
            explainer = _unoise_refit(ctx, items[0]) if method == UNOISE else method
            randomisation = cascading_randomisation(
                model, vols, explainer, ctx.config.seed, mask=brain, **params
            )
            outputs["randomisation"] = write_tsv(layout.randomisation(method), randomisation)
        masks = {}
        if pids and all(("truth", p) in ctx.records for p in pids):
            for name in TRUTH_MASKS:
                recs = [ctx.record("truth", p) for p in pids]
                if all(name in r.outputs for r in recs):
                    masks[name] = _read([r.output(layout, name) for r in recs]) > 0.5
        truths = masks.get("ageeffect")
        has_truth = truths is not None
        if has_truth:
            effects = {k: masks[k] & truths for k in TRUTH_MASKS[1:] if k in masks}
        else:
            effects, truths = {}, np.zeros(stack.shape, dtype=bool)
        row = evaluate_explanations(
            {method: stack},
            truths,
            brain,
            randomisation={method: randomisation} if randomisation is not None else None,
            seed_agreement={method: agreement} if agreement is not None else None,
            threshold=ev.threshold,
            effects=effects,
        )
        if not has_truth:
            scores = [*METRICS, "population_mass_accuracy", "population_mask_fraction"]
            row[[*scores, "population_roc_auc"]] = np.nan
        change = _change_maps(ctx, pids)
        if change is not None and region_truth_atlas(ctx):
            scores, table = _region_truth(ctx, stack, change, brain)
            for k, v in scores.items():
                row[k] = v
            outputs["region_truth"] = write_tsv(layout.region_truth(method), table)
        if ev.sensitivity and pids and method != UNOISE:
            row["max_sensitivity"] = _sensitivity(ctx, method, pids, brain)
        if ev.faithfulness and pids and method != UNOISE:
            from brainage.evaluate.faithfulness import ORDERS

            faith, curves, regions = _faithfulness(ctx, method, pids, brain)
            for k, v in faith.items():
                row[k] = v
            frame = pd.DataFrame(
                {"fraction": curves["fractions"], **{o: curves[o] for o in ORDERS}}
            )
            outputs["faithfulness"] = write_tsv(layout.faithfulness(method), frame)
            if regions is not None:
                outputs["reliance"] = write_tsv(layout.reliance(method), regions)
        outputs["xai"] = write_tsv(layout.xai_row(method), row)
        if "lesions" in masks:
            channel, lesion_maps = _lesion_channel(ctx, method, pids, stack)
            res = lesion_relevance_test(lesion_maps, masks["lesions"], brain)
            summary = {"channel": channel, **{k: res[k] for k in SUMMARY_FIELDS}}
            subjects = res["subjects"].to_dict(orient="records")
            outputs["lesions"] = write_json(
                layout.lesion_row(method), {"summary": summary, "subjects": subjects}
            )
        values["has_truth"] = bool(has_truth)
        return ItemResult(outputs, values, seed=ctx.config.seed)

    def finish(self, ctx: RunContext) -> None:
        from brainage.evaluate import write_xai_table

        layout = ctx.layout
        recs = [
            ctx.records[(self.name, m)] for m in self.items(ctx) if (self.name, m) in ctx.records
        ]
        if not recs:
            return
        rows = [read_tsv(r.output(layout, "xai")) for r in recs]
        write_xai_table(pd.concat(rows, ignore_index=True), layout.root)
        summaries, subjects = [], []
        for r in recs:
            if "lesions" not in r.outputs:
                continue
            data = json.loads(r.output(layout, "lesions").read_text())
            summaries.append({"method": r.item, **data["summary"]})
            subjects.append(pd.DataFrame(data["subjects"]).assign(method=r.item))
        if summaries:
            subj = pd.concat(subjects, ignore_index=True)
            subj = subj[["method", *[c for c in subj.columns if c != "method"]]]
            write_tsv(layout.lesion_subjects, subj)
            write_tsv(layout.lesion_table, pd.DataFrame(summaries))
