"""The pure planner of a sweep (no Ray): which architectures, and how pending work units
become stacks and the chunks that trials run.

units -> stacks: ``nasproxy.multitrain.plan_stacks`` groups the units that can train in
lockstep (one shape, training sets of one size), at most ``max_stack`` a stack (one without
fusing). Only pending units are planned, so a partly stored stack trains just the missing
ones. stacks -> chunks: ``plan_chunks``, about ``trial_size`` units a chunk, balanced by
estimated cost. See docs/search.md#how-trials-map-to-work.
"""

from __future__ import annotations

import fnmatch
import heapq
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasproxy.errors import NasproxyError
from nasproxy.multitrain import plan_stacks
from nasproxy.results import UnitKey
from nasproxy.spaces import AnyArch, Space

Stack = tuple[UnitKey, ...]  # units of one shape and training-set size


@dataclass(frozen=True)
class Chunk:
    """The work of one Tune trial: stacks, each trained as one (fused) or unit by unit."""

    id: str
    stacks: tuple[Stack, ...]

    @property
    def units(self) -> tuple[UnitKey, ...]:
        """Every unit of the chunk, stack by stack."""
        return tuple(key for stack in self.stacks for key in stack)


# --- architecture selection ------------------------------------------------------------


def select_archs(
    space: Space,
    patterns: Sequence[str] = (),
    sample: int | None = None,
    sample_seed: int = 0,
) -> list[AnyArch]:
    """The architectures matching any pattern (all when none), then an optional sample.

    A pattern is a shell glob on ids (``w32-*-relu-*``) or, with a ``re:`` prefix, a Python
    regular expression; both must match a whole name of the architecture: its id, or for a
    NAS-Bench-201 cell either form (``c3-*``, ``*nor_conv_3x3~0*``). A pattern matching
    nothing is refused.
    """
    archs = list(space)
    if patterns:
        keep = np.zeros(len(archs), dtype=bool)
        for pattern in patterns:
            match = _matcher(pattern)
            hits = np.array([any(map(match, a.aliases)) for a in archs], dtype=bool)
            if not hits.any():
                raise NasproxyError(f"--archs {pattern!r} matches no architecture of {space.name}")
            keep |= hits
        archs = [a for a, k in zip(archs, keep, strict=True) if k]
    if sample is not None:
        archs = stratified_sample(archs, sample, sample_seed)
    return archs


def _matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as exc:
            raise NasproxyError(f"--archs {pattern!r}: bad regular expression ({exc})") from None
        return lambda s: regex.fullmatch(s) is not None
    return lambda s: fnmatch.fnmatchcase(s, pattern)


def stratified_sample(archs: Sequence[AnyArch], n: int, seed: int) -> list[AnyArch]:
    """``n`` distinct architectures whose field values are spread as evenly as possible.

    The fields are an architecture's ``strata()``: a ConvNet's width, depth, activation,
    norm and pooling; a NAS-Bench-201 cell's operation on each edge (so each operation's
    count over the sample is balanced too). Aim: each value of a field with k options
    appears floor(n/k) or ceil(n/k) times, for every field at once. Construction: (1)
    greedy picks, each an architecture not yet taken whose values have the lowest total
    count so far, ties broken by a seeded random order (on a full Cartesian space the
    combination of every field's least-used values is almost always free, so this alone
    keeps each field within one); (2) then swaps of a taken and a free architecture while
    one lowers the sum over fields of squared value counts (which is smallest when counts
    are equal). On convnet720 this balances every field to within one for every n; on a
    filtered set it is a best effort. Returned in the input order.
    """
    if n >= len(archs):
        return list(archs)
    rng = np.random.default_rng(seed)
    strata = [a.strata() for a in archs]
    n_fields = len(strata[0]) if strata else 0
    codes = np.empty((len(archs), n_fields), dtype=np.int64)
    counts = []
    for j in range(n_fields):
        values = sorted({s[j] for s in strata})
        code = {v: i for i, v in enumerate(values)}
        codes[:, j] = [code[s[j]] for s in strata]
        counts.append(np.zeros(len(values), dtype=np.int64))
    tiebreak = rng.permutation(len(archs))
    taken = np.zeros(len(archs), dtype=bool)

    def move(out: int | None, into: int) -> None:
        taken[into] = True
        for j in range(n_fields):
            counts[j][codes[into, j]] += 1
            if out is not None:
                counts[j][codes[out, j]] -= 1
        if out is not None:
            taken[out] = False

    for _ in range(n):
        score = sum(counts[j][codes[:, j]] for j in range(n_fields)).astype(np.float64)
        score[taken] = np.inf
        move(None, int(np.lexsort((tiebreak, score))[0]))
    while True:
        held, free = np.flatnonzero(taken), np.flatnonzero(~taken)
        # change of sum(count^2)/2 when held[a] is swapped for free[b]
        delta = np.zeros((len(held), len(free)))
        for j in range(n_fields):
            ch, cf = codes[held, j], codes[free, j]
            gain = counts[j][cf][None, :] - counts[j][ch][:, None] + 1
            delta += (ch[:, None] != cf[None, :]) * gain
        a, b = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if delta[a, b] >= 0:
            break
        move(int(held[a]), int(free[b]))
    return [a for a, t in zip(archs, taken, strict=True) if t]


