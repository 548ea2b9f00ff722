"""Model-randomisation sanity check for explanation methods (Adebayo et al. 2018; METHODS §11).

Adebayo, Gilmer, Muelly, Goodfellow, Hardt & Kim (2018), "Sanity checks for saliency maps",
NeurIPS: an explanation that stays the same when the model's learned weights are destroyed cannot
be explaining what the model learned (it behaves like an edge detector of the input). The
*cascading* randomisation re-initialises the parameterised layers one at a time, from the output
layer towards the input, keeping earlier randomisations, and compares the map after each step with
the map of the trained model.

Similarity is the Spearman rank correlation between the two maps of each subject, computed over the
voxels of the brain mask (of ``|r|`` by default, as Adebayo et al.'s "absolute value" variant, or of
the signed relevance), averaged over subjects.

Pass rule (a convention of this package; Adebayo et al. judge visually and by similarity curves):
a method **passes** when the mean Spearman correlation after the full cascade (every layer
randomised) is below ``threshold`` = 0.5. A method whose maps barely change (correlation near 1)
fails: its maps reflect the input more than the model.
"""

from __future__ import annotations

import copy
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from scipy.stats import rankdata

from brainage.errors import ConfigError, DimensionError, InputError, did_you_mean
from brainage.evaluate._checks import as_mask, brain_voxels
from brainage.utils import check_random_state

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

#: Default pass threshold on the mean Spearman correlation after full randomisation.
PASS_THRESHOLD = 0.5

_INITS = ("reset", "normal")


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two 1D vectors (average ranks for ties).

    A constant vector carries no ranking: the correlation with a non-constant vector is defined
    here as 0 (no shared ordering), and between two constant vectors as NaN (undefined).

    Parameters
    ----------
    a, b : ndarray, shape (n_voxels,)
        Values at the same voxels.

    Returns
    -------
    float
        In [−1, 1], or NaN.
    """
    const_a = bool(np.all(a == a[0]))
    const_b = bool(np.all(b == b[0]))
    if const_a and const_b:
        return float("nan")
    if const_a or const_b:
        return 0.0
    ra = rankdata(a)
    rb = rankdata(b)
    ra -= ra.mean()
    rb -= rb.mean()
    return float(np.dot(ra, rb) / np.sqrt(np.dot(ra, ra) * np.dot(rb, rb)))


def _is_normalisation(module: nn.Module) -> bool:
    from torch import nn

    return isinstance(module, (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm))


def execution_order(model: nn.Module, volumes: torch.Tensor) -> list[str]:
    """Names of the modules that own parameters, in the order a forward pass first calls them.

    Parameters
    ----------
    model : torch.nn.Module
        The model (run once in eval mode under ``torch.no_grad`` on ``volumes[:1]``; its training
        flag is restored and the temporary hooks removed afterwards).
    volumes : Tensor, shape (n, c, i, j, k)
        Example input on the model's device.

    Returns
    -------
    list of str
        Dotted module names, input side first. Modules never called are left out (they do not
        influence the output).
    """
    import torch

    order: list[str] = []
    handles = []
    owners = [
        (n, m) for n, m in model.named_modules() if any(True for _ in m.parameters(recurse=False))
    ]

    def hook_for(name):
        def hook(module, args, output):
            if name not in order:
                order.append(name)

        return hook

    was_training = model.training
    try:
        for name, module in owners:
            handles.append(module.register_forward_hook(hook_for(name)))
        model.eval()
        with torch.no_grad():
            model(volumes[:1])
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)
    return order


def _reinitialise(module: nn.Module, seed: int, init: str, device: torch.device) -> None:
    """Re-initialise the parameters owned by ``module`` in place, reproducibly from ``seed``."""
    import torch

    with torch.no_grad():
        if init == "reset" and hasattr(module, "reset_parameters"):
            devices = []
            if device.type == "cuda":
                devices = [
                    device.index if device.index is not None else torch.cuda.current_device()
                ]
            with torch.random.fork_rng(devices=devices):
                torch.random.default_generator.manual_seed(int(seed))
                for index in devices:
                    with torch.cuda.device(index):
                        torch.cuda.manual_seed(int(seed))
                module.reset_parameters()
            return
        gen = torch.Generator().manual_seed(int(seed))
        weight = module._parameters.get("weight")
        sd = (
            float(weight.detach().float().std())
            if weight is not None and weight.numel() > 1
            else 0.0
        )
        if not np.isfinite(sd) or sd <= 0:
            sd = 0.01
        for p in module.parameters(recurse=False):
            noise = torch.randn(p.shape, generator=gen, dtype=torch.float32) * sd
            p.copy_(noise.to(device=p.device, dtype=p.dtype))


def _remap_params(params: dict, original: nn.Module, clone: nn.Module) -> dict:
    """Replace submodules of ``original`` among the method parameters by the clone's modules."""
    from torch import nn

    names = {id(m): n for n, m in original.named_modules()}
    clone_modules = dict(clone.named_modules())
    out = {}
    for key, value in params.items():
        if isinstance(value, nn.Module) and id(value) in names:
            value = clone_modules[names[id(value)]]
        out[key] = value
    return out


