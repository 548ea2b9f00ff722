"""Stage ``volumes``: the preprocessed scans stacked on the model grid (a deletable cache).

One ``.npy`` (n, c, i, j, k) float32 (one channel per ``preprocess.modalities``, T1w first) in
the work directory (``--work-dir``, default
``<OUT>_work``), memory-mapped by the later stages; its record lists the participant order.
Keyed by the preprocessing keys of every usable subject and the model resolution.
"""

from __future__ import annotations

import numpy as np

from brainage.io.atomic import atomic_path
from brainage.workflow.stage import ItemResult, RunContext, Stage


class VolumesStage(Stage):
    """See the module docstring."""

    name = "volumes"
    version = "1"
    requires = ("preprocess",)

    def items(self, ctx: RunContext) -> list[str]:
        return ["stack"]

    def _subjects(self, ctx: RunContext) -> list[str]:
        return [p for p in ctx.ok_subjects() if ("preprocess", p) in ctx.records]

    def depends(self, ctx: RunContext, item: str) -> list[tuple[str, str]]:
        return [("preprocess", p) for p in self._subjects(ctx)]

    def params(self, ctx: RunContext, item: str) -> dict:
        out = {"resolution_mm": ctx.config.train.resolution_mm}
        if ctx.config.preprocess.extra_modalities:  # a T1w-only stack keys as before
            out["modalities"] = ctx.config.preprocess.modalities
        return out

    def compute(self, ctx: RunContext, item: str, key: str) -> ItemResult:
        from brainage.preprocess import load_preprocessed
        from brainage.space import template_grid

        pids = self._subjects(ctx)
        grid = template_grid(ctx.layout.resolution_mm)
        outputs = ["preproc", *(f"preproc_{m}" for m in ctx.config.preprocess.extra_modalities)]
        channels = []
        for name in outputs:
            paths = [str(ctx.record("preprocess", p).output(ctx.layout, name)) for p in pids]
            channels.append(load_preprocessed(paths, grid))
        x = channels[0] if len(channels) == 1 else np.concatenate(channels, axis=1)
        path = ctx.layout.volumes()
        with atomic_path(path) as tmp:
            np.save(tmp, x)
        return ItemResult({"volumes": path}, {"participant_ids": pids})
