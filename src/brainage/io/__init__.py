"""Reading and writing: NIfTI volumes, cohorts (BIDS or table), atomic file writes."""

from brainage.io.atomic import atomic_path, write_json, write_tsv
from brainage.io.cohort import Cohort, read_bids, read_cohort, read_table
from brainage.io.nifti import load_volume, save_nifti

__all__ = [
    "Cohort",
    "atomic_path",
    "load_volume",
    "read_bids",
    "read_cohort",
    "read_table",
    "save_nifti",
    "write_json",
    "write_tsv",
]
