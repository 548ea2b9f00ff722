"""Stages ``train`` (one base model per fold × seed, METHODS §3) and ``reference`` (mean image).

With cross-fitting the items are ``fold-<k>_seed-<n>`` (trained and validated on the subjects
that fold ``k`` does not hold out), with a hold-out ``seed-<n>``. A base model is keyed by the
``train`` section, its seed, and the participant ids, ages, roles and preprocessing keys of its
training and validation subjects — not by any test subject, so changing a test scan or a test
age retrains nothing (unless ``train.log_test_mae`` monitors the test subjects, as in a study: then
they are inputs too). The items run on the executor (local processes or Dask, with the machine's
threads shared between the workers). Training checkpoints every epoch into
``<work>/checkpoints`` (named by the item's key), so a killed run resumes mid-training, and a
checkpoint of other inputs is never resumed.
"""

from __future__ import annotations

import json

import numpy as np

from brainage.io.nifti import save_nifti
from brainage.workflow.stage import ItemResult, RunContext, Stage

#: Non-CNN base learners (``ensemble.learners``) → their base-model name.
LEARNERS = {"voxel_ridge": "voxelridge"}


def model_item(fold: int | None, name: int | str, region: str | None = None) -> str:
    """Item of a base model: ``[fold-<k>_][region-<r>_]seed-<n>`` (a CNN) or ``…<learner>``."""
    name = f"seed-{int(name)}" if isinstance(name, int) else str(name)
    if region is not None:
        name = f"region-{region}_{name}"
    return name if fold is None else f"fold-{int(fold)}_{name}"


def parse_model_item(item: str) -> tuple[int | None, str]:
    """``"fold-2_seed-1"`` → ``(2, "seed-1")``; ``"voxelridge"`` → ``(None, "voxelridge")``."""
    fold = None
    if item.startswith("fold-"):
        head, item = item.split("_", 1)
        fold = int(head.split("-", 1)[1])
    return fold, item


def model_seed(name: str) -> int | None:
    """Seed of a CNN base model ``[region-<r>_]seed-<n>``; None for a non-CNN learner."""
    last = name.rsplit("_", 1)[-1]
    return int(last.split("-", 1)[1]) if last.startswith("seed-") else None


def model_region(name: str) -> str | None:
    """Brain compartment of a region sub-ensemble's model ``region-<r>_seed-<n>``; else None."""
    return name.split("_", 1)[0].split("-", 1)[1] if name.startswith("region-") else None


def sub_ensemble(name: str) -> str:
    """Sub-ensemble of a base model: its region, or ``"brain"`` (whole-brain CNNs, learners)."""
    return model_region(name) or "brain"


def is_network(item: str) -> bool:
    """Whether a base-model item is a CNN (whole-brain or region) rather than a learner."""
    return model_seed(parse_model_item(item)[1]) is not None


def is_explainer(item: str) -> bool:
    """Whether a base-model item is a whole-brain CNN: those are explained and U-Noise-fitted.

    Region sub-ensembles' CNNs predict (MLens) but are not explained: their maps are zero
    outside their compartment, and the relevance maps of a subject are those of the
    whole-brain CNNs of its fold.
    """
    name = parse_model_item(item)[1]
    return model_seed(name) is not None and model_region(name) is None


def model_folds(ctx: RunContext) -> list[int | None]:
    """Outer folds of the base models in use (``[None]``: a hold-out run)."""
    folds = {parse_model_item(i)[0] for i in ctx.stage_records("train")}
    return sorted(folds, key=lambda f: -1 if f is None else f) or [None]


def fold_model_items(ctx: RunContext, fold: int | None) -> list[str]:
    """Finished base-model items of ``fold``: CNN seeds, learners, then region CNNs by region."""
    items = [i for i in ctx.stage_records("train") if parse_model_item(i)[0] == fold]

    def order(item: str) -> tuple:  # whole-brain CNNs, learners, then regions (each by seed)
        name = parse_model_item(item)[1]
        seed, region = model_seed(name), model_region(name)
        return (region is not None, region or "", seed is None, seed or 0, name)

    return sorted(items, key=order)


def explaining_items(ctx: RunContext, participant_id: str) -> list[str]:
    """Return the whole-brain CNN base models that explain ``participant_id``.

    With cross-fitting a subject with age is held out by exactly one fold, whose models never
    saw it; a subject without age, and every subject of ``brainage predict``, gets all folds.
    Non-CNN learners predict but are not explained (a linear model's map is its weights), nor
    are region sub-ensembles' CNNs (see :func:`is_explainer`).
    """
    fold = ctx.fold_of(participant_id) if ctx.mode == "run" else None
    folds = [fold] if fold is not None else model_folds(ctx)
    return [i for f in folds for i in fold_model_items(ctx, f) if is_explainer(i)]


