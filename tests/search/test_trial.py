"""nasproxy.search.trial: a diverging unit, fused against plain training (float64 exact,
float32 through Ray), a failing stack split down, a stack cut to its GPU memory share, the
test split for whole-split units only, the warm-up timed apart."""

from __future__ import annotations

import math
import time
import types
from collections import Counter

import numpy as np
import pytest
import torch

import nasproxy.train as train_module
from nasproxy import results, spaces
from nasproxy.multitrain import lockstep, stack_memory_bytes
from nasproxy.search import resolve_train_sets, run_search, trial
from nasproxy.train import TrainConfig, train
from tests.search.conftest import SMALL, _accuracy_table, _config, _shape


def test_a_diverging_unit_is_a_row_not_a_crash(cluster, inputs, tmp_path):
    cfg = _config(
        inputs,
        tmp_path,
        "diverge",
        proxies=(str(inputs["proxies"][0]),),
        whole=False,
        archs=("w8-d1-relu-none-maxpooling",),
        train=TrainConfig(epochs=1, lr=1e6, batch_size=10),  # 10 steps: one is not enough
    )
    table = results.read_trials(run_search(cfg))
    assert len(table) == 1
    row = table.iloc[0]
    assert row["status"] == "diverged" and "non-finite" in row["reason"]
    assert math.isnan(row["val_acc"]) and math.isnan(row["test_acc"])


# every norm x pooling type, two activations: 30 one-block ConvNets of width 8
EVERY_NORM_AND_POOL = """name: every-norm-pool
options:
  width: [8]
  depth: [1]
  act: [relu, sigmoid]
  norm: [none, batchnorm, layernorm, instancenorm, groupnorm]
  pool: [none, maxpooling, avgpooling]
"""


@pytest.fixture(scope="module")
def norm_pool_space(inputs):
    path = inputs["root"] / "every-norm-pool.yaml"
    path.write_text(EVERY_NORM_AND_POOL)
    return str(path)


# every norm, every pooling, both activations; one shape with both (a stack of 8)
F64_SLICE = (
    "w8-d1-*-none-none",
    "w8-d1-relu-batchnorm-maxpooling",
    "w8-d1-sigmoid-layernorm-avgpooling",
    "w8-d1-relu-instancenorm-none",
    "w8-d1-sigmoid-groupnorm-maxpooling",
)


def _stack_sizes(table, units_per_arch: int):
    """The stack each row should have trained in: every unit of its shape (no bound hit)."""
    archs = table.index.get_level_values("arch")
    shapes = [_shape(a) for a in archs]
    per_shape = Counter(_shape(a) for a in archs.unique())
    return np.array([per_shape[s] * units_per_arch for s in shapes])


def test_fused_and_plain_sweeps_agree_exactly_in_float64(inputs, digits, norm_pool_space, tmp_path):
    """Every norm and pooling type (a stratified sample of 6 covers them), two activations,
    2 proxies x 2 seeds: the stacked sweep
    (stacks of 4) gives the plain sweep's table, accuracies to 1e-9 (float64, exact rng)."""
    old = torch.get_default_dtype()  # models and normalize() follow it: float64 below
    torch.set_default_dtype(torch.float64)
    try:
        tables = {}
        for fuse in (False, True):
            cfg = _config(
                inputs, tmp_path, f"f64-{fuse}", space=norm_pool_space, whole=False,
                seeds=(0, 1), archs=F64_SLICE, trial_size=8, runner="local",
                fuse="on" if fuse else "off",
            )  # fmt: skip
            tables[fuse] = _accuracy_table(run_search(cfg))
    finally:
        torch.set_default_dtype(old)
    plain, fused = tables[False], tables[True]
    assert len(plain) == len(fused) == 6 * 2 * 2
    archs = [spaces.Arch.from_id(a) for a in plain.index.get_level_values("arch").unique()]
    assert {a.norm for a in archs} == set(spaces.NORMS)
    assert {a.pool for a in archs} == set(spaces.POOLINGS) and len({a.act for a in archs}) == 2
    assert plain.index.equals(fused.index)
    assert (plain["status"] == "ok").all() and (fused["status"] == "ok").all()
    assert (plain["stack_size"] == 1).all() and (plain["trainer"] == "plain").all()
    assert (fused["stack_size"] == _stack_sizes(fused, 2 * 2)).all()
    assert fused["stack_size"].max() == 8  # one shape stacks both activations
    assert fused["trainer"].str.startswith("stacked").all()
    assert (fused["fallback"] == "").all()
    assert np.abs(plain["val_acc"] - fused["val_acc"]).max() <= 1e-9
    assert plain["test_acc"].isna().all() and fused["test_acc"].isna().all()  # proxy units
    assert np.allclose(plain["train_loss"], fused["train_loss"], rtol=1e-9, atol=0)
    assert (plain["images_seen"] == fused["images_seen"]).all()


