"""Which of a sweep's units train together, and how many models a stack may hold.

:func:`plan_stacks` groups the pending work units of a sweep into stacks that
:func:`nasproxy.multitrain.lockstep.train_many` accepts; :func:`largest_stack` bounds a
stack by an estimate of the device memory it trains in (:func:`stack_memory_bytes`), so
that a trial can cut a planned stack to fit its share of a GPU instead of running out of
memory and falling back in halves. How the search uses both: ``docs/search.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from itertools import pairwise
from typing import Protocol, TypeVar

from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.multitrain.stacked import shape_of
from nasproxy.spaces import Arch, parse_arch
from nasproxy.train import CROP_PADDING


class Unit(Protocol):
    """What stacking reads of a work unit (the search's ``nasproxy.results.UnitKey``)."""

    @property
    def train_set(self) -> str: ...

    @property
    def arch(self) -> str: ...  # the architecture's id


U = TypeVar("U", bound=Unit)


def plan_stacks(
    pending: Sequence[U], n_images: Mapping[str, int], max_stack: int
) -> list[tuple[U, ...]]:
    """Group a sweep's units (training set, seed, arch id) into stacks of at most
    ``max_stack`` units that share one shape and one training-set size (``n_images`` of
    the training set), in the order of ``pending``.

    Every unit of a sweep has the same training settings but the seed, so shape and size
    are all that :func:`~nasproxy.multitrain.lockstep.fallback_reason` can object to;
    activations may differ. A group of n units becomes ceil(n / max_stack) consecutive
    stacks whose sizes differ by at most one (10 units, at most 8 a stack: 5 + 5, not
    8 + 2). Only pending units are planned, so a group whose members are partly stored
    trains just the missing ones.
    """
    if max_stack < 1:
        raise NasproxyError(f"max models per stack must be at least 1, got {max_stack}")
    groups: dict[tuple[tuple[int | str, ...], int], list[U]] = {}
    for unit in pending:
        shape = shape_of(parse_arch(unit.arch))
        groups.setdefault((shape, n_images[unit.train_set]), []).append(unit)
    stacks = []
    for members in groups.values():
        count = math.ceil(len(members) / max_stack)
        bounds = [round(j * len(members) / count) for j in range(count + 1)]
        stacks += [tuple(members[a:b]) for a, b in pairwise(bounds)]
    return stacks


def stack_memory_bytes(
    arch: Arch, data: Dataset, m: int, n_images: int, batch_size: int, bf16: bool = False
) -> int:
    """An upper estimate of the device memory one stack of ``m`` models trains in.

    Per model: parameters, gradients and momenta (3 x 4 bytes a parameter), and the
    activations a training step keeps for backward, counted as 4 tensors of a block's
    conv output (conv, norm, activation, pooling input) at ``batch_size`` in 4 bytes
    (2 with bf16 autocast), doubled for the gradients alive during backward. Per stack,
    once: the training set's images as floats and the augmentation's padded copy.
    """
    params = arch.param_count(data.in_channels, data.num_classes, data.image_size)
    size, per_sample = data.image_size, 0
    for _ in range(arch.depth):
        per_sample += 4 * arch.width * size * size
        if arch.pool != "none":
            size //= 2
    act_bytes = 2 if bf16 else 4
    per_model = 12 * params + 2 * batch_size * per_sample * act_bytes
    image = data.in_channels * data.image_size**2
    padded = data.in_channels * (data.image_size + 2 * CROP_PADDING) ** 2
    per_stack = 4 * (n_images * image + 2 * m * batch_size * padded)
    return m * per_model + per_stack


def largest_stack(
    arch: Arch, data: Dataset, n_images: int, batch_size: int, budget: int, bf16: bool = False
) -> int:
    """The most models :func:`stack_memory_bytes` fits into ``budget`` bytes (at least 1)."""
    one = stack_memory_bytes(arch, data, 1, n_images, batch_size, bf16)
    two = stack_memory_bytes(arch, data, 2, n_images, batch_size, bf16)
    per_model = two - one  # the estimate is affine in m
    return max(1, 1 + (budget - one) // per_model) if budget >= one else 1
