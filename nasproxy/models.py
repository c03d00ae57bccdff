"""The ConvNet family of Dataset Condensation (Zhao & Bilen, 2021), built from an Arch.

Each block is Conv2d(3x3, padding 1) -> norm -> activation -> pooling(2); the head is a
Linear layer over the flattened features. The feature shape is tracked while the blocks
are built, so the head's input size is derived, never typed.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
from torch import nn

from nasproxy.cells import Cell
from nasproxy.spaces import GROUPNORM_GROUPS, AnyArch, Arch

LEAKY_RELU_SLOPE = 0.01


def _norm(kind: str, channels: int, size: int) -> nn.Module | None:
    if kind == "batchnorm":
        return nn.BatchNorm2d(channels)
    if kind == "layernorm":  # over the pre-pooling [C, H, W] map, as in Dataset Condensation
        return nn.LayerNorm([channels, size, size])
    if kind == "instancenorm":  # GroupNorm with one channel a group == affine instance norm
        return nn.GroupNorm(channels, channels, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(GROUPNORM_GROUPS, channels, affine=True)
    return None


def make_activation(kind: str) -> nn.Module:
    """The activation module for an Arch's ``act`` field."""
    if kind == "sigmoid":
        return nn.Sigmoid()
    if kind == "relu":
        return nn.ReLU(inplace=True)
    return nn.LeakyReLU(LEAKY_RELU_SLOPE, inplace=True)


def make_pooling(kind: str) -> nn.Module | None:
    """The 2x2 pooling module for an Arch's ``pool`` field (None for none)."""
    if kind == "maxpooling":
        return nn.MaxPool2d(2, 2)
    if kind == "avgpooling":
        return nn.AvgPool2d(2, 2)
    return None


def conv_blocks(
    arch: Arch,
    in_channels: int,
    image_size: int,
    m: int,
    norm: Callable[[int, int], nn.Module | None],
    activation: Callable[[], nn.Module],
) -> tuple[list[nn.Module], int]:
    """``arch``'s blocks for ``m`` models side by side (convolutions grouped by model), and
    one model's flat feature size. ``norm(channels, size)`` (one model's channels, the map
    size before pooling) and ``activation()`` make the other modules: :class:`ConvNet`
    and :class:`~nasproxy.multitrain.stacked.StackedConvNet` pass theirs, so the two
    share one layer sequence and state dict keys."""
    arch.check_input(image_size)
    layers: list[nn.Module] = []
    channels, size = in_channels, image_size
    for _ in range(arch.depth):
        layers.append(nn.Conv2d(m * channels, m * arch.width, 3, padding=1, groups=m))
        channels = arch.width
        for module in (norm(channels, size), activation()):
            if module is not None:
                layers.append(module)
        pool = make_pooling(arch.pool)
        if pool is not None:
            layers.append(pool)
            size //= 2
    return layers, channels * size * size


class ConvNet(nn.Module):
    """``features`` maps images to flat penultimate features; ``classifier`` is the head."""

    def __init__(self, arch: Arch, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        self.arch = arch
        norm, activation = partial(_norm, arch.norm), partial(make_activation, arch.act)
        layers, self.feature_dim = conv_blocks(arch, in_channels, image_size, 1, norm, activation)
        self.features = nn.Sequential(*layers, nn.Flatten())
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (flattened) features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(arch: AnyArch, in_channels: int, num_classes: int, image_size: int) -> nn.Module:
    """The network of ``arch`` (a ConvNet, or a NAS-Bench-201 cell's network) on
    ``in_channels`` x ``image_size``^2 inputs; either has ``embed`` and ``classifier``."""
    if isinstance(arch, Cell):
        from nasproxy.models_nb201 import CellNetwork

        return CellNetwork(arch, in_channels, num_classes, image_size)
    return ConvNet(arch, in_channels, num_classes, image_size)
