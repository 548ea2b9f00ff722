"""Layer-wise relevance propagation (LRP) with zennit (papers 001, 003; METHODS §8)."""

from __future__ import annotations

import inspect
from collections.abc import Sequence

import torch
from torch import nn

from brainage.errors import ConfigError, did_you_mean
from brainage.explain._core import as_column, output_bias, register_method

#: Composite names accepted by :func:`lrp` (zennit rule sets for 3D regression CNNs).
COMPOSITES = (
    "epsilon_plus_flat",
    "epsilon_gamma_box",
    "alpha1_beta0",
    "epsilon_alpha2_beta1_flat",
)


def _box(value, x: torch.Tensor, reduce) -> torch.Tensor:
    """Bound of the ZBox rule: per-volume min/max of ``x`` (None), a float, or a tensor.

    The per-volume bound has shape (n,): zennit appends singleton axes to match the first
    layer's input, so it suits a Conv3d on the volume and a Conv2d on a projection of it (whose
    values lie within the volume's range) alike.
    """
    if value is None:
        return reduce(x.flatten(1), dim=1).values
    return torch.as_tensor(value, dtype=x.dtype, device=x.device)


def _first_layers_by_name(composite, names: Sequence[str], zc):
    """Give the first-layer rule of ``composite`` to the modules ``names`` (and to no others).

    zennit's ``SpecialFirstLayerMapComposite`` applies its ``first_map`` to the first matching
    module in module order only; a model with several input branches (a 2.5D projection model)
    names its input layers instead, and every other module gets the ``layer_map`` rule.
    Composites without a ``first_map`` are returned unchanged.
    """
    first_map = getattr(composite, "first_map", None)
    if not first_map or not isinstance(composite, zc.LayerMapComposite):
        return composite
    names = frozenset(names)

    def module_map(ctx, name, module):
        if name in names:
            for types, hook in first_map:
                if isinstance(module, types):
                    return hook
        return zc.LayerMapComposite.mapping(composite, ctx, name, module)

    composite.module_map = module_map
    return composite


