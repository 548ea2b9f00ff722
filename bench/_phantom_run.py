"""Shared set-up of the phantom benchmarks: a simulated cohort and the run trained on it."""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from brainage.train import load_model


@dataclass
class PhantomRun:
    """A simulated cohort (``--bids``) and a ``brainage run`` output on it (``--run``).

    Attributes
    ----------
    args : argparse.Namespace
        ``bids``, ``run``, ``years`` (ageing step, years) and ``n`` (test subjects).
    params : dict
        The cohort's ``GeneratedBy`` parameters (``derivatives/truth/dataset_description.json``).
    phantom : dict
        Keyword arguments of :func:`brainage.simulate.make_phantom` the cohort was made with.
    resolution_mm : float
    draws : pandas.DataFrame
        ``derivatives/truth/truth.tsv`` indexed by ``participant_id`` (``phantom_seed``, …).
    test : pandas.DataFrame
        The first ``n`` test rows of the run's ``predictions.tsv``.
    models : list of torch.nn.Module
        The run's base CNNs, in eval mode.
    """

    args: argparse.Namespace
    params: dict
    phantom: dict
    resolution_mm: float
    draws: pd.DataFrame
    test: pd.DataFrame
    models: list

    @property
    def truth(self) -> Path:
        return self.args.bids / "derivatives" / "truth"


def load_phantom_run(description: str) -> PhantomRun:
    """Parse ``--bids --run [--years --n]`` and read the cohort's truth and the run's models."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--bids", type=Path, required=True, help="simulated BIDS cohort")
    parser.add_argument("--run", type=Path, required=True, help="output folder of brainage run")
    parser.add_argument("--years", type=float, default=15.0, help="ageing step, years")
    parser.add_argument("--n", type=int, default=20, help="test subjects used")
    args = parser.parse_args()

    truth = args.bids / "derivatives" / "truth"
    generated = json.loads((truth / "dataset_description.json").read_text())["GeneratedBy"][0]
    params = generated["Parameters"]
    predictions = pd.read_csv(args.run / "predictions.tsv", sep="\t")
    return PhantomRun(
        args=args,
        params=params,
        phantom=dict(params["phantom"]),
        resolution_mm=float(params["resolution_mm"]),
        draws=pd.read_csv(truth / "truth.tsv", sep="\t").set_index("participant_id"),
        test=predictions[predictions["split"] == "test"].head(args.n),
        models=[load_model(d)[0].eval() for d in sorted((args.run / "models").glob("*/seed-*"))],
    )
