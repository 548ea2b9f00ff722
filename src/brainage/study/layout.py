"""The study folder: the one place that builds the paths of ``brainage study`` outputs.

Layout of ``STUDY_OUT``::

    study.yaml                          the resolved study file (every default written)
    shared/preproc-<hash>/              preprocessing shared by the conditions with the same
                                        ``preprocess`` section (a run folder: sub-*/, records/;
                                        its stack of model inputs in preproc-<hash>_work/)
    shared/native/                      skull-stripped, N4-corrected native brains (by content)
    runs/cond-<c>_seed-<n>/             one run folder per (condition, seed) (RunLayout)
    runs.tsv                            one row per run: status, best / last test MAE, epochs
    curves.tsv                          validation and test MAE per epoch of every base model
    phases.tsv, phase_summary.tsv       phase checkpoints; paper 000's Table 2
    agreement.tsv                       voxel agreement across seeds per condition and phase
    ttests.tsv                          Welch t-tests of best / last test MAE between conditions
    regions_ranks.tsv, regions_stability.tsv   atlas-region ranks (top-1 % voxels) and their
                                        agreement across seeds and conditions
    maps/condition-<c>_method-<m>_<space>_stat-mean_relevance.nii.gz   mean over seeds
    maps/condition-<c>_phase-<k>_method-<m>_<space>_desc-agreementq<q>_mask.nii.gz
    failures.tsv, report.html, logs/study.log
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from brainage.errors import ConfigError
from brainage.io.layout import TEMPLATE_SPACE, label, res_label

#: Study-level tables (``STUDY_OUT/<name>.tsv``).
TABLES = ("runs", "curves", "phases", "phase_summary", "agreement", "ttests", "regions_ranks",
          "regions_stability", "failures")  # fmt: skip


@dataclass(frozen=True)
class StudyLayout:
    """Paths of one study folder (see the module docstring)."""

    root: Path

    def __post_init__(self) -> None:
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    @property
    def study_file(self) -> Path:
        """``STUDY_OUT/study.yaml``."""
        return self.root / "study.yaml"

    def shared(self, key: str) -> Path:
        """Folder of a shared preprocessing: ``STUDY_OUT/shared/preproc-<key>``."""
        return self.root / "shared" / f"preproc-{key}"

    @property
    def native_cache(self) -> Path:
        """Skull-stripped, N4-corrected native brains of every group: ``shared/native``."""
        return self.root / "shared" / "native"

    def run(self, name: str) -> Path:
        """Run folder of one (condition, seed): ``STUDY_OUT/runs/<name>``."""
        return self.root / "runs" / name

    def table(self, name: str) -> Path:
        """Return a study table path, ``STUDY_OUT/<name>.tsv`` (:data:`TABLES`)."""
        if name not in TABLES:
            raise ConfigError(f"no study table {name!r}; known: {', '.join(TABLES)}")
        return self.root / f"{name}.tsv"

    def condition_map(self, condition: str, method: str, resolution_mm: float) -> Path:
        """Mean over seeds of a condition's population mean maps."""
        space = f"space-{TEMPLATE_SPACE}_res-{res_label(resolution_mm)}"
        name = f"condition-{label(condition)}_method-{label(method)}_{space}_stat-mean_relevance"
        return self.root / "maps" / f"{name}.nii.gz"

    def agreement_map(
        self, condition: str, phase: str, method: str, resolution_mm: float, quantile: float
    ) -> Path:
        """Voxels agreeing across the seeds of a condition at a phase (``1``, … or ``final``).

        ``…_desc-agreementq<percent>_mask.nii.gz`` (``q5``: quantile 0.05).
        """
        space = f"space-{TEMPLATE_SPACE}_res-{res_label(resolution_mm)}"
        q = label(f"q{100 * quantile:g}")
        name = (f"condition-{label(condition)}_phase-{label(phase)}_method-{label(method)}_"
                f"{space}_desc-agreement{q}_mask")  # fmt: skip
        return self.root / "maps" / f"{name}.nii.gz"

    @property
    def report(self) -> Path:
        """``STUDY_OUT/report.html``."""
        return self.root / "report.html"

    @property
    def log(self) -> Path:
        """``STUDY_OUT/logs/study.log``."""
        return self.root / "logs" / "study.log"
