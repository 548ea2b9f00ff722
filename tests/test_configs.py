"""The example configurations shipped in configs/ load and name valid methods and parameters."""

from __future__ import annotations

from pathlib import Path

import pytest

from brainage.config import load_config
from brainage.explain._core import check_method

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))


def test_there_are_example_configs():
    assert CONFIGS


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_example_config_is_valid(path):
    cfg = load_config(path)
    for method in cfg.explain.methods:
        check_method(method, cfg.explain.params.get(method))
