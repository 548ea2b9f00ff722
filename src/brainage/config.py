"""The configuration of a run: one YAML file, every parameter of every stage.

A run's resolved configuration is written to ``OUT/config.yaml`` and into
``dataset_description.json``; ``brainage run --config FILE`` reads a partial YAML whose keys
override the defaults. Unknown keys are errors with a did-you-mean hint.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml

from brainage.errors import ConfigError, did_you_mean

#: Default configuration. Sections: preprocess, split, train, ensemble, explain, population, run.
DEFAULTS: dict[str, Any] = {
    "seed": 0,
    "preprocess": {
        "resolution_mm": 2.0,
        "skull_strip": True,
        "bias_correct": True,
        "register": "affine",
        "intensity": "minmax",
    },
    "split": {"test_fraction": 0.1, "validation_fraction": 0.15},
    "train": {
        "model": "hofmann",
        "model_params": {"dropout": 0.2},
        "resolution_mm": 4.0,
        "epochs": 60,
        "patience": 30,
        "batch_size": 8,
        "lr": 2e-3,
        "weight_decay": 1e-3,
        "schedule": "cosine",
        "loss": "mse",
        "standardize_targets": True,
        "augment": ["flip", "affine"],
        "device": "auto",
        "amp": True,
    },
    "ensemble": {"n_seeds": 5, "seeds": None, "ridge_alpha": 1.0, "ridge_positive": True},
    "bias_correction": {"min_slope": 0.3, "n_bootstrap": 1000},
    "explain": {
        "methods": ["guided_backprop", "lrp"],
        "subjects": "test",
        "batch_size": 2,
        # per-method parameters, e.g. {"occlusion": {"window": 6}}; "unoise_fit" configures the
        # 3D U-Noise fit (paper 002 trains 50 epochs; this CPU-sized default trains 10 on 48 scans)
        "params": {
            # the mean training image as the reference brain (not an all-black volume): on the
            # 400-phantom cohort it raised the mass accuracy of Integrated Gradients 0.21 → 0.55
            "integrated_gradients": {"baseline": "training_mean"},
            "unoise_fit": {
                "n_subjects": 48,
                "pretrain_epochs": 2,
                "epochs": 8,
                "batch_size": 4,
                "lr": 1e-3,
            },
        },
    },
    "population": {
        "normalise": "zscore",
        "top_fraction": 0.10,
        "sigma_vox": 1.0,
        "atlases": ["aal", "harvard_oxford"],
    },
    "evaluate": {"randomisation": True, "n_subjects": 4, "threshold": 0.5, "top_fraction": 0.01},
    "run": {"n_jobs": 2, "backend": "processes", "dask_address": None, "strict": False},
}

#: The configuration of ``brainage demo``: a 4 mm synthetic cohort already in template space.
DEMO_OVERRIDES: dict[str, Any] = {
    "preprocess": {
        "resolution_mm": 4.0,
        "skull_strip": False,
        "bias_correct": False,
        "register": "none",
    },
    "split": {"test_fraction": 0.15, "validation_fraction": 0.15},
    "train": {"resolution_mm": 4.0, "epochs": 25, "patience": 10, "augment": ["flip"]},
    "ensemble": {"n_seeds": 3},
    "bias_correction": {"n_bootstrap": 300},
}


def merge(base: dict, override: dict, path: str = "") -> dict:
    """Return ``base`` updated recursively with ``override``.

    Raises
    ------
    ConfigError
        A key of ``override`` that ``base`` does not have (free-form dicts such as
        ``train.model_params`` and ``explain.params`` accept any key).
    """
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        where = f"{path}.{key}" if path else key
        if key not in out:
            if {"model_params", "params"} & set(path.split(".")):  # free-form sections
                out[key] = value
                continue
            raise ConfigError(f"unknown configuration key {where!r}; {did_you_mean(key, out)}")
        if isinstance(out[key], dict) and isinstance(value, dict):
            out[key] = merge(out[key], value, where)
        else:
            out[key] = value
    return out


def load_config(path: str | Path | None = None, overrides: dict | None = None) -> dict:
    """Resolve the configuration: defaults ← YAML file ← ``overrides``.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file with a subset of :data:`DEFAULTS`.
    overrides : dict, optional
        Applied last (e.g. from command-line options).

    Returns
    -------
    dict
        The full configuration.

    Raises
    ------
    ConfigError
        Unreadable YAML or unknown keys.
    """
    cfg = copy.deepcopy(DEFAULTS)
    if path is not None:
        try:
            loaded = yaml.safe_load(Path(path).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"cannot read configuration {path}: {exc}") from None
        if not isinstance(loaded, dict):
            raise ConfigError(
                f"configuration {path} must be a mapping of sections; got {type(loaded).__name__}"
            )
        cfg = merge(cfg, loaded)
    if overrides:
        cfg = merge(cfg, overrides)
    n = cfg["ensemble"]["n_seeds"]
    if not isinstance(n, int) or n < 1:
        raise ConfigError(f"'ensemble.n_seeds' must be an integer ≥ 1; got {n!r}")
    return cfg


def seeds_of(cfg: dict) -> list[int]:
    """Return the base-model seeds: ``ensemble.seeds`` or ``seed + 0 … seed + n_seeds − 1``."""
    seeds = cfg["ensemble"]["seeds"]
    if seeds:
        return [int(s) for s in seeds]
    return [int(cfg["seed"]) + i for i in range(cfg["ensemble"]["n_seeds"])]


def dump_config(cfg: dict) -> str:
    """Return the configuration as YAML text."""
    return yaml.safe_dump(cfg, sort_keys=False)