# --- stacks and chunks ------------------------------------------------------------------


def plan_chunks(
    stacks: Sequence[Stack],
    trial_size: int,
    slots: int,
    cost: Callable[[UnitKey], float],
) -> list[Chunk]:
    """Group stacks into trials: per pool of training sets, balanced, costliest first.

    Stacks over the same training sets form a pool. A pool of n units starts with
    ceil(n / s) chunks, s = min(trial_size, ceil(n / slots)) (so a small pool is spread
    over all slots). Its stacks, costliest (summed ``cost``) first, each go to the chunk
    with the fewest units (then the least cost) if that stays within s units, else to a new
    chunk; so a chunk is one stack or at most s units. With one unit a stack (no fusing)
    that deals the units out round-robin into ceil(n / s) chunks of at most s units.
    Chunks are returned costliest first.
    """
    pools: dict[tuple[str, ...], list[Stack]] = {}
    for stack in stacks:
        names = tuple(dict.fromkeys(key.train_set for key in stack))
        pools.setdefault(names, []).append(stack)
    chunks: list[tuple[float, Chunk]] = []
    for names, members in pools.items():
        n_units = sum(len(stack) for stack in members)
        size = max(1, min(trial_size, math.ceil(n_units / max(slots, 1))))
        weight = {stack: sum(cost(k) for k in stack) for stack in members}
        bins: list[list[Any]] = [[0, 0.0, []] for _ in range(math.ceil(n_units / size))]
        fewest = [(0, 0.0, i) for i in range(len(bins))]  # a heap: (units, cost, index)
        for stack in sorted(members, key=lambda st: (-weight[st], st)):
            units, _, j = fewest[0]
            if units and units + len(stack) > size:
                bins.append([0, 0.0, []])
                j = len(bins) - 1
            else:
                heapq.heappop(fewest)
            bins[j][0] += len(stack)
            bins[j][1] += weight[stack]
            bins[j][2].append(stack)
            heapq.heappush(fewest, (bins[j][0], bins[j][1], j))
        for j, (_, total, mine) in enumerate(b for b in bins if b[2]):
            chunks.append((total, Chunk(f"{'+'.join(names)}-{j:04d}", tuple(mine))))
    chunks.sort(key=lambda pair: (-pair[0], pair[1].id))
    return [chunk for _, chunk in chunks]


def plan_trials(
    pending: Sequence[UnitKey],
    n_images: Mapping[str, int],
    fuse: bool,
    max_stack: int,
    trial_size: int,
    slots: int,
    cost: Callable[[UnitKey], float],
    epochs: Mapping[str, int] | None = None,
) -> list[Chunk]:
    """Pending units -> stacks (one unit each without ``fuse``) -> the chunks of trials.

    A stack trains in lockstep, so units of training sets with other epochs (``epochs``:
    set name -> its epochs; one value when None) never share one."""
    groups: dict[int, list[UnitKey]] = {}
    for key in pending:
        groups.setdefault((epochs or {}).get(key.train_set, 0), []).append(key)
    stacks = [
        stack
        for members in groups.values()
        for stack in plan_stacks(members, n_images, max_stack if fuse else 1)
    ]
    return plan_chunks(stacks, trial_size, slots, cost)
