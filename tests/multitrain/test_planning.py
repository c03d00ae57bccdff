"""Stack planning: which of a sweep's units train together, and how many fit a budget.

Truths: hand-worked groupings (and nasproxy.multitrain.lockstep.fallback_reason, which
must accept every planned stack), and brute force over the stack size for the memory
bound.
"""

from __future__ import annotations

import numpy as np
import pytest

from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.multitrain.lockstep import fallback_reason
from nasproxy.multitrain.planning import largest_stack, plan_stacks, stack_memory_bytes
from nasproxy.results import UnitKey
from nasproxy.spaces import Arch
from nasproxy.train import TrainConfig


def test_plan_stacks_partitions_into_compatible_groups(digits: Dataset) -> None:
    w32, w64 = "w32-d1-relu-none-none", "w64-d1-relu-none-none"
    norm = "w32-d1-relu-batchnorm-none"  # another shape: the norm differs
    sizes = {"a": 1000, "b": 1000, "small": 500}
    pending = [
        UnitKey("a", 0, w32),
        UnitKey("a", 1, w32),
        UnitKey("small", 0, w32),
        UnitKey("a", 0, w64),
        UnitKey("a", 2, norm),
        UnitKey("b", 0, w32),  # another training set of the same size: one batch schedule
        UnitKey("b", 1, w32),
    ]
    stacks = plan_stacks(pending, sizes, 3)
    assert sorted(k for st in stacks for k in st) == sorted(pending)  # each unit once
    for st in stacks:
        assert len(st) <= 3 and list(st) == sorted(st, key=pending.index)  # order kept
        sets = [np.arange(sizes[ts]) for ts, _, _ in st]
        cfgs = [TrainConfig(seed=seed) for _, seed, _ in st]
        assert fallback_reason([a for _, _, a in st], digits, sets, cfgs) is None
    # 4 compatible units, at most 3 a stack: 2 + 2, not 3 + 1
    assert pending[0:2] == list(stacks[0]) and pending[5:7] == list(stacks[1])
    assert len(stacks) == 5
    mixed = [UnitKey("a", 0, w32), UnitKey("a", 1, "w32-d1-sigmoid-none-none")]
    assert plan_stacks(mixed, sizes, 3) == [tuple(mixed)]  # activations may differ
    ten = [UnitKey("a", seed, w32) for seed in range(10)]
    assert [len(st) for st in plan_stacks(ten, sizes, 4)] == [3, 4, 3]  # as even as possible
    assert plan_stacks(ten, sizes, 1) == [(k,) for k in ten]  # unfused: a unit a stack
    with pytest.raises(NasproxyError, match="at least 1"):
        plan_stacks(ten, sizes, 0)


def test_largest_stack_is_the_most_that_fits_the_budget(digits: Dataset) -> None:
    for arch_id in ("w8-d1-relu-none-none", "w32-d3-relu-batchnorm-maxpooling"):
        arch = Arch.from_id(arch_id)
        one = stack_memory_bytes(arch, digits, 1, 1000, 128)
        for budget in (one // 2, one, 3 * one + 5, 50 * one):
            m = largest_stack(arch, digits, 1000, 128, budget)
            assert m >= 1
            if budget >= one:  # brute force over m
                assert stack_memory_bytes(arch, digits, m, 1000, 128) <= budget
                assert stack_memory_bytes(arch, digits, m + 1, 1000, 128) > budget
        # bf16 halves the activations, so at least as many fit
        assert largest_stack(arch, digits, 1000, 128, 50 * one, bf16=True) >= largest_stack(
            arch, digits, 1000, 128, 50 * one
        )


def test_a_cell_stacks_only_with_itself() -> None:
    a, b = "c3-no.c3-sk.c3.ap", "c1-no.sk-no.ap.c1"
    pending = [UnitKey("p", 0, a), UnitKey("p", 0, b), UnitKey("q", 1, a), UnitKey("p", 1, b)]
    stacks = plan_stacks(pending, {"p": 100, "q": 100}, 8)
    assert sorted(stacks) == sorted([(pending[0], pending[2]), (pending[1], pending[3])])
