"""Fixtures of the stacked-trainer tests: tiny tensors on one thread, float64 on demand."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """Tiny tensors: one thread is fastest, and spares a shared machine."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture
def float64() -> Iterator[None]:
    """Run plain and stacked paths in float64 (normalize() then yields float64 too)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _max_state_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k].double() - sb[k].double()).abs().max().item() for k in sa)


@pytest.fixture
def state_diff() -> Callable[[torch.nn.Module, torch.nn.Module], float]:
    """The largest absolute difference between two modules' state dicts (same keys)."""
    return _max_state_diff
