"""k-center greedy proxy (Sener & Savarese, "Active Learning for Convolutional Neural
Networks: A Core-Set Approach", ICLR 2018).

Within each class, in the scoring network's penultimate feature space (Euclidean), the
first center is a seeded random example; each next one is the example farthest from its
nearest chosen center, argmax_i min_j ||x_i - c_j||. The greedy choice covers the class
within twice the optimal k-center radius (Gonzalez 1985). Simplifications relative to
Sener & Savarese: no robust (outlier-tolerant) MIP refinement, and no labelled pool to
start from, hence the random first center; per class, for the quota.
"""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import SelectionContext


def k_center_greedy(features: np.ndarray, k: int, first: int) -> np.ndarray:
    """Rows of ``features`` picked by k-center greedy from row ``first``, in pick order.

    Ties go to the lowest row; rows already picked are never picked again, even when
    duplicate features leave every remaining distance at zero.
    """
    x = np.asarray(features, dtype=np.float64)
    order = np.empty(k, dtype=np.int64)
    nearest = np.full(len(x), np.inf)
    pick = first
    for step in range(k):
        order[step] = pick
        nearest = np.minimum(nearest, np.einsum("ij,ij->i", x - x[pick], x - x[pick]))
        nearest[order[: step + 1]] = -np.inf
        pick = int(np.argmax(nearest))
    return order


def k_center_per_class(
    features: np.ndarray, labels: np.ndarray, per_class: int, seed: int
) -> np.ndarray:
    """k-center greedy within each class from a seeded first center; sorted int64 indices."""
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        first = int(rng.integers(len(members)))
        chosen.append(members[k_center_greedy(features[members], per_class, first)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: k-center greedy in the scoring network's feature space."""
    return k_center_per_class(ctx.artifact.features, ctx.labels, ctx.budget(), ctx.seed)
