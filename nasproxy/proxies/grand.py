"""GraNd proxy (Paul et al., "Deep Learning on a Data Diet", NeurIPS 2021).

The GraNd score of an example is the norm of its loss gradient, ||grad_theta CE(x, y)||.
Here theta is the scoring network's last (linear) layer, whose per-example gradient is
the outer product of the error p - onehot(y) and the input [h, 1] (h the penultimate
features), so its norm has the closed form ||p - onehot(y)|| sqrt(||h||^2 + 1). The
proxy keeps the highest-scoring examples of each class, ties broken by the seed.
Simplifications relative to Paul et al.: the last layer only instead of all parameters,
and the single scoring run at the end of its training instead of an average over
initialisations early in training.
"""

from __future__ import annotations

import numpy as np

from nasproxy.proxies.base import SelectionContext, top_per_class
from nasproxy.proxies.el2n import el2n_scores


def grand_scores(probs: np.ndarray, features: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """||p_i - onehot(y_i)|| sqrt(||h_i||^2 + 1): the last layer's gradient norm per example."""
    h = np.asarray(features, dtype=np.float64)
    return el2n_scores(probs, labels) * np.sqrt(np.einsum("ij,ij->i", h, h) + 1.0)


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: the highest last-layer GraNd scores per class."""
    art = ctx.artifact
    scores = grand_scores(art.probs, art.features, ctx.labels)
    return top_per_class(scores, ctx.labels, ctx.budget(), ctx.seed)
