"""The GraNd method (Paul et al., NeurIPS 2021), last layer in closed form."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from nasproxy.proxies.grand import grand_scores
from tests.proxies.common import build, flat


def test_grand_equals_autograd_of_the_last_layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 7))
    y = rng.integers(0, 4, size=12)
    layer = torch.nn.Linear(7, 4, dtype=torch.float64)
    probs = torch.softmax(layer(torch.from_numpy(x)), dim=1).detach().numpy()
    expected = []
    for i in range(12):
        layer.zero_grad()
        loss = F.cross_entropy(layer(torch.from_numpy(x[i : i + 1])), torch.tensor([y[i]]))
        loss.backward()
        grads = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
        expected.append(grads.norm().item())
    np.testing.assert_allclose(grand_scores(probs, x, y), expected, rtol=1e-10)


def test_grand_keeps_the_highest_scores(digits, cache, artifact):
    labels = digits.y_train.numpy()
    grand = build(digits, cache, "grand")
    g = grand_scores(artifact.probs, artifact.features, labels)
    kept = np.array(flat(grand))
    for c in range(digits.num_classes):
        members = np.flatnonzero(labels == c)
        rest = np.setdiff1d(members, kept)
        assert g[kept[labels[kept] == c]].min() >= g[rest].max()
