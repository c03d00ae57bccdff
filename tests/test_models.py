"""nasproxy.models: every ConvNet of the space builds and forwards to finite logits; the
block builder that ConvNet and the stacked network share keeps M models apart."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from nasproxy import spaces
from nasproxy.models import build_model, conv_blocks, make_activation
from nasproxy.spaces import POOLINGS, Arch


def test_every_arch_forwards_to_finite_logits() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for arch in spaces.load("convnet720"):
            model = build_model(arch, 3, 10, 32).eval()
            out = model(x)
            assert out.shape == (2, 10), arch
            assert torch.isfinite(out).all(), arch


@pytest.mark.parametrize("pool", POOLINGS)
def test_blocks_of_m_models_keep_each_model_to_its_channels(pool: str) -> None:
    """Truths: Arch's closed forms (feature sizes, parameter count less the head) and the
    layout itself: changing model j's input channels changes exactly model j's outputs."""
    arch, m, cin, size = Arch(8, 3, "sigmoid", "none", pool), 3, 3, 8
    torch.manual_seed(0)
    sigmoid = partial(make_activation, "sigmoid")  # not in place, never flat at zero
    layers, feature_dim = conv_blocks(arch, cin, size, m, lambda c, s: None, sigmoid)
    net = nn.Sequential(*layers)
    final = arch.feature_sizes(size)[-1]
    assert feature_dim == arch.width * final**2
    head = feature_dim * 10 + 10
    assert sum(p.numel() for p in net.parameters()) == m * (arch.param_count(cin, 10, size) - head)
    x = torch.randn(2, m * cin, size, size, dtype=torch.float64)
    net.double()
    with torch.no_grad():
        out = net(x)
        assert out.shape == (2, m * arch.width, final, final)
        for j in range(m):
            moved = x.clone()
            moved[:, j * cin : (j + 1) * cin] += 1.0
            changed = (net(moved) - out).abs().amax((0, 2, 3)) > 0
            owner = torch.arange(m * arch.width) // arch.width
            assert changed.tolist() == (owner == j).tolist(), j