def make_composite(
    name: str,
    x: torch.Tensor,
    canonizers="auto",
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
    low=None,
    high=None,
    zero_bias: bool = True,
    first_layers: Sequence[str] | None = None,
):
    """Build the zennit composite ``name`` for explaining ``x``.

    Parameters
    ----------
    name : {"epsilon_plus_flat", "epsilon_gamma_box", "alpha1_beta0", "epsilon_alpha2_beta1_flat"}
        ``epsilon_plus_flat``: Flat rule for the first layer, z⁺ (= α1β0) for the other
        convolutions, ε for dense layers (zennit ``EpsilonPlusFlat``).
        ``epsilon_alpha2_beta1_flat``: the same with α2β1 instead of z⁺, so that inhibitory
        (negative) contributions get negative relevance (zennit ``EpsilonAlpha2Beta1Flat``).
        ``epsilon_gamma_box``: Z^B (box) rule for the first convolution, γ rule for the other
        convolutions, ε for dense layers (zennit ``EpsilonGammaBox``).
        ``alpha1_beta0``: α1β0 for every convolution including the first, ε for dense layers
        (iNNvestigate's "sequential preset A", as in paper 001).
        All: ``Pass`` for activations and BatchNorm, ``Norm`` for average pooling and for the
        residual ``Sum``; max pooling routes relevance to the maximum (its gradient).
    x : Tensor, shape (n, c, i, j, k)
        The input batch (sets the default Z^B box bounds).
    canonizers : "auto", None or sequence of zennit canonizers
        ``"auto"``: :func:`brainage.explain.canonizers.default_canonizers` (BatchNorm merging and
        the ``BasicBlock3D`` / ``Bottleneck3D`` skip-connection ``Sum``); None or ``[]``: none.
    epsilon, gamma, stabilizer : float
        ε of the ε rule, γ of the γ rule, and the denominator stabiliser of the other rules.
    low, high : float, Tensor or None
        Z^B bounds (intensity units of ``x``); None: each volume's own minimum / maximum.
    zero_bias : bool
        Give every rule ``zero_params=["bias"]`` so that biases absorb no relevance.
    first_layers : sequence of str or None
        Module names that get the first-layer rule (Flat, Z^B) instead of the first convolution
        in module order, e.g. the first convolution of each branch of a 2.5D model
        (``model.input_layers``); None: zennit's default.

    Returns
    -------
    zennit.core.Composite

    Raises
    ------
    ConfigError
        Unknown composite name or canonizers value.
    """
    from brainage.explain import canonizers as _canonizers

    zennit = _canonizers.zennit  # imported through the torchvision shim
    zc = zennit.composites

    if name not in COMPOSITES:
        raise ConfigError(f"unknown LRP composite {name!r}; {did_you_mean(str(name), COMPOSITES)}")
    if isinstance(canonizers, str):
        if canonizers != "auto":
            raise ConfigError(
                "'canonizers' must be 'auto', None or a list of zennit canonizers; "
                f"got {canonizers!r}"
            )
        canon = _canonizers.default_canonizers()
    elif canonizers is None:
        canon = []
    elif isinstance(canonizers, Sequence) and all(
        isinstance(c, zennit.canonizers.Canonizer) for c in canonizers
    ):
        canon = list(canonizers)
    else:
        raise ConfigError(
            f"'canonizers' must be 'auto', None or a list of zennit canonizers; got {canonizers!r}"
        )
    zero_params = ["bias"] if zero_bias else None
    if name == "epsilon_plus_flat":
        comp = zc.EpsilonPlusFlat(
            epsilon=epsilon, stabilizer=stabilizer, zero_params=zero_params, canonizers=canon
        )
    elif name == "epsilon_alpha2_beta1_flat":
        comp = zc.EpsilonAlpha2Beta1Flat(
            epsilon=epsilon, stabilizer=stabilizer, zero_params=zero_params, canonizers=canon
        )
    elif name == "epsilon_gamma_box":
        comp = zc.EpsilonGammaBox(
            low=_box(low, x, torch.min),
            high=_box(high, x, torch.max),
            epsilon=epsilon,
            gamma=gamma,
            stabilizer=stabilizer,
            zero_params=zero_params,
            canonizers=canon,
        )
    else:
        layer_map = zc.layer_map_base(stabilizer) + [
            (
                zennit.types.Convolution,
                zennit.rules.AlphaBeta(
                    alpha=1.0, beta=0.0, stabilizer=stabilizer, zero_params=zero_params
                ),
            ),
            (nn.Linear, zennit.rules.Epsilon(epsilon=epsilon, zero_params=zero_params)),
        ]
        comp = zc.LayerMapComposite(layer_map=layer_map, canonizers=canon)
    return comp if first_layers is None else _first_layers_by_name(comp, first_layers, zc)


