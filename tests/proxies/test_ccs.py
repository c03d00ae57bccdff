"""The CCS method (Zheng et al., ICLR 2023): cutoff and strata, hand-computed."""

from __future__ import annotations

import numpy as np
import pytest

from nasproxy.errors import NasproxyError
from nasproxy.proxies.ccs import ccs_per_class, stratified_sample


def test_ccs_hand_computed():
    # one class: eight easy (0), then 5, 10 and one far outlier (100). beta = 1/11 prunes
    # the outlier; two equal-width strata over [0, 10] hold {eight 0s} and {5, 10}. With a
    # budget of 4 the small stratum gives min(2, 4 // 2) = 2, the other the remaining 2.
    scores = np.array([0.0] * 8 + [5.0, 10.0, 100.0])
    labels = np.zeros(11, dtype=np.int64)
    for seed in range(10):
        kept = ccs_per_class(scores, labels, 4, seed, beta=1 / 11, strata=2)
        assert {8, 9} <= set(kept.tolist()) and 10 not in kept
        assert len(kept) == 4 and set(kept.tolist()) - {8, 9} <= set(range(8))


def test_ccs_spreads_the_budget_evenly_over_strata():
    # four strata of sizes 1, 3, 10, 30 and a budget of 12: 1, then min(3, 11 // 3) = 3,
    # then min(10, 8 // 2) = 4, then the remaining 4
    scores = np.concatenate([[0.5], np.full(3, 1.5), np.full(10, 2.5), np.full(30, 3.5)])
    scores = np.concatenate([[0.0], scores, [4.0]])  # the range ends: [0, 4], 4 bins
    picked = stratified_sample(scores[1:-1], 12, 4, np.random.default_rng(0))
    counts = np.bincount(np.floor(scores[1:-1][picked]).astype(int), minlength=4)
    assert counts.tolist() == [1, 3, 4, 4]


@pytest.mark.parametrize("seed", range(5))
def test_ccs_fills_the_budget_exactly_and_drops_the_hardest(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), [40, 55, 70])
    scores = rng.exponential(size=len(labels)) ** 2
    kept = ccs_per_class(scores, labels, 17, seed, beta=0.3, strata=7)
    assert np.bincount(labels[kept]).tolist() == [17, 17, 17]
    for c in range(3):
        members = np.flatnonzero(labels == c)
        hardest = members[np.argsort(-scores[members])[: int(0.3 * len(members))]]
        assert not set(hardest.tolist()) & set(kept.tolist())
    np.testing.assert_array_equal(kept, ccs_per_class(scores, labels, 17, seed, 0.3, 7))


def test_ccs_refuses_a_budget_above_what_the_cutoff_leaves():
    with pytest.raises(NasproxyError, match="fewer than the budget"):
        ccs_per_class(np.arange(10.0), np.zeros(10, dtype=int), 8, 0, beta=0.3)
