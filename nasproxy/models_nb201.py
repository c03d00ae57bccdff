"""The NAS-Bench-201 / NATS-Bench topology network of a :class:`~nasproxy.cells.Cell`.

The benchmark's skeleton (Dong & Yang, ICLR 2020, Fig. 1; NATS-Bench's topology space):
a 3x3 conv stem of 16 channels with batch norm; three stages of 5 cells at 16, 32 and 64
channels, a residual reduction block (stride 2, channels doubled) between stages; batch
norm and ReLU, global average pooling, a linear head. Within a cell node ``j`` sums one
operation of each earlier node and the last node is the cell's output; the operations:

* ``none``: zeros (an edge that cuts the graph passes nothing; a cell whose output is cut
  off from its input outputs zeros, and the network still trains its stem and head);
* ``skip_connect``: identity;
* ``nor_conv_1x1`` / ``nor_conv_3x3``: ReLU -> conv (no bias) -> batch norm;
* ``avg_pool_3x3``: 3x3 average pooling, stride 1, padding not counted.

``features``/``embed`` give the pooled 64-d features and ``classifier`` the head, as
:class:`nasproxy.models.ConvNet` does, so the trainer and the scoring run take either.
"""

from __future__ import annotations

import torch
from torch import nn

from nasproxy.cells import CELLS_PER_STAGE, CHANNELS, EDGES, NODES, STAGES, Cell


class Zero(nn.Module):
    """The ``none`` operation: zeros of its input's shape."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mul(0.0)


def relu_conv_bn(cin: int, cout: int, kernel: int, stride: int = 1) -> nn.Sequential:
    """ReLU -> conv (no bias, same padding) -> batch norm."""
    return nn.Sequential(
        nn.ReLU(inplace=False),
        nn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False),
        nn.BatchNorm2d(cout),
    )


def make_op(op: str, channels: int) -> nn.Module:
    """One edge's operation on ``channels`` channels (stride 1)."""
    if op == "none":
        return Zero()
    if op == "skip_connect":
        return nn.Identity()
    if op == "nor_conv_1x1":
        return relu_conv_bn(channels, channels, 1)
    if op == "nor_conv_3x3":
        return relu_conv_bn(channels, channels, 3)
    return nn.AvgPool2d(3, stride=1, padding=1, count_include_pad=False)


class CellBlock(nn.Module):
    """One cell: ``edges[e]`` maps node ``EDGES[e][1]`` into node ``EDGES[e][0]``."""

    def __init__(self, cell: Cell, channels: int):
        super().__init__()
        self.edges = nn.ModuleList(make_op(op, channels) for op in cell.ops)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        nodes = [x]
        e = 0
        for node in range(1, NODES):
            nodes.append(sum(self.edges[e + i](nodes[EDGES[e + i][1]]) for i in range(node)))
            e += node
        return nodes[-1]


class ReductionBlock(nn.Module):
    """The residual block between stages: ReLU-conv3x3(stride 2)-BN, ReLU-conv3x3-BN, plus
    a shortcut of 2x2 average pooling and a 1x1 conv."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv_a = relu_conv_bn(cin, cout, 3, stride=2)
        self.conv_b = relu_conv_bn(cout, cout, 3)
        self.shortcut = nn.Sequential(nn.AvgPool2d(2, 2), nn.Conv2d(cin, cout, 1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.shortcut(x) + self.conv_b(self.conv_a(x))


class CellNetwork(nn.Module):
    """The benchmark's network of one cell; ``features`` maps images to pooled features."""

    def __init__(self, cell: Cell, in_channels: int, num_classes: int, image_size: int):
        super().__init__()
        cell.check_input(image_size)
        self.arch = cell
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, CHANNELS, 3, padding=1, bias=False),
            nn.BatchNorm2d(CHANNELS),
        ]
        channels = CHANNELS
        for stage in range(STAGES):
            if stage:
                layers.append(ReductionBlock(channels, 2 * channels))
                channels *= 2
            layers += [CellBlock(cell, channels) for _ in range(CELLS_PER_STAGE)]
        layers += [nn.BatchNorm2d(channels), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels
        self.classifier = nn.Linear(channels, num_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled penultimate features."""
        return self.features(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))
