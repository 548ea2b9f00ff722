"""Per-region reliance of a region-truth phantom run, by ageing one region at a time.

The phantom form of the reliance of issue 11 (item 2), generalising
``bench/bench_effect_reliance.py`` from effects to atlas regions: for each test subject the script
remakes the phantom (same seed and parameters, lesions off) at age ``a`` and ``a + years``, then
moves only the voxels of one atlas region to their older values and records the change of the
ensemble's prediction. Each method's per-region relevance (sum of its ensemble map over the region,
signed and absolute) is compared with that reliance by Spearman's ρ, per subject (mean) and for
the subject means, next to the true per-region effect. The in-pipeline reliance
(``reliance_spearman`` in ``evaluation/xai.tsv``) replaces a region by the mean training image
instead, which works on real scans too.

Only for runs whose preprocessing is robust min-max scaling without registration or skull
stripping (the phantom recipe in the README), because the remade images are scaled the same way.

Usage::

    python bench/bench_region_reliance.py --bids simr --run runs/simr [--years 15] [--n 20]
"""

from __future__ import annotations

import nibabel as nib
import numpy as np
import torch
import yaml
from _phantom_run import load_phantom_run
from scipy import stats

from brainage.atlas import load_atlas
from brainage.io.layout import RunLayout
from brainage.preprocess.steps import scale_intensity
from brainage.simulate import make_phantom
from brainage.simulate.effects import REGION_ATLAS
from brainage.space import template_array, template_grid


def _rho(a, b) -> float:
    a, b = np.asarray(a, float), np.asarray(b, float)
    return float(stats.spearmanr(a, b).statistic) if np.ptp(a) > 0 and np.ptp(b) > 0 else np.nan


def main() -> None:
    run = load_phantom_run(__doc__.split("\n")[0])
    args, params, draws, test, models = run.args, run.params, run.draws, run.test, run.models
    truth, res = run.truth, run.resolution_mm
    phantom = {k: v for k, v in run.phantom.items() if k != "lesions"}
    config = yaml.safe_load((args.run / "config.yaml").read_text())
    methods = [m for m in config["explain"]["methods"] if m != "unoise"]
    layout = RunLayout(args.run, res)
    atlas_name = REGION_ATLAS if (truth / "regions.tsv").exists() else "harvard_oxford"
    atlas = load_atlas(atlas_name, template_grid(res))
    brain = template_array("mask", res) > 0
    labels = np.where(brain, atlas.labels, 0)
    ids = [int(r) for r in np.unique(labels) if r != 0]
    hi_age = float(params["age_range"][1])

    reliance, effect, relevance = [], [], {m: {"signed": [], "abs": []} for m in methods}
    for pid, age in zip(test["participant_id"], test["age"], strict=True):
        young_age = min(float(age), hi_age - args.years)
        kw = {"resolution_mm": res, "seed": int(draws.loc[pid, "phantom_seed"]), "lesions": False,
              **phantom}  # fmt: skip
        young = make_phantom(young_age, **kw).images["T1w"]
        old_phantom = make_phantom(young_age + args.years, **kw)
        old = old_phantom.images["T1w"]
        images = [young] + [np.where(labels == r, old, young) for r in ids]
        x = torch.as_tensor(np.stack([scale_intensity(v, v > 0) for v in images])[:, None])
        with torch.no_grad():
            pred = np.mean([m(x.float())[:, 0].numpy() for m in models], axis=0)
        reliance.append(pred[1:] - pred[0])
        effect.append([old_phantom.change[labels == r].mean() for r in ids])
        for m in methods:
            rel = np.asarray(nib.load(str(layout.relevance(m, pid))).dataobj, dtype=np.float64)
            relevance[m]["signed"].append([rel[labels == r].sum() for r in ids])
            relevance[m]["abs"].append([np.abs(rel[labels == r]).sum() for r in ids])
    reliance, effect = np.asarray(reliance), np.asarray(effect)
    print(f"{len(reliance)} test subjects, {len(models)} base models, {len(ids)} {atlas.name} "
          f"regions, each aged {args.years:g} years on its own")  # fmt: skip
    rho_effect = _rho(reliance.mean(0), effect.mean(0))
    print(f"reliance: sum over regions {reliance.sum(axis=1).mean():.2f} years; ρ(reliance, "
          f"true effect) = {rho_effect:.2f} (subject means)")  # fmt: skip
    order = np.argsort(-reliance.mean(0))[:8]
    print("most relied-on regions: " + ", ".join(
        f"{atlas.names[ids[i]]} {reliance.mean(0)[i]:.2f} y" for i in order))  # fmt: skip
    print(f"{'method':32s} {'ρ signed/subj':>14s} {'ρ signed/pop':>13s} {'ρ |r|/subj':>11s} "
          f"{'ρ |r|/pop':>10s}")  # fmt: skip
    for m in methods:
        out = []
        for kind in ("signed", "abs"):
            r = np.asarray(relevance[m][kind])
            per = np.nanmean([_rho(r[s], reliance[s]) for s in range(len(r))])
            out += [per, _rho(r.mean(0), reliance.mean(0))]
        print(f"{m:32s} {out[0]:14.2f} {out[1]:13.2f} {out[2]:11.2f} {out[3]:10.2f}")


if __name__ == "__main__":
    main()
