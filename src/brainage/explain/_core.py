"""Registry, protocol and shared guards of the explanation methods.

Every method is a function ``method(model, x, **params) -> ndarray`` registered with
:func:`register_method`. The decorator enforces the protocol for all of them, so that a method file
only holds the method itself:

* ``x`` is validated (a float tensor or array of shape (n, c, i, j, k)), detached, copied and moved
  to the model's device and dtype; the caller's tensor is never modified;
* the method runs under :func:`model_guard`: the model is in eval mode, and afterwards every
  module's training flag, every parameter's and buffer's tensor and ``requires_grad`` flag are as
  before and every hook added during the call is removed, also when an error is raised;
* the result is checked to have the input's shape and is returned as a float32 ndarray of
  relevance in the input's voxel space (same grid, same affine as the input volume).
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from contextlib import contextmanager

import numpy as np
import torch
from torch import nn

from brainage.errors import ConfigError, DimensionError, InputError, did_you_mean

METHODS: dict[str, Callable[..., np.ndarray]] = {}

_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
_HOOK_FLAG_DICTS = (
    "_forward_hooks_with_kwargs",
    "_forward_hooks_always_called",
    "_forward_pre_hooks_with_kwargs",
)


def list_methods() -> list[str]:
    """Return the names of the registered explanation methods, sorted."""
    return sorted(METHODS)


def register_method(name: str, version: str = "1", per_channel: bool = True):
    """Register an explanation method under ``name`` (decorator).

    The decorated function ``func(model, x, **params) -> torch.Tensor`` receives ``x`` as a
    detached float tensor of shape (n, c, i, j, k) on the model's device, is run with the model in
    eval mode under :func:`model_guard`, and must return a tensor (or array) of the same shape. The
    registered (and returned) callable has the public protocol
    ``method(model, x, **params) -> ndarray, shape (n, c, i, j, k), float32``.

    Parameters
    ----------
    name : str
        Registry key, e.g. ``"lrp"``.
    version : str
        Algorithm version; part of :func:`method_fingerprint`, so cached maps of an older
        version are recomputed.
    per_channel : bool
        Whether the method resolves the input channels (T1w, FLAIR). ``False`` for methods whose
        map is one spatial map repeated over the channels (Grad-CAM: a layer's map; occlusion:
        boxes through all channels): their relevance of a voxel is one channel's value, not the
        sum (:attr:`method.per_channel`).

    Returns
    -------
    callable
        Decorator that registers and returns the wrapped method.
    """

    def deco(func):
        @functools.wraps(func)
        def method(model: nn.Module, x, **params) -> np.ndarray:
            if not isinstance(model, nn.Module):
                raise TypeError(f"'model' must be a torch.nn.Module; got {type(model).__name__}")
            device, dtype = model_device_dtype(model)
            xt = as_volume_batch(x, "x").to(device=device, dtype=dtype).detach().clone()
            with model_guard(model), torch.enable_grad():
                out = func(model, xt, **params)
            if isinstance(out, torch.Tensor):
                out = out.detach().to("cpu", torch.float32).numpy()
            out = np.asarray(out, dtype=np.float32)
            if out.shape != tuple(xt.shape):
                raise RuntimeError(
                    f"explanation method {name!r} returned shape {out.shape} for input shape "
                    f"{tuple(xt.shape)} (a bug in the method)"
                )
            return out

        method.method_name = name
        method.version = version
        method.per_channel = bool(per_channel)
        method.raw = func
        METHODS[name] = method
        return method

    return deco


@functools.cache
def method_fingerprint(name: str) -> str:
    """Identity of a method's code: its version and the SHA-256 of its module's source.

    Part of the cache key of every relevance map, so that a change to a method's code (or to
    this module's shared plumbing) recomputes its maps.

    Raises
    ------
    ConfigError
        Unknown method.
    """
    import hashlib
    import sys

    check_method(name)
    fn = METHODS[name]
    h = hashlib.sha256(str(getattr(fn, "version", "1")).encode())
    for module in (sys.modules.get(fn.raw.__module__), sys.modules[__name__]):
        path = getattr(module, "__file__", None)
        if path:
            with open(path, "rb") as fh:
                h.update(fh.read())
    return h.hexdigest()[:16]


def method_parameters(name: str) -> dict[str, inspect.Parameter]:
    """Keyword parameters (name → :class:`inspect.Parameter`) of the registered method ``name``."""
    sig = inspect.signature(METHODS[name].raw)
    return {k: p for k, p in list(sig.parameters.items())[2:]}


def check_method(name: str, params: dict | None = None) -> None:
    """Validate a method name and the names of its keyword parameters.

    Raises
    ------
    ConfigError
        Unknown method, or a parameter the method does not take (with "did you mean …").
    """
    if not isinstance(name, str) or name not in METHODS:
        raise ConfigError(
            f"unknown explanation method {name!r}; {did_you_mean(str(name), METHODS)}"
        )
    allowed = method_parameters(name)
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in allowed.values()):
        return
    for key in params or {}:
        if key not in allowed:
            raise ConfigError(
                f"explanation method {name!r} has no parameter {key!r}; "
                f"{did_you_mean(key, allowed) if allowed else 'it takes no parameters'}"
            )


def as_volume_batch(volumes, name: str = "volumes") -> torch.Tensor:
    """Validate a batch of volumes and return it as a float tensor (no copy where possible).

    Parameters
    ----------
    volumes : ndarray or Tensor, shape (n, c, i, j, k)
        Batch of n volumes with c channels on an (i, j, k) voxel grid.
    name : str
        Parameter name used in error messages.

    Raises
    ------
    TypeError
        Not an array or tensor.
    DimensionError
        Not 5D, or an empty axis.
    InputError
        Not a real-valued array, or non-finite values.
    """
    if isinstance(volumes, np.ndarray):
        if not (
            np.issubdtype(volumes.dtype, np.floating) or np.issubdtype(volumes.dtype, np.integer)
        ):
            raise InputError(f"'{name}' must be real-valued; got dtype {volumes.dtype}")
        t = torch.from_numpy(np.ascontiguousarray(volumes))
    elif isinstance(volumes, torch.Tensor):
        t = volumes
    else:
        raise TypeError(
            f"'{name}' must be a numpy array or torch tensor; got {type(volumes).__name__}"
        )
    if t.ndim != 5:
        raise DimensionError(
            f"'{name}' must have shape (n, c, i, j, k) (5D); got shape {tuple(t.shape)}",
            fix="stack volumes as (subjects, channels, i, j, k); add axes with x[None, None]",
        )
    if min(t.shape) == 0:
        raise DimensionError(f"'{name}' has an empty axis; got shape {tuple(t.shape)}")
    if t.is_complex() or t.dtype == torch.bool:
        raise InputError(f"'{name}' must be real-valued; got dtype {t.dtype}")
    if not t.is_floating_point():
        t = t.float()
    if not bool(torch.isfinite(t).all()):
        raise InputError(
            f"'{name}' contains NaN or infinite values", fix="clean or mask them first"
        )
    return t


def model_device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    """Device and floating dtype of the model's first parameter (CPU, float32 if it has none)."""
    for p in model.parameters():
        dtype = p.dtype if p.is_floating_point() else torch.float32
        return p.device, dtype
    return torch.device("cpu"), torch.float32


