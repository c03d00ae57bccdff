"""nasproxy.models: every ConvNet of the space builds and forwards to finite logits."""

from __future__ import annotations

import torch

from nasproxy import spaces
from nasproxy.models import build_model


def test_every_arch_forwards_to_finite_logits() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        for arch in spaces.load("convnet720"):
            model = build_model(arch, 3, 10, 32).eval()
            out = model(x)
            assert out.shape == (2, 10), arch
            assert torch.isfinite(out).all(), arch
