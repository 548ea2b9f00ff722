"""Small shared helpers: seeding, hashing, timing, device selection."""

from __future__ import annotations

import hashlib
import json
import random
import time
from contextlib import contextmanager

import numpy as np


def check_random_state(seed) -> np.random.Generator:
    """Turn ``seed`` (int, sequence of ints or Generator) into a :class:`numpy.random.Generator`.

    The one place where brainage creates random generators, so that the same seed always gives
    the same numbers.
    """
    if isinstance(seed, np.random.Generator):
        return seed
    if seed is None:
        raise ValueError("'seed' must be an int (brainage runs are always seeded); got None")
    if isinstance(seed, (list, tuple)):  # a seed sequence, e.g. (run seed, fold)
        return np.random.default_rng([int(s) for s in seed])
    return np.random.default_rng(int(seed))


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's legacy and PyTorch's global generators with ``seed``."""
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def stable_hash(*objects, length: int = 16) -> str:
    """Hash JSON-serialisable objects (dicts sorted) into a short hex string for cache keys."""
    text = json.dumps(objects, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def file_hash(path, length: int = 16) -> str:
    """SHA-256 of a file's bytes, shortened to ``length`` hex digits."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:length]


def select_device(device: str = "auto"):
    """Return the torch device to use: ``"auto"`` picks CUDA, then MPS, then CPU."""
    import torch

    if device != "auto":
        return torch.device(device)
    if torch.cuda.is_available():
        return torch.device("cuda")
    if getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


class StageTimer:
    """Collect wall-clock seconds per named stage (for provenance and ``bench/``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, name: str):
        """Time the block and add its seconds to ``self.seconds[name]``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[name] = self.seconds.get(name, 0.0) + time.perf_counter() - t0
