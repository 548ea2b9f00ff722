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
