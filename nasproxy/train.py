"""The trainer: one network (a ConvNet or a NAS-Bench-201 cell's) on a (subset of a)
dataset, the paper's settings by default.

The data lives on the device as one tensor; a batch is a slice of a permutation, and the
augmentation (random crop with 4-pixel padding, horizontal flip) is batched tensor work on
the device. The loop reads nothing back to the host within an epoch.

A process's first run on a device pays a one-time warm-up (on the CPU mostly the import of
torch's compiler stack by the first optimizer; on a GPU also the CUDA context and library
handles). :func:`warm_up` runs it apart, on a tiny network, so that a run's ``wall_s`` is
its own work and the warm-up is the ``warmup_s`` of the run that waited for it.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from nasproxy.checkpoints import CHECKPOINTS, DEFAULT, checkpoint_epochs, parse_checkpoints
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError, first_line
from nasproxy.models import build_model
from nasproxy.provenance import device_name
from nasproxy.settings import SEED, above, at_least, check_fields, setting, within
from nasproxy.spaces import AnyArch, parse_arch

CROP_PADDING = 4
EVAL_BATCH = 1024  # images an evaluation pass takes on a GPU
# on a CPU: passes of 1024 fall out of cache, twice as slow for the same logits (measured
# bit for bit on CIFAR-10, results/bench/checkpoints-cpu.json)
CPU_EVAL_BATCH = 128
WARM_UP_ARCH = "w8-d1-relu-none-none"  # the network of the warm-up (no norm: any batch size)

# observer(batch_indices, correct): called each step with train-split indices of the batch
# and whether each was classified correctly (forgetting events are read off this).
Observer = Callable[[torch.Tensor, torch.Tensor], None]
# epoch_end(epoch): called after each finished epoch (1-based) whose loss is finite; the
# trainer puts the model back in train mode afterwards (an evaluation may leave it in eval).
EpochEnd = Callable[[int], None]


@dataclass(frozen=True)
class TrainConfig:
    """How to train one network; saved into every result."""

    epochs: int = setting(100, check=at_least(1), help="training epochs of every architecture")
    # a batch of one is dropped (batch norm cannot take it): one image a batch trains nothing
    batch_size: int = setting(128, check=at_least(2), help="training batch size")
    lr: float = setting(
        0.01, check=above(0), help="SGD learning rate, cosine decay to 0 over all steps"
    )
    momentum: float = setting(
        0.9, check=within(0, 1, low_open=False, high_open=True), help="SGD momentum"
    )
    weight_decay: float = setting(5e-4, check=at_least(0), help="SGD weight decay")
    nesterov: bool = setting(False, help="SGD with Nesterov momentum")
    augment: bool = setting(True, flag="--no-augment", help="no random crop and flip")
    # not part of an experiment's protocol: recording a checkpoint does not change training
    checkpoints: str = setting(
        DEFAULT,
        parse=parse_checkpoints,
        check=CHECKPOINTS,
        metavar="K|E1,E2,..|none",
        help="epochs whose validation accuracy each run records: a count K (E/3^(K-1), ..., "
        "E/3, E), a comma list of epochs (one: 5,), or none (default 4: E/27, E/9, E/3, E)",
    )
    # initialisation, batch order and augmentation; a search sets it per unit
    seed: int = setting(0, check=SEED, help="training seed", internal=True)
    # "auto" = cuda when available, else cpu; a search sets it per trial
    device: str = setting("auto", help="auto, cpu, cuda, cuda:1, ...", internal=True)

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass
class TrainRecord:
    """What one training run measured."""

    arch: str
    status: str  # "ok", "diverged" (NaN/inf loss) or "failed"
    reason: str
    seed: int
    epochs: int
    n_train: int
    history: list[dict[str, float]] = field(default_factory=list)  # per epoch
    train_loss: float = math.nan
    val_acc: float = math.nan
    test_acc: float = math.nan
    # validation accuracy after each checkpoint epoch (nasproxy.checkpoints), the last one
    # val_acc; empty without checkpoints or when the run did not finish ("ok" only)
    checkpoints: dict[int, float] = field(default_factory=dict)
    wall_s: float = 0.0  # the run's own work: initialisation, training, evaluation
    warmup_s: float = 0.0  # the process's one-time warm-up on the device, paid before this run
    images_seen: int = 0
    images_per_s: float = 0.0
    params: int = 0
    macs: int = 0
    device: str = ""
    stack_size: int = 1  # models trained together with this one (nasproxy.multitrain)
    trainer: str = "plain"  # "plain", or "stacked(<options>)"
    fallback: str = ""  # why a stacked run fell back to a smaller stack or the plain trainer

    def to_dict(self) -> dict:
        return asdict(self)


@contextmanager
def torch_threads(threads: int | None) -> Iterator[None]:
    """torch's CPU threads set to ``threads`` inside the block (None: left as they are)."""
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> the first CUDA device when there is one, else the CPU.

    A device this machine does not have is a user mistake (one line), not a traceback.
    """
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise NasproxyError(f"unknown device {device!r}; use auto, cpu, cuda or cuda:N") from None
    if dev.type not in ("cpu", "cuda"):
        raise NasproxyError(f"unsupported device {device!r}; use auto, cpu, cuda or cuda:N")
    if dev.type == "cuda" and (
        not torch.cuda.is_available() or (dev.index or 0) >= torch.cuda.device_count()
    ):
        raise NasproxyError(f"device {device!r} is not available on this machine")
    return dev


def normalize(x: torch.Tensor, data: Dataset) -> torch.Tensor:
    """uint8 images -> float, standardised with the train split's channel statistics."""
    mean = torch.tensor(data.mean, device=x.device).view(1, -1, 1, 1)
    std = torch.tensor(data.std, device=x.device).view(1, -1, 1, 1)
    return (x.float() / 255.0 - mean) / std


