"""The lockstep loop trains every model of a stack as nasproxy.train would train it alone.

Truths: torch.optim.SGD and CosineAnnealingLR (the update and the schedule), numpy (the
augmentation, brute force per image), and nasproxy.train.fit / train themselves on the
same seeds and training sets (step level in float64, where the two paths agree to
~1e-12; end to end in float32, as the sweep runs).
"""

from __future__ import annotations

import math
import types
from collections.abc import Callable
from dataclasses import replace

import numpy as np
import pytest
import torch

import nasproxy.train as train_module
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.multitrain import lockstep
from nasproxy.multitrain.lockstep import (
    FastOptions,
    accuracies,
    cosine_lr,
    fallback_reason,
    fit_many,
    sgd_step_,
    train_many,
)
from nasproxy.multitrain.stacked import StackedConvNet
from nasproxy.spaces import Arch
from nasproxy.train import (
    TrainConfig,
    augment_batch,
    batch_bounds,
    batches,
    crop_flip,
    fit,
    init_model,
    train,
    warm_up,
)

CPU = torch.device("cpu")
StateDiff = Callable[[torch.nn.Module, torch.nn.Module], float]


def test_sgd_step_matches_torch_sgd_with_float_and_tensor_lr(float64: None) -> None:
    torch.manual_seed(1)
    ref = [torch.randn(4, 3, requires_grad=True), torch.randn(5, requires_grad=True)]
    ours = [p.detach().clone() for p in ref]
    opt = torch.optim.SGD(ref, lr=0.05, momentum=0.9, weight_decay=5e-4)
    momenta = [torch.zeros_like(p) for p in ours]
    for t in range(4):
        grads = [torch.randn_like(p) for p in ref]
        for p, g in zip(ref, grads, strict=True):
            p.grad = g.clone()
        opt.step()
        lr = 0.05 if t % 2 else torch.tensor(0.05)
        sgd_step_(ours, [g.clone() for g in grads], momenta, lr, 0.9, 5e-4)
        for a, b in zip(ref, ours, strict=True):
            torch.testing.assert_close(a.detach(), b, rtol=0, atol=1e-15)


def test_cosine_lr_matches_torch_scheduler() -> None:
    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.01)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=37)
    for step in range(37):
        assert cosine_lr(0.01, step, 37) == pytest.approx(opt.param_groups[0]["lr"], abs=1e-15)
        opt.step()
        sched.step()


@pytest.mark.parametrize("n,bs", [(300, 128), (257, 128), (129, 128), (64, 32), (1, 4), (5, 8)])
def test_batches_cut_consecutive_slices_of_one_permutation(n: int, bs: int) -> None:
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(0))
    got = list(batches(n, bs, torch.Generator().manual_seed(0), CPU))
    want = [perm[i : i + bs] for i in range(0, n, bs)]  # every slice of bs, then the rest
    want = [b for b in want if len(b) >= 2 or n == 1]  # a lone trailing example is dropped
    assert len(got) == len(want) and all(torch.equal(g, w) for g, w in zip(got, want, strict=True))
    assert [b - a for a, b in batch_bounds(n, bs)] == [len(w) for w in want]


def test_crop_flip_is_a_padded_crop_then_a_mirror() -> None:
    """Brute force per image in numpy; and the stack's draws are augment_batch's draws."""
    x = torch.randn(7, 3, 10, 10)
    gen = torch.Generator().manual_seed(5)
    dy, dx = torch.empty(7, dtype=torch.long), torch.empty(7, dtype=torch.long)
    u = torch.empty(7)
    torch.randint(0, 9, (7,), generator=gen, out=dy)  # the draws as the stack makes them
    torch.randint(0, 9, (7,), generator=gen, out=dx)
    torch.rand((7,), generator=gen, out=u)
    got = crop_flip(x, dy, dx, u < 0.5)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (4, 4), (4, 4)))
    for i in range(7):
        crop = padded[i, :, dy[i] : dy[i] + 10, dx[i] : dx[i] + 10]
        want = crop[:, :, ::-1] if u[i] < 0.5 else crop
        assert np.array_equal(got[i].numpy(), want)
    assert torch.equal(got, augment_batch(x, torch.Generator().manual_seed(5)))


