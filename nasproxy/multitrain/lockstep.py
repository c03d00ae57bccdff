"""Train a stack of M runs in lockstep, step for step what M calls of ``train`` would do.

Model m of a :class:`~nasproxy.multitrain.stacked.StackedConvNet` trains on its own
training set with its own config: each model has its own loss (mean cross-entropy over its
own batch); their sum is back-propagated, and since no parameter feeds two losses every
gradient is the one a separate run would compute. SGD (:func:`sgd_step_`) is elementwise,
so it is unaffected by the stacking. The runs must share one batch schedule: one shape,
one training-set size, one config but the seed (:func:`fallback_reason`).

With ``rng="exact"`` each model draws its batch order and augmentation from its own
generator, seeded and consumed exactly as :func:`nasproxy.train.fit` does for its seed,
and starts from :func:`nasproxy.train.init_model`'s weights for that seed; so model m of
the stack follows ``train(archs[m], data, index_sets[m], cfgs[m])`` up to floating-point
reassociation in the kernels. ``rng="shared"`` draws for the whole stack from one
generator instead (3 draws a step whatever M is): the same distribution, another stream.

:func:`train_many` is the entry point: a stack that fails (out of memory, or any error of
the stacked path) is retried as two halves, down to the plain :func:`nasproxy.train.train`
for a single run, so a sweep never loses a unit to the faster path.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch
import torch.nn.functional as F

from nasproxy.checkpoints import checkpoint_epochs
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError, first_line
from nasproxy.multitrain.stacked import StackedConvNet, model_chunk, shape_of
from nasproxy.provenance import device_name
from nasproxy.spaces import ACTIVATIONS, AnyArch, Arch, parse_arch
from nasproxy.train import (
    CROP_PADDING,
    EpochEnd,
    TrainConfig,
    TrainRecord,
    batch_bounds,
    crop_flip,
    eval_batch,
    final_checkpoints,
    init_model,
    normalize,
    resolve_device,
    train,
    warm_up,
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


ArchSpec = AnyArch | str | Sequence[AnyArch | str]  # one architecture for all runs, or one each


def as_archs(arch: ArchSpec, m: int) -> list[AnyArch]:
    """``m`` architectures from one (repeated) or a sequence of ``m``."""
    if isinstance(arch, str) or not isinstance(arch, Sequence):
        return [parse_arch(arch) if isinstance(arch, str) else arch] * m
    archs = [parse_arch(a) if isinstance(a, str) else a for a in arch]
    if len(archs) != m:
        raise NasproxyError(f"{m} runs but {len(archs)} architectures")
    return archs


def unstackable(arch: AnyArch, cfg: TrainConfig) -> str:
    """Why a run trains with the plain trainer whatever it is stacked with ("" when it
    may stack): a NAS-Bench-201 cell (the stacked network is ConvNet-only), or Nesterov
    momentum (the stacked SGD step has none)."""
    if not isinstance(arch, Arch):
        return "a NAS-Bench-201 cell trains with the plain trainer (stacks hold ConvNets only)"
    if cfg.nesterov:
        return "Nesterov momentum trains with the plain trainer (the stacked step has none)"
    return ""


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

    def fit(
        self, epoch_end: EpochEnd | None = None
    ) -> tuple[list[list[dict[str, float]]], list[int]]:
        """Train every model for ``cfg.epochs`` epochs; per-model history and images seen.

        A model whose epoch loss is not finite stops there, as in ``fit``: its history ends
        with that epoch and its chunk of the stack is zeroed, so that no non-finite value
        can reach the other models through any kernel. ``epoch_end`` is called after every
        epoch that leaves a model alive, as in ``fit``, and the stack is put back in train
        mode after it.
        """
        cfg = self.cfg
        bounds = batch_bounds(self.n, cfg.batch_size)
        total = cfg.epochs * len(bounds)  # fit's T_max: the steps taken
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
            if epoch_end is not None:
                epoch_end(epoch + 1)
                self.model.train()
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
    epoch_end: EpochEnd | None = None,
) -> tuple[list[list[dict[str, float]]], list[int]]:
    """Train the stack in place, model m on train-split ``index_sets[m]`` with ``cfgs[m]``.

    The counterpart of :func:`nasproxy.train.fit` for a stack: per-model histories and
    images seen, ``epoch_end`` called as there. Raises NasproxyError when the runs cannot
    share a batch schedule (see :func:`fallback_reason`).
    """
    if len(index_sets) != model.m:
        raise NasproxyError(f"a stack of {model.m} models needs {model.m} training sets")
    reason = fallback_reason(model.archs, data, index_sets, cfgs)
    if reason is not None:
        raise NasproxyError(f"cannot train these runs in lockstep: {reason}")
    return _Lockstep(model, data, index_sets, cfgs, options or FastOptions()).fit(epoch_end)


@torch.no_grad()
def predict_many(
    model: StackedConvNet, data: Dataset, x: torch.Tensor, options: FastOptions | None = None
) -> torch.Tensor:
    """(M, N, K) logits of every model for uint8 images ``x``, in eval mode."""
    options = options or FastOptions()
    device = model.head_weight.device
    model.eval()
    chunk = max(1, eval_batch(device) // model.m)  # the stack sees M copies of each image
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
    test: bool | Sequence[bool] = True,
) -> list[TrainRecord]:
    """Train once per (architecture, training set, config), all in one stack; one
    :class:`TrainRecord` each, in order, as :func:`nasproxy.train.train` would give.

    ``arch`` is one architecture for every run or one a run (of one shape); ``test``,
    whether to evaluate on the test split, likewise (``train``'s ``test``). The runs must
    pass :func:`fallback_reason` (else NasproxyError). A record's ``wall_s`` is its share
    (1/M) of its stack's time, ``stack_size`` the M it trained in, and ``trainer`` the
    stacked path's options; the process's warm-up (:func:`nasproxy.train.warm_up`) is in
    the first record's ``warmup_s``. A stack that fails (out of memory, or any error of
    the stacked path) is retried as two halves; a half of one model trains with the plain
    :func:`nasproxy.train.train`. The failure that sent a run down is kept in its record's
    ``fallback``.
    """
    archs = as_archs(arch, len(cfgs))
    tests = [test] * len(cfgs) if isinstance(test, bool) else list(test)
    if len(tests) != len(cfgs):
        raise NasproxyError(f"{len(cfgs)} runs but {len(tests)} test choices")
    options = options or FastOptions()
    plain = [unstackable(a, cfg) for a, cfg in zip(archs, cfgs, strict=True)]
    if any(plain):  # each run alone, the reason kept in its record
        why = next(p for p in plain if p)
        return [
            _train_plain(a, data, s, cfg, t, why)
            for a, s, cfg, t in zip(archs, index_sets, cfgs, tests, strict=True)
        ]
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
        [tests[i] for i in order],
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
    tests: list[bool],
    options: FastOptions,
    fallback: str,
) -> list[TrainRecord]:
    """One stack, else its halves (recursively), else the plain trainer for one run."""
    try:
        records = _train_stack(archs, data, index_sets, cfgs, tests, options)
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
        return [_train_plain(archs[0], data, index_sets[0], cfgs[0], tests[0], fallback)]
    records = []
    half = len(cfgs) // 2
    for a, b in ((0, half), (half, len(cfgs))):
        if b - a == 1:
            records.append(_train_plain(archs[a], data, index_sets[a], cfgs[a], tests[a], fallback))
        else:
            records += _train_or_split(
                archs[a:b], data, index_sets[a:b], cfgs[a:b], tests[a:b], options, fallback
            )
    return records


def _train_plain(
    arch: Arch,
    data: Dataset,
    indices: np.ndarray | None,
    cfg: TrainConfig,
    test: bool,
    fallback: str,
) -> TrainRecord:
    record = train(arch, data, indices, cfg, test)
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
    tests: Sequence[bool],
    options: FastOptions,
) -> list[TrainRecord]:
    """One stacked run; raises what the stacked path raises (the caller falls back)."""
    device = resolve_device(cfgs[0].device)
    trainer = f"stacked({options.effective(device).describe()})"
    records = [
        _blank_record(a, data, s, cfg) for a, s, cfg in zip(archs, index_sets, cfgs, strict=True)
    ]
    records[0].warmup_s = warm_up(data, device)
    start = time.perf_counter()
    singles = [init_model(a, data, cfg.seed, device) for a, cfg in zip(archs, cfgs, strict=True)]
    model = StackedConvNet.from_models(singles, data.image_size)
    del singles
    # the checkpoints before the last epoch, all models at once (one schedule: one set)
    early = set(checkpoint_epochs(cfgs[0].checkpoints, cfgs[0].epochs)) - {cfgs[0].epochs}
    checkpoints: list[dict[int, float]] = [{} for _ in records]

    def measure(epoch: int) -> None:
        if epoch in early and len(data.y_val) > 0:
            for i, acc in enumerate(accuracies(model, data, data.x_val, data.y_val, options)):
                checkpoints[i][epoch] = acc

    histories, seen = fit_many(model, data, index_sets, cfgs, options, measure)
    val = accuracies(model, data, data.x_val, data.y_val, options)
    # one pass evaluates the whole stack, so it runs when any run asks for test
    test = accuracies(model, data, data.x_test, data.y_test, options) if any(tests) else []
    wall = (time.perf_counter() - start) / len(records)
    for i, record in enumerate(records):
        record.history, record.images_seen = histories[i], seen[i]
        record.train_loss = histories[i][-1]["train_loss"]
        if not math.isfinite(record.train_loss):
            record.status = "diverged"
            record.reason = f"non-finite training loss in epoch {len(histories[i])}"
        else:
            record.val_acc = val[i]
            record.test_acc = test[i] if tests[i] else math.nan
        record.stack_size, record.trainer = len(records), trainer
        record.wall_s = wall
        record.images_per_s = record.images_seen / wall if wall > 0 else 0.0
        record.checkpoints = final_checkpoints(record, checkpoints[i], cfgs[i])
    return records
