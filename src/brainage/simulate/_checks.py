"""Validation of the simulation parameters shared by phantoms, cohorts and tori."""

from __future__ import annotations

import math

import numpy as np

from brainage.errors import ConfigError


def _check_number(name, value, low=None, high=None, integer=False):
    ok_type = (
        isinstance(value, (int, np.integer))
        if integer
        else isinstance(value, (int, float, np.integer, np.floating))
    )
    if isinstance(value, bool) or not ok_type or not math.isfinite(float(value)):
        kind = "an integer" if integer else "a finite number"
        raise ConfigError(f"'{name}' must be {kind}; got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise ConfigError(f"'{name}' must be between {low} and {high}; got {value!r}")
    return int(value) if integer else float(value)


def _check_range(name, value, low, high):
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ConfigError(f"'{name}' must be a pair (low, high); got {value!r}") from None
    if not (low <= lo < hi <= high):
        raise ConfigError(f"'{name}' must satisfy {low} <= low < high <= {high}; got {value!r}")
    return lo, hi
