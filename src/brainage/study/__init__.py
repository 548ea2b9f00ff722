"""Multi-seed × condition robustness studies (paper 000, METHODS §7).

* :mod:`.design` — the study file: conditions as configuration overrides, seeds, phases;
  :func:`expand_study` turns it into one validated run configuration per (condition, seed).
* :mod:`.analysis` — phases (the first checkpoint reaching each validation-MAE threshold, paper
  Table 2), voxel agreement across seeds, t-tests of MAE between conditions.
"""

from brainage.study.analysis import (
    PHASE_COLUMNS,
    condition_ttests,
    phase_summary,
    phase_table,
    voxel_agreement,
)
from brainage.study.design import StudyConfig, StudyRun, expand_study, read_study

__all__ = [
    "PHASE_COLUMNS",
    "StudyConfig",
    "StudyRun",
    "condition_ttests",
    "expand_study",
    "phase_summary",
    "phase_table",
    "read_study",
    "voxel_agreement",
]
