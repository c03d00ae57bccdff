"""The trainer: it learns real data, is deterministic, and reports divergence; its
schedule ends at 0, the test split is evaluated only when asked, the warm-up is timed apart;
its checkpoints are the run stopped at their epochs and change nothing of its training."""

from __future__ import annotations

import math
import types
from dataclasses import replace

import numpy as np
import pytest
import torch

import nasproxy.train as train_module
from nasproxy.data import Dataset
from nasproxy.models import build_model
from nasproxy.spaces import Arch, parse_arch
from nasproxy.train import TrainConfig, augment_batch, batches, train, warm_up

CPU = torch.device("cpu")


def test_learns_digits_above_80_percent(digits: Dataset) -> None:
    rec = train("w32-d2-relu-instancenorm-avgpooling", digits, None, TrainConfig(epochs=6))
    assert rec.status == "ok"
    assert rec.test_acc > 0.80
    assert rec.images_seen == 6 * len(digits.y_train)
    assert len(rec.history) == 6


def test_same_seed_same_record(digits: Dataset) -> None:
    idx = np.arange(0, len(digits.y_train), 3)
    cfg = TrainConfig(epochs=2, seed=7)
    a = train("w32-d1-leakyrelu-batchnorm-maxpooling", digits, idx, cfg)
    b = train("w32-d1-leakyrelu-batchnorm-maxpooling", digits, idx, cfg)
    c = train("w32-d1-leakyrelu-batchnorm-maxpooling", digits, idx, TrainConfig(epochs=2, seed=8))
    assert a.history == b.history and a.val_acc == b.val_acc and a.test_acc == b.test_acc
    assert a.history != c.history


def test_huge_learning_rate_is_a_diverged_record(digits: Dataset) -> None:
    rec = train("w32-d1-relu-none-none", digits, np.arange(256), TrainConfig(epochs=2, lr=1e8))
    assert rec.status == "diverged"
    assert "non-finite" in rec.reason


def test_augmentation_is_a_shifted_window_or_its_mirror() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6) + 1
    out = augment_batch(x, gen)
    padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
    for i in range(2):
        windows = [padded[i, :, dy : dy + 6, dx : dx + 6] for dy in range(9) for dx in range(9)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)


def test_batches_cover_every_example_once() -> None:
    gen = torch.Generator().manual_seed(0)
    got = torch.cat(list(batches(300, 128, gen, torch.device("cpu"))))
    assert sorted(got.tolist()) == list(range(300))


@pytest.mark.slow
def test_real_cifar10_slice_beats_chance(cifar: Dataset) -> None:
    idx = np.concatenate([np.flatnonzero(cifar.y_train.numpy() == c)[:400] for c in range(10)])
    rec = train("w32-d3-relu-instancenorm-avgpooling", cifar, idx, TrainConfig(epochs=8))
    assert rec.status == "ok"
    assert rec.test_acc > 0.35, rec.test_acc


@pytest.mark.parametrize("device", ["cpu"])
def test_record_reports_sizes(digits: Dataset, device: str) -> None:
    arch = "w64-d2-relu-batchnorm-maxpooling"
    rec = train(arch, digits, np.arange(64), TrainConfig(epochs=1, device=device))
    assert (digits.in_channels, digits.num_classes, digits.image_size) == (1, 10, 32)
    assert rec.n_train == rec.images_seen == 64 and rec.device == "cpu" and rec.wall_s > 0
    model = build_model(Arch.from_id(arch), 1, 10, 32)
    assert rec.params == sum(p.numel() for p in model.parameters())
    # conv1 32x32 outputs x 64 x (1 x 3 x 3), conv2 16x16 x 64 x (64 x 3 x 3), head 64*8*8 x 10
    assert rec.macs == 32 * 32 * 64 * 9 + 16 * 16 * 64 * 64 * 9 + 64 * 8 * 8 * 10


@pytest.mark.parametrize(
    "error, reason",
    [
        (RuntimeError(""), "RuntimeError"),
        (RuntimeError("\n  \nboom\nat step 3"), "RuntimeError: boom"),
        (torch.OutOfMemoryError(""), "out of memory: OutOfMemoryError"),
        (
            torch.OutOfMemoryError("CUDA out of memory.\nTried to allocate"),
            "out of memory: CUDA out of memory.",
        ),
    ],
)
def test_a_failed_run_is_a_one_line_reason_even_for_an_empty_message(
    digits: Dataset, monkeypatch, error: Exception, reason: str
) -> None:
    """An error with an empty or multi-line message is a failed record, not an IndexError."""

    def fail(*args, **kwargs):
        raise error

    monkeypatch.setattr(train_module, "fit", fail)
    rec = train("w32-d1-relu-none-none", digits, np.arange(64), TrainConfig(epochs=1))
    assert rec.status == "failed" and rec.reason == reason


