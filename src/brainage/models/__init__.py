"""3D CNN regressors of age (years) and their registry."""

from brainage.models.hofmann import HofmannCNN
from brainage.models.registry import MODELS, build_model, check_model_params, register_model
from brainage.models.resnet import ResNet3D

__all__ = [
    "MODELS",
    "HofmannCNN",
    "ResNet3D",
    "build_model",
    "check_model_params",
    "register_model",
]
