"""Starting points of training: a fresh model, or a user's checkpoint (``train.init_from``).

A checkpoint is read with ``torch.load(weights_only=True)`` (no code is unpickled, nothing is
downloaded): a brainage ``model.pt``, a plain state dict, a dict with a ``state_dict`` key or a
``torch.nn.DataParallel`` state dict (e.g. the published UK Biobank SFCN of Peng et al. 2021).
Training results are keyed by the checkpoint's SHA-256, not its path.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import nn

from brainage.errors import InputError
from brainage.utils import file_hash

if TYPE_CHECKING:
    from brainage.train.trainer import TrainConfig


def checkpoint_sha256(path: str | Path) -> str:
    """SHA-256 (64 hex digits) of the bytes of a ``train.init_from`` checkpoint (cache keys).

    Raises
    ------
    InputError
        The file does not exist or cannot be read.
    """
    try:
        return file_hash(path, length=64)
    except OSError as err:
        raise InputError(
            f"'train.init_from': cannot read the checkpoint ({err.strerror or err})",
            "give the path of an existing checkpoint file, or set train.init_from: null",
            path=path,
        ) from None


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read the state dict of a ``train.init_from`` checkpoint, never unpickling code.

    Parameters
    ----------
    path : str or Path
        A brainage ``model.pt`` or resume checkpoint (its ``"model"`` entry), a plain state
        dict, a dict with a ``"state_dict"`` key, or a ``torch.nn.DataParallel`` state dict
        (keys ``module.…``; the prefix is stripped). Read with
        ``torch.load(map_location="cpu", weights_only=True)``.

    Returns
    -------
    dict of str to Tensor
        On the CPU.

    Raises
    ------
    InputError
        Missing file, a file ``torch.load(weights_only=True)`` refuses, or no state dict in it.
    """
    path = Path(path)
    fix = "give a file saved with torch.save(model.state_dict())"
    if not path.is_file():
        raise InputError(
            "'train.init_from': checkpoint file not found", f"{fix}, or set it to null", path=path
        )
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError, …
        first = str(err).strip().splitlines()[0] if str(err).strip() else ""
        raise InputError(
            "'train.init_from': not readable as a weights-only torch file "
            f"({type(err).__name__}: {first[:200]})",
            f"{fix}; brainage loads tensors only and never unpickles code",
            path=path,
        ) from None
    for key in ("state_dict", "model"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if (
        not isinstance(obj, dict)
        or not obj
        or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    ):
        raise InputError(
            f"'train.init_from': the file holds no state dict (got a {type(obj).__name__} that is "
            "not a non-empty mapping of names to tensors)",
            fix,
            path=path,
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module.") :]: v for k, v in obj.items()}
    return dict(obj)


def load_init_weights(model: nn.Module, state: dict, path: str | Path, name: str) -> None:
    """Load ``state`` (from :func:`read_state_dict`) into ``model``, or say clearly why not.

    BatchNorm ``num_batches_tracked`` counters missing from older files are tolerated (they do
    not affect the model in eval mode nor with the default momentum).

    Raises
    ------
    InputError
        Missing or unexpected keys, or a tensor whose shape differs, naming the file, the key,
        the expected and the found shape and what to change.
    """
    expected = model.state_dict()
    missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
    unexpected = [k for k in state if k not in expected]
    fix = (
        f"give a checkpoint of train.model {name!r} with the same train.model_params (the "
        "published UK Biobank SFCN needs model sfcn, output soft_label, 40 bins from 42, "
        "1 input channel)"
    )
    if missing or unexpected:
        raise InputError(
            f"'train.init_from' does not fit model {name!r}: {len(missing)} key(s) missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]})",
            fix,
            path=path,
        )
    for key, want in expected.items():
        if key not in state:
            continue
        got = state[key]
        if tuple(got.shape) != tuple(want.shape):
            hint = fix
            bins = getattr(model, "bin_conv", None)
            if bins is not None and key.startswith("classifier.") and got.ndim >= 1:
                hint = (
                    f"the checkpoint has {got.shape[0]} age bins; set "
                    f"train.model_params.n_bins: {got.shape[0]} (and bin_start, bin_width to "
                    "the checkpoint's bins); brainage then extends them to the cohort's ages"
                )
            raise InputError(
                f"'train.init_from': {key!r} has shape {tuple(got.shape)} in the checkpoint; "
                f"model {name!r} expects {tuple(want.shape)}",
                hint,
                path=path,
            )
    model.load_state_dict(state, strict=False)


def initial_model(
    config: TrainConfig, input_shape, y_train, compartment: str | None = None
) -> tuple[nn.Module, dict[str, Any]]:
    """Build the model that training starts from (random or ``config.init_from``), on the CPU.

    Parameters
    ----------
    config : TrainConfig
    input_shape : sequence of int, length 4
        (c, i, j, k) of one input volume, voxels.
    y_train : array-like, shape (n_train,)
        Training ages, years (set the output bias, the target scaling and the age bins).
    compartment : str, optional
        Build the architecture for this brain compartment's crop box and wrap it in a
        :class:`brainage.models.compartment.CompartmentModel` (region sub-ensembles, paper 001
        type ii). ``model_params["input_shape"]`` is then the box shape.

    Returns
    -------
    model : torch.nn.Module
        Train mode. Its output neuron (if any) has bias 0 with standardised targets, else the
        training mean age; a soft-label model's bins cover every training age ± 2 ×
        ``soft_label_sigma`` (pretrained bins kept and extended, see
        :meth:`brainage.models.SFCN.extend_bins`).
    model_params : dict
        The architecture's keyword arguments (``input_shape``, ``in_channels``, the bins used),
        as recorded in ``model.json`` to rebuild it.

    Raises
    ------
    InputError
        ``config.init_from`` is missing, unreadable or does not fit the architecture.
    """
    from brainage.models import build_model
    from brainage.train.trainer import _target_scaling, is_soft_label_model

    y_train = np.asarray(y_train, dtype=np.float64)
    soft = is_soft_label_model(config.model, config.model_params)
    standardize, mean, sd = _target_scaling(config, y_train)
    init_bias = 0.0 if standardize else mean
    input_shape = tuple(int(s) for s in input_shape)
    model_params = {"input_shape": input_shape[1:], "in_channels": input_shape[0]}
    model_params.update(config.model_params)
    if compartment is not None:
        from brainage.models.compartment import compartment_crop_shape, for_compartment

        model_params["input_shape"] = compartment_crop_shape(
            compartment, config.resolution_mm, input_shape[1:]
        )

    def make(params):
        net = build_model(config.model, mean_age=init_bias, **params)
        if compartment is None:
            return net
        return for_compartment(net, compartment, config.resolution_mm)

    model = make(model_params)
    margin = 2.0 * config.soft_label_sigma
    if config.init_from is not None:
        state = read_state_dict(config.init_from)
        inner = model if compartment is None else model.net
        load_init_weights(inner, state, config.init_from, config.model)
        del state
        if not soft:  # the checkpoint's output neuron predicts years: re-express it in z
            with torch.no_grad():
                model.output_layer.weight.div_(sd)
                model.output_layer.bias.fill_(init_bias)
    if soft:
        n_below, n_above = model.covering_bins(y_train, margin)
        if config.init_from is not None:
            model.extend_bins(n_below, n_above)  # pretrained bins kept, new ones appended
        elif n_below or n_above:  # a fresh model is simply built on the wider bins
            model_params["bin_start"] = model.bin_start - n_below * model.bin_width
            model_params["n_bins"] = model.n_bins + n_below + n_above
            model = make(model_params)
        model_params["bin_start"], model_params["n_bins"] = model.bin_start, model.n_bins
    return model, model_params
