"""What every proxy method shares: its inputs, the budget check and the per-class picker.

A method is ``select(ctx) -> np.ndarray``: sorted, unique int64 indices into the train
split. Methods that score examples (forgetting, EL2N, GraNd) hand the scores to
``top_per_class``, so scoring and picking stay separate. Imports run one way:
``nasproxy.influence`` (``estimate`` <- ``head``) <- ``base`` <- the method modules <- ``build``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING

import numpy as np

from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.settings import above, at_least, check_fields, setting

if TYPE_CHECKING:
    from nasproxy.influence.head import RefitHead
    from nasproxy.scoring import ScoringArtifact


@dataclass(frozen=True)
class ProxyOptions:
    """Options of the influence method and of the head every epsilon is measured with."""

    solver: str = setting(
        "greedy", help="influence: greedy (default), relax, exact, exact-l1, exact-linf"
    )
    objective: str = setting("removed-sum", help="influence: removed-sum, kept-mean")
    project_dim: int | None = setting(
        None, check=at_least(1), help="influence: project S to k dims"
    )
    epsilon: float | None = setting(
        None,
        check=at_least(0),
        help="influence: remove as many as ||sum of removed S_i|| <= E allows, instead of "
        "--per-class (classes are then unbalanced)",
    )
    min_per_class: int = setting(
        0, check=at_least(0), help="with --epsilon: keep at least this many"
    )
    head_l2: float | None = setting(
        None, check=above(0), help="L2 of the refitted head (default: backbone weight decay)"
    )

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True, eq=False)
class SelectionContext:
    """Everything a method may read: the data, its budget, the seed, the scoring run.

    The scoring run (``artifact``) and the refitted head (``head``) are made on first use,
    so a method that reads neither (random, most selections made elsewhere) costs no
    training, and one that reads only the scoring run (herding, forgetting, ...) no head.
    """

    data: Dataset
    per_class: int | None  # None only for the influence method under an epsilon budget
    seed: int
    options: ProxyOptions
    scoring: Callable[[], ScoringArtifact]  # runs or reads the scoring run, once
    refit: Callable[[], RefitHead]  # refits the head on it (or reads it), once

    @cached_property
    def artifact(self) -> ScoringArtifact:
        return self.scoring()

    @cached_property
    def head(self) -> RefitHead:
        return self.refit()

    @property
    def labels(self) -> np.ndarray:
        return self.data.y_train.numpy()

    def budget(self) -> int:
        """The per-class budget, for methods that need one."""
        if self.per_class is None:
            raise NasproxyError("this method needs a per-class budget (--per-class)")
        return self.per_class


Select = Callable[[SelectionContext], np.ndarray]


def check_budget(data: Dataset, per_class: int) -> None:
    """Refuse a budget below 1 or above the smallest class of the train split."""
    if per_class < 1:
        raise NasproxyError(f"per-class budget must be at least 1, got {per_class}")
    sizes = {c: len(members) for c, members in data.class_indices().items()}
    small = min(sizes, key=lambda c: sizes[c])
    if per_class > sizes[small]:
        raise NasproxyError(
            f"per-class budget {per_class} exceeds class {data.classes[small]!r}, "
            f"which has {sizes[small]} training examples"
        )


def top_per_class(scores: np.ndarray, labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """The ``per_class`` highest-scoring examples of each class, as sorted int64 indices.

    Ties are broken by a seeded random permutation applied before a stable sort, so equal
    scores do not favour low indices and the choice is reproducible.
    """
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))
        order = np.argsort(-scores[members], kind="stable")
        chosen.append(members[order[:per_class]])
    return np.sort(np.concatenate(chosen)).astype(np.int64)
