"""Several ConvNets of one shape trained in lockstep as one stacked network.

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
  to its channels (``train_many`` orders a stack by activation, so at most 3 runs);
* each model has its own loss (mean cross-entropy over its own batch); their sum is
  back-propagated, and since no parameter feeds two losses every gradient is the one a
  separate run would compute. SGD is elementwise, so it is unaffected by the stacking.

Activations are laid out ``(B, M * C, H, W)`` with model m in channels
``[m * C, (m + 1) * C)``; every stacked parameter and buffer holds model m in the m-th of
M equal chunks of its first dimension.

With ``rng="exact"`` each model draws its batch order and augmentation from its own
generator, seeded and consumed exactly as :func:`nasproxy.train.fit` does for its seed,
and starts from :func:`nasproxy.train.init_model`'s weights for that seed; so model m of
the stack follows ``train(archs[m], data, index_sets[m], cfgs[m])`` up to floating-point
reassociation in the kernels. ``rng="shared"`` draws for the whole stack from one
generator instead (3 draws a step whatever M is): the same distribution, another stream.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace
from itertools import pairwise

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError, first_line
from nasproxy.models import ConvNet, build_model, make_activation, make_pooling
from nasproxy.provenance import device_name
from nasproxy.spaces import ACTIVATIONS, GROUPNORM_GROUPS, Arch
from nasproxy.train import (
    CROP_PADDING,
    EVAL_BATCH,
    TrainConfig,
    TrainRecord,
    batch_bounds,
    crop_flip,
    init_model,
    normalize,
    resolve_device,
    train,
)

RNG_MODES = ("exact", "shared")
GRAPH_WARMUP_STEPS = 3  # eager steps of a batch shape (on a side stream) before its capture


@dataclass(frozen=True)
class FastOptions:
    """How the stacked step runs; none of these changes what is computed beyond rounding."""

    rng: str = "exact"  # "exact": train()'s streams per seed; "shared": one stream per stack
    bf16: bool = False  # bfloat16 autocast for convolutions and the heads (fp32 master weights)
    channels_last: bool = False  # NHWC activations and conv weights
    compile: bool = False  # torch.compile the stacked network
    cuda_graphs: bool = False  # replay each fixed-shape step as one CUDA graph (CUDA only)

    def __post_init__(self) -> None:
        if self.rng not in RNG_MODES:
            choices = ", ".join(RNG_MODES)
            raise NasproxyError(f"unknown rng mode {self.rng!r}; choose from {choices}")

    def effective(self, device: torch.device) -> FastOptions:
        """The options as they apply on ``device``: CUDA graphs need a CUDA device."""
        return replace(self, cuda_graphs=self.cuda_graphs and device.type == "cuda")

    def describe(self) -> str:
        """A compact record of the options, e.g. ``rng=exact,bf16=0,...``, for result rows."""
        flags = [f"{f.name}={int(getattr(self, f.name))}" for f in fields(self) if f.name != "rng"]
        return ",".join([f"rng={self.rng}", *flags])


# --- the stacked network ---------------------------------------------------------------


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


def shape_of(arch: Arch) -> tuple[int, int, str, str]:
    """What ConvNets must share to stack: width, depth, norm and pooling (not activation)."""
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
        arch.check_input(image_size)
        self.arch, self.m = arch, m
        self.in_channels, self.num_classes, self.image_size = in_channels, num_classes, image_size
        layers: list[nn.Module] = []
        channels, size = in_channels, image_size
        for _ in range(arch.depth):
            layers.append(nn.Conv2d(m * channels, m * arch.width, 3, padding=1, groups=m))
            channels = arch.width
            activation = (
                make_activation(acts[0])
                if len(set(acts)) == 1
                else StackedActivation(acts, channels)
            )
            for module in (_stacked_norm(arch.norm, m, channels, size), activation):
                if module is not None:
                    layers.append(module)
            pool = make_pooling(arch.pool)
            if pool is not None:
                layers.append(pool)
                size //= 2
        self.features = nn.Sequential(*layers)
        self.feature_dim = channels * size * size
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


# --- the lockstep trainer --------------------------------------------------------------


ArchSpec = Arch | str | Sequence[Arch | str]  # one architecture for all runs, or one each


def as_archs(arch: ArchSpec, m: int) -> list[Arch]:
    """``m`` architectures from one (repeated) or a sequence of ``m``."""
    if isinstance(arch, Arch | str):
        return [Arch.from_id(arch) if isinstance(arch, str) else arch] * m
    archs = [Arch.from_id(a) if isinstance(a, str) else a for a in arch]
    if len(archs) != m:
        raise NasproxyError(f"{m} runs but {len(archs)} architectures")
    return archs


def fallback_reason(
    arch: ArchSpec,
    data: Dataset,
    index_sets: Sequence[np.ndarray | None],
    cfgs: Sequence[TrainConfig],
) -> str | None:
    """Why these runs cannot share one stacked network, or None when they can.

    Lockstep needs one batch schedule: the same settings (all but the seed) and training
    sets of one size, so every model takes the same number of steps of the same batch size;
    and one shape (``arch`` may give one architecture a run; they may differ in activation).
    """
    if len(index_sets) != len(cfgs):
        raise NasproxyError(f"{len(index_sets)} training sets but {len(cfgs)} configs")
    if not cfgs:
        raise NasproxyError("nothing to train: no training sets given")
    if len({shape_of(a) for a in as_archs(arch, len(cfgs))}) > 1:
        return "the architectures differ in more than the activation"
    if len({replace(cfg, seed=0) for cfg in cfgs}) > 1:
        return "the runs' training settings differ in more than the seed"
    sizes = sorted({len(data.y_train) if s is None else len(s) for s in index_sets})
    if len(sizes) > 1:
        return f"the training sets differ in size ({', '.join(map(str, sizes))} images)"
    return None


def supports(
    arch: ArchSpec,
    data: Dataset,
    index_sets: Sequence[np.ndarray | None],
    cfgs: Sequence[TrainConfig],
) -> bool:
    """Whether :func:`train_many` can run these runs as one stack."""
    return fallback_reason(arch, data, index_sets, cfgs) is None


def plan_stacks(units: Sequence[tuple[str, int, TrainConfig]], max_models: int) -> list[list[int]]:
    """Group work units ``(arch id, training-set size, config)`` into stacks of at most
    ``max_models`` that :func:`train_many` accepts (one shape, one size, one config but the
    seed), keeping the units' order within a group.

    A group of n compatible units becomes ceil(n / max_models) consecutive stacks whose
    sizes differ by at most one (10 units, at most 8 a stack: 5 + 5, not 8 + 2).
    """
    if max_models < 1:
        raise NasproxyError(f"max models per stack must be at least 1, got {max_models}")
    groups: dict[tuple[tuple[int, int, str, str], int, TrainConfig], list[int]] = {}
    for i, (arch_id, n, cfg) in enumerate(units):
        key = (shape_of(Arch.from_id(arch_id)), n, replace(cfg, seed=0))
        groups.setdefault(key, []).append(i)
    stacks = []
    for members in groups.values():
        count = math.ceil(len(members) / max_models)
        bounds = [round(j * len(members) / count) for j in range(count + 1)]
        stacks += [members[a:b] for a, b in pairwise(bounds)]
    return stacks


def stack_memory_bytes(
    arch: Arch, data: Dataset, m: int, n_images: int, batch_size: int, bf16: bool = False
) -> int:
    """An upper estimate of the device memory one stack of ``m`` models trains in.

    Per model: parameters, gradients and momenta (3 x 4 bytes a parameter), and the
    activations a training step keeps for backward, counted as 4 tensors of a block's
    conv output (conv, norm, activation, pooling input) at ``batch_size`` in 4 bytes
    (2 with bf16 autocast), doubled for the gradients alive during backward. Per stack,
    once: the training set's images as floats and the augmentation's padded copy.
    """
    params = arch.param_count(data.in_channels, data.num_classes, data.image_size)
    size, per_sample = data.image_size, 0
    for _ in range(arch.depth):
        per_sample += 4 * arch.width * size * size
        if arch.pool != "none":
            size //= 2
    act_bytes = 2 if bf16 else 4
    per_model = 12 * params + 2 * batch_size * per_sample * act_bytes
    image = data.in_channels * data.image_size**2
    padded = data.in_channels * (data.image_size + 2 * CROP_PADDING) ** 2
    per_stack = 4 * (n_images * image + 2 * m * batch_size * padded)
    return m * per_model + per_stack


def largest_stack(
    arch: Arch, data: Dataset, n_images: int, batch_size: int, budget: int, bf16: bool = False
) -> int:
    """The most models :func:`stack_memory_bytes` fits into ``budget`` bytes (at least 1)."""
    one = stack_memory_bytes(arch, data, 1, n_images, batch_size, bf16)
    two = stack_memory_bytes(arch, data, 2, n_images, batch_size, bf16)
    per_model = two - one  # the estimate is affine in m
    return max(1, 1 + (budget - one) // per_model) if budget >= one else 1


def cosine_lr(base: float, step: int, total: int) -> float:
    """Cosine annealing to zero over ``total`` steps (SGDR, Loshchilov & Hutter 2017, eq. 5,
    without restarts): the learning rate :func:`nasproxy.train.fit` uses at ``step``."""
    return base * (1 + math.cos(math.pi * step / total)) / 2


@torch.no_grad()
def sgd_step_(
    params: list[torch.Tensor],
    grads: list[torch.Tensor],
    momenta: list[torch.Tensor],
    lr: float | torch.Tensor,
    momentum: float,
    weight_decay: float,
) -> None:
    """torch.optim.SGD's update (momentum, no dampening, coupled weight decay), in place.

    Momenta start at zero, so the first step's ``0 * momentum + d`` equals SGD's initial
    copy of ``d``. ``lr`` may be a 0-d device tensor, so that a captured CUDA graph reads
    the schedule instead of baking one value in. ``grads`` is overwritten.
    """
    torch._foreach_add_(grads, params, alpha=weight_decay)
    torch._foreach_mul_(momenta, momentum)
    torch._foreach_add_(momenta, grads)
    if isinstance(lr, torch.Tensor):
        torch._foreach_sub_(params, torch._foreach_mul(momenta, lr))
    else:
        torch._foreach_add_(params, momenta, alpha=-lr)


@dataclass
class _Inputs:
    """Fixed buffers of one batch shape: a CUDA graph reads its inputs from these."""

    pos: torch.Tensor  # (M, B) rows of the stack's image tensor
    dy: torch.Tensor  # (M, B) crop offsets
    dx: torch.Tensor
    u: torch.Tensor  # (M, B) uniforms; u < 0.5 mirrors the image


class _Lockstep:
    """One stacked run: the data on the device, the generators, the momenta and the step."""

    def __init__(
        self,
        model: StackedConvNet,
        data: Dataset,
        index_sets: Sequence[np.ndarray | None],
        cfgs: Sequence[TrainConfig],
        options: FastOptions,
    ):
        self.model, self.cfg, self.m = model, cfgs[0], model.m
        self.device = next(model.parameters()).device
        self.options = options.effective(self.device)
        sets = [
            torch.arange(len(data.y_train)) if s is None else torch.as_tensor(s, dtype=torch.long)
            for s in index_sets
        ]
        self.n = len(sets[0])
        # the images of all training sets once; model m's example j is row local[m, j]
        union, local = torch.unique(torch.cat(sets), return_inverse=True)
        self.local = local.view(self.m, self.n).to(self.device)
        dtype = next(model.parameters()).dtype
        self.x = normalize(data.x_train[union].to(self.device), data).to(dtype)
        self.y = data.y_train[union].to(self.device)
        if self.options.rng == "exact":
            self.gens = [self._generator(cfg.seed) for cfg in cfgs]
        else:
            seed = int(np.random.SeedSequence([cfg.seed for cfg in cfgs]).generate_state(1)[0])
            self.gens = [self._generator(seed)]
        if self.options.channels_last:
            model.to(memory_format=torch.channels_last)
        self.params = list(model.parameters())
        self.momenta = [torch.zeros_like(p) for p in self.params]
        self.lr_tensor = torch.zeros((), device=self.device)  # read by captured graphs
        self.lr_arg: float | torch.Tensor = self.lr_tensor if self.options.cuda_graphs else 0.0
        self.loss_sum = torch.zeros(self.m, device=self.device)
        self.correct_sum = torch.zeros(self.m, device=self.device, dtype=torch.long)
        self.net: Callable[[torch.Tensor], torch.Tensor] = (
            torch.compile(model) if self.options.compile else model
        )
        self.inputs: dict[int, _Inputs] = {}
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.eager_runs: Counter[int] = Counter()

    def _generator(self, seed: int) -> torch.Generator:
        gen = torch.Generator(device=self.device)
        gen.manual_seed(seed)
        return gen

    def autocast(self) -> contextlib.AbstractContextManager:
        """bfloat16 autocast when asked for (its weight cache off, as graph capture needs)."""
        return torch.autocast(
            self.device.type, dtype=torch.bfloat16, enabled=self.options.bf16, cache_enabled=False
        )

    def step(self, inputs: _Inputs) -> None:
        """One SGD step of every model on its batch; only tensor work, so it can be captured."""
        m, b = inputs.pos.shape
        c, h, w = self.x.shape[1:]
        xb = self.x[inputs.pos.t()]  # (B, M, C, H, W)
        if self.cfg.augment:
            xb = crop_flip(
                xb.flatten(0, 1),
                inputs.dy.t().flatten(),
                inputs.dx.t().flatten(),
                inputs.u.t().flatten() < 0.5,
            )
        xb = xb.reshape(b, m * c, h, w)
        if self.options.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        yb = self.y[inputs.pos]
        with self.autocast():
            logits = self.net(xb)
        if self.options.bf16:
            logits = logits.float()  # the loss in fp32, as autocast computes it
        losses = F.cross_entropy(logits.flatten(0, 1), yb.flatten(), reduction="none")
        losses = losses.view(m, b).mean(1)
        for p in self.params:
            p.grad = None
        losses.sum().backward()
        grads = [p.grad for p in self.params]
        sgd_step_(
            self.params, grads, self.momenta, self.lr_arg, self.cfg.momentum, self.cfg.weight_decay
        )
        self.loss_sum.add_(losses.detach() * b)
        self.correct_sum.add_((logits.detach().argmax(-1) == yb).sum(1))

    def buffers(self, b: int) -> _Inputs:
        if b not in self.inputs:
            shape = (self.m, b)
            self.inputs[b] = _Inputs(
                pos=torch.zeros(shape, dtype=torch.long, device=self.device),
                dy=torch.zeros(shape, dtype=torch.long, device=self.device),
                dx=torch.zeros(shape, dtype=torch.long, device=self.device),
                u=torch.zeros(shape, device=self.device),
            )
        return self.inputs[b]

    def draw(self, inputs: _Inputs) -> None:
        """The augmentation's draws, in the order augment_batch makes them per generator."""
        span = 2 * CROP_PADDING + 1
        if self.options.rng == "exact":
            for i, gen in enumerate(self.gens):
                torch.randint(0, span, inputs.dy[i].shape, generator=gen, out=inputs.dy[i])
                torch.randint(0, span, inputs.dx[i].shape, generator=gen, out=inputs.dx[i])
                torch.rand(inputs.u[i].shape, generator=gen, out=inputs.u[i])
        else:
            (gen,) = self.gens
            torch.randint(0, span, inputs.dy.shape, generator=gen, out=inputs.dy)
            torch.randint(0, span, inputs.dx.shape, generator=gen, out=inputs.dx)
            torch.rand(inputs.u.shape, generator=gen, out=inputs.u)

    def permutations(self) -> torch.Tensor:
        """(M, n): each model's order of its training set for one epoch."""
        if self.options.rng == "exact":
            return torch.stack(
                [torch.randperm(self.n, device=self.device, generator=g) for g in self.gens]
            )
        (gen,) = self.gens
        return torch.rand((self.m, self.n), device=self.device, generator=gen).argsort(1)

    def run(self, inputs: _Inputs) -> None:
        """The step: eager, or replayed from a CUDA graph of its batch shape."""
        b = inputs.pos.shape[1]
        if not self.options.cuda_graphs:
            self.step(inputs)
            return
        graph = self.graphs.get(b)
        if graph is None and self.eager_runs[b] < GRAPH_WARMUP_STEPS:
            # warm-up on a side stream before capture, as CUDA graph capture requires
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side):
                self.step(inputs)
            torch.cuda.current_stream(self.device).wait_stream(side)
            self.eager_runs[b] += 1
            return
        if graph is None:
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):  # records the step; replay below runs it
                self.step(inputs)
            self.graphs[b] = graph
        graph.replay()

    def fit(self) -> tuple[list[list[dict[str, float]]], list[int]]:
        """Train every model for ``cfg.epochs`` epochs; per-model history and images seen.

        A model whose epoch loss is not finite stops there, as in ``fit``: its history ends
        with that epoch and its chunk of the stack is zeroed, so that no non-finite value
        can reach the other models through any kernel.
        """
        cfg = self.cfg
        bounds = batch_bounds(self.n, cfg.batch_size)
        total = cfg.epochs * math.ceil(self.n / cfg.batch_size)  # fit's T_max
        histories: list[list[dict[str, float]]] = [[] for _ in range(self.m)]
        seen = [0] * self.m
        alive = [True] * self.m
        step = 0
        self.model.train()
        for epoch in range(cfg.epochs):
            self.loss_sum.zero_()
            self.correct_sum.zero_()
            rows = self.local.gather(1, self.permutations())
            for start, stop in bounds:
                inputs = self.buffers(stop - start)
                inputs.pos.copy_(rows[:, start:stop])
                if cfg.augment:
                    self.draw(inputs)
                lr = cosine_lr(cfg.lr, step, total)
                if isinstance(self.lr_arg, torch.Tensor):
                    self.lr_arg.fill_(lr)
                else:
                    self.lr_arg = lr
                self.run(inputs)
                step += 1
            count = sum(stop - start for start, stop in bounds)
            # one host sync per epoch; the means as fit() takes them
            losses = [total / count for total in self.loss_sum.tolist()]
            accs = [correct / count for correct in self.correct_sum.tolist()]
            for i in range(self.m):
                if not alive[i]:
                    continue
                seen[i] += count
                histories[i].append(
                    {"epoch": epoch + 1, "train_loss": losses[i], "train_acc": accs[i]}
                )
                if not math.isfinite(losses[i]):
                    alive[i] = False
                    self.zero_model(i)
            if not any(alive):
                break
        return histories, seen

    @torch.no_grad()
    def zero_model(self, i: int) -> None:
        """Zero model ``i``'s parameters, momenta and norm statistics."""
        for tensor in [*self.params, *self.momenta, *self.model.buffers()]:
            if tensor.ndim > 0:
                model_chunk(tensor, self.m, i).zero_()


