"""EL2N proxy (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021).

The EL2N score of an example is the L2 norm of its error vector, ||p(x) - onehot(y)||_2,
where p is the network's softmax output; the proxy keeps the highest-scoring (hardest)
examples of each class, ties broken by the seed. Paul et al. average the score over
several networks early in training (e.g. 10 initialisations at epoch 20 on CIFAR-10);
here it is the single scoring run's output at the end of its training (the softmax
outputs the scoring artifact stores), which is cheaper but measures a trained network.
"""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import SelectionContext, top_per_class


def el2n_scores(probs: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """||p_i - onehot(y_i)||_2 for each row of ``probs`` (n, C)."""
    error = np.asarray(probs, dtype=np.float64).copy()
    error[np.arange(len(labels)), np.asarray(labels, dtype=np.int64)] -= 1.0
    return np.linalg.norm(error, axis=1)


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: the highest EL2N scores per class."""
    scores = el2n_scores(ctx.artifact.probs, ctx.labels)
    return top_per_class(scores, ctx.labels, ctx.budget(), ctx.seed)
