"""How much a phantom run's models rely on each simulated age effect (model-side ground truth).

The truth masks of a simulated cohort say where age acts; they do not say how much the trained
models use each effect. This script measures it directly: for each test subject it remakes the
phantom (same phantom seed and parameters, lesions off) at age ``a`` and at ``a + years``, then
moves only the voxels of one effect (``ventricles`` or ``cortex`` mask) to their older values and
prints the mean change of the ensemble's prediction, next to the change when the whole image ages.
Compare the shares with where the explanation methods put their relevance
(``roc_auc_<effect>`` in ``evaluation/xai.tsv``).

Only for runs whose preprocessing is robust min-max scaling without registration or skull
stripping (the phantom recipe in the README), because the remade images are scaled the same way.

Usage::

    python bench/bench_effect_reliance.py --bids sim --run runs/sim [--years 15] [--n 20]
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from _phantom_run import load_phantom_run

from brainage.preprocess.steps import scale_intensity
from brainage.simulate import make_phantom


def main() -> None:
    run = load_phantom_run(__doc__.split("\n")[0])
    args, draws, test, models = run.args, run.draws, run.test, run.models
    phantom, res = run.phantom, run.resolution_mm
    hi_age = float(run.params["age_range"][1])

    rows = []
    for pid, age in zip(test["participant_id"], test["age"], strict=True):
        young_age = min(float(age), hi_age - args.years)
        seed = int(draws.loc[pid, "phantom_seed"])
        kw = {"resolution_mm": res, "seed": seed, "lesions": False, **phantom}
        young = make_phantom(young_age, **kw)
        old = make_phantom(young_age + args.years, **kw)
        y, o = young.images["T1w"], old.images["T1w"]
        images = [y, o] + [np.where(old.masks[e], o, y) for e in ("ventricles", "cortex")]
        x = torch.as_tensor(np.stack([scale_intensity(v, v > 0) for v in images])[:, None])
        with torch.no_grad():
            pred = np.mean([m(x.float())[:, 0].numpy() for m in models], axis=0)
        rows.append(
            {
                "participant_id": pid,
                "age": young_age,
                "whole_image": pred[1] - pred[0],
                "ventricles_only": pred[2] - pred[0],
                "cortex_only": pred[3] - pred[0],
            }
        )
    table = pd.DataFrame(rows)
    mean = table.drop(columns=["participant_id", "age"]).mean()
    print(
        f"prediction change (years) when {args.years:g} years of ageing act on ({len(table)} "
        f"test subjects, {len(models)} base models):"
    )
    for name, value in mean.items():
        share = value / mean["whole_image"] if mean["whole_image"] else float("nan")
        print(f"  {name:16s} {value:6.2f}   ({share:.0%} of the whole-image change)")


if __name__ == "__main__":
    main()
