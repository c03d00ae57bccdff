"""The herding method (Welling 2009), against a brute-force rule."""

from __future__ import annotations

import numpy as np
import pytest

from nasproxy.proxies.herding import herding_order, herding_per_class
from tests.proxies.common import K, flat


def _herding_brute_force(x: np.ndarray, k: int) -> list[int]:
    """Welling's rule, one candidate at a time: argmin ||mu - (s + x) / (t + 1)||."""
    mu = x.mean(axis=0)
    chosen: list[int] = []
    for t in range(k):
        s = x[chosen].sum(axis=0) if chosen else np.zeros_like(mu)
        best, best_dist = -1, np.inf
        for i in range(len(x)):
            if i in chosen:
                continue
            dist = np.linalg.norm(mu - (s + x[i]) / (t + 1))
            if dist < best_dist:
                best, best_dist = i, dist
        chosen.append(best)
    return chosen


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_herding_matches_brute_force(seed):
    x = np.random.default_rng(seed).normal(size=(40, 6)) * [1, 2, 3, 1, 1, 5]
    assert herding_order(x, 15).tolist() == _herding_brute_force(x, 15)


def test_herding_tracks_the_class_mean():
    x = np.random.default_rng(3).normal(size=(200, 4))
    order = herding_order(x, 20)
    gap = np.linalg.norm(x[order].mean(axis=0) - x.mean(axis=0))
    random_gaps = [
        np.linalg.norm(x[np.random.default_rng(s).choice(200, 20, replace=False)].mean(0))
        for s in range(50)
    ]
    assert gap < min(random_gaps)


def test_herding_per_class_stays_within_classes():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 10)
    x = rng.normal(size=(30, 4))
    kept = herding_per_class(x, labels, 4)
    assert np.bincount(labels[kept]).tolist() == [4, 4, 4]
    members = np.flatnonzero(labels == 1)
    assert sorted(kept[labels[kept] == 1]) == sorted(members[herding_order(x[members], 4)])


def test_herding_method_herds_the_scoring_run_features(records, digits, artifact):
    herded = herding_per_class(artifact.features, digits.y_train.numpy(), K)
    assert flat(records["herding"]) == herded.tolist()