def fit_many(
    model: StackedConvNet,
    data: Dataset,
    index_sets: Sequence[np.ndarray | None],
    cfgs: Sequence[TrainConfig],
    options: FastOptions | None = None,
) -> tuple[list[list[dict[str, float]]], list[int]]:
    """Train the stack in place, model m on train-split ``index_sets[m]`` with ``cfgs[m]``.

    The counterpart of :func:`nasproxy.train.fit` for a stack: per-model histories and
    images seen. Raises NasproxyError when the runs cannot share a batch schedule
    (see :func:`fallback_reason`).
    """
    if len(index_sets) != model.m:
        raise NasproxyError(f"a stack of {model.m} models needs {model.m} training sets")
    reason = fallback_reason(model.archs, data, index_sets, cfgs)
    if reason is not None:
        raise NasproxyError(f"cannot train these runs in lockstep: {reason}")
    return _Lockstep(model, data, index_sets, cfgs, options or FastOptions()).fit()


@torch.no_grad()
def predict_many(
    model: StackedConvNet, data: Dataset, x: torch.Tensor, options: FastOptions | None = None
) -> torch.Tensor:
    """(M, N, K) logits of every model for uint8 images ``x``, in eval mode."""
    options = options or FastOptions()
    device = model.head_weight.device
    model.eval()
    chunk = max(1, EVAL_BATCH // model.m)  # the stack sees M copies of each image
    out = []
    for i in range(0, len(x), chunk):
        xb = normalize(x[i : i + chunk].to(device), data).to(model.head_weight.dtype)
        xb = xb.repeat(1, model.m, 1, 1)
        if options.channels_last:
            xb = xb.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=options.bf16):
            logits = model(xb)
        out.append(logits.float() if options.bf16 else logits)
    return torch.cat(out, 1) if out else torch.zeros(model.m, 0, model.num_classes)