@pytest.mark.slow
def test_fused_and_plain_sweeps_agree_in_float32_through_ray(
    cluster, inputs, digits, norm_pool_space, tmp_path
):
    """run_search itself, Ray included: --fuse on vs off on a stratified slice that covers
    every norm and pooling type and both activations; float32 rounding may move a
    borderline example, so accuracies agree within a few validation images."""
    tables = {}
    for fuse in ("off", "on"):
        cfg = _config(
            inputs, tmp_path, f"f32-{fuse}", space=norm_pool_space, whole=False, seeds=(0, 1),
            sample=6, fuse=fuse, trial_size=8,
        )  # fmt: skip
        tables[fuse] = _accuracy_table(run_search(cfg))
        manifest = results.read_manifest(cfg.exp_dir)
        assert manifest["runs"][-1]["fuse"] is (fuse == "on")
    plain, fused = tables["off"], tables["on"]
    assert len(plain) == len(fused) == 6 * 2 * 2 and plain.index.equals(fused.index)
    archs = [spaces.Arch.from_id(a) for a in plain.index.get_level_values("arch").unique()]
    assert {a.norm for a in archs} == set(spaces.NORMS) and {a.pool for a in archs} == set(
        spaces.POOLINGS
    )
    assert len({a.act for a in archs}) == 2
    assert (fused["stack_size"] == _stack_sizes(fused, 2 * 2)).all()
    assert (plain["stack_size"] == 1).all()
    assert np.abs(plain["val_acc"] - fused["val_acc"]).max() <= 3 / len(digits.y_val)
    assert plain["test_acc"].isna().all() and fused["test_acc"].isna().all()  # proxy units


def test_an_injected_stack_failure_is_split_down_and_recorded(
    inputs, digits, monkeypatch, tmp_path
):
    """Every stack holding one architecture fails (as out of memory would): it splits in
    halves down to the plain trainer for that architecture, the rows say why, and the
    other shape trains as one stack."""
    victim = "w8-d1-sigmoid-batchnorm-maxpooling"
    real = lockstep._train_stack
    attempts: list[int] = []

    def failing(archs, data, index_sets, cfgs, *rest):
        if victim in [a.id for a in archs]:
            attempts.append(len(cfgs))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(archs, data, index_sets, cfgs, *rest)

    monkeypatch.setattr(lockstep, "_train_stack", failing)
    cfg = _config(
        inputs, tmp_path, "injected", whole=False, seeds=(0, 1), runner="local", fuse="on"
    )
    table = _accuracy_table(run_search(cfg))
    # the batchnorm shape: 3 activations x 2 proxies x 2 seeds = 12, the victim's 4 first
    # (sigmoid sorts first): 12 -> 6 -> 3 -> (1 plain) + 2 -> (1 plain) + (1 plain); the
    # 3 -> (1 plain) + 2 more: every stack still holding the victim fails
    assert attempts[0] == 12 and all(n >= 2 for n in attempts)
    assert len(table) == 6 * 2 * 2 and (table["status"] == "ok").all()
    archs = table.index.get_level_values("arch")
    hit = archs == victim
    assert (table.loc[hit, "trainer"] == "plain").all() and (
        table.loc[hit, "stack_size"] == 1
    ).all()
    assert table.loc[hit, "fallback"].str.contains("out of memory: CUDA out of memory").all()
    same_shape = np.array([_shape(a) == _shape(victim) for a in archs]) & ~hit
    assert (table.loc[same_shape, "stack_size"] < 12).all()  # sent down with the victim
    assert table.loc[same_shape, "fallback"].str.contains("out of memory").all()
    other = ~(same_shape | hit)
    assert (table.loc[other, "stack_size"] == 12).all() and (
        table.loc[other, "fallback"] == ""
    ).all()
    # the fallen-back units are what train() gives on their own
    indices = resolve_train_sets(cfg.proxies, False, digits)[1].indices
    again = train(victim, digits, indices, TrainConfig(epochs=1, seed=1, device="cpu"))
    assert table.loc[("herding", 1, victim), "val_acc"] == again.val_acc


def test_a_gpu_trial_cuts_a_stack_to_its_memory_share(digits, monkeypatch):
    """The memory bound: pieces as even as possible, none above what the estimate fits
    into MEMORY_FRACTION of the trial's share of the GPU (brute force over sizes)."""
    arch = spaces.Arch.from_id("w128-d3-relu-batchnorm-maxpooling")
    one = stack_memory_bytes(arch, digits, 1, 100, 128)
    per_model = stack_memory_bytes(arch, digits, 2, 100, 128) - one
    total = int((one + 2.5 * per_model) / (0.5 * trial.MEMORY_FRACTION))  # 3 fit in a half
    props = types.SimpleNamespace(total_memory=total)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    keys = [results.UnitKey("p", seed, arch.id) for seed in range(8)]
    plan = trial.TrialPlan(
        exp_dir="unused", chunks={}, indices={"p": np.arange(100)}, hashes={"p": ""},
        train=TrainConfig(epochs=1), threads=1, run=1, fuse=True, gpu_share=0.5,
    )  # fmt: skip
    pieces = trial._fit_memory(plan, digits, keys, "cuda")
    budget = int(total * 0.5 * trial.MEMORY_FRACTION)
    fits = max(m for m in range(1, 9) if stack_memory_bytes(arch, digits, m, 100, 128) <= budget)
    assert fits == 3 and [len(p) for p in pieces] == [3, 2, 3]
    assert [k for p in pieces for k in p] == keys
    assert trial._fit_memory(plan, digits, keys, "cpu") == [keys]  # no bound off the GPU