def _as_batch(volumes) -> torch.Tensor:
    import torch

    if isinstance(volumes, np.ndarray):
        volumes = torch.from_numpy(np.ascontiguousarray(volumes))
    if not isinstance(volumes, torch.Tensor):
        raise TypeError(
            f"'volumes' must be a numpy array or torch tensor; got {type(volumes).__name__}"
        )
    if volumes.ndim != 5 or min(volumes.shape) == 0:
        raise DimensionError(
            "'volumes' must have shape (n, c, i, j, k) (5D, no empty axis); "
            f"got {tuple(volumes.shape)}",
            fix="stack volumes as (subjects, channels, i, j, k); add axes with x[None, None]",
        )
    if not volumes.is_floating_point():
        volumes = volumes.float()
    if not bool(torch.isfinite(volumes).all()):
        raise InputError("'volumes' contains NaN or infinite values")
    return volumes.detach()


def _resolve_method(method, batch_size: int):
    """Return ``fn(model, volumes, **params) -> ndarray (n, c, i, j, k)`` for ``method``."""
    if callable(method):
        return method
    if not isinstance(method, str):
        raise TypeError(
            f"'method' must be a method name or a callable; got {type(method).__name__}"
        )
    from brainage.explain import explain

    def fn(model, volumes, **params):
        return explain(model, volumes, method=method, batch_size=batch_size, **params)

    return fn


