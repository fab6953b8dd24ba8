"""Shared pytest fixtures: CPU-only, two threads, deterministic seeds, tiny models."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

FMNIST_ROOT = Path(os.environ.get('G2SD_FMNIST_ROOT', '/usr/share/datasets/fashion-mnist'))

# CI and dev machines have 2 cores; more threads than cores only adds contention.
torch.set_num_threads(2)


@pytest.fixture(autouse=True)
def seed() -> int:
    """Seed torch's global RNG before every test (tests that need numpy seed their own)."""
    torch.manual_seed(0)
    return 0


@pytest.fixture(scope='session')
def fmnist_root() -> Path:
    """Folder of Debian's ``dataset-fashion-mnist`` (real images for data tests)."""
    if not FMNIST_ROOT.is_dir() or not any(FMNIST_ROOT.iterdir()):
        pytest.skip(
            f'Fashion-MNIST not found at {FMNIST_ROOT}: install the Debian package '
            '`dataset-fashion-mnist` (make setup does so when run as root) or set G2SD_FMNIST_ROOT'
        )
    return FMNIST_ROOT


@pytest.fixture
def tiny_vit_kwargs() -> dict:
    """Keyword arguments of a tiny ViT (4x4 patches of 8 px on a 32 px image), fast on CPU."""
    return dict(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=2, in_chans=3)
