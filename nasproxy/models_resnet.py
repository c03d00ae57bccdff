"""ResNet-18 for 32x32 inputs, the network Yang et al. (ICLR 2023) prune CIFAR with.

The CIFAR variant of He et al. (2016)'s ResNet-18: a 3x3 stride-1 stem and no max pooling
(an ImageNet 7x7/2 stem with pooling would shrink 32x32 images to 8x8 before the first
block), then four stages of two torchvision ``BasicBlock`` s with 64, 128, 256 and 512
channels (strides 1, 2, 2, 2), global average pooling and a linear head. It exposes the
same ``embed`` / ``classifier`` split as the ConvNet, so the scoring run treats both alike.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock

STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))  # (channels, stride of the first block)
BLOCKS_PER_STAGE = 2


class CifarResNet18(nn.Module):
    """``features`` maps images to 512-d pooled features; ``classifier`` is the head."""

    def __init__(self, in_channels: int, num_classes: int):
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, STAGES[0][0], kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(STAGES[0][0]),
            nn.ReLU(inplace=True),
        ]
        channels = STAGES[0][0]
        for planes, first_stride in STAGES:
            for block in range(BLOCKS_PER_STAGE):
                stride = first_stride if block == 0 else 1
                shortcut = None
                if stride != 1 or channels != planes:
                    shortcut = nn.Sequential(
                        nn.Conv2d(channels, planes, kernel_size=1, stride=stride, bias=False),
                        nn.BatchNorm2d(planes),
                    )
                layers.append(BasicBlock(channels, planes, stride=stride, downsample=shortcut))
                channels = planes
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate (pooled) features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