def _subject_inputs(ctx: RunContext, pids, fold: int | None) -> list:
    ages = ctx.ages()
    roles = ctx.split_of() if fold is None else ctx.roles[fold]
    return [[p, ages[p], roles[p]] for p in pids]


class TrainStage(Stage):
    """See the module docstring."""

    name = "train"
    version = "4"  # 3: augmentation distances in mm (were voxels); 4: flip mirrors about x = 0
    requires = ("splits", "preprocess", "volumes")
    parallel = True

    def items(self, ctx: RunContext) -> list[str]:
        e = ctx.config.ensemble
        learners = [LEARNERS[n] for n in e.learners]
        names = [model_item(None, s) for s in [*ctx.config.seeds, *learners]]
        names += [model_item(None, s, r) for r in e.regions for s in ctx.config.seeds]
        return [model_item(f, n) for f in ctx.folds() for n in names]

    def _subjects(self, ctx: RunContext, item: str) -> list[str]:
        return ctx.subjects_in("train", "validation", fold=parse_model_item(item)[0])

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        pids = self._subjects(ctx, item)
        if ctx.config.train.log_test_mae and is_network(item):
            pids = pids + ctx.subjects_in("test", fold=parse_model_item(item)[0])
        return [("preprocess", p) for p in pids]

    def params(self, ctx: RunContext, item: str) -> dict:
        if not is_network(item):  # a learner depends on the model grid only
            from brainage.models.linear import ALPHAS

            return {"learner": parse_model_item(item)[1], "alphas": list(ALPHAS),
                    "resolution_mm": ctx.config.train.resolution_mm}  # fmt: skip
        params = ctx.config.train.to_dict()
        region = model_region(parse_model_item(item)[1])
        if region is not None:  # the compartment's definition is part of the model
            from brainage.atlas import compartments

            params["region"] = region
            params["compartments_version"] = compartments.VERSION
        if params.get("init_from") is not None:  # the checkpoint's bytes (inputs), not its path
            params["init_from"] = "sha256"
        return params

    def inputs(self, ctx: RunContext, item: str) -> dict:
        fold = parse_model_item(item)[0]
        inputs = {"subjects": _subject_inputs(ctx, self._subjects(ctx, item), fold)}
        if ctx.config.train.log_test_mae and is_network(item):  # monitored, never selected on
            ages = ctx.ages()
            inputs["monitored"] = [[p, ages[p]] for p in ctx.subjects_in("test", fold=fold)]
        if ctx.config.train.init_from is not None and is_network(item):  # the file's bytes
            from brainage.train.pretrained import checkpoint_sha256

            inputs["init_from_sha256"] = checkpoint_sha256(ctx.config.train.init_from)
        return inputs

    def seed(self, ctx: RunContext, item: str) -> int | None:
        return model_seed(parse_model_item(item)[1])

    def threads_per_task(self, ctx: RunContext) -> int:
        import os

        if ctx.config.run.omp_nthreads:
            return ctx.config.run.omp_nthreads
        return max(1, (os.cpu_count() or 1) // max(1, ctx.config.run.n_jobs))

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.errors import InputError
        from brainage.train import train_model
        from brainage.workflow.progress import StageProgress

        fold, name = parse_model_item(item)
        seed = model_seed(name)
        tr = ctx.subjects_in("train", fold=fold)
        va = ctx.subjects_in("validation", fold=fold)
        if len(tr) < 2 or not va:
            raise InputError(
                f"training needs ≥ 2 training and ≥ 1 validation subjects; got {len(tr)} and "
                f"{len(va)} (after {len(ctx.failures)} failure(s))",
                "add subjects with age, or see failures.tsv",
            )
        ages = ctx.ages()
        cfg = ctx.config.train
        folder = ctx.layout.model_dir(name, fold)
        ckpt_dir = ctx.layout.work / "checkpoints"
        ckpt = ckpt_dir / f"{item}_{key[:16]}.pt"
        resuming = seed is not None and ckpt.exists()  # its phase files are this key's: kept
        stale = ["model.json", "model.pt", "training_log.tsv"]
        if not resuming:
            stale += [p.name for p in folder.glob("phase-*.pt")]
        for old in stale:
            (folder / old).unlink(missing_ok=True)  # outputs of other inputs go first
        if seed is None:
            return self._fit_learner(ctx, name, tr, folder)
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
                compartment=model_region(name),
                monitor=self._monitor(ctx, fold) if cfg.log_test_mae else None,
            )
        finally:
            bar.close()
        for stale in ckpt_dir.glob(f"{item}_*.pt"):
            stale.unlink(missing_ok=True)
        outputs = {n: folder / n for n in ("model.pt", "model.json", "training_log.tsv")}
        phases = json.loads((folder / "model.json").read_text()).get("phases", [])
        outputs |= {f"phase-{p['phase']}": folder / p["file"] for p in phases if p["file"]}
        return ItemResult(outputs, seed=seed)

    @staticmethod
    def _monitor(ctx: RunContext, fold: int | None) -> tuple[np.ndarray, np.ndarray]:
        """Return the fold's test subjects and ages, logged per epoch (``train.log_test_mae``)."""
        ages = ctx.ages()
        te = [p for p in ctx.subjects_in("test", fold=fold) if np.isfinite(ages[p])]
        return ctx.stack(te), np.array([ages[p] for p in te])

    def _fit_learner(self, ctx: RunContext, name: str, train: list[str], folder) -> ItemResult:
        """Fit a non-CNN learner on the training subjects (closed form; no validation used)."""
        from brainage.models.linear import fit_voxel_ridge
        from brainage.space import template_array
        from brainage.train.trainer import save_model

        ages = ctx.ages()
        y = np.array([ages[p] for p in train])
        mask = template_array("mask", ctx.layout.resolution_mm) > 0.5
        model, info = fit_voxel_ridge(ctx.stack(train), y, mask)
        meta = {
            "model": name,
            "model_params": {
                "input_shape": list(model.input_shape),
                "in_channels": int(model.in_channels),
            },
            "learner": name,
            "train_mean_age": float(y.mean()),
            "seed": None,
            **info,
        }
        save_model(model, meta, folder)
        outputs = {n: folder / n for n in ("model.pt", "model.json")}
        return ItemResult(outputs, {k: info[k] for k in ("alpha", "train_mae")})