def test_the_learning_rate_reaches_zero_when_a_batch_of_one_is_dropped(
    digits: Dataset, monkeypatch
) -> None:
    """9 images in batches of 4: the trailing batch of one is dropped, so 2 steps an epoch;
    the rates follow the closed-form cosine over the 6 steps taken and end at 0."""
    warm_up(digits, CPU)  # its own optimizer steps are not this run's
    rates: list[float] = []
    optimizers: list[torch.optim.Optimizer] = []
    real_step = torch.optim.SGD.step

    def step(self, *args, **kwargs):
        rates.append(self.param_groups[0]["lr"])
        optimizers.append(self)
        return real_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.SGD, "step", step)
    cfg = TrainConfig(epochs=3, batch_size=4, lr=0.1)
    rec = train("w8-d1-relu-batchnorm-none", digits, np.arange(9), cfg)
    assert rec.status == "ok" and rec.images_seen == 3 * 8
    total = 3 * 2
    want = [0.1 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    assert rates == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert optimizers[-1].param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)


def test_a_run_without_test_never_evaluates_the_test_split(digits: Dataset, monkeypatch) -> None:
    """``test=False`` (a proxy unit): no prediction on the test images, test_acc is NaN,
    and the rest of the record is what the run with the test split gives."""
    idx = np.arange(0, len(digits.y_train), 4)
    cfg = TrainConfig(epochs=1, seed=3)
    arch = "w8-d1-relu-batchnorm-maxpooling"
    full = train(arch, digits, idx, cfg)
    evaluated: list[int] = []
    real = train_module.accuracy

    def spy(model, data, x, y):
        evaluated.append(len(y))
        return real(model, data, x, y)

    monkeypatch.setattr(train_module, "accuracy", spy)
    lean = train(arch, digits, idx, cfg, test=False)
    assert evaluated == [len(digits.y_val)]  # the validation split only
    assert math.isnan(lean.test_acc) and 0 <= full.test_acc <= 1
    assert (lean.val_acc, lean.history) == (full.val_acc, full.history)


def _fake_clock(monkeypatch, module) -> list[float]:
    """``module``'s clock stands still but for what the test adds to the returned list."""
    now = [0.0]
    monkeypatch.setattr(module, "time", types.SimpleNamespace(perf_counter=lambda: now[0]))
    return now


def test_the_warm_up_is_timed_apart_from_the_run(digits: Dataset, monkeypatch) -> None:
    """A process's first run on a device pays the warm-up (here a fake one of 1000 s) in
    ``warmup_s``, not in ``wall_s``, which holds the run's own work (here 7 s of training);
    the next run on the device pays none."""
    now = _fake_clock(monkeypatch, train_module)
    real_fit = train_module.fit

    def work(*args, **kwargs):
        now[0] += 7.0
        return real_fit(*args, **kwargs)

    def warm(data, device):
        now[0] += 1000.0

    monkeypatch.setattr(train_module, "fit", work)
    monkeypatch.setattr(train_module, "_warm_up_work", warm)
    monkeypatch.setattr(train_module, "_warm_devices", set())
    cfg = TrainConfig(epochs=1)
    first, second = (train("w8-d1-relu-none-none", digits, np.arange(32), cfg) for _ in "ab")
    assert first.status == second.status == "ok"
    assert (first.warmup_s, first.wall_s) == (1000.0, 7.0)
    assert (second.warmup_s, second.wall_s) == (0.0, 7.0)
    assert first.images_per_s == 32 / 7.0


def test_the_warm_up_runs_once_a_device_and_changes_no_result(digits: Dataset, monkeypatch) -> None:
    """The real warm-up: once per device and process, and a run after it is the run
    without it (it draws from no generator a run uses)."""
    idx = np.arange(0, len(digits.y_train), 5)
    cfg = TrainConfig(epochs=1, seed=2)
    arch = "w8-d1-leakyrelu-batchnorm-avgpooling"
    warm_up(digits, CPU)
    before = train(arch, digits, idx, cfg)
    monkeypatch.setattr(train_module, "_warm_devices", set())
    torch.manual_seed(0)
    state = torch.get_rng_state()
    after = train(arch, digits, idx, cfg)  # warms up again, first
    assert torch.equal(torch.get_rng_state(), state)
    assert after.warmup_s > 0 and warm_up(digits, CPU) == 0.0 and before.warmup_s == 0.0
    assert (after.history, after.val_acc, after.test_acc) == (
        before.history,
        before.val_acc,
        before.test_acc,
    )