def cascading_randomisation(
    model: nn.Module,
    volumes,
    method,
    seed: int,
    *,
    mask=None,
    signed: bool = False,
    layers=None,
    init: str = "reset",
    threshold: float = PASS_THRESHOLD,
    batch_size: int = 4,
    **params,
) -> pd.DataFrame:
    """Cascading model-randomisation sanity check of an explanation method (Adebayo et al. 2018).

    A deep copy of ``model`` is explained (step 0); then its parameterised layers are
    re-initialised one at a time from the output layer towards the input (in reverse order of
    the forward pass), the earlier randomisations being kept, and the volumes are explained after
    each step. Each map is compared with the step-0 map by the Spearman rank correlation over
    the mask voxels (all channels), per subject. ``model`` itself is never modified.

    Parameters
    ----------
    model : torch.nn.Module
        Trained regressor, output shape (n, 1), age in years.
    volumes : ndarray or Tensor, shape (n, c, i, j, k)
        Input volumes in the model's input space (e.g. the template crop box); a few subjects
        suffice.
    method : str or callable
        Name of a method of :func:`brainage.explain.explain` (``"lrp"``, ``"guided_backprop"``,
        …), or a callable ``f(model, volumes, **params) -> ndarray (n, c, i, j, k)``.
    seed : int
        Seeds the re-initialisations (step ``s`` uses its own seed drawn from ``seed``).
    mask : ndarray of bool, shape (i, j, k), optional
        Brain mask on the input grid; default all voxels.
    signed : bool
        Correlate signed relevance; default False correlates ``|r|`` (Adebayo et al.'s absolute
        variant, the one where failing methods show up most clearly).
    layers : sequence of str, optional
        Dotted names of the modules to randomise; default every module that owns parameters
        except normalisation layers (BatchNorm, GroupNorm, LayerNorm), i.e. the convolutions and
        dense layers. Always randomised in reverse forward order.
    init : {"reset", "normal"}
        ``"reset"``: the layer's own ``reset_parameters()`` (PyTorch's default initialisation),
        run under a seeded, restored torch generator; ``"normal"``: N(0, σ²) for every parameter
        of the layer with σ the standard deviation of the trained weight (0.01 if undefined).
        Layers without ``reset_parameters`` use ``"normal"``. Note that resetting a
        normalisation layer named in ``layers`` also resets its running statistics.
    threshold : float
        Pass threshold on the final mean Spearman correlation (default 0.5).
    batch_size : int
        Passed to :func:`brainage.explain.explain` when ``method`` is a name.
    **params
        Keyword parameters of the method (a submodule of ``model`` given as a value, e.g. a
        Grad-CAM layer, is mapped to the copy's module).

    Returns
    -------
    pandas.DataFrame
        One row per step (0 = trained model, then one per randomised layer): ``step``, ``layer``
        (the module randomised at that step; "" at step 0), ``n_randomised``, ``spearman`` (mean
        over subjects), ``spearman_sd``, ``spearman_min``, ``spearman_max``, ``n_subjects``.
        ``DataFrame.attrs`` holds the summary: ``randomisation_spearman`` (mean Spearman after
        full randomisation = last row), ``passes_randomisation`` (``randomisation_spearman <
        threshold``), ``threshold``, ``seed``, ``signed``, ``init``, ``method``.

    Raises
    ------
    TypeError
        ``model`` is not a module, ``volumes`` not an array / tensor, ``method`` neither a name
        nor a callable.
    ConfigError
        Unknown ``init``, unknown layer names, a model without parameterised layers, or an
        invalid ``threshold``.
    DimensionError, InputError
        Bad volumes or mask, or a method returning maps of another shape.

    Notes
    -----
    Cost: (number of randomised layers + 1) explanations of the volumes. A subject whose
    randomised map is constant gets correlation 0 (see :func:`spearman`).
    """
    from torch import nn

    if not isinstance(model, nn.Module):
        raise TypeError(f"'model' must be a torch.nn.Module; got {type(model).__name__}")
    if init not in _INITS:
        raise ConfigError(
            f"'init' must be one of {_INITS}; got {init!r}; {did_you_mean(str(init), _INITS)}"
        )
    if (
        isinstance(threshold, bool)
        or not isinstance(threshold, (int, float))
        or not -1 <= threshold <= 1
    ):
        raise ConfigError(
            f"'threshold' must be a Spearman correlation in [-1, 1]; got {threshold!r}"
        )
    rng = check_random_state(seed)
    x = _as_batch(volumes)
    explain_fn = _resolve_method(method, batch_size)

    work = copy.deepcopy(model)
    work.eval()
    work_params = _remap_params(params, model, work)
    device = next((p.device for p in work.parameters()), x.device)
    order = execution_order(work, x.to(device))
    named = dict(work.named_modules())
    if layers is None:
        chosen = [n for n in order if not _is_normalisation(named[n])]
    else:
        layers = [layers] if isinstance(layers, str) else list(layers)
        for name in layers:
            if name not in named:
                raise ConfigError(
                    f"'layers' entry {name!r} is not a module of the model; "
                    f"{did_you_mean(str(name), [n for n in named if n])}"
                )
            if name not in order:
                raise ConfigError(
                    f"'layers' entry {name!r} owns no parameters or is not used in the forward pass"
                )
        chosen = [n for n in order if n in set(layers)]
    if not chosen:
        raise ConfigError("the model has no parameterised layers to randomise")
    cascade = chosen[::-1]
    step_seeds = rng.integers(0, 2**31 - 1, size=len(cascade))

    def run() -> np.ndarray:
        out = explain_fn(work, x, **work_params)
        if hasattr(out, "detach"):
            out = out.detach().cpu().numpy()
        out = np.asarray(out, dtype=np.float64)
        if out.shape != tuple(x.shape):
            raise DimensionError(
                f"the explanation method returned shape {out.shape} for volumes of shape "
                f"{tuple(x.shape)}"
            )
        return out

    base = run()
    if mask is None:
        m = np.ones(tuple(x.shape[2:]), dtype=bool)
    else:
        m = as_mask("mask", mask, 3)
        if m.shape != tuple(x.shape[2:]):
            raise DimensionError(
                f"'mask' has shape {m.shape}; expected {tuple(x.shape[2:])} (the volumes' grid)"
            )
        brain_voxels(m, "mask")

    def vectors(maps: np.ndarray) -> np.ndarray:
        v = maps[:, :, m].reshape(maps.shape[0], -1)
        return v if signed else np.abs(v)

    base_v = vectors(base)
    rows = [_row(0, "", 0, np.array([spearman(v, v) for v in base_v]))]
    for step, (name, step_seed) in enumerate(zip(cascade, step_seeds, strict=True), start=1):
        _reinitialise(named[name], int(step_seed), init, device)
        maps_v = vectors(run())
        rho = np.array([spearman(a, b) for a, b in zip(base_v, maps_v, strict=True)])
        rows.append(_row(step, name, step, rho))
    table = pd.DataFrame(rows)
    final = float(table["spearman"].iloc[-1])
    table.attrs.update(
        {
            "randomisation_spearman": final,
            "passes_randomisation": bool(final < threshold) if np.isfinite(final) else None,
            "threshold": float(threshold),
            "seed": int(seed) if not isinstance(seed, np.random.Generator) else None,
            "signed": bool(signed),
            "init": init,
            "method": method
            if isinstance(method, str)
            else getattr(method, "__name__", repr(method)),
        }
    )
    return table


