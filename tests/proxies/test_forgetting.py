"""The forgetting method (Toneva et al. 2019): the most forgotten per class."""

from __future__ import annotations

import numpy as np

from tests.proxies.common import flat


def test_forgetting_keeps_the_most_forgotten_of_each_class(records, digits, artifact):
    labels = digits.y_train.numpy()
    forgotten = np.array(flat(records["forgetting"]))
    events = np.where(artifact.ever_learned, artifact.forgetting_events, np.inf)
    for c in range(digits.num_classes):
        kept = forgotten[labels[forgotten] == c]
        rest = np.setdiff1d(np.flatnonzero(labels == c), kept)
        assert events[kept].min() >= events[rest].max()  # nothing left scores higher
