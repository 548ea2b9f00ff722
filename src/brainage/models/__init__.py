"""3D CNN regressors of age (years) and their registry."""

from brainage.models.hofmann import HofmannCNN
from brainage.models.linear import VoxelRidge, fit_voxel_ridge
from brainage.models.projection import ProjectionCNN
from brainage.models.registry import MODELS, build_model, check_model_params, register_model
from brainage.models.resnet import ResNet3D
from brainage.models.sfcn import SFCN

__all__ = [
    "MODELS",
    "HofmannCNN",
    "ProjectionCNN",
    "ResNet3D",
    "SFCN",
    "VoxelRidge",
    "build_model",
    "check_model_params",
    "fit_voxel_ridge",
    "register_model",
]