@contextmanager
def model_guard(model: nn.Module):
    """Run a block with ``model`` in eval mode and leave the model exactly as found.

    On exit, also after an exception: every module's ``training`` flag is restored; every
    parameter and buffer slot holds its original object and that object its original storage,
    and every module its original children and ``forward`` (undoing any canonizer that failed to
    revert itself); ``requires_grad`` flags are restored; and every forward, forward-pre, backward
    and backward-pre hook registered during the block is removed (earlier hooks are kept).

    Parameters
    ----------
    model : torch.nn.Module
        The model to protect.

    Yields
    ------
    torch.nn.Module
        ``model``, in eval mode.
    """
    saved = []
    for module in model.modules():
        params = dict(module._parameters)
        buffers = dict(module._buffers)
        storage = {
            key: (t.detach(), t.data_ptr(), t.requires_grad if key in params else None)
            for key, t in {**buffers, **params}.items()
            if t is not None
        }
        hooks = {d: set(getattr(module, d, {}) or {}) for d in _HOOK_DICTS}
        layout = (dict(module._modules), vars(module).get("forward"))
        saved.append((module, module.training, params, buffers, storage, hooks, layout))
    try:
        model.eval()
        yield model
    finally:
        for module, training, params, buffers, storage, hooks, layout in saved:
            children, forward = layout
            if module._modules != children:
                module._modules.clear()
                module._modules.update(children)
            if vars(module).get("forward") is not forward:
                if forward is None:
                    del module.forward
                else:
                    module.forward = forward
            for d, keys in hooks.items():
                registry = getattr(module, d, None)
                if not registry:
                    continue
                for key in [k for k in registry if k not in keys]:
                    del registry[key]
                    for flag_dict in _HOOK_FLAG_DICTS:
                        getattr(module, flag_dict, {}).pop(key, None)
            for key in [k for k in module._parameters if k not in params]:
                del module._parameters[key]
            for key, p in params.items():
                if module._parameters.get(key) is not p:
                    module._parameters[key] = p
            for key in [k for k in module._buffers if k not in buffers]:
                del module._buffers[key]
            for key, b in buffers.items():
                if module._buffers.get(key) is not b:
                    module._buffers[key] = b
            for key, (alias, ptr, requires_grad) in storage.items():
                t = params[key] if key in params else buffers[key]
                if t.data_ptr() != ptr or t.shape != alias.shape:
                    t.data = alias
                if requires_grad is not None and t.requires_grad != requires_grad:
                    t.requires_grad_(requires_grad)
            module.training = training


