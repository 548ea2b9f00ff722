"""Public entry points: explain a batch of volumes with one model or with an ensemble."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from brainage.errors import ConfigError
from brainage.explain._core import (
    METHODS,
    as_volume_batch,
    check_method,
    model_device_dtype,
    positive_int,
)


@contextmanager
def _on_device(model: nn.Module, device):
    """Move ``model`` to ``device`` (None: leave it) for the block, and back afterwards."""
    original, _ = model_device_dtype(model)
    target = original if device is None else torch.device(device)
    if target == original:
        yield target
        return
    try:
        model.to(target)
        yield target
    finally:
        model.to(original)


def explain(
    model: nn.Module,
    volumes,
    method: str = "lrp",
    batch_size: int = 4,
    device=None,
    **params,
) -> np.ndarray:
    """Relevance maps of a regression model's predicted age for a stack of volumes.

    Runs the registered method ``method`` (see :func:`list_methods`) on batches of
    ``batch_size`` volumes. Every map is computed per volume (nothing is averaged over the
    batch), so the result does not depend on ``batch_size``. The model is explained in eval mode
    and is left exactly as it was (mode, parameters, ``requires_grad`` flags, no hooks), also
    after an error.

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), age in years.
    volumes : ndarray or Tensor, shape (n, c, i, j, k)
        Input volumes in the model's input space (e.g. the 2 mm MNI152NLin2009aSym crop box,
        preprocessed as for training); cast to the model's floating dtype.
    method : str
        ``"lrp"`` (default), ``"guided_backprop"``, ``"integrated_gradients"``, ``"gradcam"``,
        ``"smoothgrad"``, ``"occlusion"``, or any name added with :func:`register_method`.
    batch_size : int
        Volumes per call of the method (bounds memory).
    device : str, torch.device or None
        Where to compute (e.g. ``"cuda"``); None: the model's current device. The model is moved
        there for the call and moved back afterwards.
    **params
        Keyword parameters of the method (see its docstring), e.g. ``composite="alpha1_beta0"``
        for LRP or ``n_steps=32`` for Integrated Gradients.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Relevance per voxel in the input's voxel space (same grid and affine as ``volumes``);
        units and sign convention as documented by the method.

    Raises
    ------
    ConfigError
        Unknown method or parameter name (with "did you mean …"), or an invalid parameter value.
    DimensionError
        ``volumes`` is not 5D.
    InputError
        Non-finite volumes, or a model whose output is not one value per volume.
    """
    check_method(method, params)
    batch_size = positive_int("batch_size", batch_size)
    x = as_volume_batch(volumes, "volumes")
    fn = METHODS[method]
    out = np.empty(tuple(x.shape), dtype=np.float32)
    with _on_device(model, device):
        for start in range(0, x.shape[0], batch_size):
            out[start : start + batch_size] = fn(model, x[start : start + batch_size], **params)
    return out


def explain_ensemble(
    models: Sequence[nn.Module],
    volumes,
    method: str = "lrp",
    batch_size: int = 4,
    device=None,
    **params,
) -> np.ndarray:
    """Relevance maps of an ensemble: the mean of the base models' maps.

    ``R_ens(x) = (1/M) Σ_m R_m(x)``, each ``R_m`` computed by :func:`explain` with the same
    method and parameters (one model in memory on ``device`` at a time; a running sum keeps
    memory at two maps). For methods linear in the model output (gradients, Guided Backprop,
    Integrated Gradients with a fixed baseline, SmoothGrad with the same seed, occlusion) this is
    the map of the averaged prediction ``f̄ = (1/M) Σ_m f_m``; for LRP it sums to
    ``(1/M) Σ_m (f_m(x) − b_m)``, the mean deviation from the base models' output biases. For
    Grad-CAM it is only the average of the maps.

    Parameters
    ----------
    models : sequence of torch.nn.Module
        Base models (same input space), each with output shape (n, 1), years.
    volumes : ndarray or Tensor, shape (n, c, i, j, k)
        Input volumes.
    method, batch_size, device, **params
        As for :func:`explain`.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Mean relevance per voxel in the input's voxel space.

    Raises
    ------
    ConfigError, DimensionError, InputError
        As for :func:`explain`; ``ConfigError`` also for an empty ``models``.
    """
    if isinstance(models, nn.Module):
        models = [models]
    models = list(models)
    if not models:
        raise ConfigError("'models' must contain at least one model; got an empty sequence")
    check_method(method, params)
    x = as_volume_batch(volumes, "volumes")
    total = np.zeros(tuple(x.shape), dtype=np.float64)
    for model in models:
        total += explain(model, x, method=method, batch_size=batch_size, device=device, **params)
    return (total / len(models)).astype(np.float32)
