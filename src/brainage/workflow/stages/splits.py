"""Stage ``splits``: assign every subject to its folds and splits before any work.

The split is drawn from the cohort (ages), so a subject that fails later keeps everyone else's
split. Keyed by the participant ids, the ages, the ``split`` section and the seed; writes
``splits.tsv`` and ``cohort.tsv`` (with the image paths). With cross-fitting (``kfold``)
``splits.tsv`` has ``participant_id, age, split, fold`` and one column ``fold-<k>`` per outer fold
with the subject's role there (``train``, ``validation``, ``test``, ``predict``); every subject
with age has split ``test`` (out-of-fold). With ``holdout`` it has ``participant_id, age, split``.
"""

from __future__ import annotations

import pandas as pd

from brainage.data.splits import fold_column, make_folds, make_splits
from brainage.io.atomic import write_tsv
from brainage.io.scans import EXTRA_MODALITIES, modality_column, read_tsv
from brainage.workflow.stage import ItemResult, RunContext, Stage

#: Columns of ``cohort.tsv`` (those the cohort has).
COHORT_COLUMNS = (
    "participant_id", "age", "sex", "site", "split", "fold", "t1w",
    *(modality_column(m) for m in EXTRA_MODALITIES),  # further images: a rerun reads them here
)  # fmt: skip


class SplitsStage(Stage):
    """See the module docstring."""

    name = "splits"
    version = "1"

    def items(self, ctx: RunContext) -> list[str]:
        return ["cohort"]

    def params(self, ctx: RunContext, item: str) -> dict:
        if ctx.mode == "apply":
            return {"mode": "apply"}
        return {"split": ctx.config.split.to_dict(), "seed": ctx.config.split_seed}

    def inputs(self, ctx: RunContext, item: str) -> dict:
        cols = [c for c in ("participant_id", "age") if c in ctx.cohort]
        return {"cohort": ctx.cohort[cols].astype(str).values.tolist()}

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return ctx.config.split_seed

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        table = ctx.cohort[["participant_id", "age"]].copy()
        sp = ctx.config.split
        if ctx.mode == "apply":
            table["split"] = "predict"
        elif sp.scheme == "kfold":
            folds = make_folds(table, sp.n_folds, sp.validation_fraction, ctx.config.split_seed)
            table = pd.concat([table.reset_index(drop=True), folds.reset_index(drop=True)], axis=1)
        else:
            table["split"] = make_splits(
                table, sp.test_fraction, sp.validation_fraction, ctx.config.split_seed
            ).to_numpy()
        splits = ctx.layout.file("splits.tsv")
        write_tsv(splits, table)
        return ItemResult({"splits": splits}, seed=self.seed(ctx, item))

    def finish(self, ctx: RunContext) -> None:
        rec = ctx.record(self.name, "cohort")
        splits = read_tsv(rec.output(ctx.layout, "splits"))
        pids = splits["participant_id"]
        ctx.cohort["split"] = ctx.cohort["participant_id"].map(
            dict(zip(pids, splits["split"], strict=True))
        )
        ctx.roles = {}
        if "fold" in splits:
            ctx.cohort["fold"] = ctx.cohort["participant_id"].map(
                dict(zip(pids, splits["fold"].astype(int), strict=True))
            )
            k = 1
            while fold_column(k) in splits:
                ctx.roles[k] = dict(zip(pids, splits[fold_column(k)], strict=True))
                k += 1
        table = ctx.cohort  # the cohort as read now (image paths), with its splits
        write_tsv(ctx.layout.file("cohort.tsv"), table[[c for c in COHORT_COLUMNS if c in table]])