def accuracies(
    model: StackedConvNet,
    data: Dataset,
    x: torch.Tensor,
    y: torch.Tensor,
    options: FastOptions | None = None,
) -> list[float]:
    """Top-1 accuracy of every model on (x, y); NaN for an empty split."""
    if len(y) == 0:
        return [math.nan] * model.m
    logits = predict_many(model, data, x, options)
    return (logits.argmax(-1).cpu() == y).float().mean(1).tolist()


def train_many(
    arch: ArchSpec,
    data: Dataset,
    index_sets: Sequence[np.ndarray | None],
    cfgs: Sequence[TrainConfig],
    options: FastOptions | None = None,
) -> list[TrainRecord]:
    """Train once per (architecture, training set, config), all in one stack; one
    :class:`TrainRecord` each, in order, as :func:`nasproxy.train.train` would give.

    ``arch`` is one architecture for every run or one a run (of one shape). The runs must
    pass :func:`fallback_reason` (else NasproxyError). A record's ``wall_s`` is its share
    (1/M) of its stack's time, ``stack_size`` the M it trained in, and ``trainer`` the
    stacked path's options. A stack that fails (out of memory, or any error of the stacked
    path) is retried as two halves; a half of one model trains with the plain
    :func:`nasproxy.train.train`. The failure that sent a run down is kept in its record's
    ``fallback``.
    """
    archs = as_archs(arch, len(cfgs))
    options = options or FastOptions()
    reason = fallback_reason(archs, data, index_sets, cfgs)
    if reason is not None:
        raise NasproxyError(f"cannot train these runs in lockstep: {reason}")
    # grouped by activation, so that each activation is one contiguous run of the stack
    order = sorted(range(len(cfgs)), key=lambda i: ACTIVATIONS.index(archs[i].act))
    records = _train_or_split(
        [archs[i] for i in order],
        data,
        [index_sets[i] for i in order],
        [cfgs[i] for i in order],
        options,
        "",
    )
    back = [0] * len(order)
    for position, i in enumerate(order):
        back[i] = position
    return [records[j] for j in back]


