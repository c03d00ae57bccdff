"""The random method: a seeded uniform sample of each class."""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.random import random_per_class


def test_random_per_class():
    labels = np.repeat(np.arange(4), [10, 12, 9, 30])
    a = random_per_class(labels, 7, seed=0)
    assert a.dtype == np.int64 and np.all(np.diff(a) > 0)
    assert np.bincount(labels[a]).tolist() == [7, 7, 7, 7]
    np.testing.assert_array_equal(a, random_per_class(labels, 7, seed=0))
    assert not np.array_equal(a, random_per_class(labels, 7, seed=1))
