"""Shared fixtures: the embedded digits data and, when present, real CIFAR-10 (JPEG q75 copy)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from nasproxy.data import Dataset, load_dataset

torch.set_num_threads(min(2, torch.get_num_threads()))


def cifar_source() -> Path | None:
    """``$NASPROXY_CIFAR``: CIFAR-10 as an ImageFolder folder or .tar.gz (None when unset)."""
    env = os.environ.get("NASPROXY_CIFAR")
    return Path(env) if env else None


@pytest.fixture(scope="session")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Decoded-image cache shared by the session (``$NASPROXY_TEST_CACHE`` to keep it)."""
    env = os.environ.get("NASPROXY_TEST_CACHE")
    return Path(env) if env else tmp_path_factory.mktemp("cache")


@pytest.fixture(scope="session")
def digits(cache_root: Path) -> Dataset:
    return load_dataset("digits", data_root=cache_root)


@pytest.fixture(scope="session")
def cifar(cache_root: Path) -> Dataset:
    source = cifar_source()
    if source is None or not source.exists():
        pytest.skip(
            "CIFAR-10 (JPEG q75 copy) not found: set NASPROXY_CIFAR to its folder or .tar.gz"
        )
    return load_dataset(f"imagefolder:{source}", data_root=cache_root)
