"""The pure planner of a sweep (no Ray): which architectures, and how pending work units
are grouped into the chunks that Tune trials run."""

from __future__ import annotations

import fnmatch
import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from nasproxy.errors import NasproxyError
from nasproxy.results import UnitKey
from nasproxy.spaces import FIELDS, Arch, Space


@dataclass(frozen=True)
class Chunk:
    """The work of one Tune trial: units of one training set, as (arch id, seed)."""

    id: str
    train_set: str
    units: tuple[tuple[str, int], ...]


# --- architecture selection ------------------------------------------------------------


def select_archs(
    space: Space,
    patterns: Sequence[str] = (),
    sample: int | None = None,
    sample_seed: int = 0,
) -> list[Arch]:
    """The architectures matching any pattern (all when none), then an optional sample.

    A pattern is a shell glob on ids (``w32-*-relu-*``) or, with a ``re:`` prefix, a Python
    regular expression; both must match the whole id. A pattern matching nothing is refused.
    """
    archs = list(space)
    if patterns:
        keep = np.zeros(len(archs), dtype=bool)
        for pattern in patterns:
            match = _matcher(pattern)
            hits = np.array([match(a.id) for a in archs], dtype=bool)
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


def stratified_sample(archs: Sequence[Arch], n: int, seed: int) -> list[Arch]:
    """``n`` distinct architectures whose field values are spread as evenly as possible.

    Aim: each value of a field with k options appears floor(n/k) or ceil(n/k) times, for
    every field at once. Construction: (1) greedy picks, each an architecture not yet taken
    whose values have the lowest total count so far, ties broken by a seeded random order
    (on a full Cartesian space the combination of every field's least-used values is almost
    always free, so this alone keeps each field within one); (2) then swaps of a taken and a
    free architecture while one lowers the sum over fields of squared value counts (which is
    smallest when counts are equal). On convnet720 this balances every field to within one
    for every n; on a filtered set it is a best effort. Returned in the input order.
    """
    if n >= len(archs):
        return list(archs)
    rng = np.random.default_rng(seed)
    codes = np.empty((len(archs), len(FIELDS)), dtype=np.int64)
    counts = []
    for j, name in enumerate(FIELDS):
        values = sorted({getattr(a, name) for a in archs})
        code = {v: i for i, v in enumerate(values)}
        codes[:, j] = [code[getattr(a, name)] for a in archs]
        counts.append(np.zeros(len(values), dtype=np.int64))
    tiebreak = rng.permutation(len(archs))
    taken = np.zeros(len(archs), dtype=bool)

    def move(out: int | None, into: int) -> None:
        taken[into] = True
        for j in range(len(FIELDS)):
            counts[j][codes[into, j]] += 1
            if out is not None:
                counts[j][codes[out, j]] -= 1
        if out is not None:
            taken[out] = False

    for _ in range(n):
        score = sum(counts[j][codes[:, j]] for j in range(len(FIELDS))).astype(np.float64)
        score[taken] = np.inf
        move(None, int(np.lexsort((tiebreak, score))[0]))
    while True:
        held, free = np.flatnonzero(taken), np.flatnonzero(~taken)
        # change of sum(count^2)/2 when held[a] is swapped for free[b]
        delta = np.zeros((len(held), len(free)))
        for j in range(len(FIELDS)):
            ch, cf = codes[held, j], codes[free, j]
            gain = counts[j][cf][None, :] - counts[j][ch][:, None] + 1
            delta += (ch[:, None] != cf[None, :]) * gain
        a, b = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if delta[a, b] >= 0:
            break
        move(int(held[a]), int(free[b]))
    return [a for a, t in zip(archs, taken, strict=True) if t]


# --- chunks --------------------------------------------------------------------------


def plan_chunks(
    pending: Sequence[UnitKey],
    trial_size: int,
    slots: int,
    cost: Callable[[UnitKey], float],
) -> list[Chunk]:
    """Group pending units into trials: per training set, balanced, costliest first.

    A set of n units gets ceil(n / s) chunks of at most s = min(trial_size, ceil(n / slots))
    units each; its units, sorted by ``cost``, are dealt out round-robin so chunks carry
    similar work. Chunks are returned costliest first.
    """
    by_set: dict[str, list[UnitKey]] = {}
    for key in pending:
        by_set.setdefault(key[0], []).append(key)
    chunks: list[tuple[float, Chunk]] = []
    for name, keys in by_set.items():
        size = max(1, min(trial_size, math.ceil(len(keys) / max(slots, 1))))
        n_chunks = math.ceil(len(keys) / size)
        ordered = sorted(keys, key=lambda k: (-cost(k), k))
        for j in range(n_chunks):
            mine = ordered[j::n_chunks]
            chunk = Chunk(f"{name}-{j:04d}", name, tuple((arch, seed) for _, seed, arch in mine))
            chunks.append((sum(cost(k) for k in mine), chunk))
    chunks.sort(key=lambda pair: (-pair[0], pair[1].id))
    return [chunk for _, chunk in chunks]
