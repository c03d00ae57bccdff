"""nasproxy.search.plan: architecture patterns and samples, stacks and chunks, against
brute force."""

from __future__ import annotations

import fnmatch
import math
from collections import Counter

import numpy as np
import pytest

from nasproxy import spaces
from nasproxy.errors import NasproxyError
from nasproxy.results import UnitKey
from nasproxy.search import plan_chunks, plan_stacks, plan_trials, select_archs, stratified_sample
from nasproxy.spaces import FIELDS
from tests.search.conftest import _shape


def test_arch_patterns_match_like_brute_force():
    space = spaces.load("convnet720")
    globbed = select_archs(space, ["w32-d1-*-batchnorm-*", "*-sigmoid-none-none"])
    expected = [
        a
        for a in space
        if fnmatch.fnmatchcase(a.id, "w32-d1-*-batchnorm-*")
        or fnmatch.fnmatchcase(a.id, "*-sigmoid-none-none")
    ]
    assert globbed == expected and len(expected) == 3 * 3 + 16
    regexed = select_archs(space, [r"re:w(32|64)-d[12]-relu-.*-maxpooling"])
    assert regexed == [
        a
        for a in space
        if a.width in (32, 64) and a.depth in (1, 2) and a.act == "relu" and a.pool == "maxpooling"
    ]
    with pytest.raises(NasproxyError, match="bad regular expression"):
        select_archs(space, ["re:w(32"])
    assert len(select_archs(space, ["re:w32.*"])) == 180
    with pytest.raises(NasproxyError, match="matches no architecture"):
        select_archs(space, ["re:w32"])  # a pattern must match the whole id


@pytest.mark.parametrize("n", [1, 7, 24, 100, 260, 540, 719])
def test_stratified_sample_balances_every_field(n):
    space = spaces.load("convnet720")
    for seed in (0, 1):
        sample = stratified_sample(list(space), n, seed)
        assert len(sample) == len(set(sample)) == n
        assert sample == [a for a in space if a in set(sample)]  # space order
        for name in FIELDS:
            options = {getattr(a, name) for a in space}
            counts = Counter(getattr(a, name) for a in sample)
            spread = [counts.get(v, 0) for v in options]
            assert max(spread) - min(spread) <= 1, (seed, name, spread)
    assert stratified_sample(list(space), n, 3) == stratified_sample(list(space), n, 3)
    if 1 < n < 700:
        assert stratified_sample(list(space), n, 3) != stratified_sample(list(space), n, 4)
    assert stratified_sample(list(space), 800, 0) == list(space)


def test_chunks_cover_each_unit_once_within_one_training_set():
    archs = spaces.load("convnet720")[:40]
    pending = [UnitKey(ts, seed, a.id) for ts in ("p", "whole") for seed in (0, 1) for a in archs]
    cost = {a.id: a.macs(3, 10, 32) for a in archs}
    sizes = {"p": 1000, "whole": 45000}
    chunks = plan_trials(
        pending, sizes, False, 64, trial_size=16, slots=4, cost=lambda k: cost[k[2]]
    )
    assert sorted(k for c in chunks for k in c.units) == sorted(pending)
    assert all(len(stack) == 1 for c in chunks for stack in c.stacks)  # not fused
    assert all(1 <= len(c.units) <= 16 and len({k[0] for k in c.units}) == 1 for c in chunks)
    assert len({c.id for c in chunks}) == len(chunks)
    assert len(chunks) == 2 * math.ceil(80 / 16)
    # few units: spread over every slot rather than one big chunk
    few = plan_trials(pending[:6], sizes, False, 64, 16, 4, lambda k: cost[k[2]])
    assert [len(c.units) for c in few] == [2, 2, 2]


def _brute_force_groups(pending, sizes):
    """Units that may share a stack: one shape (all but the activation), one set size."""
    groups: dict[tuple, set] = {}
    for key in pending:
        groups.setdefault((_shape(key[2]), sizes[key[0]]), set()).add(key)
    return groups


