"""Stage ``preprocess``: one item per subject (METHODS §2), run on the executor.

Keyed by the bytes of the T1w image and the ``preprocess`` section; a subject that fails is listed
in ``failures.tsv`` and the others go on (``run.strict`` stops at the first). Writes
``qc.tsv`` and ``failures.tsv`` from the records. Outputs: ``OUT/sub-<id>/anat`` (BIDS
derivatives, see :mod:`brainage.preprocess.pipeline`).
"""

from __future__ import annotations

import pandas as pd

from brainage.errors import InputError
from brainage.io.atomic import write_tsv
from brainage.io.cohort import failures_frame
from brainage.preprocess.pipeline import PREPROC_VERSION  # a new version redoes every subject
from brainage.utils import file_hash
from brainage.workflow.stage import ItemResult, RunContext, Stage


class PreprocessStage(Stage):
    """See the module docstring."""

    name = "preprocess"
    version = f"{PREPROC_VERSION}.bids"  # .bids: outputs in OUT/sub-<id>/anat, BIDS sidecars
    parallel = True
    tolerate = (InputError,)

    def items(self, ctx: RunContext) -> list[str]:
        return ctx.ok_subjects()

    def params(self, ctx: RunContext, item: str) -> dict:
        return ctx.config.preprocess.to_dict()

    def inputs(self, ctx: RunContext, item: str) -> dict:
        t1w = self._t1w(ctx, item)
        try:
            return {"t1w": file_hash(t1w, length=32)}
        except OSError:
            return {"t1w": f"missing:{t1w}"}

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return ctx.config.preprocess.seed

    @staticmethod
    def _t1w(ctx: RunContext, pid: str) -> str:
        row = ctx.cohort.loc[ctx.cohort["participant_id"] == pid]
        return str(row["t1w"].iloc[0])

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.io.derivatives import bids_uri
        from brainage.preprocess import preprocess_subject

        t1w = self._t1w(ctx, item)
        row = preprocess_subject(
            item, t1w, ctx.layout.root, ctx.config.preprocess, ctx.native_cache,
            source_uri=bids_uri(t1w, ctx.raw_root),
        )  # fmt: skip
        files = {k: row[k] for k in ("preproc", "mask", "xfm", "inverse_xfm", "qc_png")}
        return ItemResult(
            files,
            {"reg_quality": row["reg_quality"], "seconds": row["seconds"]},
            seed=self.seed(ctx, item),
        )

    def finish(self, ctx: RunContext) -> None:
        layout = ctx.layout
        rows = []
        for pid in ctx.ok_subjects():
            rec = ctx.records.get((self.name, pid))
            if rec is None:
                continue
            rows.append(
                {
                    "participant_id": pid,
                    "reg_quality": rec.values.get("reg_quality"),
                    "qc_png": rec.outputs["qc_png"],
                    "preproc": rec.outputs["preproc"],
                    "mask": rec.outputs["mask"],
                }
            )
        cols = ["participant_id", "reg_quality", "qc_png", "preproc", "mask"]
        write_tsv(layout.qc_table, pd.DataFrame(rows, columns=cols))
        write_failures(ctx)


def write_failures(ctx: RunContext) -> None:
    """Write ``failures.tsv``: every subject that failed, the stage, the file and the error."""
    frames = []
    for stage in dict.fromkeys(ctx.failure_stage.values()):
        errs = [e for p, e in ctx.failures.items() if ctx.failure_stage.get(p) == stage]
        frames.append(failures_frame(errs, stage))
    frame = pd.concat(frames, ignore_index=True) if frames else failures_frame([], "cohort")
    write_tsv(ctx.layout.file("failures.tsv"), frame)
