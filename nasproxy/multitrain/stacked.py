"""M ConvNets of one shape as one grouped network, so that one kernel launch serves M models.

A sweep trains every architecture on several training sets (the proxies) and seeds. For a
small ConvNet one SGD step costs GPU kernel launches rather than arithmetic, so training M
copies one after another pays M times the launches for the same work. Here the M copies
become one network whose every layer holds M blocks of channels:

* convolutions are grouped (``groups=M``), so output block m only sees input block m;
* batch norm and instance norm are per channel already; group norm uses ``4 * M`` groups,
  which never straddle two blocks; layer norm normalises each sample over one block;
* the M linear heads are one batched matrix product;
* the activation may differ from model to model (architectures of one width, depth, norm
  and pooling: one *shape*): each contiguous run of models with one activation applies it
  to its channels (``train_many`` orders a stack by activation, so at most 3 runs).

Activations are laid out ``(B, M * C, H, W)`` with model m in channels
``[m * C, (m + 1) * C)``; every stacked parameter and buffer holds model m in the m-th of
M equal chunks of its first dimension. No parameter feeds two models' outputs, which is
what lets :mod:`nasproxy.multitrain.lockstep` train the stack as M separate runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from nasproxy.errors import NasproxyError
from nasproxy.models import ConvNet, build_model, conv_blocks, make_activation
from nasproxy.spaces import GROUPNORM_GROUPS, AnyArch, Arch


class StackedLayerNorm(nn.Module):
    """M ``LayerNorm([C, H, W])`` side by side: each sample is normalised over one block."""

    def __init__(self, m: int, channels: int, size: int, eps: float = 1e-5):
        super().__init__()
        self.m, self.eps = m, eps
        self.weight = nn.Parameter(torch.ones(m * channels, size, size))
        self.bias = nn.Parameter(torch.zeros(m * channels, size, size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # group norm with one group a model has layer norm's statistics; the affine is
        # per element, as LayerNorm's is
        return torch.addcmul(self.bias, F.group_norm(x, self.m, eps=self.eps), self.weight)


def _stacked_norm(kind: str, m: int, channels: int, size: int) -> nn.Module | None:
    if kind == "batchnorm":
        return nn.BatchNorm2d(m * channels)
    if kind == "layernorm":
        return StackedLayerNorm(m, channels, size)
    if kind == "instancenorm":
        return nn.GroupNorm(m * channels, m * channels, affine=True)
    if kind == "groupnorm":
        return nn.GroupNorm(m * GROUPNORM_GROUPS, m * channels, affine=True)
    return None


def shape_of(arch: AnyArch) -> tuple[int | str, ...]:
    """What ConvNets must share to stack: width, depth, norm and pooling (not activation);
    a NAS-Bench-201 cell stacks only with itself (its id)."""
    if not isinstance(arch, Arch):
        return ("cell", arch.id)
    return (arch.width, arch.depth, arch.norm, arch.pool)


class StackedActivation(nn.Module):
    """Model m's activation on its block of ``channels`` channels, for stacks that mix
    activations: one call per contiguous run of models with the same activation."""

    def __init__(self, acts: Sequence[str], channels: int):
        super().__init__()
        self.runs: list[tuple[int, int]] = []
        modules = []
        for i, act in enumerate(acts):
            if i and act == acts[i - 1]:
                self.runs[-1] = (self.runs[-1][0], (i + 1) * channels)
                continue
            self.runs.append((i * channels, (i + 1) * channels))
            module = make_activation(act)
            if hasattr(module, "inplace"):
                module.inplace = False  # it sees a slice of its input
            modules.append(module)
        self.acts = nn.ModuleList(modules)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [act(x[:, a:b]) for (a, b), act in zip(self.runs, self.acts, strict=True)]
        return torch.cat(parts, 1)


class StackedConvNet(nn.Module):
    """M ConvNets of one shape as one network: ``(B, M*C_in, H, W) -> (M, B, K)``.

    ``acts`` gives each model's activation (default: all ``arch.act``). ``features`` has the
    same layer sequence as :class:`nasproxy.models.ConvNet`'s (less the final flatten), so
    the two state dicts share their keys; build it with :meth:`from_models` and read the M
    models back with :meth:`to_models`.
    """

    def __init__(
        self,
        arch: Arch,
        m: int,
        in_channels: int,
        num_classes: int,
        image_size: int,
        acts: Sequence[str] | None = None,
    ):
        super().__init__()
        if m < 1:
            raise NasproxyError(f"a stack needs at least one model, got {m}")
        acts = list(acts) if acts is not None else [arch.act] * m
        if len(acts) != m:
            raise NasproxyError(f"a stack of {m} models needs {m} activations, got {len(acts)}")
        self.archs = [replace(arch, act=act) for act in acts]  # validates each activation
        self.arch, self.m = arch, m
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size
        activation = (
            partial(make_activation, acts[0])
            if len(set(acts)) == 1
            else partial(StackedActivation, acts, arch.width)
        )
        norm = partial(_stacked_norm, arch.norm, m)
        layers, self.feature_dim = conv_blocks(arch, in_channels, image_size, m, norm, activation)
        self.features = nn.Sequential(*layers)
        self.head_weight = nn.Parameter(torch.zeros(m, num_classes, self.feature_dim))
        self.head_bias = nn.Parameter(torch.zeros(m, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.features(x)
        # (B, M*C, h, w) -> (M, B, C*h*w): model m's features flattened as nn.Flatten does
        feats = feats.reshape(feats.shape[0], self.m, self.feature_dim).transpose(0, 1)
        return torch.baddbmm(self.head_bias.unsqueeze(1), feats, self.head_weight.transpose(1, 2))

    @classmethod
    def from_models(cls, models: Sequence[ConvNet], image_size: int) -> StackedConvNet:
        """Stack ConvNets of one shape built for ``image_size`` inputs (weights, biases and
        norm running statistics)."""
        if not models:
            raise NasproxyError("a stack needs at least one model")
        first = models[0]
        if any(shape_of(model.arch) != shape_of(first.arch) for model in models):
            raise NasproxyError(
                "only ConvNets of one width, depth, norm and pooling can be stacked"
            )
        conv = first.features[0]
        classes = first.classifier.out_features
        acts = [model.arch.act for model in models]
        stacked = cls(first.arch, len(models), conv.in_channels, classes, image_size, acts)
        stacked.to(device=conv.weight.device, dtype=conv.weight.dtype)
        states = [model.state_dict() for model in models]
        merged: dict[str, torch.Tensor] = {}
        for key in states[0]:
            tensors = [state[key] for state in states]
            if key.startswith("classifier."):
                merged["head_" + key.split(".", 1)[1]] = torch.stack(tensors)
            elif tensors[0].ndim == 0:  # num_batches_tracked: equal across the stack
                merged[key] = tensors[0]
            else:
                merged[key] = torch.cat(tensors)
        stacked.load_state_dict(merged)
        return stacked

    def to_models(self) -> list[ConvNet]:
        """The M ConvNets, each with its chunk of every parameter and buffer."""
        device, dtype = self.head_weight.device, self.head_weight.dtype
        state = self.state_dict()
        models = []
        for i in range(self.m):
            model = build_model(self.archs[i], self.in_channels, self.num_classes, self.image_size)
            model.to(device=device, dtype=dtype)
            own: dict[str, torch.Tensor] = {}
            for key in model.state_dict():
                if key.startswith("classifier."):
                    own[key] = state["head_" + key.split(".", 1)[1]][i]
                elif state[key].ndim == 0:
                    own[key] = state[key]
                else:
                    own[key] = model_chunk(state[key], self.m, i)
            model.load_state_dict(own)
            models.append(model)
        return models


def model_chunk(tensor: torch.Tensor, m: int, i: int) -> torch.Tensor:
    """Model ``i``'s part of a stacked parameter or buffer (a view)."""
    return tensor.unflatten(0, (m, -1))[i]
