"""Stages ``subgroups`` (paper 004) and ``stability`` (rank stability of regions, METHODS §9).

``subgroups`` has one item per method: the mean normalised relevance map of each subgroup of
``population.subgroups`` (sex, age group, accelerated vs. decelerated agers, …) with its region
table in the first atlas of ``population.atlases``. ``stability`` compares region rankings, per
method across base models (seeds) and across cross-fitting folds, and (item ``all``) across
methods, with Spearman's ρ, Kendall's τ-b and the top-10 overlap of the regions' mean |relevance|
(of the normalised maps).
"""

from __future__ import annotations

import numpy as np

from brainage.io.atomic import write_json, write_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage
from brainage.workflow.stages.explain import explained_subjects, relevance_stack
from brainage.workflow.stages.predict import read_predictions

#: The ``stability`` item comparing methods.
ALL_METHODS = "all"

#: Region-table column whose ranking is compared (magnitude: signs mean different things in
#: different methods, and a region can matter by pushing the prediction either way).
STABILITY_VALUE = "mean_abs_relevance"


def _method_items(ctx: RunContext) -> list[str]:
    pids = set(explained_subjects(ctx))
    done = {i.split("/", 1)[0] for i in ctx.stage_records("explain") if i.split("/", 1)[1] in pids}
    return [m for m in ctx.config.explain.methods if m in done]


def _explain_deps(ctx: RunContext, method: str) -> list[tuple[str, str]]:
    pids = set(explained_subjects(ctx))
    return [
        ("explain", i)
        for i in sorted(ctx.stage_records("explain"))
        if i.split("/", 1)[0] == method and i.split("/", 1)[1] in pids
    ]


class _RegionMaps:
    """Normalised mean maps and their region tables on the run's grid, first atlas."""

    def __init__(self, ctx: RunContext) -> None:
        from brainage.atlas import load_atlas
        from brainage.space import template_array, template_grid

        res = ctx.layout.resolution_mm
        p = ctx.config.population
        self.mask = template_array("mask", res)
        self.grid = template_grid(res)
        self.atlas_name = p.atlases[0]
        self.atlas = load_atlas(self.atlas_name, self.grid)
        self.normalise, self.top_fraction = p.normalise, p.top_fraction

    def normalised(self, stack: np.ndarray) -> np.ndarray:
        from brainage.population import normalise_maps

        return normalise_maps(stack, self.mask, self.normalise)

    def table(self, mean_map: np.ndarray):
        from brainage.atlas import region_table

        return region_table(mean_map, self.atlas, mask=self.mask, top_fraction=self.top_fraction)


class SubgroupsStage(Stage):
    """See the module docstring."""

    name = "subgroups"
    version = "2"
    requires = ("explain", "predict")

    def items(self, ctx: RunContext) -> list[str]:
        if not ctx.config.population.subgroups or not ctx.config.population.atlases:
            return []
        return _method_items(ctx)

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return [*_explain_deps(ctx, item), ("predict", "ensemble")]

    def params(self, ctx: RunContext, item: str) -> dict:
        p = ctx.config.population
        keys = ("normalise", "top_fraction", "subgroups", "age_groups", "gap_group_fraction",
                "subgroup_min_subjects")  # fmt: skip
        return {k: getattr(p, k) for k in keys} | {"atlas": p.atlases[0]}

    def inputs(self, ctx: RunContext, item: str) -> dict:
        cols = [c for c in ctx.config.population.subgroups if c in ctx.cohort]
        cols = ["participant_id", *cols]
        return {"cohort": ctx.cohort[cols].astype(str).values.tolist()}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.io.nifti import save_nifti
        from brainage.population.subgroups import (
            AGE_GROUP,
            GAP_GROUP,
            age_adjusted,
            group_label,
            rank_stability,
            subgroup_masks,
        )

        p, layout = ctx.config.population, ctx.layout
        rm = _RegionMaps(ctx)
        pids, stack = relevance_stack(ctx, item)
        maps = rm.normalised(stack)
        pred = read_predictions(ctx)
        ages = pred["age"].reindex(pids).to_numpy(float)
        gaps = pred["brain_age_gap"].reindex(pids).to_numpy(float)
        adjusted = age_adjusted(gaps, ages)  # accelerated = ahead of others of the same age
        cohort = ctx.cohort.set_index("participant_id").reindex(pids).reset_index()
        outputs, factors, skipped = {}, {}, {}
        for factor in p.subgroups:
            if factor not in (AGE_GROUP, GAP_GROUP) and factor not in cohort:
                skipped[factor] = "not a column of this cohort"
                continue
            groups = subgroup_masks(factor, cohort, ages, adjusted, p.age_groups,
                                    p.gap_group_fraction)  # fmt: skip
            entries, tables = [], {}
            for level, members in groups.items():
                n = int(members.sum())
                entry = {"level": level, "n": n, "mean_age": _mean(ages[members]),
                         "mean_gap": _mean(gaps[members])}  # fmt: skip
                if n < p.subgroup_min_subjects:
                    entry["skipped"] = f"{n} subjects (< {p.subgroup_min_subjects})"
                    entries.append(entry)
                    continue
                label = group_label(factor, level)
                mean = maps[members].mean(axis=0).astype(np.float32)
                meta = {"space": "MNI152NLin2009aSym", "method": item, "group": factor,
                        "level": level, "n_subjects": n, "normalise": p.normalise}  # fmt: skip
                path = layout.subgroup_map(item, label)
                outputs[f"map_{label}"] = save_nifti(mean, rm.grid.affine, path, metadata=meta)
                table = rm.table(mean)
                tables[level] = table
                outputs[f"regions_{label}"] = write_tsv(
                    layout.subgroup_regions(item, label, rm.atlas_name), table
                )
                entry |= {"label": label, "top_regions": table["region"].head(5).tolist()}
                entries.append(entry)
            pairs = rank_stability(tables, factor) if len(tables) > 1 else None
            factors[factor] = {
                "groups": entries,
                "rank_agreement": [] if pairs is None else pairs.to_dict("records"),
            }
        summary = {"method": item, "atlas": rm.atlas_name, "normalise": p.normalise,
                   "gap_group": "by the age-adjusted gap (residual of gap ~ 1 + age)",
                   "n_subjects": len(pids), "factors": factors, "skipped": skipped}  # fmt: skip
        outputs["summary"] = write_json(layout.region_summary(item, "subgroups"), summary)
        return ItemResult(outputs, {"n_groups": sum(len(f["groups"]) for f in factors.values())})


