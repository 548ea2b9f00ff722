"""Input validation shared by the evaluation and statistics functions on relevance maps."""

from __future__ import annotations

import numpy as np

from brainage.errors import ConfigError, DimensionError, InputError


def as_map(name: str, values, ndim: int | tuple[int, ...]) -> np.ndarray:
    """Validate a real-valued, finite map and return it as a float64 array.

    Parameters
    ----------
    name : str
        Parameter name used in error messages.
    values : array-like
        The map (relevance, z-scores, …).
    ndim : int or tuple of int
        Allowed numbers of dimensions.

    Raises
    ------
    TypeError
        Not array-like.
    DimensionError
        Wrong number of dimensions or an empty axis.
    InputError
        Not real-valued, or NaN / infinite values.
    """
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if hasattr(values, "detach"):  # a torch tensor
        values = values.detach().cpu().numpy()
    try:
        arr = np.asarray(values)
    except Exception as exc:  # pragma: no cover - numpy raises many types here
        raise TypeError(f"'{name}' must be array-like; got {type(values).__name__}") from exc
    if arr.dtype == bool or not (
        np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)
    ):
        raise InputError(f"'{name}' must be a real-valued array; got dtype {arr.dtype}")
    if arr.ndim not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise DimensionError(f"'{name}' must be {want}; got shape {arr.shape}")
    if arr.size == 0:
        raise DimensionError(f"'{name}' has an empty axis; got shape {arr.shape}")
    arr = arr.astype(np.float64, copy=False)
    if not np.isfinite(arr).all():
        raise InputError(
            f"'{name}' contains NaN or infinite values", fix="clean or mask them first"
        )
    return arr


def as_mask(name: str, mask, ndim: int | tuple[int, ...]) -> np.ndarray:
    """Validate a binary mask (bool, or numbers that are all 0 or 1) and return it as bool.

    Raises
    ------
    DimensionError
        Wrong number of dimensions or an empty axis.
    InputError
        Values other than 0 / 1 (e.g. a probabilistic map: threshold it first).
    """
    allowed = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if hasattr(mask, "detach"):
        mask = mask.detach().cpu().numpy()
    arr = np.asarray(mask)
    if arr.ndim not in allowed:
        want = " or ".join(f"{d}D" for d in allowed)
        raise DimensionError(f"'{name}' must be a {want} mask; got shape {arr.shape}")
    if arr.size == 0:
        raise DimensionError(f"'{name}' has an empty axis; got shape {arr.shape}")
    if arr.dtype == bool:
        return arr
    if not (np.issubdtype(arr.dtype, np.integer) or np.issubdtype(arr.dtype, np.floating)):
        raise InputError(f"'{name}' must be a boolean mask; got dtype {arr.dtype}")
    if not np.isin(arr, (0, 1)).all():
        raise InputError(
            f"'{name}' must be a binary mask (bool or 0/1); got values other than 0 and 1",
            fix="threshold probabilistic maps first, e.g. mask > 0.5",
        )
    return arr.astype(bool)


def check_same_shape(**arrays) -> None:
    """Raise DimensionError unless all given arrays have the same shape (names in the message)."""
    items = list(arrays.items())
    first_name, first = items[0]
    for name, arr in items[1:]:
        if arr.shape != first.shape:
            raise DimensionError(
                f"'{name}' has shape {arr.shape} but '{first_name}' has shape {first.shape}; "
                "they must lie on the same voxel grid"
            )


def brain_voxels(brain: np.ndarray, name: str = "brain") -> int:
    """Count the voxels of ``brain``; raise InputError when it is empty."""
    n = int(brain.sum())
    if n == 0:
        raise InputError(f"'{name}' mask is empty (no voxel is True)", fix="pass the brain mask")
    return n


def fraction_in_unit_interval(name: str, value) -> float:
    """Return ``value`` as a float in (0, 1], or raise ConfigError naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ConfigError(f"'{name}' must be a number in (0, 1]; got {value!r}")
    value = float(value)
    if not 0.0 < value <= 1.0:
        raise ConfigError(f"'{name}' must be in (0, 1]; got {value!r}")
    return value


def participant_ids_or_default(participant_ids, n: int) -> list[str]:
    """Return ``participant_ids`` as a list of n strings (default ``"0"``, ``"1"``, …)."""
    if participant_ids is None:
        return [str(i) for i in range(n)]
    ids = [str(p) for p in participant_ids]
    if len(ids) != n:
        raise InputError(f"'participant_ids' has {len(ids)} entries but there are {n} maps")
    return ids


def as_subject_maps(name: str, maps) -> np.ndarray:
    """Validate subject maps, shape (n, i, j, k) or (n, 1, i, j, k); return (n, i, j, k) float64."""
    arr = as_map(name, maps, (4, 5))
    if arr.ndim == 5:
        if arr.shape[1] != 1:
            raise DimensionError(
                f"'{name}' has {arr.shape[1]} channels (shape {arr.shape}); score one channel at a "
                "time or sum them first",
            )
        arr = arr[:, 0]
    return arr
