"""Random proxy: a uniform sample of each class, without replacement, from the seed."""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import SelectionContext


def random_per_class(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """``per_class`` examples drawn uniformly from each class; sorted int64 indices."""
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in np.unique(labels)
    ]
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: a seeded uniform sample per class."""
    return random_per_class(ctx.labels, ctx.budget(), ctx.seed)
