"""Multi-seed × condition robustness studies (paper 000, METHODS §7).

* :mod:`.design` — the study file: conditions as configuration overrides, seeds, phases;
  :func:`expand_study` turns it into one validated run configuration per (condition, seed).
* :mod:`.analysis` — phases (the first checkpoint reaching each validation-MAE threshold, paper
  Table 2), voxel agreement across seeds, t-tests of MAE between conditions.
* :mod:`.runner` — ``brainage study``: shared preprocessing, one stage-engine run per
  (condition, seed) on a serial, local-process or Dask executor, resumable.
* :mod:`.summary` — the study tables and maps from the run folders; :mod:`.layout` — its paths.
"""

from brainage.study.analysis import (
    PHASE_COLUMNS,
    condition_ttests,
    phase_summary,
    phase_table,
    voxel_agreement,
)
from brainage.study.design import StudyConfig, StudyRun, expand_study, read_study
from brainage.study.layout import StudyLayout
from brainage.study.runner import StudyResult, read_runs, run_study

__all__ = [
    "PHASE_COLUMNS",
    "StudyConfig",
    "StudyLayout",
    "StudyResult",
    "StudyRun",
    "condition_ttests",
    "expand_study",
    "phase_summary",
    "phase_table",
    "read_runs",
    "read_study",
    "run_study",
    "voxel_agreement",
]
