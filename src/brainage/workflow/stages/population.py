"""Stages ``population``, ``regions`` and ``native_regions`` (METHODS §9).

Population maps have one item per method, atlas region tables one per method × atlas, tables of
per-subject native label maps (DLMUSE) one per method × label-map dataset.
"""

from __future__ import annotations

import numpy as np

from brainage.io.atomic import write_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.explain import explained_subjects, relevance_stack
from brainage.workflow.stages.preprocess import PreprocessStage


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

    def finish(self, ctx: RunContext) -> None:
        """Agreement across methods: Spearman of their region tables, per atlas (issue 11)."""
        import pandas as pd

        from brainage.evaluate.robustness import method_agreement
        from brainage.io.scans import read_tsv

        frames = []
        for atlas in ctx.config.population.atlases:
            tables = {}
            for item in self.items(ctx):
                method, name = item.split("/", 1)
                if name == atlas and (self.name, item) in ctx.records:
                    record = ctx.record(self.name, item)
                    tables[method] = read_tsv(record.output(ctx.layout, "regions"))
            if len(tables) >= 2:
                frames.append(method_agreement(tables).assign(atlas=atlas))
        if frames:
            write_tsv(ctx.layout.method_agreement(), pd.concat(frames, ignore_index=True))


class NativeRegionsStage(Stage):
    """Regions of each subject's own native label map (e.g. DLMUSE), per method (METHODS §9).

    Active when the BIDS dataset has a derivatives dataset of native-space ``dseg`` label maps
    (``population.label_maps``). Each explained subject's template-space map is warped onto its
    label map with the saved inverse transform (:mod:`brainage.population.native`); a subject
    whose label map does not cover its T1w is left out with the reason in the record.
    """

    name = "native_regions"
    version = "1"
    requires = ("explain", "preprocess")

    def _label_maps(self, ctx: RunContext):
        from pathlib import Path

        from brainage.population.native import find_label_maps

        choice = ctx.config.population.label_maps
        if choice is None or not ctx.source or not Path(ctx.source).is_dir():
            return None
        name = None if choice == "auto" else choice
        return find_label_maps(ctx.source, ctx.ok_subjects(), name=name, check_space=False)

    def items(self, ctx: RunContext) -> list[str]:
        maps = self._label_maps(ctx)
        if maps is None:
            return []
        return [f"{m}/{maps.name}" for m in PopulationStage().items(ctx)]

    def _subjects(self, ctx: RunContext, maps) -> list[str]:
        return [p for p in explained_subjects(ctx) if p in maps.paths]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        maps = self._label_maps(ctx)
        method = item.split("/", 1)[0]
        pids = set(self._subjects(ctx, maps))
        deps = [("explain", f"{method}/{p}") for p in sorted(pids)]
        return [d for d in deps if d in ctx.records] + [("preprocess", p) for p in sorted(pids)]

    def inputs(self, ctx: RunContext, item: str) -> dict:
        from brainage.utils import file_hash

        maps = self._label_maps(ctx)
        files = {p: file_hash(maps.paths[p]) for p in self._subjects(ctx, maps)}
        return {"label_maps": files, "dseg_tsv": file_hash(maps.root / "dseg.tsv")}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        import pandas as pd

        from brainage.errors import InputError
        from brainage.population.native import (
            check_scanner_space,
            native_region_table,
            native_region_values,
        )
        from brainage.workflow.progress import StageProgress

        method, name = item.split("/", 1)
        maps = self._label_maps(ctx)
        layout = ctx.layout
        per_subject, skipped = {}, {}
        pids = self._subjects(ctx, maps)
        bar = StageProgress(f"native regions {item}", len(pids), ctx.progress)
        try:
            for pid in pids:
                prep = ctx.record("preprocess", pid)
                row = {"participant_id": pid,
                       "inverse_xfm": str(prep.output(layout, "inverse_xfm"))}  # fmt: skip
                relevance = ctx.record("explain", f"{method}/{pid}").output(layout, "ensemble")
                try:
                    check_scanner_space(maps.paths[pid], PreprocessStage._t1w(ctx, pid), pid)
                    per_subject[pid] = native_region_values(
                        relevance, row, maps.paths[pid], maps.names
                    )
                except InputError as err:
                    skipped[pid] = str(err)
                bar.advance(1)
        finally:
            bar.close()
        outputs = {}
        if per_subject:
            table = native_region_table(per_subject)
            outputs["regions"] = write_tsv(layout.regions(method, f"{name}native"), table)
            long = pd.concat(
                [t.assign(participant_id=p) for p, t in per_subject.items()], ignore_index=True
            )
            path = layout.region_summary(method, f"atlas-{name}native_subjects")
            outputs["subjects"] = write_tsv(path, long)
        return ItemResult(outputs, {"n_subjects": len(per_subject), "skipped": skipped})
