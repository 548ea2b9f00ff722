"""Stage ``stats``: TFCE permutation tests on relevance maps; the gap against covariates (§10).

One item per (method, test) of ``stats.methods`` × (``stats.analyses`` + ``stats.contrasts``)
(see :mod:`brainage.stats.maps`): a Freedman–Lane permutation test (sign flips for the one-sample
test; within cross-fitting folds by default), exact TFCE, FWE from the maximum over the brain and
both tails (:func:`brainage.stats.permutation_test`). Each item writes the t, TFCE and p maps in
template space, a cluster table labelled with an atlas and a summary; an analysis the cohort
cannot support writes only its summary, saying why. Item ``covariates`` relates the out-of-fold
brain-age gap to the cohort's covariates (:mod:`brainage.stats.gap`).
"""

from __future__ import annotations

import numpy as np

from brainage.io.atomic import write_json, write_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.explain import explained_subjects, relevance_stack
from brainage.workflow.stages.predict import read_predictions

#: The item relating the brain-age gap to covariates.
COVARIATES = "covariates"


class StatsStage(Stage):
    """See the module docstring."""

    name = "stats"
    version = "3"
    requires = ("explain", "predict")

    def items(self, ctx: RunContext) -> list[str]:
        done = {i.split("/", 1)[0] for i in ctx.stage_records("explain")}
        methods = [m for m in ctx.config.stats_methods if m in done]
        return [COVARIATES] + [f"{m}/{a}" for m in methods for a in ctx.config.stats.tests()]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        if item == COVARIATES:
            return [("predict", "ensemble")]
        method = item.split("/", 1)[0]
        pids = set(explained_subjects(ctx))
        deps = [
            ("explain", i)
            for i in sorted(ctx.stage_records("explain"))
            if i.split("/", 1)[0] == method and i.split("/", 1)[1] in pids
        ]
        return [*deps, ("predict", "ensemble")]

    def params(self, ctx: RunContext, item: str) -> dict:
        cfg = ctx.config.stats
        if item == COVARIATES:
            keys = ("covariates", "window_width", "window_step", "window_min_subjects", "alpha")
            return {k: getattr(cfg, k) for k in keys}
        # the item names its method and test: adding one reruns no other item
        test = item.split("/", 1)[1]
        contrast = cfg.contrast(test)
        gap_only = ("covariates", "window_width", "window_step", "window_min_subjects")
        keep = {k: v for k, v in cfg.to_dict().items() if k not in gap_only}
        keep |= {"methods": None, "analyses": None, "contrasts": None}
        return keep | {"contrast": contrast.to_dict() if contrast else None}

    def inputs(self, ctx: RunContext, item: str) -> dict:
        # the cohort columns a test or the covariate tables read (ages come with predict)
        cols = self._columns(ctx, item)
        cols = ["participant_id", *(c for c in cols if c in ctx.cohort)]
        return {"cohort": ctx.cohort[cols].astype(str).values.tolist(), "columns": cols}

    def _columns(self, ctx: RunContext, item: str) -> list[str]:
        cfg = ctx.config.stats
        if item == COVARIATES:
            if cfg.covariates is not None:
                return list(cfg.covariates)
            from brainage.stats.gap import RESERVED

            return [c for c in ctx.cohort.columns if c not in RESERVED]
        contrast = cfg.contrast(item.split("/", 1)[1])
        if contrast is None:
            return []
        return [contrast.column, *(c for c in contrast.covariates if c not in ("age", "age2"))]

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return ctx.config.seed

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        if item == COVARIATES:
            return self._covariates(ctx)
        return self._voxelwise(ctx, item)

    def _covariates(self, ctx: RunContext) -> ItemResult:
        from brainage.stats.gap import (
            gap_covariates,
            gap_linear_models,
            sliding_window_correlations,
        )

        cfg, layout = ctx.config.stats, ctx.layout
        pred = read_predictions(ctx)
        pred = pred[pred["age"].notna() & pred["brain_age_gap"].notna()]
        cohort = ctx.cohort.set_index("participant_id").reindex(pred.index)
        values, codings = gap_covariates(
            cohort.reset_index(), cfg.covariates if cfg.covariates is not None else None
        )
        ages, gaps = pred["age"].to_numpy(float), pred["brain_age_gap"].to_numpy(float)
        windows = sliding_window_correlations(ages, gaps, values, codings, cfg.window_width,
                                              cfg.window_step, cfg.window_min_subjects,
                                              cfg.alpha)  # fmt: skip
        models = gap_linear_models(ages, gaps, values, codings)
        outputs = {
            "windows": write_tsv(layout.stats_gap("windows"), windows),
            "models": write_tsv(layout.stats_gap("models"), models),
        }
        summary = {
            "n_subjects": len(pred),
            "covariates": codings,
            "n_windows": int(windows["p"].notna().sum()),
            "n_significant_windows": int(windows["significant"].sum()),
            "window_width": cfg.window_width,
            "window_step": cfg.window_step,
            "alpha": cfg.alpha,
            "gap": "brain_age_gap (bias-corrected, out of fold)",
        }
        outputs["summary"] = write_json(layout.stats_gap("summary"), summary)
        values_out = {k: summary[k] for k in ("n_subjects", "n_windows", "n_significant_windows")}
        return ItemResult(outputs, values_out)

    def _voxelwise(self, ctx: RunContext, item: str) -> ItemResult:
        import os

        from brainage.atlas import load_atlas
        from brainage.io.nifti import save_nifti
        from brainage.space import template_array, template_grid
        from brainage.stats.maps import (
            analysis_design,
            cluster_table,
            contrast_design,
            peak_table,
        )
        from brainage.stats.permutation import permutation_test
        from brainage.workflow.progress import StageProgress

        method, analysis = item.split("/", 1)
        cfg, layout = ctx.config.stats, ctx.layout
        res = layout.resolution_mm
        mask = template_array("mask", res)
        grid = template_grid(res)
        pids, maps = relevance_stack(ctx, method)
        pred = read_predictions(ctx)
        ages = pred["age"].reindex(pids).to_numpy(float)
        gaps = pred["brain_age_gap"].reindex(pids).to_numpy(float)
        folds = None
        if cfg.blocks == "fold" and "fold" in pred:
            folds = pred["fold"].reindex(pids).fillna(0).to_numpy(int)
        contrast = cfg.contrast(analysis)
        if contrast is not None:
            cohort = ctx.cohort.set_index("participant_id").reindex(pids).reset_index()
            a = contrast_design(contrast, maps, mask, pids, cohort, ages, folds, cfg.signed)
        else:
            a = analysis_design(analysis, maps, mask, pids, ages, gaps, folds, cfg.young_max,
                                cfg.old_min, cfg.gap_min_age, signed=cfg.signed)  # fmt: skip
        summary = {"method": method, "analysis": analysis, "description": a.description,
                   "signed": cfg.signed if analysis != "one_sample" else None}  # fmt: skip
        outputs = {"summary": layout.stats_table(method, analysis, "summary")}
        if a.skipped:
            summary["skipped"] = a.skipped
            write_json(outputs["summary"], summary)
            return ItemResult(outputs, {"skipped": a.skipped})
        bar = StageProgress(f"stats {item}", cfg.n_perm + 1, ctx.progress)
        state = {"done": 0}

        def tick(done, total):
            bar.advance(done - state["done"])
            state["done"] = done

        try:
            result = permutation_test(
                a.data, a.design, a.contrast, cfg.n_perm, two_sided=a.two_sided, blocks=a.blocks,
                mask=mask, tfce=True,
                tfce_e=cfg.tfce_e, tfce_h=cfg.tfce_h, connectivity=cfg.connectivity,
                seed=ctx.config.seed, n_jobs=max(1, os.cpu_count() or 1), progress=tick,
            )  # fmt: skip
        finally:
            bar.close()
        vols = {}
        for stat, values, fill in (
            ("t", result.stat, 0.0),
            ("tfce", result.tfce, 0.0),
            ("pfwe", result.p_tfce_fwe, 1.0),
            ("puncorr", result.p_tfce_uncorrected, 1.0),
        ):
            vol = np.full(mask.shape, fill, np.float32)
            vol[mask] = values
            vols[stat] = vol
            meta = {"space": "MNI152NLin2009aSym", "statistic": stat, "analysis": analysis,
                    "method": method, **result.info}  # fmt: skip
            outputs[stat] = save_nifti(vol, grid.affine, layout.stats_map(method, analysis, stat),
                                       metadata=meta)  # fmt: skip
        atlas = load_atlas(cfg.atlas, grid)
        clusters = cluster_table(vols["t"], vols["tfce"], vols["pfwe"], grid.affine, atlas,
                                 cfg.alpha, cfg.connectivity)  # fmt: skip
        outputs["clusters"] = write_tsv(layout.stats_table(method, analysis), clusters)
        peaks = peak_table(vols["t"], vols["pfwe"], grid.affine, atlas, cfg.alpha)
        outputs["peaks"] = write_tsv(layout.stats_table(method, analysis, "peaks"), peaks)
        sig = result.p_tfce_fwe <= cfg.alpha
        summary.update(
            n_subjects=len(a.subjects),
            n_voxels=int(mask.sum()),
            n_significant=int(sig.sum()),
            n_significant_positive=int((sig & (result.stat > 0)).sum()),
            n_significant_negative=int((sig & (result.stat < 0)).sum()),
            n_clusters=len(clusters),
            min_p_fwe=float(result.p_tfce_fwe.min()),
            alpha=cfg.alpha,
            atlas=cfg.atlas,
            **result.info,
        )
        write_json(outputs["summary"], summary)
        values = {k: summary[k] for k in ("n_subjects", "n_significant", "n_clusters")}
        return ItemResult(outputs, values, seed=ctx.config.seed)
