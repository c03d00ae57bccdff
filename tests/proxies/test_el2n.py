"""The EL2N method (Paul et al., NeurIPS 2021): the largest ||p - onehot(y)||_2 per class.

Truth: the closed form sqrt((1 - p_y)^2 + sum over j != y of p_j^2), written out per
example, on hand-made softmax outputs whose scores differ within each class (so any other
ranking keeps other examples) and on the digits scoring run.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import numpy as np
import pytest

from nasproxy.proxies.el2n import el2n_scores
from nasproxy.proxies.registry import resolve
from tests.proxies.common import K, build, context, flat

# Softmax outputs over 3 classes and the labels, classes 0, 1, 2 in turn.
PROBS = np.array(
    [
        [0.9, 0.05, 0.05],  # 0, class 0: sqrt(0.015)  = 0.122
        [0.2, 0.6, 0.2],  # 1, class 1: sqrt(0.24)   = 0.490
        [0.5, 0.3, 0.2],  # 2, class 2: sqrt(0.98)   = 0.990
        [0.1, 0.8, 0.1],  # 3, class 0: sqrt(1.46)   = 1.208
        [0.05, 0.9, 0.05],  # 4, class 1: sqrt(0.015)  = 0.122
        [0.1, 0.1, 0.8],  # 5, class 2: sqrt(0.06)   = 0.245
        [0.5, 0.25, 0.25],  # 6, class 0: sqrt(0.375)  = 0.612
        [0.7, 0.1, 0.2],  # 7, class 1: sqrt(1.34)   = 1.158
        [0.3, 0.3, 0.4],  # 8, class 2: sqrt(0.54)   = 0.735
    ]
)
LABELS = np.arange(len(PROBS)) % 3


def _closed_form(probs: np.ndarray, labels: np.ndarray) -> list[float]:
    """sqrt((1 - p_y)^2 + sum_{j != y} p_j^2) of each row, one example at a time."""
    scores = []
    for row, y in zip(probs.tolist(), labels.tolist(), strict=True):
        others = sum(p * p for j, p in enumerate(row) if j != y)
        scores.append(math.sqrt((1.0 - row[y]) ** 2 + others))
    return scores


def _highest_per_class(scores: list[float], labels: np.ndarray, per_class: int) -> list[int]:
    """The ``per_class`` highest scores of each class, by a plain sort."""
    kept = []
    for c in np.unique(labels).tolist():
        members = [i for i, y in enumerate(labels.tolist()) if y == c]
        kept += sorted(members, key=lambda i: -scores[i])[:per_class]
    return sorted(kept)


def test_el2n_hand_computed():
    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    scores = el2n_scores(probs, np.array([0, 2, 0]))
    expected = [np.sqrt(0.3**2 + 0.2**2 + 0.1**2), np.sqrt(0.7**2 + 0.2**2 + 0.9**2), 0.0]
    np.testing.assert_allclose(scores, expected)


def test_the_hand_made_scores_are_distinct_within_each_class() -> None:
    scores = np.array(_closed_form(PROBS, LABELS))
    np.testing.assert_allclose(scores**2, [0.015, 0.24, 0.98, 1.46, 0.015, 0.06, 0.375, 1.34, 0.54])
    for c in range(3):
        assert len(set(scores[LABELS == c].round(9))) == (LABELS == c).sum()


@pytest.mark.parametrize("per_class", [1, 2, 3])
@pytest.mark.parametrize("seed", [0, 7])
def test_el2n_keeps_the_highest_scores_of_each_class(per_class: int, seed: int) -> None:
    ctx = context(LABELS, SimpleNamespace(probs=PROBS), per_class, seed)
    expected = _highest_per_class(_closed_form(PROBS, LABELS), LABELS, per_class)
    assert resolve("el2n").select(ctx).tolist() == expected


def test_el2n_by_hand() -> None:
    select = resolve("el2n").select
    assert select(context(LABELS, SimpleNamespace(probs=PROBS), 1, 0)).tolist() == [2, 3, 7]
    two = select(context(LABELS, SimpleNamespace(probs=PROBS), 2, 0)).tolist()
    assert two == [1, 2, 3, 6, 7, 8]


def test_the_built_proxy_keeps_the_highest_scores(digits, cache, artifact):
    """End to end through build_proxy on digits: the K highest closed-form scores of each
    class (no two scores at a class's cut are within 1e-6, so the set is the one answer)."""
    labels = digits.y_train.numpy()
    scores = _closed_form(artifact.probs.astype(np.float64), labels)
    for c in range(digits.num_classes):
        ranked = sorted((scores[i] for i in np.flatnonzero(labels == c)), reverse=True)
        assert ranked[K - 1] - ranked[K] > 1e-6, c
    assert flat(build(digits, cache, "el2n")) == _highest_per_class(scores, labels, K)