def _sets(data: Dataset, m: int, size: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [np.sort(rng.choice(len(data.y_train), size, replace=False)) for _ in range(m)]


FIT_CASES = [
    ("w8-d2-relu-batchnorm-maxpooling", 1, False),
    ("w8-d2-sigmoid-layernorm-avgpooling", 2, True),
    ("w8-d1-leakyrelu-instancenorm-none", 3, False),
    ("w8-d2-relu-groupnorm-avgpooling", 3, False),
]


@pytest.mark.parametrize("arch_id,m,channels_last", FIT_CASES)
def test_fit_many_follows_fit_for_each_seed(
    digits: Dataset,
    arch_id: str,
    m: int,
    channels_last: bool,
    float64: None,
    state_diff: StateDiff,
) -> None:
    """Same seeds, same training sets: the stack's models are fit()'s models (float64)."""
    arch = Arch.from_id(arch_id)
    sets = _sets(digits, m, 70)  # 3 batches of 32 a epoch, the last of 6
    cfgs = [TrainConfig(epochs=2, batch_size=32, seed=10 + i) for i in range(m)]
    stack = StackedConvNet.from_models(
        [init_model(arch, digits, c.seed, CPU) for c in cfgs], digits.image_size
    )
    histories, seen = fit_many(stack, digits, sets, cfgs, FastOptions(channels_last=channels_last))
    for i, model in enumerate(stack.to_models()):
        ref = init_model(arch, digits, cfgs[i].seed, CPU)
        ref_history, ref_seen = fit(ref, digits, sets[i], cfgs[i])
        assert seen[i] == ref_seen == 2 * 70
        assert state_diff(ref, model) < 1e-12
        for got, want in zip(histories[i], ref_history, strict=True):
            assert got["train_acc"] == want["train_acc"]
            assert got["train_loss"] == pytest.approx(want["train_loss"], rel=1e-10)


def test_train_many_records_match_train_in_float32(digits: Dataset) -> None:
    """float32, as the sweep runs: val/test accuracy and losses as train() reports them.

    Rounding differs between grouped and separate kernels (as it does between thread
    counts of the plain path), so accuracies may differ by a borderline example.
    """
    sets = _sets(digits, 3, 96, seed=1)
    cfgs = [TrainConfig(epochs=2, batch_size=32, seed=s) for s in (0, 1, 2)]
    arch = "w8-d2-relu-batchnorm-avgpooling"
    fast = train_many(arch, digits, sets, cfgs)
    for s, cfg, rec in zip(sets, cfgs, fast, strict=True):
        plain = train(arch, digits, s, cfg)
        assert rec.status == plain.status == "ok"
        assert (rec.seed, rec.n_train, rec.images_seen) == (cfg.seed, 96, plain.images_seen)
        assert (rec.params, rec.macs) == (plain.params, plain.macs)
        assert abs(rec.val_acc - plain.val_acc) <= 1.5 / len(digits.y_val)
        assert abs(rec.test_acc - plain.test_acc) <= 1.5 / len(digits.y_test)
        assert rec.train_loss == pytest.approx(plain.train_loss, rel=1e-4)


def test_train_many_with_mixed_activations_is_train_per_run(digits: Dataset, float64: None) -> None:
    """Records in the caller's order (the stack is grouped by activation inside)."""
    ids = [
        "w8-d1-sigmoid-instancenorm-avgpooling",
        "w8-d1-relu-instancenorm-avgpooling",
        "w8-d1-sigmoid-instancenorm-avgpooling",
        "w8-d1-leakyrelu-instancenorm-avgpooling",
    ]
    sets = _sets(digits, 4, 48, seed=7)
    cfgs = [TrainConfig(epochs=1, batch_size=16, seed=s) for s in (3, 4, 5, 6)]
    records = train_many(ids, digits, sets, cfgs)
    for arch_id, s, cfg, rec in zip(ids, sets, cfgs, records, strict=True):
        plain = train(arch_id, digits, s, cfg)
        assert (rec.arch, rec.seed, rec.stack_size) == (arch_id, cfg.seed, 4)
        assert rec.val_acc == plain.val_acc and rec.test_acc == plain.test_acc
        assert rec.train_loss == pytest.approx(plain.train_loss, rel=1e-10)
    why = fallback_reason([ids[0], "w8-d1-relu-none-avgpooling"], digits, sets[:2], cfgs[:2])
    assert why is not None and "more than the activation" in why


def test_lr_from_a_device_tensor_as_cuda_graphs_read_it(
    digits: Dataset, float64: None, state_diff: StateDiff
) -> None:
    """The graph-ready step (schedule read from a tensor, inputs from fixed buffers) trains
    as fit() does; only the capture itself needs CUDA."""
    arch = Arch.from_id("w8-d1-sigmoid-layernorm-maxpooling")
    sets = _sets(digits, 2, 40, seed=6)
    cfgs = [TrainConfig(epochs=2, batch_size=16, seed=s) for s in (4, 5)]
    stack = StackedConvNet.from_models(
        [init_model(arch, digits, c.seed, CPU) for c in cfgs], digits.image_size
    )
    loop = lockstep._Lockstep(stack, digits, sets, cfgs, FastOptions())
    loop.lr_arg = loop.lr_tensor
    loop.fit()
    assert float(loop.lr_tensor) > 0  # the schedule went through the tensor
    for i, model in enumerate(stack.to_models()):
        ref = init_model(arch, digits, cfgs[i].seed, CPU)
        fit(ref, digits, sets[i], cfgs[i])
        assert state_diff(ref, model) < 1e-12
    assert not FastOptions(cuda_graphs=True).effective(CPU).cuda_graphs


def test_a_diverging_model_leaves_the_others_untouched(
    digits: Dataset, float64: None, state_diff: StateDiff
) -> None:
    arch = Arch.from_id("w8-d1-relu-batchnorm-maxpooling")
    sets = _sets(digits, 3, 64, seed=2)
    cfgs = [TrainConfig(epochs=3, batch_size=32, seed=s) for s in (0, 1, 2)]
    singles = [init_model(arch, digits, c.seed, CPU) for c in cfgs]
    with torch.no_grad():
        singles[1].classifier.weight[0, 0] = float("nan")
    stack = StackedConvNet.from_models(singles, digits.image_size)
    histories, seen = fit_many(stack, digits, sets, cfgs)
    assert len(histories[1]) == 1 and not np.isfinite(histories[1][0]["train_loss"])
    assert seen[1] == 64
    models = stack.to_models()
    for i in (0, 2):
        ref = init_model(arch, digits, cfgs[i].seed, CPU)
        fit(ref, digits, sets[i], cfgs[i])
        assert state_diff(ref, models[i]) < 1e-12


def test_shared_rng_is_deterministic_and_differs_from_exact(digits: Dataset) -> None:
    sets = _sets(digits, 2, 64, seed=3)
    cfgs = [TrainConfig(epochs=1, batch_size=32, seed=s) for s in (0, 1)]
    arch = "w8-d1-relu-none-avgpooling"
    a = train_many(arch, digits, sets, cfgs, FastOptions(rng="shared"))
    b = train_many(arch, digits, sets, cfgs, FastOptions(rng="shared"))
    c = train_many(arch, digits, sets, cfgs)
    assert [r.history for r in a] == [r.history for r in b]
    assert [r.history for r in a] != [r.history for r in c]


def test_bf16_autocast_runs_and_stays_close(digits: Dataset) -> None:
    arch = Arch.from_id("w8-d1-relu-groupnorm-maxpooling")
    sets = _sets(digits, 2, 64, seed=4)
    cfgs = [TrainConfig(epochs=1, batch_size=32, seed=s) for s in (0, 1)]
    ref = StackedConvNet.from_models([init_model(arch, digits, 0, CPU)] * 2, 32)
    low = StackedConvNet.from_models([init_model(arch, digits, 0, CPU)] * 2, 32)
    h_ref, _ = fit_many(ref, digits, sets, cfgs)
    h_low, _ = fit_many(low, digits, sets, cfgs, FastOptions(bf16=True))
    for a, b in zip(h_ref, h_low, strict=True):
        assert b[0]["train_loss"] == pytest.approx(a[0]["train_loss"], rel=0.05)
    got = accuracies(low, digits, digits.x_val, digits.y_val, FastOptions(bf16=True))
    assert all(0.0 <= v <= 1.0 for v in got)


def test_fallback_reasons(digits: Dataset) -> None:
    arch = "w8-d1-relu-none-none"
    cfg = TrainConfig(epochs=1)
    assert fallback_reason(arch, digits, [np.arange(10), np.arange(10)], [cfg, cfg]) is None
    assert fallback_reason(arch, digits, [None, None], [cfg, replace(cfg, seed=3)]) is None
    why = fallback_reason(arch, digits, [np.arange(10), np.arange(12)], [cfg, cfg])
    assert why is not None and "10, 12" in why
    why = fallback_reason(arch, digits, [None, None], [cfg, replace(cfg, lr=0.1)])
    assert why is not None and "settings" in why
    with pytest.raises(NasproxyError, match="lockstep"):
        train_many(arch, digits, [np.arange(10), np.arange(12)], [cfg, cfg])
    with pytest.raises(NasproxyError):
        train_many(arch, digits, [None], [cfg, cfg])


@pytest.mark.parametrize(
    "error", [torch.OutOfMemoryError("CUDA out of memory (simulated)"), RuntimeError("boom")]
)
def test_a_failing_stack_splits_down_to_the_plain_trainer(
    digits: Dataset, monkeypatch: pytest.MonkeyPatch, error: Exception
) -> None:
    real = lockstep._train_stack
    sizes: list[int] = []

    def failing(arch, data, index_sets, cfgs, *rest):
        sizes.append(len(cfgs))
        if len(cfgs) > 2:
            raise error
        return real(arch, data, index_sets, cfgs, *rest)

    monkeypatch.setattr(lockstep, "_train_stack", failing)
    sets = _sets(digits, 5, 32, seed=5)
    cfgs = [TrainConfig(epochs=1, batch_size=32, seed=s) for s in range(5)]
    arch = "w8-d1-relu-none-none"
    records = train_many(arch, digits, sets, cfgs)
    assert sizes == [5, 2, 3, 2]  # 5 -> 2 + 3; the 3 -> 1 (plain) + 2 (a stack again)
    assert [r.seed for r in records] == list(range(5))
    assert [r.stack_size for r in records] == [2, 2, 1, 2, 2]
    assert [r.trainer.startswith("stacked") for r in records] == [True, True, False, True, True]
    assert all(str(error) in r.fallback and "stack of" in r.fallback for r in records)
    plain = train(arch, digits, sets[2], cfgs[2])  # the one that went down to train()
    assert (records[2].val_acc, records[2].history) == (plain.val_acc, plain.history)
    assert records[2].trainer == "plain" and records[2].status == "ok"


def test_the_stack_takes_the_plain_trainers_rates_when_a_batch_of_one_is_dropped(
    digits: Dataset, monkeypatch
) -> None:
    """9 images in batches of 4 (the trailing one dropped): every step of the stack uses
    the closed-form cosine over the 2 x 3 steps taken, as fit() does, ending at 0."""
    rates: list[float] = []
    real = lockstep.sgd_step_

    def spy(params, grads, momenta, lr, momentum, weight_decay):
        rates.append(float(lr))
        return real(params, grads, momenta, lr, momentum, weight_decay)

    monkeypatch.setattr(lockstep, "sgd_step_", spy)
    cfgs = [TrainConfig(epochs=3, batch_size=4, lr=0.1, seed=s) for s in (0, 1)]
    sets = [np.arange(9), np.arange(9, 18)]
    records = train_many("w8-d1-relu-batchnorm-none", digits, sets, cfgs)
    assert [r.stack_size for r in records] == [2, 2]
    assert [r.images_seen for r in records] == [3 * 8, 3 * 8]
    total = 3 * 2
    want = [0.1 * (1 + math.cos(math.pi * t / total)) / 2 for t in range(total)]
    assert rates == pytest.approx(want, rel=1e-12, abs=1e-15)
    assert cosine_lr(0.1, total, total) == 0.0  # where the next step would be


def test_the_test_split_is_evaluated_only_for_the_runs_that_ask(
    digits: Dataset, monkeypatch
) -> None:
    """``test`` per run: NaN for the runs that skip it, the same accuracy as with
    ``test=True`` for the others, and no pass over the test images when none asks."""
    sets = _sets(digits, 2, 48, seed=3)
    cfgs = [TrainConfig(epochs=1, batch_size=16, seed=s) for s in (0, 1)]
    arch = "w8-d1-relu-batchnorm-maxpooling"
    full = train_many(arch, digits, sets, cfgs)
    mixed = train_many(arch, digits, sets, cfgs, test=[False, True])
    assert math.isnan(mixed[0].test_acc) and mixed[1].test_acc == full[1].test_acc
    assert [r.val_acc for r in mixed] == [r.val_acc for r in full]
    evaluated: list[int] = []
    real = lockstep.accuracies

    def spy(model, data, x, y, options=None):
        evaluated.append(len(y))
        return real(model, data, x, y, options)

    monkeypatch.setattr(lockstep, "accuracies", spy)
    none = train_many(arch, digits, sets, cfgs, test=False)
    assert evaluated == [len(digits.y_val)] and all(math.isnan(r.test_acc) for r in none)
    with pytest.raises(NasproxyError, match="2 runs but 1 test choices"):
        train_many(arch, digits, sets, cfgs, test=[True])


def test_the_warm_up_is_in_the_first_record_not_in_the_stacks_time(
    digits: Dataset, monkeypatch
) -> None:
    """A fake warm-up of 1000 s on a clock only the test moves: the stack's first record
    holds it as ``warmup_s``; ``wall_s`` is each run's share of the stack's own 8 s."""
    now = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: now[0])
    monkeypatch.setattr(lockstep, "time", clock)
    monkeypatch.setattr(train_module, "time", clock)
    real_fit_many = lockstep.fit_many

    def work(*args, **kwargs):
        now[0] += 8.0
        return real_fit_many(*args, **kwargs)

    def warm(data, device):
        now[0] += 1000.0

    monkeypatch.setattr(lockstep, "fit_many", work)
    monkeypatch.setattr(train_module, "_warm_up_work", warm)
    monkeypatch.setattr(train_module, "_warm_devices", set())
    cfgs = [TrainConfig(epochs=1, batch_size=16, seed=s) for s in (0, 1)]
    sets = _sets(digits, 2, 32, seed=4)
    first = train_many("w8-d1-relu-none-none", digits, sets, cfgs)
    again = train_many("w8-d1-relu-none-none", digits, sets, cfgs)
    assert [(r.warmup_s, r.wall_s) for r in first] == [(1000.0, 4.0), (0.0, 4.0)]
    assert [(r.warmup_s, r.wall_s) for r in again] == [(0.0, 4.0), (0.0, 4.0)]
    assert warm_up(digits, CPU) == 0.0


