"""Stages ``population`` and ``regions`` (METHODS §9).

Population maps have one item per method, atlas region tables one per method × atlas.
"""

from __future__ import annotations

import numpy as np

from brainage.io.atomic import write_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.explain import explained_subjects, relevance_stack


class PopulationStage(Stage):
    """Mean and top-fraction relevance maps of the explained subjects, per method."""

    name = "population"
    version = "1"
    requires = ("explain",)

    def items(self, ctx: RunContext) -> list[str]:
        pids = set(explained_subjects(ctx))
        done = {
            i.split("/", 1)[0] for i in ctx.stage_records("explain") if i.split("/", 1)[1] in pids
        }
        return [m for m in ctx.config.explain.methods if m in done]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        pids = set(explained_subjects(ctx))
        return [
            ("explain", i)
            for i in sorted(ctx.stage_records("explain"))
            if i.split("/", 1)[0] == item and i.split("/", 1)[1] in pids
        ]

    def params(self, ctx: RunContext, item: str) -> dict:
        p = ctx.config.population
        return {"normalise": p.normalise, "top_fraction": p.top_fraction, "sigma_vox": p.sigma_vox}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.population import write_population_maps
        from brainage.space import template_array, template_grid

        res = ctx.layout.resolution_mm
        p = ctx.config.population
        _, stack = relevance_stack(ctx, item)
        written = write_population_maps(
            stack,
            template_array("mask", res),
            template_grid(res),
            ctx.layout.root,
            item,
            normalise=p.normalise,
            fraction=p.top_fraction,
            sigma_vox=p.sigma_vox,
        )
        return ItemResult(dict(written), {"n_subjects": int(stack.shape[0])})


class RegionsStage(Stage):
    """Atlas regions ranked by the mean relevance of a method's population map."""

    name = "regions"
    version = "1"
    requires = ("population",)

    def items(self, ctx: RunContext) -> list[str]:
        methods = sorted(ctx.stage_records("population"))
        methods = [m for m in ctx.config.explain.methods if m in methods]
        return [f"{m}/{a}" for m in methods for a in ctx.config.population.atlases]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return [("population", item.split("/", 1)[0])]

    def params(self, ctx: RunContext, item: str) -> dict:
        return {"atlas": item.split("/", 1)[1], "top_fraction": ctx.config.population.top_fraction}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        import nibabel as nib

        from brainage.atlas import load_atlas, region_table
        from brainage.space import template_array, template_grid

        method, atlas = item.split("/", 1)
        res = ctx.layout.resolution_mm
        mean = ctx.record("population", method).output(ctx.layout, "mean")
        mean_map = np.asarray(nib.load(str(mean)).dataobj, dtype=np.float32)
        table = region_table(
            mean_map,
            load_atlas(atlas, template_grid(res)),
            mask=template_array("mask", res),
            top_fraction=ctx.config.population.top_fraction,
        )
        path = write_tsv(ctx.layout.regions(method, atlas), table)
        return ItemResult({"regions": path})
