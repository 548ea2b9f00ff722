"""brainage: interpretable brain-age estimation from 3D MRI."""

__version__ = "0.1.0"

__all__ = ["__version__"]
