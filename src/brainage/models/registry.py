"""Registry of model architectures: a new architecture is one file plus one ``register_model``."""

from __future__ import annotations

from collections.abc import Callable

from brainage.errors import ConfigError, did_you_mean

MODELS: dict[str, Callable] = {}


def register_model(name: str):
    """Register a model class or factory under ``name`` (decorator)."""

    def deco(factory):
        MODELS[name] = factory
        return factory

    return deco


def build_model(name: str, **params):
    """Build the model registered as ``name`` with keyword ``params``.

    Raises
    ------
    ConfigError
        Unknown ``name`` (the message lists the registered names).
    """
    if name not in MODELS:
        raise ConfigError(f"unknown model {name!r}; {did_you_mean(name, MODELS)}")
    return MODELS[name](**params)


#: Arguments of an architecture that the trainer sets from the data (not configurable).
DATA_PARAMS = ("input_shape", "in_channels", "mean_age")


def check_model_params(name: str, params: dict | None) -> None:
    """Validate a model name and the names of its configurable keyword parameters.

    Parameters
    ----------
    name : str
        Registered architecture (``train.model``).
    params : dict or None
        Keyword arguments (``train.model_params``); :data:`DATA_PARAMS` are set by the trainer.

    Raises
    ------
    ConfigError
        Unknown model, or a parameter the architecture does not take (with "did you mean …").
    """
    import inspect

    if name not in MODELS:
        raise ConfigError(
            f"'train.model': unknown model {name!r}; {did_you_mean(str(name), MODELS)}"
        )
    sig = inspect.signature(MODELS[name])
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in sig.parameters.values()):
        return
    allowed = [p for p in sig.parameters if p not in DATA_PARAMS and p != "self"]
    for key in params or {}:
        if key not in allowed:
            raise ConfigError(
                f"unknown configuration key 'train.model_params.{key}' (model {name!r}); "
                f"{did_you_mean(str(key), allowed)}"
            )
