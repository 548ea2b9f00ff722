"""The study file of ``brainage study``: conditions × seeds over one cohort (paper 000).

A study file is YAML::

    name: registration-x-augmentation
    base: {train: {epochs: 60}}            # overrides every condition shares (optional)
    conditions:                            # name → configuration overrides
      augmented: {preprocess: {register: affine}, train: {augment: [flip, affine, elastic]}}
      plain:     {preprocess: {register: affine}, train: {augment: []}}
    seeds: 3                               # 1..3, or an explicit list [0, 7, 42]
    phases: [32, 22, 7.3, 6.0, 5.4]        # validation-MAE thresholds, years (paper 000)

:func:`expand_study` resolves every (condition, seed) into a validated
:class:`~brainage.config.Config` (``seed`` set, one base model per run), so a typo in any
condition fails before any work, naming the condition.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, ClassVar

from pydantic import Field, field_validator

from brainage.errors import ConfigError
from brainage.schema import Section


class StudyConfig(Section):
    """A multi-seed × condition study (paper 000; METHODS §7).

    Parameters
    ----------
    name : str
        Letters, digits, ``-`` and ``_``.
    conditions : dict of str → dict
        Condition name (letters, digits, ``_``) → nested configuration overrides.
    seeds : int or list of int
        ``S`` (seeds ``1..S``, as in paper 000) or the explicit seeds.
    base : dict
        Overrides applied before every condition's.
    phases : list of float
        Validation-MAE thresholds in years, decreasing (paper 000: 32, 22, then ~7.3, ~6.0,
        ~5.4 for its cohort). Rule for thresholds a cohort does not reach: a seed whose
        validation MAE never gets that low has no checkpoint in the phase; the phase table
        counts the seeds that reached it, and a phase reached by fewer than two seeds of a
        condition has no agreement (n/a), never a silently shorter table.
    split_seed : int or None
        Seed of the data split, the same for every run (paper 000: the seeds vary the
        training, not the subjects); ``None``: each seed draws its own split.
    agreement_quantiles : list of float
        Voxel agreement (METHODS §7): per seed the voxels at or below the quantile of its map
        are discarded; one agreement per quantile. 0.05 (paper 000) keeps 95 % of the brain per
        seed; 0.9 keeps each seed's top 10 % and asks whether the seeds agree on the most
        relevant voxels.
    targets : list of str
        Stages every run brings up to date (with everything upstream); the study needs the
        phase maps (``phases``), the population maps and region tables (``regions``).
    """

    section_path: ClassVar[str] = "study"
    name: str = "study"
    conditions: dict[str, dict[str, Any]]
    seeds: Annotated[int, Field(ge=1)] | list[int] = 3
    base: dict[str, Any] = Field(default_factory=dict)
    phases: list[Annotated[float, Field(gt=0)]] = Field(default_factory=lambda: [32.0, 22.0])
    split_seed: Annotated[int, Field(ge=0)] | None = 0
    agreement_quantiles: list[Annotated[float, Field(ge=0, lt=1)]] = Field(
        default_factory=lambda: [0.05, 0.9], min_length=1
    )
    targets: list[str] = Field(default_factory=lambda: ["predict", "phases", "regions"])

    @field_validator("name")
    @classmethod
    def _name(cls, v):
        if not re.fullmatch(r"[A-Za-z0-9_-]+", v):
            raise ValueError("must be letters, digits, '-' or '_'")
        return v

    @field_validator("conditions")
    @classmethod
    def _conditions(cls, v):
        if not v:
            raise ValueError("needs at least one condition")
        bad = [k for k in v if not re.fullmatch(r"[A-Za-z0-9_]*[A-Za-z0-9][A-Za-z0-9_]*", k)]
        if bad:
            raise ValueError(
                f"condition names must be letters, digits or '_' with a letter or digit; got {bad}"
            )
        labels: dict[str, str] = {}
        for k in v:  # file names use the BIDS label (no '_'): no_aug and noaug would collide
            lab = k.replace("_", "")
            if lab in labels:
                raise ValueError(f"conditions {labels[lab]!r} and {k!r} differ only in '_'")
            labels[lab] = k
        return v

    @field_validator("seeds")
    @classmethod
    def _seeds(cls, v):
        if isinstance(v, list):
            if not v or len(set(v)) != len(v) or min(v) < 0:
                raise ValueError("must be distinct non-negative seeds")
        return v

    @field_validator("targets")
    @classmethod
    def _targets(cls, v):
        from brainage.workflow.api import TARGETS

        bad = [t for t in v if t not in TARGETS and t != "phases"]
        if bad or not v:
            raise ValueError(f"unknown stage(s) {bad}; choose from {sorted({*TARGETS, 'phases'})}")
        missing = [t for t in ("predict", "phases", "regions") if t not in v]
        if missing:  # what the study summary reads
            raise ValueError(f"must include {missing} (the study summary reads them); got {v}")
        return v

    @field_validator("phases")
    @classmethod
    def _phases(cls, v):
        if list(v) != sorted(v, reverse=True) or len(set(v)) != len(v):
            raise ValueError("thresholds must be distinct and decreasing, e.g. [32, 22, 7.3]")
        return v

    def seed_list(self) -> list[int]:
        """Return the seeds: ``1..S`` for an integer ``seeds``, else the list."""
        return list(range(1, self.seeds + 1)) if isinstance(self.seeds, int) else list(self.seeds)


@dataclass(frozen=True)
class StudyRun:
    """One (condition, seed) of a study and its validated configuration."""

    condition: str
    seed: int
    config: Any  # brainage.config.Config

    @property
    def name(self) -> str:
        """Folder name of the run: ``cond-<condition>_seed-<n>``."""
        return f"cond-{self.condition}_seed-{self.seed}"


def read_study(path: str | Path) -> StudyConfig:
    """Read and validate a study file (YAML).

    Raises
    ------
    InputError
        The file is missing or not YAML.
    ConfigError
        A key or value is wrong (named, with what is allowed).
    """
    from brainage.config import read_yaml

    data = read_yaml(path)
    return StudyConfig(**data)


def expand_study(study: StudyConfig, base: dict | None = None) -> list[StudyRun]:
    """One validated run configuration per (condition, seed), conditions in file order.

    Each run trains one base model per fold (``ensemble.n_seeds: 1``) with ``seed`` = the
    study seed, the study's split seed, phase checkpoints at ``study.phases`` and the test MAE
    logged per epoch; defaults ← ``base`` ← ``study.base`` ← the condition's overrides.

    Parameters
    ----------
    study : StudyConfig
    base : dict, optional
        Overrides below the study's (e.g. :data:`brainage.config.DEMO_OVERRIDES`).

    Returns
    -------
    list of StudyRun

    Raises
    ------
    ConfigError
        A condition's overrides are invalid; the message names the condition.
    """
    from brainage.config import load_config, merge

    runs = []
    for condition, overrides in study.conditions.items():
        for seed in study.seed_list():
            layered = merge(merge(base or {}, study.base), overrides)
            layered = merge(
                layered,
                {
                    "seed": seed,
                    "ensemble": {"n_seeds": 1, "seeds": None},
                    "split": {"seed": study.split_seed},
                    "train": {"phases": list(study.phases), "log_test_mae": True},
                },
            )
            try:
                cfg = load_config(base=layered)
            except ConfigError as err:
                raise ConfigError(f"study condition {condition!r}: {err}") from None
            runs.append(StudyRun(condition, seed, cfg))
    return runs