def crop_flip(
    x: torch.Tensor, dy: torch.Tensor, dx: torch.Tensor, flip: torch.Tensor
) -> torch.Tensor:
    """Crop each image at offset (dy, dx) of its copy zero-padded by ``CROP_PADDING``, then
    mirror those where ``flip`` is set: the augmentation with its random draws given."""
    n, c, h, w = x.shape
    p = CROP_PADDING
    padded = F.pad(x, (p, p, p, p))
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]
    out = padded.gather(2, rows.expand(n, c, h, w + 2 * p)).gather(3, cols.expand(n, c, h, w))
    return torch.where(flip[:, None, None, None], out.flip(3), out)


def augment_batch(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding and random horizontal flip, for a whole batch at once.

    The draws, in this order from ``generator``: row offsets, column offsets (each uniform
    in [0, 2 * CROP_PADDING]), then uniforms in [0, 1) of which those below 0.5 mirror.
    """
    n = len(x)
    span = 2 * CROP_PADDING + 1
    dy = torch.randint(0, span, (n,), device=x.device, generator=generator)
    dx = torch.randint(0, span, (n,), device=x.device, generator=generator)
    flip = torch.rand(n, device=x.device, generator=generator) < 0.5
    return crop_flip(x, dy, dx, flip)


def batch_bounds(n: int, batch_size: int) -> list[tuple[int, int]]:
    """(start, stop) of each batch of an epoch of ``n`` examples; a trailing batch of one
    (which batch norm cannot take) is dropped."""
    stops = list(range(batch_size, n, batch_size)) + [n]
    starts = [0] + stops[:-1]
    return [(a, b) for a, b in zip(starts, stops, strict=True) if b - a >= 2 or n == 1]


def batches(n: int, batch_size: int, generator: torch.Generator, device: torch.device):
    """Shuffled index batches, cut by :func:`batch_bounds`."""
    perm = torch.randperm(n, device=device, generator=generator)
    for start, stop in batch_bounds(n, batch_size):
        yield perm[start:stop]


def fit(
    model: nn.Module,
    data: Dataset,
    indices: np.ndarray | None,
    cfg: TrainConfig,
    observer: Observer | None = None,
    epoch_end: EpochEnd | None = None,
) -> tuple[list[dict[str, float]], int]:
    """Train ``model`` in place on the train-split ``indices`` (all when None).

    Returns the per-epoch history and the number of images seen. Stops early when the
    loss is no longer finite (the last history entry then has a non-finite loss).
    ``epoch_end`` is called after every finished epoch (see ``EpochEnd``).
    """
    device = next(model.parameters()).device
    idx = torch.arange(len(data.y_train)) if indices is None else torch.as_tensor(indices)
    x = normalize(data.x_train[idx].to(device), data)
    y = data.y_train[idx].to(device)
    idx = idx.to(device)
    gen = torch.Generator(device=device)
    gen.manual_seed(cfg.seed)
    opt = torch.optim.SGD(
        model.parameters(),
        lr=cfg.lr,
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        nesterov=cfg.nesterov,
    )
    # the steps taken (a dropped trailing batch is none), so the rate reaches 0 at the end
    steps_per_epoch = len(batch_bounds(len(y), cfg.batch_size))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=cfg.epochs * steps_per_epoch)
    history: list[dict[str, float]] = []
    seen = 0
    model.train()
    for epoch in range(cfg.epochs):
        loss_sum = torch.zeros((), device=device)
        correct_sum = torch.zeros((), device=device, dtype=torch.long)
        count = 0
        for b in batches(len(y), cfg.batch_size, gen, device):
            xb = augment_batch(x[b], gen) if cfg.augment else x[b]
            logits = model(xb)
            loss = F.cross_entropy(logits, y[b])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            correct = logits.detach().argmax(1) == y[b]
            if observer is not None:
                observer(idx[b], correct)
            loss_sum += loss.detach() * len(b)
            correct_sum += correct.sum()
            count += len(b)
        seen += count
        # one host sync per epoch
        train_loss, train_acc = loss_sum.item() / count, correct_sum.item() / count
        history.append({"epoch": epoch + 1, "train_loss": train_loss, "train_acc": train_acc})
        if not math.isfinite(train_loss):
            break
        if epoch_end is not None:
            epoch_end(epoch + 1)
            model.train()
    return history, seen


def eval_batch(device: torch.device) -> int:
    """Images an evaluation pass takes on ``device``."""
    return CPU_EVAL_BATCH if device.type == "cpu" else EVAL_BATCH


@torch.no_grad()
def predict(model: nn.Module, data: Dataset, x: torch.Tensor) -> torch.Tensor:
    """Logits for uint8 images ``x`` in eval mode (no augmentation), batched."""
    device = next(model.parameters()).device
    model.eval()
    step = eval_batch(device)
    out = [model(normalize(x[i : i + step].to(device), data)) for i in range(0, len(x), step)]
    return torch.cat(out) if out else torch.zeros(0, 0)


def accuracy(model: nn.Module, data: Dataset, x: torch.Tensor, y: torch.Tensor) -> float:
    """Top-1 accuracy on (x, y); NaN for an empty split."""
    if len(y) == 0:
        return math.nan
    logits = predict(model, data, x)
    return (logits.argmax(1).cpu() == y).float().mean().item()


def init_model(arch: AnyArch, data: Dataset, seed: int, device: torch.device) -> nn.Module:
    """The network of ``arch``, initialised from ``seed`` without touching global RNG state."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_model(arch, data.in_channels, data.num_classes, data.image_size)
    return model.to(device)


_warm_devices: set[str] = set()  # the devices this process has warmed up
_warm_lock = threading.Lock()


def _warm_up_work(data: Dataset, device: torch.device) -> None:
    """One step of the trainer's code on a tiny network and two images, then a prediction."""
    model = init_model(parse_arch(WARM_UP_ARCH), data, 0, device)
    n = min(2, len(data.y_train))
    fit(model, data, np.arange(n), TrainConfig(epochs=1, batch_size=2))
    accuracy(model, data, data.x_val[:2], data.y_val[:2])
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(data: Dataset, device: torch.device) -> float:
    """Run the process's one-time warm-up on ``device`` unless done; the seconds it took
    now (0.0 when it was done before), which a run records as ``warmup_s``, not ``wall_s``."""
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", torch.cuda.current_device())
    with _warm_lock:
        if str(device) in _warm_devices:
            return 0.0
        start = time.perf_counter()
        _warm_up_work(data, device)
        _warm_devices.add(str(device))
        return time.perf_counter() - start


def train(
    arch: AnyArch | str,
    data: Dataset,
    indices: np.ndarray | None,
    cfg: TrainConfig,
    test: bool = True,
) -> TrainRecord:
    """Train ``arch`` on the train-split ``indices`` and evaluate on val and, when ``test``,
    on test (else ``test_acc`` is NaN: a search skips it for proxy units, whose test
    accuracy nothing reads). A first run on a device warms it up first (:func:`warm_up`)."""
    arch = parse_arch(arch) if isinstance(arch, str) else arch
    device = resolve_device(cfg.device)
    n_train = len(data.y_train) if indices is None else len(indices)
    record = TrainRecord(
        arch=str(arch),
        status="ok",
        reason="",
        seed=cfg.seed,
        epochs=cfg.epochs,
        n_train=n_train,
        params=arch.param_count(data.in_channels, data.num_classes, data.image_size),
        macs=arch.macs(data.in_channels, data.num_classes, data.image_size),
        device=device_name(device),
    )
    measured: dict[int, float] = {}  # the checkpoints before the last epoch
    start = time.perf_counter()
    try:
        record.warmup_s = warm_up(data, device)
        start = time.perf_counter()
        model = init_model(arch, data, cfg.seed, device)
        early = set(checkpoint_epochs(cfg.checkpoints, cfg.epochs)) - {cfg.epochs}

        def measure(epoch: int) -> None:
            if epoch in early and len(data.y_val) > 0:
                measured[epoch] = accuracy(model, data, data.x_val, data.y_val)

        record.history, record.images_seen = fit(model, data, indices, cfg, epoch_end=measure)
        record.train_loss = record.history[-1]["train_loss"]
        if not math.isfinite(record.train_loss):
            record.status = "diverged"
            record.reason = f"non-finite training loss in epoch {len(record.history)}"
        else:
            record.val_acc = accuracy(model, data, data.x_val, data.y_val)
            if test:
                record.test_acc = accuracy(model, data, data.x_test, data.y_test)
    except torch.OutOfMemoryError as exc:
        record.status, record.reason = "failed", f"out of memory: {first_line(exc)}"
    except RuntimeError as exc:
        record.status, record.reason = "failed", first_line(exc, with_type=True)
    record.wall_s = time.perf_counter() - start
    record.images_per_s = record.images_seen / record.wall_s if record.wall_s > 0 else 0.0
    record.checkpoints = final_checkpoints(record, measured, cfg)
    return record


def final_checkpoints(
    record: TrainRecord, measured: dict[int, float], cfg: TrainConfig
) -> dict[int, float]:
    """A finished run's checkpoints: those ``measured`` during training, then its
    ``val_acc`` at its last epoch; none for a run that is not "ok", that has no
    checkpoints (``none``) or no validation split."""
    if record.status != "ok" or not checkpoint_epochs(cfg.checkpoints, cfg.epochs):
        return {}
    if not math.isfinite(record.val_acc):
        return {}
    return {**measured, cfg.epochs: record.val_acc}