def _train_or_split(
    archs: list[Arch],
    data: Dataset,
    index_sets: list[np.ndarray | None],
    cfgs: list[TrainConfig],
    options: FastOptions,
    fallback: str,
) -> list[TrainRecord]:
    """One stack, else its halves (recursively), else the plain trainer for one run."""
    try:
        records = _train_stack(archs, data, index_sets, cfgs, options)
    except (torch.OutOfMemoryError, RuntimeError) as exc:
        kind = "out of memory" if isinstance(exc, torch.OutOfMemoryError) else "error"
        fallback = f"stack of {len(cfgs)} failed ({kind}: {first_line(exc)[:200]})"
    else:
        for record in records:
            record.fallback = fallback
        return records
    # retried outside the handler, so the failed attempt's tensors are freed first
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    if len(cfgs) == 1:  # a planned stack of one
        return [_train_plain(archs[0], data, index_sets[0], cfgs[0], fallback)]
    records = []
    half = len(cfgs) // 2
    for a, b in ((0, half), (half, len(cfgs))):
        if b - a == 1:
            records.append(_train_plain(archs[a], data, index_sets[a], cfgs[a], fallback))
        else:
            part = _train_or_split(archs[a:b], data, index_sets[a:b], cfgs[a:b], options, fallback)
            records += part
    return records