@pytest.mark.parametrize(
    ("arch", "nesterov", "why"),
    [
        ("c1-no.sk-no.ap.c1", False, "NAS-Bench-201 cell"),  # the same cell, two seeds
        ("w8-d1-relu-none-none", True, "Nesterov"),
    ],
)
def test_cells_and_nesterov_fall_back_to_the_plain_trainer_and_say_why(
    digits: Dataset, arch: str, nesterov: bool, why: str
) -> None:
    """Each run is train()'s own (the same accuracies); its record names the fallback."""
    sets = _sets(digits, 2, 48, seed=3)
    cfgs = [TrainConfig(epochs=1, batch_size=16, seed=s, nesterov=nesterov) for s in (0, 1)]
    fast = train_many(arch, digits, sets, cfgs)
    for s, cfg, rec in zip(sets, cfgs, fast, strict=True):
        plain = train(arch, digits, s, cfg)
        assert rec.status == plain.status == "ok"
        assert (rec.trainer, rec.stack_size) == ("plain", 1)
        assert why in rec.fallback and "plain trainer" in rec.fallback
        assert (rec.val_acc, rec.test_acc, rec.params) == (
            plain.val_acc,
            plain.test_acc,
            plain.params,
        )


@pytest.mark.parametrize(
    "arch", ["w8-d2-relu-batchnorm-maxpooling", "w8-d1-sigmoid-none-avgpooling"]
)
def test_the_stack_records_the_plain_runs_checkpoints(
    digits: Dataset, arch: str, float64: None
) -> None:
    """Each model of a stack has train()'s checkpoints for its seed (float64, where both
    paths agree to ~1e-12), the last one its val_acc."""
    sets = _sets(digits, 3, 70, seed=2)
    cfgs = [TrainConfig(epochs=4, batch_size=32, seed=s, checkpoints="1,2,") for s in (5, 6, 7)]
    records = train_many(arch, digits, sets, cfgs)
    for s, cfg, rec in zip(sets, cfgs, records, strict=True):
        plain = train(arch, digits, s, cfg)
        assert rec.stack_size == 3 and list(rec.checkpoints) == [1, 2, 4]
        assert rec.checkpoints == plain.checkpoints
        assert rec.checkpoints[4] == rec.val_acc


def test_checkpoints_change_no_training_of_the_stack(digits: Dataset) -> None:
    """A stack evaluated after every epoch trains exactly as one never evaluated (float32,
    as the sweep runs): the same histories and accuracies."""
    sets = _sets(digits, 2, 96, seed=4)
    arch = "w8-d2-leakyrelu-batchnorm-avgpooling"
    cfgs = [TrainConfig(epochs=3, batch_size=32, seed=s, checkpoints="1,2,") for s in (0, 1)]
    with_ = train_many(arch, digits, sets, cfgs)
    without = train_many(arch, digits, sets, [replace(c, checkpoints="none") for c in cfgs])
    for a, b in zip(with_, without, strict=True):
        assert a.history == b.history and (a.val_acc, a.test_acc) == (b.val_acc, b.test_acc)
        assert list(a.checkpoints) == [1, 2, 3] and b.checkpoints == {}