@pytest.mark.parametrize("fuse", ["off", "on"])
def test_proxy_units_skip_the_test_split_and_one_unit_holds_the_warm_up(
    inputs, monkeypatch, tmp_path, fuse
):
    """Two proxies and the whole split, in this process: a proxy unit has no test
    accuracy (nothing reads it), every whole-split unit has one; the process's warm-up
    (a fake one that moves the trainers' clock by 1000 s) is the first unit's warmup_s
    and in no unit's wall_s."""
    offset = [0.0]
    clock = types.SimpleNamespace(perf_counter=lambda: time.perf_counter() + offset[0])
    monkeypatch.setattr(train_module, "time", clock)
    monkeypatch.setattr(lockstep, "time", clock)

    def warm(data, device):
        offset[0] += 1000.0

    monkeypatch.setattr(train_module, "_warm_up_work", warm)
    monkeypatch.setattr(train_module, "_warm_devices", set())
    cfg = _config(inputs, tmp_path, f"lean-{fuse}", archs=(SMALL,), runner="local", fuse=fuse)
    table = results.read_trials(run_search(cfg))
    assert len(table) == 3 * 3 and (table["status"] == "ok").all()
    whole = table["train_set"] == results.WHOLE
    assert table.loc[~whole, "test_acc"].isna().all()
    assert table.loc[whole, "test_acc"].between(0, 1).all()
    assert table.loc[whole, "val_acc"].notna().all() and table.loc[~whole, "val_acc"].notna().all()
    warmed = table["warmup_s"] >= 1000
    assert warmed.sum() == 1 and (table.loc[~warmed, "warmup_s"] == 0).all()
    assert table["wall_s"].between(0, 1000, inclusive="neither").all()


@pytest.mark.slow
def test_a_fused_sweep_of_cells_trains_them_plainly_and_records_why(inputs, tmp_path):
    """Cells do not stack: a fused sweep trains each unit with the plain trainer, so its
    accuracies are the unfused sweep's, and every unit record says why (two proxies, two
    seeds: the same cell could have stacked four times)."""
    cell = "sk-no.sk-no.ap.sk"
    tables = {}
    for fuse in ("off", "on"):
        cfg = _config(
            inputs, tmp_path, f"cells-{fuse}", space="nb201", archs=(cell,), runner="local",
            fuse=fuse, seeds=(0, 1), whole=False,
        )  # fmt: skip
        tables[fuse] = _accuracy_table(run_search(cfg))
    on, off = tables["on"], tables["off"]
    assert len(on) == len(off) == 2 * 2 and (on["status"] == "ok").all()
    assert (off["fallback"] == "").all()
    assert on["fallback"].str.contains("NAS-Bench-201 cell").all()
    assert (on["trainer"] == "plain").all() and (on["stack_size"] == 1).all()
    assert on["val_acc"].tolist() == off["val_acc"].tolist()
    fields = on[["width", "depth", "act", "norm", "pool"]].drop_duplicates()
    assert fields.values.tolist() == [[16, 5, "relu", "batchnorm", "global"]]


def test_a_cells_row_holds_its_skeleton_in_the_convnet_columns():
    record = train_module.TrainRecord("c3-no.c3-sk.c3.ap", "ok", "", 0, 1, 10)
    row = trial.make_row(spaces.parse_arch(record.arch), "whole", "", record)
    assert {k: row[k] for k in ("arch", *spaces.FIELDS)} == {
        "arch": "c3-no.c3-sk.c3.ap", "width": 16, "depth": 5, "act": "relu",
        "norm": "batchnorm", "pool": "global",
    }  # fmt: skip
    assert set(row) == set(results.COLUMNS)


def test_a_gpu_trial_leaves_a_stack_of_cells_whole(digits, monkeypatch):
    """Cells train one by one with the plain trainer: no memory bound applies."""
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: 1 / 0)
    keys = [results.UnitKey("p", seed, "c3-no.c3-sk.c3.ap") for seed in range(4)]
    plan = trial.TrialPlan(
        exp_dir="unused", chunks={}, indices={"p": np.arange(100)}, hashes={"p": ""},
        train=TrainConfig(epochs=1), threads=1, run=1, fuse=True, gpu_share=0.5,
    )  # fmt: skip
    assert trial._fit_memory(plan, digits, keys, "cuda") == [keys]