def _mean(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.mean()) if len(x) else None


class StabilityStage(Stage):
    """See the module docstring."""

    name = "stability"
    version = "2"
    requires = ("explain", "predict", "regions")

    def items(self, ctx: RunContext) -> list[str]:
        if not ctx.config.population.atlases:
            return []
        methods = _method_items(ctx)
        return methods + ([ALL_METHODS] if len(methods) > 1 else [])

    def _tables(self, ctx: RunContext) -> dict:
        atlas = ctx.config.population.atlases[0]
        return {m: ("regions", f"{m}/{atlas}") for m in _method_items(ctx)}

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        if item == ALL_METHODS:
            return sorted(k for k in self._tables(ctx).values() if k in ctx.records)
        return [*_explain_deps(ctx, item), ("predict", "ensemble")]

    def params(self, ctx: RunContext, item: str) -> dict:
        p = ctx.config.population
        return {"normalise": p.normalise, "top_fraction": p.top_fraction, "atlas": p.atlases[0]}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        import pandas as pd

        from brainage.population.subgroups import rank_stability, ranks_long

        layout = ctx.layout
        if item == ALL_METHODS:
            tables = {
                m: pd.read_csv(ctx.record(*k).output(layout, "regions"), sep="\t")
                for m, k in self._tables(ctx).items()
                if k in ctx.records
            }
            conditions = {"method": tables}
        else:
            conditions = self._conditions(ctx, item)
        # how much a region is looked at, whatever the sign (methods differ in what sign means)
        value = STABILITY_VALUE
        pairs = [rank_stability(t, f, value) for f, t in conditions.items() if len(t) > 1]
        ranks = [ranks_long(t, f, value) for f, t in conditions.items() if len(t) > 1]
        cols = ["factor", "a", "b", "n_regions", "spearman", "kendall", "top10_overlap"]
        stability = pd.concat(pairs, ignore_index=True) if pairs else pd.DataFrame(columns=cols)
        long = (
            pd.concat(ranks, ignore_index=True)
            if ranks
            else pd.DataFrame(columns=["factor", "condition", "region", "rank"])
        )
        outputs = {
            "stability": write_tsv(layout.region_summary(item, "stability"), stability),
            "ranks": write_tsv(layout.region_summary(item, "ranks"), long),
        }
        means = stability.groupby("factor")["spearman"].mean().to_dict() if len(stability) else {}
        return ItemResult(outputs, {f"mean_spearman_{f}": float(v) for f, v in means.items()})

    def _conditions(self, ctx: RunContext, method: str) -> dict:
        """Region tables per base model (seed) and per cross-fitting fold of one method."""
        rm = _RegionMaps(ctx)
        recs = ctx.stage_records("explain")
        pids = set(explained_subjects(ctx))
        names = sorted(
            {n for i, r in recs.items() if i.split("/", 1)[0] == method
             and i.split("/", 1)[1] in pids for n in r.outputs if n != "ensemble"}
        )  # fmt: skip
        models = {}
        for name in names:
            _, stack = relevance_stack(ctx, method, model=name)
            models[name] = rm.table(rm.normalised(stack).mean(axis=0))
        pids_all, stack = relevance_stack(ctx, method)
        maps = rm.normalised(stack)
        pred = read_predictions(ctx)
        folds = {}
        if "fold" in pred:
            fold = pred["fold"].reindex(pids_all).to_numpy(float)
            for k in sorted(np.unique(fold[np.isfinite(fold)])):
                members = fold == k
                if members.sum() >= 3:
                    folds[f"fold-{int(k)}"] = rm.table(maps[members].mean(axis=0))
        return {"model": models, "fold": folds}
