"""Small value helpers of the report: number formats (template filters) and cell parsing."""

from __future__ import annotations

import numpy as np


def _fmt(value, digits: int = 2) -> str:
    """Format a number for display; ``n/a`` for missing values."""
    if value is None:
        return "n/a"
    try:
        v = float(value)
    except (TypeError, ValueError):
        return str(value)
    if not np.isfinite(v):
        return "n/a"
    if float(v).is_integer() and digits == 0:
        return f"{int(v)}"
    return f"{v:.{digits}f}"


def _pval(value) -> str:
    """Format a p value: three decimals, ``< 0.001`` below that, ``n/a`` when missing."""
    v = _number(value)
    if v is None:
        return "n/a"
    return "< 0.001" if v < 0.001 else f"{v:.3f}"


def _sig(value, digits: int = 3) -> str:
    """Format a number to ``digits`` significant digits (relevance values span many decades)."""
    v = _number(value)
    return "n/a" if v is None else f"{v:.{digits}g}"


def _number(value) -> float | None:
    """``value`` as a finite float, or None (missing, ``n/a``, text)."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if np.isfinite(v) else None


def _parse_bool(value) -> bool | None:
    """``True``/``False`` cells of a TSV (also ``1``/``0``, ``yes``/``no``); None otherwise."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    text = str(value).strip().lower()
    if text in {"true", "1", "1.0", "yes", "pass"}:
        return True
    if text in {"false", "0", "0.0", "no", "fail"}:
        return False
    return None


def _flat(value) -> str:
    """One-line text of a provenance value (dicts as ``key value, …``)."""
    if isinstance(value, dict):
        return ", ".join(f"{k} {v}" for k, v in value.items())
    if isinstance(value, list):
        return ", ".join(str(v) for v in value)
    return str(value)


def _is_number(v) -> bool:
    try:
        return np.isfinite(float(v))
    except (TypeError, ValueError):
        return False
