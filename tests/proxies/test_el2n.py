"""The EL2N method (Paul et al., NeurIPS 2021)."""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import top_per_class
from nasproxy.proxies.el2n import el2n_scores
from tests.proxies.common import K, build, flat


def test_el2n_hand_computed():
    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    scores = el2n_scores(probs, np.array([0, 2, 0]))
    expected = [np.sqrt(0.3**2 + 0.2**2 + 0.1**2), np.sqrt(0.7**2 + 0.2**2 + 0.9**2), 0.0]
    np.testing.assert_allclose(scores, expected)


def test_el2n_keeps_the_highest_scores(digits, cache, artifact):
    labels = digits.y_train.numpy()
    el2n = build(digits, cache, "el2n")
    scores = el2n_scores(artifact.probs, labels)
    assert flat(el2n) == top_per_class(scores, labels, K, 0).tolist()
