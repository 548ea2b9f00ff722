"""Stage ``stats``: voxelwise permutation tests with TFCE on relevance maps (paper 001, §10).

One item per (method, analysis) of ``stats.methods`` × ``stats.analyses`` (see
:mod:`brainage.stats.maps`): a Freedman–Lane permutation test (sign flips for the one-sample
test; within cross-fitting folds by default), exact TFCE, FWE from the maximum over the brain and
both tails (:func:`brainage.stats.permutation_test`). Each item writes the t, TFCE and p maps in
template space, a cluster table labelled with an atlas and a summary; an analysis the cohort
cannot support writes only its summary, saying why.
"""

from __future__ import annotations

import numpy as np

from brainage.io.atomic import write_json, write_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.explain import explained_subjects, relevance_stack


class StatsStage(Stage):
    """See the module docstring."""

    name = "stats"
    version = "1"
    requires = ("explain", "predict")

    def items(self, ctx: RunContext) -> list[str]:
        done = {i.split("/", 1)[0] for i in ctx.stage_records("explain")}
        methods = [m for m in ctx.config.stats_methods if m in done]
        return [f"{m}/{a}" for m in methods for a in ctx.config.stats.analyses]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        method = item.split("/", 1)[0]
        pids = set(explained_subjects(ctx))
        deps = [
            ("explain", i)
            for i in sorted(ctx.stage_records("explain"))
            if i.split("/", 1)[0] == method and i.split("/", 1)[1] in pids
        ]
        return [*deps, ("predict", "ensemble")]

    def params(self, ctx: RunContext, item: str) -> dict:
        # the item names its method: adding a method to stats.methods reruns no other item
        return ctx.config.stats.to_dict() | {"methods": None}

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return ctx.config.seed

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        import os

        import pandas as pd

        from brainage.atlas import load_atlas
        from brainage.io.nifti import save_nifti
        from brainage.space import template_array, template_grid
        from brainage.stats.maps import analysis_design, cluster_table
        from brainage.stats.permutation import permutation_test
        from brainage.workflow.progress import StageProgress

        method, analysis = item.split("/", 1)
        cfg, layout = ctx.config.stats, ctx.layout
        res = layout.resolution_mm
        mask = template_array("mask", res)
        grid = template_grid(res)
        pids, maps = relevance_stack(ctx, method)
        pred = pd.read_csv(
            ctx.record("predict", "ensemble").output(layout, "predictions"), sep="\t"
        ).set_index("participant_id")
        ages = pred["age"].reindex(pids).to_numpy(float)
        gaps = pred["brain_age_gap"].reindex(pids).to_numpy(float)
        folds = None
        if cfg.blocks == "fold" and "fold" in pred:
            folds = pred["fold"].reindex(pids).fillna(0).to_numpy(int)
        a = analysis_design(analysis, maps, mask, pids, ages, gaps, folds,
                            cfg.young_max, cfg.old_min, cfg.gap_min_age)  # fmt: skip
        summary = {"method": method, "analysis": analysis, "description": a.description}
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
