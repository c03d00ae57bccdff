"""Entropy-based proxy (Na et al., "Accelerating Neural Architecture Search via Proxy Data",
IJCAI 2021), their probabilistic selection P1.

The entropy of each example's softmax output under the scoring network is binned on a
log10 scale (bin width 0.5, their CIFAR-10 setting); a bin holding c_b examples is drawn
with probability proportional to max_b' c_b' - c_b + 1, spread evenly over its examples,
and the proxy is a weighted sample without replacement. Rare entropies, at both the low
and the high end of the histogram, are thus over-represented relative to their share,
while the crowded middle is thinned. Simplifications relative to Na et al.: per class, for
the quota (they sample the whole set at once); bins aligned to multiples of the width
rather than to the rounded minimum; the scoring network is the shared scoring run (they
use a separately pretrained network); entropies below 1e-12 count as 1e-12 (float32
softmax outputs do not resolve less).
"""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import SelectionContext

BIN_WIDTH = 0.5  # in log10(entropy)
FLOOR = 1e-12


def softmax_entropy(probs: np.ndarray) -> np.ndarray:
    """-sum_c p_c ln p_c per row (0 ln 0 = 0)."""
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(p > 0, p * np.log(p), 0.0)
    return -terms.sum(axis=1)


def sampling_weights(entropy: np.ndarray, bin_width: float = BIN_WIDTH) -> np.ndarray:
    """Na et al.'s P1 probabilities of one pool of examples (they sum to 1)."""
    log = np.log10(np.maximum(np.asarray(entropy, dtype=np.float64), FLOOR))
    bins = np.floor(log / bin_width).astype(np.int64)
    _, inverse, counts = np.unique(bins, return_inverse=True, return_counts=True)
    bin_weight = counts.max() - counts + 1
    weights = bin_weight[inverse] / counts[inverse]
    return weights / weights.sum()


def entropy_per_class(
    probs: np.ndarray, labels: np.ndarray, per_class: int, seed: int
) -> np.ndarray:
    """A P1-weighted sample without replacement within each class; sorted int64 indices."""
    rng = np.random.default_rng(seed)
    entropy = softmax_entropy(probs)
    chosen = []
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        p = sampling_weights(entropy[members])
        chosen.append(rng.choice(members, size=per_class, replace=False, p=p))
    return np.sort(np.concatenate(chosen)).astype(np.int64)


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: entropy-histogram sampling per class."""
    return entropy_per_class(ctx.artifact.probs, ctx.labels, ctx.budget(), ctx.seed)
