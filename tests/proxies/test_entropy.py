"""The entropy method (Na et al., IJCAI 2021): weights and sampling."""

from __future__ import annotations

import numpy as np
from scipy import stats

from nasproxy.proxies.entropy import entropy_per_class, sampling_weights, softmax_entropy


def test_softmax_entropy_matches_scipy():
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=20)
    probs[0] = [1, 0, 0, 0, 0]
    np.testing.assert_allclose(softmax_entropy(probs), stats.entropy(probs, axis=1))


def test_entropy_weights_hand_computed():
    # log10 bins of width 0.5: six examples in [-1, -0.5), two in [-3, -2.5), one in
    # [0, 0.5). Bin weights max - count + 1 = 1, 5, 6; per example 1/6, 5/2, 6; total 12.
    entropy = np.array([0.2] * 6 + [0.002] * 2 + [2.0])
    expected = np.array([1 / 72] * 6 + [5 / 24] * 2 + [1 / 2])
    np.testing.assert_allclose(sampling_weights(entropy), expected)


def test_entropy_sampling_follows_the_weights():
    probs = np.array([[0.9, 0.1]] * 6 + [[0.999, 0.001]] * 2 + [[0.5, 0.5]])
    labels = np.zeros(9, dtype=np.int64)
    draws = np.array([entropy_per_class(probs, labels, 1, s)[0] for s in range(3000)])
    observed = np.bincount(draws, minlength=9)
    expected = sampling_weights(softmax_entropy(probs)) * 3000
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    a = entropy_per_class(probs, labels, 4, seed=7)
    np.testing.assert_array_equal(a, entropy_per_class(probs, labels, 4, seed=7))