def output_layer(model: nn.Module) -> nn.Module | None:
    """Return the output layer: ``model.output_layer`` if defined, else the last ``nn.Linear``."""
    layer = getattr(model, "output_layer", None)
    if isinstance(layer, nn.Module):
        return layer
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    return linears[-1] if linears else None


def output_bias(model: nn.Module) -> float:
    """Bias of the single output neuron (years; the training mean age for brainage models).

    0.0 when the output layer has no bias or cannot be found.
    """
    layer = output_layer(model)
    bias = getattr(layer, "bias", None)
    if bias is None:
        return 0.0
    if bias.numel() != 1:
        raise InputError(
            f"the model's output layer has {bias.numel()} outputs; brainage explains models with "
            "one output neuron (age, years)"
        )
    return float(bias.detach().reshape(()).item())


def as_column(out: torch.Tensor) -> torch.Tensor:
    """Check a model output of shape (n, 1) or (n,) and return it as shape (n, 1).

    Raises
    ------
    InputError
        The model returns anything other than one value per volume.
    """
    if not isinstance(out, torch.Tensor):
        raise InputError(f"the model must return a tensor; got {type(out).__name__}")
    if out.ndim == 1:
        return out[:, None]
    if out.ndim != 2 or out.shape[1] != 1:
        raise InputError(
            "the model's output must have shape (n, 1) (one age per volume); "
            f"got {tuple(out.shape)}",
            fix="explain a regression model with a single output neuron",
        )
    return out