class ReferenceStage(Stage):
    """The mean training image of each fold's models: the reference brain of IG and occlusion."""

    name = "reference"
    version = "2"
    requires = ("splits", "preprocess", "volumes")

    def items(self, ctx: RunContext) -> list[str]:
        return [reference_item(f) for f in ctx.folds()]

    def _subjects(self, ctx: RunContext, item: str) -> list[str]:
        return ctx.subjects_in("train", fold=_reference_fold(item))

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return [("preprocess", p) for p in self._subjects(ctx, item)]

    def inputs(self, ctx: RunContext, item: str) -> dict:
        return {"subjects": self._subjects(ctx, item)}

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.errors import InputError
        from brainage.space import template_grid

        pids = self._subjects(ctx, item)
        if not pids:
            raise InputError("the mean training image needs training subjects; this run has none")
        x, rows = ctx.volumes()
        idx = np.array([rows[p] for p in pids])
        total = np.zeros(x.shape[1:], np.float64)
        for start in range(0, idx.size, 32):  # bounded memory on the memory-mapped stack
            total += np.asarray(x[idx[start : start + 32]], np.float64).sum(axis=0)
        mean = (total / idx.size).astype(np.float32)
        path = ctx.layout.reference(_reference_fold(item))
        grid = template_grid(ctx.layout.resolution_mm)
        meta = {"space": "MNI152NLin2009aSym", "desc": "trainingmean", "n_subjects": len(pids)}
        # one channel: a 3D image as before; several: 4D (i, j, k, c), channels last (NIfTI)
        save_nifti(mean[0] if len(mean) == 1 else np.moveaxis(mean, 0, -1), grid.affine, path,
                   metadata=meta)  # fmt: skip
        return ItemResult({"reference": path}, {"n_subjects": len(pids)})


def reference_item(fold: int | None) -> str:
    """Item of the ``reference`` stage for ``fold``: ``fold-<k>`` or ``trainingmean``."""
    return "trainingmean" if fold is None else f"fold-{int(fold)}"


def _reference_fold(item: str) -> int | None:
    return None if item == "trainingmean" else int(item.split("-", 1)[1])


def load_reference(ctx: RunContext, fold: int | None = None) -> np.ndarray:
    """Return the mean training volume of ``fold``'s models, shape (c, i, j, k), float32.

    For a subject predicted by all folds (``fold=None`` in a cross-fitted run) this is the mean
    of the folds' reference images.
    """
    import nibabel as nib

    folds = [fold] if fold is not None else model_folds(ctx)
    vols = []
    for f in folds:
        rec = ctx.record("reference", reference_item(f))
        img = nib.load(str(rec.output(ctx.models, "reference")))
        data = np.asarray(img.dataobj, dtype=np.float32)
        vols.append(data[None] if data.ndim == 3 else np.moveaxis(data, -1, 0))
    return np.mean(vols, axis=0).astype(np.float32)
