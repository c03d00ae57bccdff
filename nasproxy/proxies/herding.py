"""Herding proxy (Welling, ICML 2009; in the per-class form of iCaRL, Rebuffi et al., 2017).

Per class c with feature mean mu_c, examples are added greedily: having chosen k with
feature sum s, the next is the unchosen x that minimises || mu_c - (s + x) / (k + 1) ||,
so the running mean of the chosen set tracks the class mean. Features are the scoring
backbone's penultimate features. (The minimum is taken: maximising the same distance, as
one popular library does, picks the examples that pull the mean away from mu_c.)
"""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import SelectionContext


def herding_order(features: np.ndarray, k: int) -> np.ndarray:
    """Positions (rows of ``features``) of the first ``k`` herding picks, in pick order.

    With t = (k + 1) mu - s, ||mu - (s + x)/(k + 1)||^2 = ||t - x||^2 / (k + 1)^2 and
    ||t - x||^2 = ||t||^2 - 2 x.t + ||x||^2, so each step is one matrix-vector product over
    all candidates. Ties go to the lowest row.
    """
    x = np.asarray(features, dtype=np.float64)
    mean = x.mean(axis=0)
    sq_norms = np.einsum("ij,ij->i", x, x)
    chosen_sum = np.zeros_like(mean)
    available = np.ones(len(x), dtype=bool)
    order = np.empty(k, dtype=np.int64)
    for step in range(k):
        target = (step + 1) * mean - chosen_sum
        cost = np.where(available, sq_norms - 2.0 * (x @ target), np.inf)
        pick = int(np.argmin(cost))
        order[step] = pick
        available[pick] = False
        chosen_sum += x[pick]
    return order


def herding_per_class(features: np.ndarray, labels: np.ndarray, per_class: int) -> np.ndarray:
    """Herding within each class; sorted int64 indices."""
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        chosen.append(members[herding_order(features[members], per_class)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: herding in the scoring backbone's feature space."""
    return herding_per_class(ctx.artifact.features, ctx.labels, ctx.budget())