def _train_plain(
    arch: Arch, data: Dataset, indices: np.ndarray | None, cfg: TrainConfig, fallback: str
) -> TrainRecord:
    record = train(arch, data, indices, cfg)
    record.fallback = fallback
    return record


def _blank_record(
    arch: Arch, data: Dataset, indices: np.ndarray | None, cfg: TrainConfig
) -> TrainRecord:
    device = resolve_device(cfg.device)
    return TrainRecord(
        arch=str(arch),
        status="ok",
        reason="",
        seed=cfg.seed,
        epochs=cfg.epochs,
        n_train=len(data.y_train) if indices is None else len(indices),
        params=arch.param_count(data.in_channels, data.num_classes, data.image_size),
        macs=arch.macs(data.in_channels, data.num_classes, data.image_size),
        device=device_name(device),
    )


def _train_stack(
    archs: Sequence[Arch],
    data: Dataset,
    index_sets: Sequence[np.ndarray | None],
    cfgs: Sequence[TrainConfig],
    options: FastOptions,
) -> list[TrainRecord]:
    """One stacked run; raises what the stacked path raises (the caller falls back)."""
    device = resolve_device(cfgs[0].device)
    trainer = f"stacked({options.effective(device).describe()})"
    records = [
        _blank_record(a, data, s, cfg) for a, s, cfg in zip(archs, index_sets, cfgs, strict=True)
    ]
    start = time.perf_counter()
    singles = [init_model(a, data, cfg.seed, device) for a, cfg in zip(archs, cfgs, strict=True)]
    model = StackedConvNet.from_models(singles, data.image_size)
    del singles
    histories, seen = fit_many(model, data, index_sets, cfgs, options)
    val = accuracies(model, data, data.x_val, data.y_val, options)
    test = accuracies(model, data, data.x_test, data.y_test, options)
    wall = (time.perf_counter() - start) / len(records)
    for i, record in enumerate(records):
        record.history, record.images_seen = histories[i], seen[i]
        record.train_loss = histories[i][-1]["train_loss"]
        if not math.isfinite(record.train_loss):
            record.status = "diverged"
            record.reason = f"non-finite training loss in epoch {len(histories[i])}"
        else:
            record.val_acc, record.test_acc = val[i], test[i]
        record.stack_size, record.trainer = len(records), trainer
        record.wall_s = wall
        record.images_per_s = record.images_seen / wall if wall > 0 else 0.0
    return records
