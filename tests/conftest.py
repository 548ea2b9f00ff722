"""Shared fixtures: small seeded synthetic volumes, the IXI location, torch threads."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

#: Real IXI scans (BIDS) beside the repository; integration tests skip when absent.
IXI = Path(__file__).resolve().parents[2] / "shared" / "data" / "ixi"


@pytest.fixture(autouse=True, scope="session")
def _torch_threads():
    import torch

    torch.set_num_threads(1)


@pytest.fixture
def ixi_root() -> Path:
    if not (IXI / "participants.tsv").exists():
        pytest.skip(f"real IXI data not found at {IXI} (needs ../shared/data/ixi beside the repo)")
    return IXI


def write_volume(path: Path, shape=(24, 28, 22), seed=0, value=None) -> Path:
    """Write a small synthetic NIfTI with a 2 mm affine and return its path."""
    rng = np.random.default_rng(seed)
    data = (
        rng.uniform(1, 100, shape).astype(np.float32)
        if value is None
        else np.full(shape, value, np.float32)
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, np.diag([2.0, 2.0, 2.0, 1.0])), str(path))
    return path


def make_bids(root: Path, ages: dict, shape=(24, 28, 22)) -> Path:
    """A tiny BIDS dataset: participants.tsv with ``ages`` (str cells) and one T1w each."""
    root.mkdir(parents=True, exist_ok=True)
    lines = ["participant_id\tage\tsex"]
    for i, (pid, age) in enumerate(ages.items()):
        lines.append(f"{pid}\t{age}\t{'F' if i % 2 else 'M'}")
        write_volume(root / pid / "anat" / f"{pid}_T1w.nii.gz", shape, seed=i)
    (root / "participants.tsv").write_text("\n".join(lines) + "\n")
    return root


def randomize_batchnorm(model, seed: int):
    """Give every BatchNorm layer seeded non-trivial running statistics (so eval mode matters)."""
    import torch
    from torch.nn.modules.batchnorm import _BatchNorm

    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, _BatchNorm):
                m.running_mean.copy_(0.3 * torch.randn(m.num_features, generator=g))
                m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    return model
