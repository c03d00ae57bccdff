"""CCS proxy: coverage-centric coreset selection (Zheng et al., "Coverage-centric Coreset
Selection for High Pruning Rates", ICLR 2023).

Within each class: the hardest ``beta`` fraction by difficulty score is pruned first (the
hard cutoff, against mislabelled and outlier examples); the rest is split into
``strata`` bins of equal width in score; then, smallest bin first, each bin gives
min(its size, remaining budget // remaining bins) examples at random, so the budget is
spread evenly over the strata and a bin too small for its share passes the rest on.
This fills the budget exactly whenever the examples left after the cutoff suffice.

The difficulty score is EL2N from the scoring run (``el2n.py``; CCS also uses forgetting
or AUM). Simplifications relative to Zheng et al.: selection per class, for the quota;
a fixed beta (0.3 by default here) rather than one tuned per pruning rate; 50 strata.
"""

from __future__ import annotations

import numpy as np

from nasproxy.errors import NasproxyError
from nasproxy.proxies.base import SelectionContext
from nasproxy.proxies.el2n import el2n_scores

BETA = 0.3  # hard cutoff: share of each class pruned as the hardest before sampling
STRATA = 50  # equal-width score bins


def stratified_sample(
    scores: np.ndarray, budget: int, strata: int, rng: np.random.Generator
) -> np.ndarray:
    """Positions of ``budget`` rows of ``scores`` by CCS's stratified sampling, sorted."""
    scores = np.asarray(scores, dtype=np.float64)
    if budget > len(scores):
        raise NasproxyError(f"CCS cannot pick {budget} of {len(scores)} examples")
    low, high = scores.min(), scores.max()
    width = (high - low) / strata
    if width > 0:
        bins = np.minimum(((scores - low) / width).astype(np.int64), strata - 1)
    else:
        bins = np.zeros(len(scores), dtype=np.int64)
    groups = [np.flatnonzero(bins == b) for b in range(strata)]
    groups = sorted((g for g in groups if len(g)), key=len)  # stable: lower bins first
    chosen, left = [], budget
    for i, group in enumerate(groups):
        take = min(len(group), left // (len(groups) - i))
        chosen.append(rng.choice(group, size=take, replace=False))
        left -= take
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def ccs_per_class(
    scores: np.ndarray,
    labels: np.ndarray,
    per_class: int,
    seed: int,
    beta: float = BETA,
    strata: int = STRATA,
) -> np.ndarray:
    """CCS within each class (hardest = highest score); sorted int64 indices."""
    if not 0 <= beta < 1 or strata < 1:
        raise NasproxyError(f"CCS needs 0 <= beta < 1 and strata >= 1, got {beta}, {strata}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == c))  # ties at the cutoff: seeded
        by_difficulty = members[np.argsort(-scores[members], kind="stable")]
        kept = by_difficulty[int(np.floor(beta * len(members))) :]
        if len(kept) < per_class:
            raise NasproxyError(
                f"CCS: class {c} keeps {len(kept)} examples after pruning the hardest "
                f"{beta:.0%}, fewer than the budget {per_class}"
            )
        chosen.append(kept[stratified_sample(scores[kept], per_class, strata, rng)])
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: CCS over EL2N scores per class."""
    scores = el2n_scores(ctx.artifact.probs, ctx.labels)
    return ccs_per_class(scores, ctx.labels, ctx.budget(), ctx.seed)