def test_a_cell_whose_none_edges_cut_the_graph_still_trains(digits: Dataset) -> None:
    """Every edge into the output node is none: each cell outputs zeros (the benchmark's
    semantics), the loss stays finite and only the last norm and the head learn."""
    text = "|nor_conv_1x1~0|+|skip_connect~0|nor_conv_1x1~1|+|none~0|none~1|none~2|"
    idx = np.arange(64)
    rec = train(text, digits, idx, TrainConfig(epochs=2, batch_size=16))
    assert rec.status == "ok" and all(math.isfinite(h["train_loss"]) for h in rec.history)
    assert rec.arch == "c1-sk.c1-no.no.no"  # the canonical id, whichever form was given
    model = build_model(parse_arch(text), 1, 10, 32)
    assert rec.params == sum(p.numel() for p in model.parameters())
    assert 0.0 <= rec.val_acc <= 1.0


def test_nesterov_momentum_changes_the_trajectory(digits: Dataset) -> None:
    idx = np.arange(96)
    cfg = TrainConfig(epochs=2, batch_size=32, lr=0.05)
    plain = train("w8-d1-relu-none-none", digits, idx, cfg)
    nesterov = train("w8-d1-relu-none-none", digits, idx, replace(cfg, nesterov=True))
    assert plain.status == nesterov.status == "ok"
    assert plain.history != nesterov.history


class _Stop(Exception):
    """Raised by an observer to stop ``fit`` after a given number of steps."""


def _stopped_at(arch: str, data: Dataset, idx: np.ndarray, cfg: TrainConfig, epoch: int):
    """The model of ``cfg``'s run after ``epoch`` of its epochs: the same schedule (cosine over
    all of ``cfg.epochs``), stopped by an observer after that epoch's last step."""
    model = train_module.init_model(Arch.from_id(arch), data, cfg.seed, CPU)
    steps = epoch * len(train_module.batch_bounds(len(idx), cfg.batch_size))
    taken = [0]

    def observer(batch: torch.Tensor, correct: torch.Tensor) -> None:
        taken[0] += 1
        if taken[0] == steps:
            raise _Stop

    with pytest.raises(_Stop):
        train_module.fit(model, data, idx, replace(cfg, checkpoints="none"), observer)
    return model


@pytest.mark.parametrize("arch", ["w8-d2-relu-batchnorm-maxpooling", "w8-d1-relu-none-none"])
def test_a_checkpoint_is_the_run_stopped_at_that_epoch(digits: Dataset, arch: str) -> None:
    """Each checkpoint's accuracy is that of the same run (same seed, same cosine schedule
    over all its epochs) stopped after that epoch and evaluated on the validation split;
    the last checkpoint is the run's val_acc."""
    idx = np.arange(0, len(digits.y_train), 9)  # 144 images: 5 batches of 32 an epoch
    cfg = TrainConfig(epochs=5, batch_size=32, seed=3, checkpoints="1,3,")
    rec = train(arch, digits, idx, cfg)
    assert rec.status == "ok" and list(rec.checkpoints) == [1, 3, 5]
    assert rec.checkpoints[5] == rec.val_acc
    for epoch in (1, 3):
        model = _stopped_at(arch, digits, idx, cfg, epoch)
        want = train_module.accuracy(model, digits, digits.x_val, digits.y_val)
        assert rec.checkpoints[epoch] == want, epoch
    # a run of 3 epochs is another run: its rate decays to 0 over 3 epochs, not 5
    short = train(arch, digits, idx, replace(cfg, epochs=3))
    assert short.history[2]["train_loss"] != rec.history[2]["train_loss"]


def test_checkpoints_change_no_training(digits: Dataset) -> None:
    """A run with a checkpoint after every epoch trains exactly as one with none: the same
    history and accuracies (batch norm back in train mode, no random draw taken)."""
    idx = np.arange(0, len(digits.y_train), 5)
    cfg = TrainConfig(epochs=4, batch_size=32, seed=1, checkpoints="1,2,3,")
    arch = "w8-d2-leakyrelu-batchnorm-avgpooling"
    with_ = train(arch, digits, idx, cfg)
    without = train(arch, digits, idx, replace(cfg, checkpoints="none"))
    assert with_.history == without.history
    assert (with_.val_acc, with_.test_acc) == (without.val_acc, without.test_acc)
    assert list(with_.checkpoints) == [1, 2, 3, 4] and without.checkpoints == {}


def test_a_diverged_run_has_no_checkpoints(digits: Dataset) -> None:
    cfg = TrainConfig(epochs=3, lr=1e8, checkpoints="1,")
    rec = train("w32-d1-relu-none-none", digits, np.arange(256), cfg)
    assert rec.status == "diverged" and rec.checkpoints == {}
