"""The configuration of a run: one typed schema, every parameter of every stage, one default each.

:class:`Config` is composed of the stages' parameter sections (:class:`~brainage.schema.Section`
subclasses: ``preprocess`` is :class:`brainage.preprocess.PreprocessConfig`, ``train`` is
:class:`brainage.train.TrainConfig`, the others are defined here). It is validated whole when it
is built — keys, types, ranges, model, method and atlas names, per-method parameters — so a typo
fails in a second, before any work, with the key, the value, what is allowed and a did-you-mean.

A run's resolved configuration is written to ``OUT/config.yaml``; ``brainage run --config FILE``
reads a partial YAML whose keys override the defaults; ``brainage config --show`` prints the
resolved values.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal

import yaml
from pydantic import Field, field_validator, model_validator

from brainage.errors import ConfigError, did_you_mean
from brainage.preprocess.config import PreprocessConfig
from brainage.schema import Section
from brainage.stats.config import StatsConfig
from brainage.train.trainer import TrainConfig

Fraction = Annotated[float, Field(ge=0.0, le=0.5)]


class SplitConfig(Section):
    """How subjects are assigned to training, validation and test (METHODS §1).

    Parameters
    ----------
    scheme : {"kfold", "holdout"}
        ``"kfold"`` (cross-fitting, the default): ``n_folds`` age-stratified outer folds; the
        models of fold ``k`` are trained and validated on the other folds and predict and explain
        fold ``k``, so every subject with age gets an out-of-fold brain age and relevance map.
        ``"holdout"``: one age-stratified test set and one validation set. Both are drawn from
        the cohort before any preprocessing and recorded in ``splits.tsv``.
    n_folds : int
        Outer folds of ``kfold`` (paper 001: 10).
    test_fraction : float
        ``holdout`` only: fraction of the subjects with age in the test set, in [0, 0.5].
    validation_fraction : float
        Fraction of the non-test subjects (of each fold) used for validation — early stopping,
        the ensemble head and the age-bias correction — in [0, 0.5].
    seed : int or None
        Seed of the split; ``None`` (default): the run's ``seed``. A multi-seed study fixes it
        so that every seed trains and is tested on the same subjects (paper 000).
    """

    section_path: ClassVar[str] = "split"

    scheme: Literal["kfold", "holdout"] = "kfold"
    n_folds: Annotated[int, Field(ge=2, le=50)] = 5
    test_fraction: Fraction = 0.1
    validation_fraction: Fraction = 0.15
    seed: Annotated[int, Field(ge=0)] | None = None

    @model_validator(mode="after")
    def _check_validation(self) -> SplitConfig:
        if self.scheme == "kfold" and self.validation_fraction == 0:
            raise ValueError(
                "'split.validation_fraction' must be > 0 with scheme kfold: each fold needs "
                "validation subjects for early stopping, the ensemble head and the bias correction"
            )
        return self


class EnsembleConfig(Section):
    """Base models and the ridge head of the ensemble (paper 001).

    Parameters
    ----------
    n_seeds : int
        Base models per fold, seeds ``seed … seed + n_seeds − 1`` (unless ``seeds`` is given).
    seeds : list of int, optional
        Explicit base-model seeds.
    ridge_alpha : float
        L2 penalty of the ridge head (> 0).
    ridge_positive : bool
        Non-negative ridge weights.
    learners : list of {"voxel_ridge"}
        Non-CNN base learners fitted per fold from the run's own preprocessing, next to the CNN
        seeds: ``voxel_ridge`` is ridge regression on the model-input voxels inside the brain
        mask (:func:`brainage.models.fit_voxel_ridge`). The head uses a learner only when that
        lowers the validation MAE (see :func:`brainage.ensemble.fit_ensemble_head`).
    regions : list of {"cortex", "subcortex", "cerebellum"}
        Region sub-ensembles (paper 001's multi-level ensemble, MLens type ii): per region the
        same CNN seeds are trained on the input masked to that brain compartment
        (:mod:`brainage.atlas.compartments`) and cropped to its box; each region's CNNs get
        their own guarded ridge head, and a top ridge head over the sub-ensembles (the
        whole-brain one included) gives ``brain_age`` (see :mod:`brainage.ensemble.mlens`).
        ``[]`` (default): one whole-brain ensemble. Costs about 1.5× the training time of
        the whole-brain CNNs for all three regions at 4 mm.
    interval : {"conformal", "conformal_scaled"}
        Prediction interval of ``brain_age`` (columns ``brain_age_lower`` / ``brain_age_upper``):
        split-conformal from out-of-fold absolute residuals (constant width), or normalised by
        the spread of the base models (wider where the models disagree).
    interval_level : float
        Coverage of that interval (0.95).
    """

    section_path: ClassVar[str] = "ensemble"
    n_seeds: Annotated[int, Field(ge=1)] = 2
    seeds: list[Annotated[int, Field(ge=0)]] | None = None
    ridge_alpha: Annotated[float, Field(gt=0)] = 1.0
    ridge_positive: bool = True
    learners: list[Literal["voxel_ridge"]] = Field(default_factory=lambda: ["voxel_ridge"])
    regions: list[Literal["cortex", "subcortex", "cerebellum"]] = Field(default_factory=list)
    interval: Literal["conformal", "conformal_scaled"] = "conformal"
    interval_level: Annotated[float, Field(gt=0.5, lt=1)] = 0.95

    @field_validator("seeds")
    @classmethod
    def _unique(cls, v):
        if v is not None and (not v or len(set(v)) != len(v)):
            raise ValueError("must be a non-empty list of distinct integers")
        return v

    @field_validator("regions")
    @classmethod
    def _distinct_regions(cls, v):
        if len(set(v)) != len(v):
            raise ValueError(f"must name each region once; got {v}")
        return v


class BiasCorrectionConfig(Section):
    """Age-bias correction (Smith et al. 2019; METHODS §6).

    Parameters
    ----------
    min_slope : float
        Below this fitted slope the correction is not recommended (it divides by the slope).
    n_bootstrap : int
        Bootstrap resamples of the slope's 95 % CI.
    """

    section_path: ClassVar[str] = "bias_correction"
    min_slope: Annotated[float, Field(ge=0, le=1)] = 0.3
    n_bootstrap: Annotated[int, Field(ge=10)] = 1000


class UNoiseFitConfig(Section):
    """How the 3D U-Noise noise models of a run are fitted (paper 002; see ``fit_unoise``).

    The paper trains 50 epochs; these CPU-sized defaults train 8 (+ 2 pretraining) on 48 scans.
    ``n_subjects`` training subjects are used (the first in cohort order).
    """

    section_path: ClassVar[str] = "explain.unoise_fit"
    n_subjects: Annotated[int, Field(ge=2)] = 48
    pretrain_epochs: Annotated[int, Field(ge=0)] = 2
    epochs: Annotated[int, Field(ge=1)] = 8
    batch_size: Annotated[int, Field(ge=1)] = 4
    lr: Annotated[float, Field(gt=0)] = 1e-3
    vmin: Annotated[float, Field(ge=0)] = 1.0
    vmax: Annotated[float, Field(gt=0)] = 5.0
    r: Annotated[float, Field(ge=0)] = 0.1
    noise_scale: Literal["calibrated", "paper"] | Annotated[float, Field(gt=0)] = "calibrated"
    calibration_years: Annotated[float, Field(gt=0)] = 1.0
    target: Literal["age", "prediction"] = "age"
    lr_step: Annotated[int, Field(ge=1)] | None = 10
    lr_gamma: Annotated[float, Field(gt=0, le=1)] = 0.1
    base_channels: Annotated[int, Field(ge=1)] = 16
    levels: Annotated[int, Field(ge=1, le=8)] = 5
    norm: Literal["instance", "batch", "none"] = "instance"
    amp: bool = False

    def fit_params(self) -> dict[str, Any]:
        """Keyword arguments of :func:`brainage.explain.unoise.fit_unoise` (no ``n_subjects``)."""
        out = self.to_dict()
        out.pop("n_subjects")
        return out


#: Value of an explanation method's ``baseline`` that stands for the mean training image
#: (a reference brain on the model's grid, an output of the ``reference`` stage).
TRAINING_MEAN = "training_mean"


class ExplainConfig(Section):
    """Explanation methods and their parameters (METHODS §8).

    Parameters
    ----------
    methods : list of str
        Registered methods (``brainage methods``).
    subjects : {"test", "heldout", "all"}
        Subjects explained: the test split (with cross-fitting: every subject with age, each by
        the models of the fold that holds it out), validation + test, or everyone (also the
        subjects without age, by every fold's models).
    batch_size : int
        Volumes explained together.
    params : dict of str to dict
        Per-method keyword parameters, e.g. ``{"occlusion": {"window": 6}}``; a method's
        ``baseline: training_mean`` is the mean training image.
    unoise_fit : UNoiseFitConfig
    """

    section_path: ClassVar[str] = "explain"
    methods: list[str] = Field(default_factory=lambda: ["guided_backprop", "lrp"])
    subjects: Literal["test", "heldout", "all"] = "test"
    batch_size: Annotated[int, Field(ge=1)] = 2
    params: dict[str, dict[str, Any]] = Field(
        # the mean training image as the reference brain (not an all-black volume): on the
        # 400-phantom cohort it raised the mass accuracy of Integrated Gradients 0.21 → 0.55
        default_factory=lambda: {"integrated_gradients": {"baseline": TRAINING_MEAN}}
    )
    unoise_fit: UNoiseFitConfig = Field(default_factory=UNoiseFitConfig)

    @model_validator(mode="after")
    def _check_methods(self) -> ExplainConfig:
        from brainage.explain._core import METHODS, check_method

        for m in self.methods:
            if m not in METHODS:
                raise ValueError(
                    f"'explain.methods': unknown explanation method {m!r}; "
                    f"{did_you_mean(m, METHODS)}"
                )
        if len(set(self.methods)) != len(self.methods):
            raise ValueError(f"'explain.methods' lists a method twice: {self.methods}")
        for m, p in self.params.items():
            if m not in METHODS:
                raise ValueError(
                    f"'explain.params' names an unknown method {m!r}; {did_you_mean(m, METHODS)}"
                )
            try:
                check_method(m, {k: v for k, v in p.items()})
            except ConfigError as err:
                raise ValueError(f"'explain.params.{m}': {err}") from None
        return self

    def method_params(self, method: str) -> dict[str, Any]:
        """Return the configured keyword parameters of ``method`` (a copy; may be empty)."""
        return copy.deepcopy(self.params.get(method, {}))


class PopulationConfig(Section):
    """Population maps and atlas region tables (METHODS §9).

    Parameters
    ----------
    normalise : {"zscore", "abs", "sum", "none"}
        Per-subject normalisation inside the brain mask before averaging
        (:func:`brainage.population.maps.normalise_maps`).
    top_fraction : float
        Fraction of brain voxels in the top-relevance map and region tables, (0, 1].
    sigma_vox : float
        Gaussian smoothing of the mean map, voxels.
    atlases : list of str
        Registered atlases (``aal``, ``harvard_oxford``, …).
    subgroups : list of str
        Subgroup population maps (paper 004), each with a region table in the first atlas:
        ``age_group`` (bins at ``age_groups``), ``gap_group`` (accelerated vs. decelerated:
        the ``gap_group_fraction`` of subjects with the largest / smallest brain-age gap) and
        any categorical cohort column (e.g. ``sex``; a column the cohort lacks is skipped).
    age_groups : list of float
        Edges of the age groups, years (paper 004: < 60, 60–70, ≥ 70).
    gap_group_fraction : float
        In (0, 0.5].
    subgroup_min_subjects : int
        Smaller subgroups get no map.
    label_maps : str or None
        Per-subject native label maps for one more region table: ``"auto"`` (the BIDS
        dataset's derivatives dataset of native ``dseg`` maps, e.g. DLMUSE, when there is one),
        the name of such a derivatives folder, or None (off).
    """

    section_path: ClassVar[str] = "population"
    normalise: str = "zscore"
    top_fraction: Annotated[float, Field(gt=0, le=1)] = 0.10
    sigma_vox: Annotated[float, Field(ge=0)] = 1.0
    atlases: list[str] = Field(default_factory=lambda: ["aal", "harvard_oxford"])
    subgroups: list[str] = Field(default_factory=lambda: ["sex", "age_group", "gap_group"])
    age_groups: list[float] = Field(default_factory=lambda: [60.0, 70.0])
    gap_group_fraction: Annotated[float, Field(gt=0, le=0.5)] = 0.2
    subgroup_min_subjects: Annotated[int, Field(ge=1)] = 3
    label_maps: str | None = "auto"

    @field_validator("age_groups")
    @classmethod
    def _age_groups(cls, v):
        if list(v) != sorted(set(v)):
            raise ValueError("must be increasing edges in years, e.g. [60, 70]")
        return v

    @field_validator("normalise")
    @classmethod
    def _normalise(cls, v):
        from brainage.population.maps import NORMALISATIONS

        if v not in NORMALISATIONS:
            raise ValueError(
                f"must be one of {', '.join(NORMALISATIONS)} ({did_you_mean(v, NORMALISATIONS)})"
            )
        return v

    @field_validator("atlases")
    @classmethod
    def _atlases(cls, v):
        from brainage.atlas.registry import get_atlas_spec

        out = []
        for name in v:
            try:
                out.append(get_atlas_spec(name).name)
            except ConfigError as err:
                raise ValueError(f"'population.atlases': {err}") from None
        return out


class EvaluateConfig(Section):
    """Checks of the explanation methods (METHODS §11).

    Parameters
    ----------
    randomisation : bool
        Cascading model-randomisation check (Adebayo et al. 2018).
    n_subjects : int
        Subjects used by the randomisation check.
    threshold : float
        Relevance threshold (fraction of the maximum) of the ground-truth scores.
    top_fraction : float
        Top voxels compared by the seed agreement (Dice).
    faithfulness : bool
        Perturbation test of each method (:mod:`brainage.evaluate.faithfulness`): brain voxels
        replaced by the mean training image most relevant first (MoRF), least relevant first
        and in random order; AOPC with bootstrap CIs in ``evaluation/xai.tsv``.
    faithfulness_subjects : int
        Held-out subjects of the first base model used by the perturbation test.
    imputation : {"mean", "noisy_mean"}
        Replacement of removed voxels: the mean training image, or it plus Gaussian noise
        (ROAD-like).
    sensitivity : bool
        Max-sensitivity of each method (:mod:`brainage.evaluate.robustness`, captum's
        ``sensitivity_max``): the largest relative change of a map under uniform input noise in
        the brain, ``max_sensitivity`` in ``evaluation/xai.tsv``.
    sensitivity_subjects : int
        Held-out subjects of the first base model used by it.
    sensitivity_samples : int
        Noisy copies per subject.
    sensitivity_radius : float
        Half-width of the noise, in model input units (inputs are scaled to about [0, 1]).
    unoise_subjects, unoise_epochs : int
        Budget of the U-Noise randomisation check: a noise model is refitted for every randomised
        predictor (and for the trained one) on this many training subjects for this many noise
        epochs (at most ``explain.unoise_fit``'s, one pretraining epoch, no validation).
    """

    section_path: ClassVar[str] = "evaluate"
    randomisation: bool = True
    n_subjects: Annotated[int, Field(ge=1)] = 4
    threshold: Annotated[float, Field(ge=0, le=1)] = 0.5
    top_fraction: Annotated[float, Field(gt=0, le=1)] = 0.01
    faithfulness: bool = True
    faithfulness_subjects: Annotated[int, Field(ge=1)] = 16
    imputation: Literal["mean", "noisy_mean"] = "mean"
    sensitivity: bool = True
    sensitivity_subjects: Annotated[int, Field(ge=1)] = 4
    sensitivity_samples: Annotated[int, Field(ge=1)] = 5
    sensitivity_radius: Annotated[float, Field(gt=0, le=1)] = 0.02
    unoise_subjects: Annotated[int, Field(ge=2)] = 16
    unoise_epochs: Annotated[int, Field(ge=1)] = 2


class RunConfig(Section):
    """Execution: where items run. Not part of any cache key (results do not depend on it).

    Parameters
    ----------
    n_jobs : int
        Parallel workers for per-subject stages.
    backend : {"processes", "serial", "dask"}
    dask_address : str, optional
        Scheduler of an existing Dask cluster (``tcp://host:8786``).
    strict : bool
        Stop at the first subject that fails.
    omp_nthreads : int, optional
        Numerical threads (torch, OpenMP/BLAS, ITK) of each worker and of the main process
        (BIDS-Apps ``--omp-nthreads``). Default: 1 per worker of a per-subject stage, and the
        cores divided by ``n_jobs`` for a training worker.
    """

    section_path: ClassVar[str] = "run"
    n_jobs: Annotated[int, Field(ge=1)] = 2
    omp_nthreads: Annotated[int, Field(ge=1)] | None = None
    backend: Literal["processes", "serial", "dask"] = "processes"
    dask_address: str | None = None
    strict: bool = False


class Config(Section):
    """The whole configuration of a run (see the module docstring)."""

    seed: Annotated[int, Field(ge=0)] = 0
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    ensemble: EnsembleConfig = Field(default_factory=EnsembleConfig)
    bias_correction: BiasCorrectionConfig = Field(default_factory=BiasCorrectionConfig)
    explain: ExplainConfig = Field(default_factory=ExplainConfig)
    population: PopulationConfig = Field(default_factory=PopulationConfig)
    evaluate: EvaluateConfig = Field(default_factory=EvaluateConfig)
    stats: StatsConfig = Field(default_factory=StatsConfig)
    run: RunConfig = Field(default_factory=RunConfig)

    @model_validator(mode="after")
    def _stats_methods(self) -> Config:
        for m in self.stats.methods or []:
            if m not in self.explain.methods:
                raise ConfigError(
                    f"'stats.methods': {m!r} is not one of explain.methods "
                    f"({', '.join(self.explain.methods)}); "
                    f"{did_you_mean(m, self.explain.methods)}"
                )
        return self

    @property
    def stats_methods(self) -> list[str]:
        """Relevance methods the stats stage tests (default: the first explanation method)."""
        return list(self.stats.methods or self.explain.methods[:1])

    @property
    def split_seed(self) -> int:
        """Seed of the split: ``split.seed``, else the run's ``seed``."""
        return self.seed if self.split.seed is None else self.split.seed

    @property
    def seeds(self) -> list[int]:
        """Base-model seeds: ``ensemble.seeds`` or ``seed + 0 … seed + n_seeds − 1``."""
        if self.ensemble.seeds:
            return [int(s) for s in self.ensemble.seeds]
        return [self.seed + i for i in range(self.ensemble.n_seeds)]

    def merged(self, overrides: dict | None) -> Config:
        """Return a validated copy with the nested ``overrides`` applied."""
        return Config(**merge(self.to_dict(), overrides or {}))


#: The configuration of ``brainage demo``: a 4 mm synthetic cohort already in template space.
DEMO_OVERRIDES: dict[str, Any] = {
    "preprocess": {
        "resolution_mm": 4.0,
        "skull_strip": False,
        "bias_correct": False,
        "register": "none",
    },
    "split": {"n_folds": 3, "test_fraction": 0.15, "validation_fraction": 0.15},
    "train": {"resolution_mm": 4.0, "epochs": 20, "patience": 10, "augment": ["flip"]},
    "ensemble": {"n_seeds": 2},
    "bias_correction": {"n_bootstrap": 300},
    "stats": {"n_perm": 500, "atlas": "aal"},
}


def merge(base: dict, override: dict) -> dict:
    """Return ``base`` updated recursively with ``override`` (a new dict; inputs unchanged).

    Keys are not checked here: :class:`Config` rejects unknown ones with a did-you-mean.
    """
    out = copy.deepcopy(base)
    for key, value in (override or {}).items():
        if isinstance(out.get(key), dict) and isinstance(value, dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


class _Loader(yaml.SafeLoader):
    """YAML 1.2 floats: ``1e-3`` is a number (PyYAML's YAML 1.1 reads it as a string)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(
        r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
        |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
        |\.[0-9_]+(?:[eE][-+][0-9]+)?
        |[-+]?\.(?:inf|Inf|INF)
        |\.(?:nan|NaN|NAN))$""",
        re.X,
    ),
    list("-+0123456789."),
)


def read_yaml(path: str | Path) -> dict:
    """Read a YAML configuration file (a mapping of sections).

    Raises
    ------
    ConfigError
        Unreadable file, invalid YAML, or not a mapping.
    """
    try:
        loaded = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_Loader) or {}
    except (OSError, yaml.YAMLError) as exc:
        detail = " ".join(str(exc).split())
        raise ConfigError(f"cannot read configuration {path}: {detail}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(
            f"configuration {path} must be a mapping of sections; got {type(loaded).__name__}"
        )
    return loaded


def load_config(
    path: str | Path | None = None,
    overrides: dict | None = None,
    base: dict | None = None,
) -> Config:
    """Resolve and validate the configuration: defaults ← ``base`` ← YAML file ← ``overrides``.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file with a subset of the keys.
    overrides : dict, optional
        Applied last (e.g. from command-line options).
    base : dict, optional
        Applied first (e.g. :data:`DEMO_OVERRIDES`).

    Returns
    -------
    Config

    Raises
    ------
    ConfigError
        Unreadable YAML, unknown keys, wrong types or values, unknown names.
    """
    values: dict = copy.deepcopy(base or {})
    if path is not None:
        try:
            values = merge(values, read_yaml(path))
        except ConfigError as err:
            raise ConfigError(str(err)) from None
    values = merge(values, overrides or {})
    try:
        return Config(**values)
    except ConfigError as err:
        where = f" in {path}" if path is not None else ""
        raise ConfigError(f"invalid configuration{where}: {err}") from None


def dump_config(cfg: Config) -> str:
    """Return the configuration as YAML text (every value, defaults included)."""
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)


def seeds_of(cfg: Config) -> list[int]:
    """Return the base-model seeds of a configuration (:attr:`Config.seeds`)."""
    return cfg.seeds


__all__ = [
    "Config",
    "DEMO_OVERRIDES",
    "TRAINING_MEAN",
    "dump_config",
    "load_config",
    "merge",
    "read_yaml",
    "seeds_of",
]
