"""Stage ``preprocess``: one item per subject (METHODS §2), run on the executor.

Keyed by the bytes of the T1w image (and of each further image of ``preprocess.modalities``,
brought onto the T1w's grid: :mod:`brainage.preprocess.modalities`) and the ``preprocess``
section; a subject that fails is listed in ``failures.tsv`` and the others go on (``run.strict``
stops at the first). Writes ``qc.tsv`` and ``failures.tsv`` from the records. Outputs:
``OUT/sub-<id>/anat`` (BIDS derivatives, see :mod:`brainage.preprocess.pipeline`).
"""

from __future__ import annotations

import pandas as pd

from brainage.errors import InputError
from brainage.io.atomic import write_tsv
from brainage.io.cohort import failures_frame
from brainage.io.scans import modality_column
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
        return ctx.config.preprocess.key_dict()

    def inputs(self, ctx: RunContext, item: str) -> dict:
        images = {"t1w": self._t1w(ctx, item)}
        images.update(
            (modality_column(m), self._image(ctx, item, m))
            for m in ctx.config.preprocess.extra_modalities
        )
        out = {}
        for column, path in images.items():
            try:
                out[column] = file_hash(path, length=32)
            except OSError:
                out[column] = f"missing:{path}"
        return out

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return ctx.config.preprocess.seed

    @staticmethod
    def _t1w(ctx: RunContext, pid: str) -> str:
        row = ctx.cohort.loc[ctx.cohort["participant_id"] == pid]
        return str(row["t1w"].iloc[0])

    @staticmethod
    def _image(ctx: RunContext, pid: str, modality: str) -> str:
        """Path of a further modality's image of ``pid``; ``""`` when the cohort has none."""
        column = modality_column(modality)
        if column not in ctx.cohort.columns:
            return ""
        value = ctx.cohort.loc[ctx.cohort["participant_id"] == pid, column].iloc[0]
        return "" if not isinstance(value, str) else value

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.io.derivatives import bids_uri
        from brainage.preprocess import preprocess_subject

        t1w = self._t1w(ctx, item)
        extra = {}
        for m in ctx.config.preprocess.extra_modalities:
            image = self._image(ctx, item, m)
            extra[m] = (image, bids_uri(image, ctx.raw_root) if image else None)
        row = preprocess_subject(
            item, t1w, ctx.layout.root, ctx.config.preprocess, ctx.native_cache,
            source_uri=bids_uri(t1w, ctx.raw_root), extra=extra,
        )  # fmt: skip
        files = {k: row[k] for k in ("preproc", "mask", "xfm", "inverse_xfm", "qc_png")}
        for m in extra:
            files.update({f"preproc_{m}": row[f"preproc_{m}"], f"xfm_{m}": row[f"xfm_{m}"]})
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
