"""Data for training: splits, in-memory volume datasets, augmentation."""

from brainage.data.augment import build_augmentation
from brainage.data.splits import SPLITS, fold_column, make_folds, make_splits

__all__ = ["SPLITS", "build_augmentation", "fold_column", "make_folds", "make_splits"]