def column_forward(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """Forward function for captum: ``model(x)`` checked to be of shape (n, 1)."""

    def forward(x: torch.Tensor) -> torch.Tensor:
        return as_column(model(x))

    return forward


def resolve_layer(model: nn.Module, layer) -> tuple[str, nn.Module]:
    """Find a submodule by dotted name (or accept a module of ``model``).

    Raises
    ------
    ConfigError
        No module of that name (the message suggests the closest names).
    """
    named = dict(model.named_modules())
    if isinstance(layer, nn.Module):
        for name, module in named.items():
            if module is layer:
                return name, module
        raise ConfigError("'layer' is a module that is not part of the model")
    if not isinstance(layer, str) or layer not in named:
        choices = [n for n in named if n]
        raise ConfigError(
            f"'layer' {layer!r} is not a module of the model; {did_you_mean(str(layer), choices)}"
        )
    return layer, named[layer]


def positive_int(name: str, value) -> int:
    """Return ``value`` as an int ≥ 1, or raise ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"'{name}' must be a positive integer; got {value!r}")
    return int(value)


def voxel_triple(name: str, value) -> tuple[int, int, int]:
    """Return ``value`` (an int or 3 ints, voxels) as a 3-tuple of positive ints."""
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        value = (value,) * 3
    try:
        triple = tuple(value)
    except TypeError:
        raise ConfigError(
            f"'{name}' must be a positive int or 3 positive ints (voxels); got {value!r}"
        ) from None
    if len(triple) != 3:
        raise ConfigError(
            f"'{name}' must be a positive int or 3 positive ints (voxels); got {value!r}"
        )
    return tuple(positive_int(name, v) for v in triple)


@contextmanager
def seeded(seed: int, device: torch.device):
    """Seed torch's generator for ``device`` inside the block; restore the previous state after.

    Only the CPU generator and, for a CUDA ``device``, that device's generator are touched, and
    both are restored on exit (``torch.random.fork_rng``), so global random state is unchanged.
    """
    devices = []
    if device.type == "cuda":
        devices = [device.index if device.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(int(seed))
        for index in devices:
            with torch.cuda.device(index):
                torch.cuda.manual_seed(int(seed))
        yield


def make_baseline(baseline, x: torch.Tensor) -> torch.Tensor:
    """Baseline volumes for ``x``: ``"zeros"``, ``"mean"``, a number, or one volume for all.

    Parameters
    ----------
    baseline : {"zeros", "mean"}, float, ndarray or Tensor
        ``"zeros"``: all-zero volumes. ``"mean"``: for each volume and channel, a constant volume
        at that volume's mean intensity. A number: a constant volume. An array of shape
        (c, i, j, k) or (1, c, i, j, k) (e.g. a template or the cohort's mean image on the same
        grid): the same baseline for every volume. (``brainage run`` also accepts
        ``"training_mean"`` in its configuration and passes the mean of the training volumes.)
    x : Tensor, shape (n, c, i, j, k)

    Returns
    -------
    Tensor, shape (n, c, i, j, k)

    Raises
    ------
    ConfigError
        Unknown name, or an array of the wrong shape.
    """
    if isinstance(baseline, str):
        if baseline == "zeros":
            return torch.zeros_like(x)
        if baseline == "mean":
            return x.mean(dim=(2, 3, 4), keepdim=True).expand_as(x).clone()
        hint = (
            "; 'training_mean' is resolved by brainage run / explain (outside them, pass the "
            "mean training volume as an array)"
            if baseline == "training_mean"
            else ""
        )
        raise ConfigError(
            f"'baseline' must be 'zeros', 'mean', a number or a volume; got {baseline!r}{hint}"
        )
    if isinstance(baseline, (int, float, np.number)) and not isinstance(baseline, bool):
        return torch.full_like(x, float(baseline))
    if isinstance(baseline, (np.ndarray, torch.Tensor)):
        b = torch.as_tensor(baseline).to(device=x.device, dtype=x.dtype)
        if b.ndim == 4:
            b = b[None]
        if b.ndim != 5 or b.shape[0] != 1 or tuple(b.shape[1:]) != tuple(x.shape[1:]):
            raise ConfigError(
                f"'baseline' volume must have shape {tuple(x.shape[1:])} or "
                f"{(1, *x.shape[1:])} (channels, i, j, k); got {tuple(baseline.shape)}"
            )
        if not bool(torch.isfinite(b).all()):
            raise InputError("'baseline' contains NaN or infinite values")
        return b.expand_as(x).clone()
    raise ConfigError(
        f"'baseline' must be 'zeros', 'mean', a number or a volume; got {type(baseline).__name__}"
    )
