"""Stages ``train`` (one base model per seed, METHODS §3) and ``reference`` (mean training image).

A base model is keyed by the ``train`` section, its seed, and the participant ids, ages, splits
and preprocessing keys of its training and validation subjects — not by any test subject, so
changing a test scan or a test age retrains nothing. Training checkpoints every epoch into
``OUT/work/checkpoints`` (named by the item's key), so a killed run resumes mid-training, and a
checkpoint of other inputs is never resumed.
"""

from __future__ import annotations

import numpy as np

from brainage.io.nifti import save_nifti
from brainage.workflow.stage import ItemResult, RunContext, Stage


def _subject_inputs(ctx: RunContext, pids) -> list:
    ages, split = ctx.ages(), ctx.split_of()
    return [[p, ages[p], split[p]] for p in pids]


class TrainStage(Stage):
    """See the module docstring."""

    name = "train"
    version = "1"
    requires = ("splits", "preprocess", "volumes")

    def items(self, ctx: RunContext) -> list[str]:
        return [f"seed-{s}" for s in ctx.config.seeds]

    def _subjects(self, ctx: RunContext) -> list[str]:
        return ctx.subjects_in("train", "validation")

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return [("preprocess", p) for p in self._subjects(ctx)]

    def params(self, ctx: RunContext, item: str) -> dict:
        return ctx.config.train.to_dict()

    def inputs(self, ctx: RunContext, item: str) -> dict:
        return {"subjects": _subject_inputs(ctx, self._subjects(ctx))}

    def seed(self, ctx: RunContext, item: str) -> int:
        return int(item.split("-", 1)[1])

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.errors import InputError
        from brainage.train import train_model
        from brainage.workflow.progress import StageProgress

        seed = self.seed(ctx, item)
        tr, va = ctx.subjects_in("train"), ctx.subjects_in("validation")
        if len(tr) < 2 or not va:
            raise InputError(
                f"training needs ≥ 2 training and ≥ 1 validation subjects; got {len(tr)} and "
                f"{len(va)} (after {len(ctx.failures)} failure(s))",
                "add subjects with age, or see failures.tsv",
            )
        ages = ctx.ages()
        cfg = ctx.config.train
        folder = ctx.layout.model_dir(seed)
        for name in ("model.json", "model.pt", "training_log.tsv"):
            (folder / name).unlink(missing_ok=True)  # outputs of other inputs go first
        ckpt_dir = ctx.layout.work / "checkpoints"
        ckpt = ckpt_dir / f"{item}_{key[:16]}.pt"
        bar = StageProgress(f"train {item}", cfg.epochs, ctx.progress)

        def tick(epoch, total, val_mae):
            bar.advance(1, status=f"val MAE {val_mae:.2f} y")

        try:
            train_model(
                ctx.stack(tr),
                np.array([ages[p] for p in tr]),
                ctx.stack(va),
                np.array([ages[p] for p in va]),
                cfg,
                seed,
                folder,
                progress=tick,
                checkpoint=ckpt,
            )
        finally:
            bar.close()
        for stale in ckpt_dir.glob(f"{item}_*.pt"):
            stale.unlink(missing_ok=True)
        outputs = {n: folder / n for n in ("model.pt", "model.json", "training_log.tsv")}
        return ItemResult(outputs, seed=seed)


class ReferenceStage(Stage):
    """The mean training image on the model grid: the reference brain of IG and occlusion."""

    name = "reference"
    version = "1"
    requires = ("splits", "preprocess", "volumes")

    def items(self, ctx: RunContext) -> list[str]:
        return ["trainingmean"]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return [("preprocess", p) for p in ctx.subjects_in("train")]

    def inputs(self, ctx: RunContext, item: str) -> dict:
        return {"subjects": ctx.subjects_in("train")}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.errors import InputError
        from brainage.space import template_grid

        pids = ctx.subjects_in("train")
        if not pids:
            raise InputError("the mean training image needs training subjects; this run has none")
        x, rows = ctx.volumes()
        idx = np.array([rows[p] for p in pids])
        total = np.zeros(x.shape[1:], np.float64)
        for start in range(0, idx.size, 32):  # bounded memory on the memory-mapped stack
            total += np.asarray(x[idx[start : start + 32]], np.float64).sum(axis=0)
        mean = (total / idx.size).astype(np.float32)
        path = ctx.layout.reference
        grid = template_grid(ctx.layout.resolution_mm)
        meta = {"space": "MNI152NLin2009aSym", "desc": "trainingmean", "n_subjects": len(pids)}
        save_nifti(mean[0], grid.affine, path, metadata=meta)
        return ItemResult({"reference": path}, {"n_subjects": len(pids)})


def load_reference(ctx: RunContext) -> np.ndarray:
    """Return the mean training volume of the models in use, shape (1, i, j, k), float32."""
    import nibabel as nib

    rec = ctx.record("reference", "trainingmean")
    img = nib.load(str(rec.output(ctx.models, "reference")))
    return np.asarray(img.dataobj, dtype=np.float32)[None]
