"""The forgetting method (Toneva et al. 2019): the most forgotten per class.

Truth: forgetting events counted by brute force from a recorded history of which
examples were classified correctly at each presentation, on a hand-made case whose counts
differ within each class, so that any other ranking keeps other examples.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from nasproxy.proxies.registry import resolve
from nasproxy.scoring import ForgettingTracker
from tests.proxies.common import context, flat

# One row per example (T: classified correctly at that presentation), classes alternating.
HISTORY = [
    "TFTFTF",  # 0, class 0: 3 events
    "FFFFFF",  # 1, class 1: never learned
    "TTTTTT",  # 2, class 0: 0
    "TFTTTT",  # 3, class 1: 1
    "FTFTTT",  # 4, class 0: 1
    "TFTFTT",  # 5, class 1: 2
    "FFFFFF",  # 6, class 0: never learned
    "TTTTTT",  # 7, class 1: 0
    "TFTFTT",  # 8, class 0: 2
    "TFTFTF",  # 9, class 1: 3
]
LABELS = np.arange(len(HISTORY)) % 2


def _brute_force_scores(history: list[str]) -> list[float]:
    """Per example: its correct-to-incorrect changes, +inf when never correct."""
    scores = []
    for row in history:
        events = sum(1 for a, b in zip(row, row[1:], strict=False) if a == "T" and b == "F")
        scores.append(events if "T" in row else float("inf"))
    return scores


def _select(per_class: int, seed: int = 0) -> list[int]:
    """The registry's forgetting method on the counts a tracker makes of HISTORY, fed
    the way training feeds it: each presentation in four shuffled batches."""
    n, rng = len(HISTORY), np.random.default_rng(1)
    tracker = ForgettingTracker(n)
    for t in range(len(HISTORY[0])):
        order = rng.permutation(n)
        for batch in np.array_split(order, 4):
            correct = [HISTORY[i][t] == "T" for i in batch]
            tracker(torch.as_tensor(batch), torch.as_tensor(correct))
    artifact = SimpleNamespace(
        forgetting_events=tracker.events.numpy(), ever_learned=tracker.ever_learned.numpy()
    )
    return resolve("forgetting").select(context(LABELS, artifact, per_class, seed)).tolist()


def test_the_hand_made_counts_are_distinct_within_each_class() -> None:
    scores = np.array(_brute_force_scores(HISTORY))
    assert scores.tolist() == [3, np.inf, 0, 1, 1, 2, np.inf, 0, 2, 3]
    for c in (0, 1):
        assert len(set(scores[LABELS == c])) == (LABELS == c).sum()


@pytest.mark.parametrize("per_class", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("seed", [0, 7])
def test_forgetting_keeps_the_most_forgotten_of_each_class(per_class: int, seed: int) -> None:
    scores = _brute_force_scores(HISTORY)
    expected = []
    for c in (0, 1):
        members = [i for i in range(len(HISTORY)) if LABELS[i] == c]
        expected += sorted(members, key=lambda i: -scores[i])[:per_class]
    assert _select(per_class, seed) == sorted(expected)


def test_forgetting_by_hand() -> None:
    # never learned first (6; 1), then the most events (0: 3; 9: 3), then 8 and 5 (2 each)
    assert _select(1) == [1, 6]
    assert _select(3) == [0, 1, 5, 6, 8, 9]


def test_the_built_proxy_keeps_the_most_forgotten_of_each_class(records, digits, artifact):
    """End to end through build_proxy on digits; its two-epoch scoring run leaves most
    examples never learned, so this checks the plumbing, the hand-made case the ranking."""
    labels = digits.y_train.numpy()
    forgotten = np.array(flat(records["forgetting"]))
    events = np.where(artifact.ever_learned, artifact.forgetting_events, np.inf)
    for c in range(digits.num_classes):
        kept = forgotten[labels[forgotten] == c]
        rest = np.setdiff1d(np.flatnonzero(labels == c), kept)
        assert events[kept].min() >= events[rest].max()  # nothing left scores higher
