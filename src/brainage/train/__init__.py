"""Training base models: loop, early stopping, checkpoints, resume."""

from brainage.train.trainer import (
    TrainConfig,
    TrainResult,
    fold_target_scaling,
    load_model,
    predict_volumes,
    save_model,
    train_model,
)

__all__ = [
    "TrainConfig",
    "TrainResult",
    "fold_target_scaling",
    "load_model",
    "predict_volumes",
    "save_model",
    "train_model",
]
