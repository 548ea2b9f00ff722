"""The explanation method: U-Noise importance ``1 − m`` of a trained noise model (paper 002)."""

from __future__ import annotations

import inspect
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

from brainage.errors import ConfigError, did_you_mean
from brainage.explain._core import model_device_dtype, register_method
from brainage.explain.unoise.fit import fit_unoise
from brainage.explain.unoise.noise_model import (
    UNoiseModel,
    as_cpu_batch,
    load_unoise,
    predictor_fingerprint,
)

__all__ = ["unoise", "unoise_importance"]


def unoise_importance(noise_model: UNoiseModel, x, batch_size: int = 2) -> np.ndarray:
    """U-Noise importance map ``1 − m`` of volumes (paper 002).

    Parameters
    ----------
    noise_model : UNoiseModel
        Trained by :func:`fit_unoise` (or loaded by :func:`load_unoise`).
    x : ndarray or Tensor, shape (n, c, i, j, k)
        Volumes on the predictor's grid (the space the noise model was trained in).
    batch_size : int
        Volumes per forward pass.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Importance in (0, 1) per voxel, in the input's voxel space: 1 − (tolerated noise level,
        rescaled to (0, 1)). High = the predictor cannot tolerate noise there.

    Raises
    ------
    TypeError
        ``noise_model`` is not a :class:`UNoiseModel`.
    DimensionError
        ``x`` is not 5D, or has another channel count or spatial shape than the training volumes.
    """
    if not isinstance(noise_model, UNoiseModel):
        raise TypeError(
            f"'noise_model' must be a UNoiseModel (from fit_unoise or load_unoise); got "
            f"{type(noise_model).__name__}"
        )
    return noise_model.importance(x, batch_size=batch_size)


@register_method("unoise")
def unoise(
    model: nn.Module,
    x,
    noise_model: UNoiseModel | None = None,
    noise_model_path: str | Path | None = None,
    batch_size: int = 2,
    check_predictor: bool = True,
    **fit_params,
):
    """3D U-Noise importance of ``model``'s prediction: ``1 − m`` (paper 002; METHODS §8).

    The noise model must have been trained for this predictor beforehand with
    :func:`fit_unoise` (training needs the training cohort and takes minutes to hours; it is
    done once per predictor and saved). The map is then one U-Net forward pass; ``model`` itself
    is only used to check that the noise model belongs to it.

    Parameters
    ----------
    model : torch.nn.Module
        The age predictor explained (output (n, 1), years).
    x : Tensor or ndarray, shape (n, c, i, j, k)
        Input volumes on the predictor's grid.
    noise_model : UNoiseModel, optional
        A trained noise model.
    noise_model_path : str or Path, optional
        Or the ``.pt`` file written by :func:`fit_unoise` (``out_path``).
    batch_size : int
        Volumes per U-Net forward pass.
    check_predictor : bool
        Raise if the noise model was trained for a predictor with other weights (compared by a
        fingerprint of its state dict).
    **fit_params
        Training parameters of :func:`fit_unoise` (e.g. ``vmin``, ``vmax``, ``r``, ``seed``) that
        the noise model is expected to have been trained with; a mismatch raises. Lets a
        configuration hold the method's parameters in one place.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Importance in (0, 1) in the input's voxel space (high = little noise tolerated).

    Raises
    ------
    ConfigError
        No noise model given (fit one with :func:`fit_unoise`), a missing noise-model file, a
        noise model trained for another predictor or with other ``fit_params``, or an unknown
        ``fit_params`` name.
    DimensionError
        ``x`` does not match the noise model's channels or grid.
    """
    if noise_model is None and noise_model_path is None:
        raise ConfigError(
            "U-Noise needs a noise model trained for this predictor: fit one with "
            "brainage.explain.unoise.fit_unoise(predictor, x_train, y_train, out_path=PATH) and "
            "pass noise_model=<the result> or noise_model_path=PATH"
        )
    if noise_model is None:
        path = Path(noise_model_path)
        if not path.is_file():
            raise ConfigError(
                f"'noise_model_path' {str(path)!r} does not exist; fit a noise model with "
                "brainage.explain.unoise.fit_unoise(predictor, x_train, y_train, out_path=PATH)"
            )
        noise_model = load_unoise(path)
    elif not isinstance(noise_model, UNoiseModel):
        raise TypeError(
            f"'noise_model' must be a UNoiseModel (from fit_unoise or load_unoise); got "
            f"{type(noise_model).__name__}"
        )
    _check_expected_params(noise_model, fit_params)
    if check_predictor:
        expected = noise_model.metadata.get("inputs", {}).get("predictor")
        got = predictor_fingerprint(model)
        if expected != got:
            raise ConfigError(
                f"the noise model was trained for another predictor (fingerprint {expected} ≠ "
                f"{got}); fit one for this model with brainage.explain.unoise.fit_unoise"
            )
    xt = as_cpu_batch(x, "x")
    device = model_device_dtype(model)[0] if isinstance(model, nn.Module) else torch.device("cpu")
    noise_model.to(device)
    return noise_model.importance(xt, batch_size=batch_size)


_NOT_TRAINING_PARAMS = {
    "predictor",
    "x_train",
    "y_train",
    "x_val",
    "y_val",
    "out_path",
    "progress",
    "device",
}


def _check_expected_params(noise_model: UNoiseModel, fit_params: dict) -> None:
    allowed = [k for k in inspect.signature(fit_unoise).parameters if k not in _NOT_TRAINING_PARAMS]
    trained = noise_model.params
    trained.update(noise_model.metadata.get("architecture", {}))
    for key, value in fit_params.items():
        if key not in allowed:
            raise ConfigError(f"'unoise' has no parameter {key!r}; {did_you_mean(key, allowed)}")
        if key in trained and json.dumps(trained[key]) != json.dumps(value):
            raise ConfigError(
                f"the noise model was trained with {key}={trained[key]!r}, not {value!r}; refit it "
                "with brainage.explain.unoise.fit_unoise or drop the parameter"
            )