def _row(step: int, layer: str, n_randomised: int, rho: np.ndarray) -> dict:
    finite = rho[np.isfinite(rho)]
    return {
        "step": step,
        "layer": layer,
        "n_randomised": n_randomised,
        "spearman": float(finite.mean()) if finite.size else float("nan"),
        "spearman_sd": float(finite.std(ddof=1)) if finite.size > 1 else float("nan"),
        "spearman_min": float(finite.min()) if finite.size else float("nan"),
        "spearman_max": float(finite.max()) if finite.size else float("nan"),
        "n_subjects": int(finite.size),
    }


def randomisation_summary(table: pd.DataFrame, threshold: float = PASS_THRESHOLD) -> dict:
    """Summary of a :func:`cascading_randomisation` table: final Spearman and the pass decision.

    Parameters
    ----------
    table : pandas.DataFrame
        Output of :func:`cascading_randomisation` (rows ordered by ``step``).
    threshold : float
        Pass threshold (default 0.5): passes when the mean Spearman after full randomisation is
        below it.

    Returns
    -------
    dict
        ``randomisation_spearman`` (float), ``passes_randomisation`` (bool, or None when the
        correlation is undefined).

    Raises
    ------
    InputError
        ``table`` lacks the ``step`` / ``spearman`` columns or is empty.
    """
    if (
        not isinstance(table, pd.DataFrame)
        or not {"step", "spearman"} <= set(table.columns)
        or table.empty
    ):
        raise InputError(
            "'table' must be the non-empty output of cascading_randomisation "
            "(columns 'step' and 'spearman')"
        )
    final = float(table.sort_values("step")["spearman"].iloc[-1])
    return {
        "randomisation_spearman": final,
        "passes_randomisation": bool(final < threshold) if np.isfinite(final) else None,
    }
