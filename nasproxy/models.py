"""The ConvNet family of Dataset Condensation (Zhao & Bilen, 2021), built from an Arch.

Each block is Conv2d(3x3, padding 1) -> norm -> activation -> pooling(2); the head is a
Linear layer over the flattened features. The feature shape is tracked while the blocks
are built, so the head's input size is derived, never typed.
"""

from __future__ import annotations

import torch
from torch import nn

from nasproxy.spaces import GROUPNORM_GROUPS, Arch

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


class ConvNet(nn.Module):
    """``features`` maps images to flat penultimate features; ``classifier`` is the head."""

    def __init__(self, arch: Arch, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        arch.check_input(image_size)
        self.arch = arch
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(arch.depth):
            layers.append(nn.Conv2d(channels, arch.width, kernel_size=3, padding=1))
            channels = arch.width
            for module in (_norm(arch.norm, channels, size), make_activation(arch.act)):
                if module is not None:
                    layers.append(module)
            pool = make_pooling(arch.pool)
            if pool is not None:
                layers.append(pool)
                size //= 2
        layers.append(nn.Flatten())
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels * size * size
        self.classifier = nn.Linear(self.feature_dim, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (flattened) features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


def build_model(arch: Arch, in_channels: int, num_classes: int, image_size: int) -> ConvNet:
    """The ConvNet for ``arch`` on ``in_channels`` x ``image_size``^2 inputs."""
    return ConvNet(arch, in_channels, num_classes, image_size)
