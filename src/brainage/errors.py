"""Exception types raised by brainage.

Every error a user can cause carries a one-line message that names the subject and the file
(where there is one), what is wrong and what to do about it.
"""

from __future__ import annotations

from pathlib import Path


class BrainageError(Exception):
    """Base class of all errors raised by brainage on purpose."""


class InputError(BrainageError, ValueError):
    """Bad user input: a cohort table, an image, a configuration value.

    Parameters
    ----------
    problem : str
        What is wrong, e.g. ``"image is 4D (shape (91, 109, 91, 3))"``.
    fix : str, optional
        What the user can do, e.g. ``"give one 3D T1w volume per subject"``.
    participant_id : str, optional
        The subject concerned.
    path : str or Path, optional
        The file concerned.
    """

    def __init__(
        self,
        problem: str,
        fix: str | None = None,
        participant_id: str | None = None,
        path: str | Path | None = None,
    ) -> None:
        self.problem = problem
        self.fix = fix
        self.participant_id = participant_id
        self.path = None if path is None else str(path)
        parts = []
        if participant_id is not None:
            parts.append(f"{participant_id}:")
        if self.path is not None:
            parts.append(f"{self.path}:")
        parts.append(problem)
        msg = " ".join(parts)
        if fix:
            msg += f" — {fix}"
        super().__init__(msg)


class DimensionError(InputError):
    """An image or array has the wrong number of dimensions."""


class SpaceMismatchError(InputError):
    """Two images that must share a voxel grid (shape and affine) do not."""


class ConfigError(BrainageError, ValueError):
    """An invalid configuration value; the message names the key, expected and received value."""


def did_you_mean(name: str, choices) -> str:
    """Return a ``"did you mean …"`` hint for an unknown ``name`` among ``choices``.

    Parameters
    ----------
    name : str
        The unknown name the user gave.
    choices : iterable of str
        The valid names.

    Returns
    -------
    str
        ``"did you mean 'x'? Valid: a, b, c"`` or ``"valid: a, b, c"``.
    """
    import difflib

    choices = sorted(choices)
    close = difflib.get_close_matches(name, choices, n=1)
    valid = ", ".join(choices)
    if close:
        return f"did you mean '{close[0]}'? Valid: {valid}"
    return f"valid: {valid}"