@register_method("lrp")
def lrp(
    model: nn.Module,
    x: torch.Tensor,
    composite: str = "epsilon_plus_flat",
    canonizers="auto",
    epsilon: float = 1e-6,
    gamma: float = 0.25,
    stabilizer: float = 1e-6,
    low=None,
    high=None,
    zero_bias: bool = True,
):
    """Layer-wise relevance propagation of the predicted age (Bach et al. 2015; zennit).

    Relevance is propagated from the single output neuron down to the input voxels with the
    rules of ``composite`` (see :func:`make_composite`), after the model has been canonized
    (BatchNorm merged into the preceding convolution; residual additions of ``BasicBlock3D``
    and ``Bottleneck3D`` replaced by a relevance-splitting ``Sum``). Hooks and canonizers exist
    only inside zennit's composite context and are removed on exit, also after an error.

    **Bias handling and conservation.** With ``zero_bias=True`` (default) every rule ignores
    biases (``zero_params=["bias"]``), so no relevance is absorbed by biases, and the relevance
    that starts at the output neuron is the prediction minus the output bias,
    ``R_out = f(x) − b_out``. For brainage models ``b_out`` is the training mean age, so
    ``R_out`` is the deviation of the predicted age from the mean age (years), and up to the
    stabilisers (ε, ~1e-6) relevance is conserved layer by layer::

        Σ_voxels R(x) = f(x) − b_out          (per volume)

    Conservation is only approximate where a z⁺/α1β0 or γ rule meets a neuron that received
    relevance but whose bias-free positive pre-activation is exactly 0 (its relevance is dropped):
    this happens in very narrow networks at 1×1×1 resolution, not at brainage's default widths
    and input sizes (tests: within 0.01 % for HofmannCNN and ResNet-18 at 24×28×22). The merged
    BatchNorms add a relative error of about 5·10⁻⁶ each (see
    :mod:`brainage.explain.canonizers`).

    With ``zero_bias=False`` the start relevance is the full prediction ``f(x)`` and every layer's
    bias (the output bias included) absorbs a share, so the sum is smaller than ``f(x)`` by the
    absorbed part.

    **Sign convention.** Signed relevance in years: positive voxels push the predicted age above
    the mean age (towards "older"), negative voxels below it (towards "younger").

    **Models with several input branches.** If the model lists its input layers in
    ``model.input_layers`` (module names; the 2.5D
    :class:`brainage.models.projection.ProjectionCNN` names the first convolution of each
    branch), all of them get the composite's first-layer rule. A projection inside the model (a
    mean over an axis) is no module: autograd passes the relevance of each projected pixel back
    divided equally among the voxels of its ray, so the map stays 3D and is still conserved.

    Parameters
    ----------
    model : torch.nn.Module
        Regressor with output shape (n, 1), years (HofmannCNN, ResNet3D, …).
    x : Tensor, shape (n, c, i, j, k)
        Input volumes (model input space, e.g. MNI 2009a crop box).
    composite : {"epsilon_plus_flat", "epsilon_gamma_box", "alpha1_beta0", \
"epsilon_alpha2_beta1_flat"}
        Rule set (see :func:`make_composite`).
    canonizers : "auto", None or list of zennit canonizers
        ``"auto"``: BatchNorm merging + residual-block canonizers. None: no canonization (then
        relevance is *not* conserved through residual blocks).
    epsilon, gamma, stabilizer : float
        Rule parameters (ε for dense layers, γ for the γ rule, denominator stabiliser).
    low, high : float, Tensor or None
        Bounds of the Z^B rule (``epsilon_gamma_box`` only), intensity units; None: per volume
        minimum / maximum.
    zero_bias : bool
        See "Bias handling" above.

    Returns
    -------
    ndarray, shape (n, c, i, j, k), float32
        Relevance per voxel, years, in the input's voxel space.
    """
    comp = make_composite(
        composite,
        x,
        canonizers=canonizers,
        epsilon=epsilon,
        gamma=gamma,
        stabilizer=stabilizer,
        low=low,
        high=high,
        zero_bias=zero_bias,
        first_layers=getattr(model, "input_layers", None),
    )
    bias = output_bias(model) if zero_bias else 0.0
    x = x.requires_grad_(True)
    with comp.context(model) as modified:
        out = as_column(modified(x))
        start = out.detach() - bias
        (relevance,) = torch.autograd.grad(out, x, grad_outputs=start)
    return relevance


def _register_composite(composite: str) -> None:
    """Register ``lrp_<composite>``: :func:`lrp` with that composite, under its own name.

    So that one run can compare composites side by side (one row each in ``xai.tsv``); the
    parameters are those of :func:`lrp` without ``composite``.
    """

    def variant(model: nn.Module, x: torch.Tensor, **params):
        return lrp.raw(model, x, composite=composite, **params)

    sig = inspect.signature(lrp.raw)
    variant.__signature__ = sig.replace(
        parameters=[p for n, p in sig.parameters.items() if n != "composite"]
    )
    variant.__name__ = f"lrp_{composite}"
    variant.__doc__ = (
        f"LRP with the ``{composite}`` composite: :func:`lrp` with ``composite={composite!r}``."
    )
    register_method(f"lrp_{composite}")(variant)


for _name in COMPOSITES[1:]:
    _register_composite(_name)
