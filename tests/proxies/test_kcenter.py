"""The k-center greedy method (Sener & Savarese, ICLR 2018), against brute force."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from nasproxy.proxies.kcenter import k_center_greedy, k_center_per_class


def _k_center_brute_force(x: np.ndarray, k: int, first: int) -> list[int]:
    """The greedy rule with an explicit distance matrix and loops."""
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    chosen = [first]
    while len(chosen) < k:
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i not in chosen and min(dist[i, j] for j in chosen) > best_d:
                best, best_d = i, min(dist[i, j] for j in chosen)
        chosen.append(best)
    return chosen


def _radius(x: np.ndarray, centers) -> float:
    d = np.sqrt(((x[:, None, :] - x[None, list(centers), :]) ** 2).sum(-1))
    return float(d.min(axis=1).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_matches_brute_force_and_is_within_twice_the_optimum(seed):
    x = np.random.default_rng(seed).normal(size=(14, 3)) * [1, 3, 0.5]
    order = k_center_greedy(x, 4, first=seed)
    assert order.tolist() == _k_center_brute_force(x, 4, seed)
    optimum = min(_radius(x, c) for c in itertools.combinations(range(14), 4))
    assert _radius(x, order) <= 2 * optimum + 1e-12


def test_k_center_never_repeats_on_duplicates():
    x = np.zeros((6, 2))
    assert sorted(k_center_greedy(x, 6, first=2).tolist()) == list(range(6))


def test_k_center_per_class_is_seeded():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(60, 3)), np.repeat(np.arange(3), 20)
    a = k_center_per_class(x, labels, 4, seed=1)
    np.testing.assert_array_equal(a, k_center_per_class(x, labels, 4, seed=1))
    assert np.bincount(labels[a]).tolist() == [4, 4, 4]
    assert any(not np.array_equal(a, k_center_per_class(x, labels, 4, seed=s)) for s in range(2, 6))
