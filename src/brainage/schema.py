"""Typed parameter sections: one validation vocabulary for every configuration value.

Every stage's parameters are a :class:`Section` (a pydantic model with unknown keys forbidden
and strict types): the science subpackages define their own (``PreprocessConfig``,
``TrainConfig``), :mod:`brainage.config` composes them into the configuration of a run. A bad
value raises :class:`~brainage.errors.ConfigError` naming the key, what is allowed, what was
given and, for names, a did-you-mean — never a pydantic traceback.
"""

from __future__ import annotations

import warnings
from typing import Any, ClassVar

import pydantic
from pydantic import BaseModel, ConfigDict

from brainage.errors import ConfigError, did_you_mean

# pydantic warns that a field named like an ABCMeta method ("register") shadows it; harmless
warnings.filterwarnings("ignore", message=r"Field name \"register\"", category=UserWarning)


def _loc(prefix: str, loc) -> str:
    path = ".".join(str(p) for p in loc if str(p))
    return f"{prefix}.{path}" if prefix and path else (prefix or path)


def _allowed_keys(model: type[BaseModel], loc) -> list[str]:
    """Field names of the (nested) section at ``loc`` (for a did-you-mean on unknown keys)."""
    cls = model
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if isinstance(cls, type) else None
        ann = getattr(field, "annotation", None)
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            cls = ann
        else:
            return []
    return list(cls.model_fields) if isinstance(cls, type) else []


def format_validation_error(
    err: pydantic.ValidationError, model: type[BaseModel], prefix: str = ""
) -> str:
    """One line per problem: ``'train.epochs' must be an integer; got 'sixty'``.

    Parameters
    ----------
    err : pydantic.ValidationError
    model : type of BaseModel
        The model that was validated (to list valid keys for unknown ones).
    prefix : str
        Dotted path of ``model`` inside the whole configuration (e.g. ``"train"``).

    Returns
    -------
    str
    """
    lines = []
    for e in err.errors(include_url=False):
        loc = tuple(e.get("loc", ()))
        where = _loc(prefix, loc)
        kind = e.get("type", "")
        value = e.get("input")
        if kind == "extra_forbidden":
            key = str(loc[-1]) if loc else "?"
            hint = did_you_mean(key, _allowed_keys(model, loc))
            lines.append(f"unknown configuration key {where!r}; {hint}")
            continue
        msg = e.get("msg", "invalid value")
        ctx = e.get("ctx") or {}
        if kind == "literal_error" and "expected" in ctx:
            choices = [
                c.strip().strip("'") for c in str(ctx["expected"]).replace(" or ", ",").split(",")
            ]
            choices = [c for c in choices if c]
            lines.append(
                f"{where!r} must be one of {', '.join(choices)}; got {value!r} "
                f"({did_you_mean(str(value), choices)})"
            )
            continue
        if kind == "value_error":
            cause = ctx.get("error")
            if isinstance(cause, ConfigError):  # a nested section's own message
                lines.append(str(cause))
                continue
            msg = str(cause) if cause is not None else msg.removeprefix("Value error, ")
            if msg.startswith("'") or msg.startswith("unknown"):
                lines.append(msg)  # a validator's message that names its key
                continue
        if msg and msg[0].isupper():
            msg = msg[0].lower() + msg[1:]
        got = "" if isinstance(value, dict) else f"; got {value!r}"
        lines.append(f"{where!r}: {msg}{got}")
    return "; ".join(lines) if lines else str(err)


class Section(BaseModel):
    """Base of every parameter section: unknown keys and loose types are errors.

    Construction validates; a bad value raises :class:`~brainage.errors.ConfigError`.
    Sections are immutable (use :meth:`replace`); :meth:`to_dict` gives plain YAML/JSON values.
    """

    model_config = ConfigDict(extra="forbid", strict=True, frozen=True, validate_default=True)

    #: Dotted path of this section in the run configuration (for messages).
    section_path: ClassVar[str] = ""

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except pydantic.ValidationError as err:
            raise ConfigError(
                format_validation_error(err, type(self), type(self).section_path)
            ) from None

    @classmethod
    def from_dict(cls, values: dict | None):
        """Build a section from a dict; missing keys take their defaults.

        Raises
        ------
        ConfigError
            Unknown keys (with a did-you-mean) or invalid values.
        """
        if values is not None and not isinstance(values, dict):
            raise ConfigError(
                f"{cls.section_path or cls.__name__!r} must be a mapping; "
                f"got {type(values).__name__}"
            )
        return cls(**dict(values or {}))

    def to_dict(self) -> dict[str, Any]:
        """Return the parameters as plain Python values (JSON/YAML-serialisable)."""
        return self.model_dump(mode="json")

    def replace(self, **changes: Any):
        """Return a validated copy with ``changes`` applied."""
        return type(self)(**{**self.to_dict(), **changes})
