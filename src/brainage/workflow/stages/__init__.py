"""The stages of a run, one module each (see :mod:`brainage.workflow.stage`)."""

from brainage.workflow.stages.evaluate import EvaluateStage, TruthStage
from brainage.workflow.stages.explain import ExplainStage, NoiseStage
from brainage.workflow.stages.phases import PhasesStage
from brainage.workflow.stages.population import NativeRegionsStage, PopulationStage, RegionsStage
from brainage.workflow.stages.predict import PredictStage
from brainage.workflow.stages.preprocess import PreprocessStage
from brainage.workflow.stages.report import ReportStage
from brainage.workflow.stages.splits import SplitsStage
from brainage.workflow.stages.stats import StatsStage
from brainage.workflow.stages.subgroups import StabilityStage, SubgroupsStage
from brainage.workflow.stages.train import ReferenceStage, TrainStage
from brainage.workflow.stages.volumes import VolumesStage

#: Stages whose records ``brainage predict`` takes from the ``--model`` run.
MODEL_STAGES = ("train", "reference", "noise")


def ALL_STAGES() -> list:  # noqa: N802  (a constant-like factory)
    """Fresh instances of every stage of ``brainage run``, upstream first."""
    return [
        SplitsStage(),
        PreprocessStage(),
        VolumesStage(),
        TrainStage(),
        ReferenceStage(),
        PredictStage(),
        NoiseStage(),
        ExplainStage(),
        PopulationStage(),
        RegionsStage(),
        NativeRegionsStage(),
        SubgroupsStage(),
        StabilityStage(),
        PhasesStage(),
        TruthStage(),
        EvaluateStage(),
        StatsStage(),
        ReportStage(),
    ]


def APPLY_STAGES() -> list:  # noqa: N802
    """Stages of ``brainage predict`` (the models come from the ``--model`` run)."""
    return [SplitsStage(), PreprocessStage(), VolumesStage(), PredictStage(), ExplainStage()]


__all__ = [
    "ALL_STAGES",
    "APPLY_STAGES",
    "MODEL_STAGES",
    "EvaluateStage",
    "ExplainStage",
    "NativeRegionsStage",
    "NoiseStage",
    "PhasesStage",
    "PopulationStage",
    "PredictStage",
    "PreprocessStage",
    "ReferenceStage",
    "RegionsStage",
    "ReportStage",
    "SplitsStage",
    "StabilityStage",
    "StatsStage",
    "SubgroupsStage",
    "TrainStage",
    "TruthStage",
    "VolumesStage",
]
