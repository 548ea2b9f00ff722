"""Stage ``report``: the HTML report, from what the other stages wrote (it computes nothing)."""

from __future__ import annotations

from brainage.workflow.stage import ItemResult, RunContext, Stage

#: Stages whose results the report shows.
REPORTED = (
    "preprocess", "splits", "predict", "population", "regions", "evaluate", "stats", "train",
    "native_regions", "subgroups", "stability",
)  # fmt: skip


class ReportStage(Stage):
    """See the module docstring."""

    name = "report"
    version = "3.robustness"  # 3: region-level truth, max-sensitivity, method agreement
    requires = ("predict", "population", "regions", "evaluate", "stats", "native_regions",
                "subgroups", "stability", "phases")  # fmt: skip

    def items(self, ctx: RunContext) -> list[str]:
        return ["report"]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return sorted(k for k in ctx.records if k[0] in REPORTED)

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.report import write_report

        run = ctx.config.run
        n_jobs = run.n_jobs if run.backend != "serial" else 1
        return ItemResult({"report": write_report(ctx.layout.root, n_jobs=n_jobs)})