@pytest.mark.parametrize("max_stack", [1, 2, 3, 5, 64])
def test_stacks_partition_pending_units_into_compatible_groups(max_stack):
    archs = [a.id for a in spaces.load("convnet720")[:7]]  # 3 activations of some shapes
    sizes = {"influence": 1000, "random": 1000, "herding": 1000, "small": 500, "whole": 45000}
    all_keys = [UnitKey(ts, seed, a) for ts in sizes for seed in (0, 1, 2) for a in archs]
    rng = np.random.default_rng(max_stack)
    stored = {k for k in all_keys if rng.random() < 0.3}  # partly stored stacks
    pending = [k for k in all_keys if k not in stored]
    stacks = plan_stacks(pending, sizes, max_stack)
    flat = [k for stack in stacks for k in stack]
    assert sorted(flat) == sorted(pending) and len(flat) == len(set(flat))  # each once
    assert not stored & set(flat)  # a stored unit never trains again
    groups = _brute_force_groups(pending, sizes)
    for stack in stacks:
        assert 1 <= len(stack) <= max_stack
        assert len({(_shape(k[2]), sizes[k[0]]) for k in stack}) == 1  # lockstep-compatible
    for members in groups.values():  # as few stacks as the bound allows, even in size
        mine = [st for st in stacks if st[0] in members]
        assert len(mine) == math.ceil(len(members) / max_stack)
        assert max(map(len, mine)) - min(map(len, mine)) <= 1
    # the proxies of 1,000 images stack together, the 500-image one and whole apart
    if max_stack >= 9:
        assert any({k[0] for k in st} == {"influence", "random", "herding"} for st in stacks)
    # chunks: every stack whole in exactly one chunk, about trial_size units each
    cost = dict.fromkeys(archs, 1.0)
    chunks = plan_chunks(stacks, 8, 3, lambda k: cost[k[2]] * sizes[k[0]])
    assert sorted(st for c in chunks for st in c.stacks) == sorted(stacks)
    assert all(len(c.stacks) == 1 or len(c.units) <= 8 for c in chunks)


def test_a_partly_stored_stack_schedules_only_its_missing_units():
    arch = "w32-d1-relu-none-none"
    sizes = {"a": 1000, "b": 1000, "whole": 45000}
    all_keys = [UnitKey(ts, seed, arch) for ts in sizes for seed in (0, 1)]
    stored = {("a", 0, arch), ("b", 1, arch), ("whole", 0, arch)}
    pending = [k for k in all_keys if k not in stored]
    chunks = plan_trials(pending, sizes, True, 64, 16, 1, lambda k: 1.0)
    stacks = sorted(st for c in chunks for st in c.stacks)
    assert stacks == [(("a", 1, arch), ("b", 0, arch)), (("whole", 1, arch),)]


def test_arch_patterns_match_either_form_of_a_cell():
    space = spaces.load("nb201")
    by_short = select_archs(space, ["c3-*"])
    by_benchmark = select_archs(space, ["|nor_conv_3x3~0|+*"])
    assert by_short == by_benchmark and len(by_short) == 5**5
    assert all(c.ops[0] == "nor_conv_3x3" for c in by_short)
    both = select_archs(space, ["*|none~0|none~1|none~2|", "no-no.no-*"])
    brute = [c for c in space if c.ops[3:] == ("none",) * 3 or c.ops[:3] == ("none",) * 3]
    assert both == brute


@pytest.mark.parametrize("n", [5, 37, 100])
def test_a_stratified_sample_of_cells_balances_each_edges_operation(n):
    space = spaces.load("nb201")
    sample = stratified_sample(list(space), n, 0)
    assert len(set(sample)) == n
    for edge in range(6):
        counts = Counter(c.ops[edge] for c in sample)
        spread = [counts.get(op, 0) for op in ("none", "skip_connect", "nor_conv_1x1",
                                              "nor_conv_3x3", "avg_pool_3x3")]  # fmt: skip
        assert max(spread) - min(spread) <= 1, (edge, spread)
    totals = Counter(op for c in sample for op in c.ops)  # so each operation's count too
    assert max(totals.values()) - min(totals.values()) <= 6


def test_units_of_sets_with_other_epochs_never_share_a_stack():
    """random@3 has random's images but not its epochs: a stack trains in lockstep, so
    the two stack apart; each stack holds every unit of its shape and set epochs."""
    archs = [a.id for a in spaces.load("convnet720")][:24]
    sets = ("random", "random@3", "herding")
    pending = [UnitKey(ts, s, a) for ts in sets for s in (0, 1) for a in archs]
    n_images = dict.fromkeys(sets, 100)
    epochs = {"random": 9, "random@3": 3, "herding": 9}
    chunks = plan_trials(pending, n_images, True, 64, 16, 2, lambda k: 1.0, epochs)
    stacks = [stack for c in chunks for stack in c.stacks]
    assert sorted(k for st in stacks for k in st) == sorted(pending)
    for stack in stacks:
        assert len({epochs[k.train_set] for k in stack}) == 1
        assert len({_shape(k.arch) for k in stack}) == 1
    groups = Counter((epochs[k.train_set], _shape(k.arch)) for k in pending)
    assert len(stacks) == len(groups)  # the units of one shape and epochs: one stack
