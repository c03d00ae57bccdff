"""Forgetting proxy (Toneva et al., "An Empirical Study of Example Forgetting", ICLR 2019).

The score of an example is its number of forgetting events during the scoring run (a
correct-to-incorrect change of its prediction between two consecutive presentations,
counted by ``nasproxy.scoring.ForgettingTracker``). Examples never classified correctly
count as the most forgettable (+inf), as in Toneva et al. The proxy keeps the most
forgettable examples of each class, ties broken by the seed.
"""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import SelectionContext, top_per_class


def forgetting_scores(events: np.ndarray, ever_learned: np.ndarray) -> np.ndarray:
    """Forgetting events as float scores, +inf for examples never learned."""
    scores = np.asarray(events, dtype=np.float64).copy()
    scores[~np.asarray(ever_learned, dtype=bool)] = np.inf
    return scores


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: the most forgettable examples per class."""
    art = ctx.artifact
    scores = forgetting_scores(art.forgetting_events, art.ever_learned)
    return top_per_class(scores, ctx.labels, ctx.budget(), ctx.seed)
