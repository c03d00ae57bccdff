"""The sweep on Ray Tune: rows, resume after a hard kill, refusals, divergence, selection."""

from __future__ import annotations

import fnmatch
import json
import logging
import math
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nasproxy import results, spaces
from nasproxy.errors import NasproxyError
from nasproxy.proxies.build import selection_hash
from nasproxy.search import (
    SearchConfig,
    plan_chunks,
    plan_stacks,
    plan_trials,
    resolve_train_sets,
    run_search,
    select_archs,
    stratified_sample,
)
from nasproxy.spaces import FIELDS
from nasproxy.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[2]
# six one-block ConvNets of width 8: a whole-split epoch on digits takes about a second
TINY_SPACE = """name: tiny6
options:
  width: [8]
  depth: [1]
  act: [relu, leakyrelu, sigmoid]
  norm: [none, batchnorm]
  pool: [maxpooling]
"""


@pytest.fixture(scope="module")
def cluster():
    """One small local Ray for the module (starting one costs seconds)."""
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    ray.init(
        address="local",
        num_cpus=2,
        num_gpus=0,
        include_dashboard=False,
        log_to_driver=False,
        logging_level=logging.ERROR,
    )
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, digits):
    """A tiny space file and two proxy files of 10 random images per class."""
    root = tmp_path_factory.mktemp("inputs")
    space = root / "tiny6.yaml"
    space.write_text(TINY_SPACE)
    labels = digits.y_train.numpy()
    proxies = []
    for method, seed in (("random", 0), ("herding", 1)):
        rng = np.random.default_rng(seed)
        indices = {
            name: sorted(int(i) for i in rng.choice(np.flatnonzero(labels == c), 10, False))
            for c, name in enumerate(digits.classes)
        }
        path = root / f"{method}.json"
        path.write_text(json.dumps(_proxy(method, digits.fingerprint, indices, epsilon=0.5)))
        proxies.append(path)
    return {"space": str(space), "proxies": proxies, "root": root}


def _proxy(method: str, fingerprint: str, indices: dict, epsilon: float | None = None) -> dict:
    return {
        "format": "nasproxy-proxy/1",
        "method": method,
        "per_class": 10,
        "seed": 0,
        "params": {},
        "dataset": "digits",
        "fingerprint": fingerprint,
        "indices": indices,
        "n_images": sum(len(v) for v in indices.values()),
        "epsilon": epsilon,
    }


def _config(inputs, results_dir: Path, name: str, **changes) -> SearchConfig:
    cfg = SearchConfig(
        name=name,
        dataset="digits",
        proxies=tuple(str(p) for p in inputs["proxies"]),
        whole=True,
        space=inputs["space"],
        train=TrainConfig(epochs=1),
        results_dir=str(results_dir),
        trial_size=4,
    )
    return replace(cfg, **changes)


def _units(exp_dir: Path) -> dict[Path, str]:
    return {p: p.read_text() for p in sorted((exp_dir / "units").glob("*/s*/*.json"))}


def test_sweep_trains_every_unit_once_with_sane_rows(cluster, inputs, digits, tmp_path):
    events = []
    exp_dir = run_search(_config(inputs, tmp_path, "sweep"), progress=events.append)

    table = results.read_trials(exp_dir)
    manifest = results.read_manifest(exp_dir)
    assert list(table.columns) == list(results.COLUMNS)
    assert len(table) == 18  # 6 archs x (2 proxies + whole) x 1 seed
    assert not table.duplicated(["arch", "train_set", "seed"]).any()
    assert set(table["train_set"]) == {"random", "herding", "whole"}
    assert Counter(table["train_set"]) == {"random": 6, "herding": 6, "whole": 6}
    assert (table["status"] == "ok").all() and (table["reason"] == "").all()
    for column in ("val_acc", "test_acc"):
        assert table[column].between(0, 1).all()
    assert np.isfinite(table["train_loss"]).all() and (table["wall_s"] > 0).all()
    n_train = table.set_index("train_set")["n_train"].groupby(level=0).unique()
    assert {k: list(v) for k, v in n_train.items()} == {
        "random": [100],
        "herding": [100],
        "whole": [len(digits.y_train)],
    }
    assert (table["images_seen"] == table["n_train"]).all()  # one epoch, no batch dropped
    for path in inputs["proxies"]:
        digest = selection_hash(json.loads(path.read_text()))
        method = path.stem
        assert set(table.loc[table["train_set"] == method, "proxy_hash"]) == {digest}
        assert manifest["train_sets"][method]["proxy_hash"] == digest
    assert set(table.loc[table["train_set"] == "whole", "proxy_hash"]) == {""}
    arch_fields = table["arch"].map(lambda a: spaces.Arch.from_id(a))
    assert (table["width"] == arch_fields.map(lambda a: a.width)).all()

    assert manifest["fingerprint"] == digits.fingerprint
    assert manifest["archs"] == spaces.load(inputs["space"]).ids
    assert manifest["train_sets"]["random"]["bytes"] == 100 * 1 * 32 * 32
    assert manifest["train_sets"]["random"]["epsilon"] == 0.5
    assert manifest["train_sets"]["whole"]["n_images"] == len(digits.y_train)
    assert manifest["protocol"]["epochs"] == 1 and manifest["protocol"]["seeds"] == [0]
    assert manifest["git_commit"] and manifest["sweep_wall_s"] > 0
    assert [e.row is not None for e in events].count(True) == 18
    assert events[-1].done == events[-1].total == 18

    # independent truth: the same unit retrained here gives the same numbers
    import torch

    torch.set_num_threads(1)
    indices = np.sort(
        np.concatenate(
            [
                np.asarray(v)
                for v in json.loads(inputs["proxies"][0].read_text())["indices"].values()
            ]
        )
    )
    arch = "w8-d1-relu-batchnorm-maxpooling"
    again = train(arch, digits, indices, TrainConfig(epochs=1, seed=0, device="cpu"))
    row = table[(table["arch"] == arch) & (table["train_set"] == "random")].iloc[0]
    assert row["val_acc"] == pytest.approx(again.val_acc)
    assert row["train_loss"] == pytest.approx(again.train_loss, rel=1e-5)

    # the same name with another protocol is refused, naming the difference
    with pytest.raises(NasproxyError, match="epochs 1, this run asks for 2"):
        run_search(_config(inputs, tmp_path, "sweep", train=TrainConfig(epochs=2)))
    with pytest.raises(NasproxyError, match="training sets"):
        run_search(_config(inputs, tmp_path, "sweep", whole=False))
    assert results.read_manifest(exp_dir)["protocol"]["epochs"] == 1


@pytest.mark.slow
@pytest.mark.parametrize("fuse", ["off", "on"])
def test_hard_kill_then_resume_runs_every_unit_exactly_once(cluster, inputs, tmp_path, fuse):
    """kill -9 of the driver mid-sweep (fused: mid-stack, the proxies of an architecture
    training as one stack of 2), then resume: no unit lost, none trained twice."""
    name = f"killed-{fuse}"
    exp_dir = tmp_path / name
    command = [
        sys.executable, "-m", "nasproxy.cli", "search",
        "--dataset", "digits", "--space", inputs["space"],
        "--proxy", str(inputs["proxies"][0]), "--proxy", str(inputs["proxies"][1]), "--whole",
        "--epochs", "1", "--name", name, "--results-dir", str(tmp_path),
        "--trial-size", "2", "--address", cluster, "--fuse", fuse,
    ]  # fmt: skip
    proc = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 240
    while not _units(exp_dir) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    stderr = proc.communicate()[1].decode()
    before = _units(exp_dir)
    assert 0 < len(before) < 18, stderr
    time.sleep(1.0)  # let Ray stop the dead driver's workers
    before = _units(exp_dir)

    events = []
    run_search(_config(inputs, tmp_path, name, trial_size=2, fuse=fuse), progress=events.append)
    after = _units(exp_dir)
    table = results.read_trials(exp_dir)
    assert len(table) == 18 and not table.duplicated(["arch", "train_set", "seed"]).any()
    assert len(after) == 18 and (table["status"] == "ok").all()
    assert all(after[p] == text for p, text in before.items())  # finished units not re-run
    trained = [e.row for e in events if e.row is not None]
    assert len(trained) == 18 - len(before)
    whole = table["train_set"] == "whole"
    if fuse == "on":  # a shape has 3 activations: stacks of 2 proxies x 3, whole: 3 (or
        # fewer, where a stack was partly stored)
        assert table.loc[~whole, "stack_size"].max() <= 6 and table["stack_size"].max() > 1
        assert table.loc[whole, "stack_size"].max() <= 3
        assert table["trainer"].str.startswith("stacked").all()
    else:
        assert (table["stack_size"] == 1).all() and (table["trainer"] == "plain").all()

    # a third run has nothing to do: no trial, no file touched
    events = []
    runs_before = sorted((exp_dir / "ray").iterdir())
    run_search(_config(inputs, tmp_path, name, fuse=fuse), progress=events.append)
    assert [e.row for e in events if e.row is not None] == []
    assert _units(exp_dir) == after and sorted((exp_dir / "ray").iterdir()) == runs_before

    # a torn unit file counts as missing: exactly that unit runs again
    victim = sorted(after)[5]
    victim.write_text(after[victim][: len(after[victim]) // 3])
    events = []
    run_search(_config(inputs, tmp_path, name, fuse=fuse), progress=events.append)
    rows = [e.row for e in events if e.row is not None]
    assert len(rows) == 1 and results.unit_path(exp_dir, results.row_key(rows[0])) == victim
    assert len(results.read_trials(exp_dir)) == 18


@pytest.mark.slow
def test_cifar_sized_data_reaches_the_trials(cluster, inputs, cifar, cache_root, tmp_path):
    """Real CIFAR-10 (JPEG copy): the ~180 MB dataset goes to the trials through Ray."""
    from tests.conftest import cifar_source

    labels = cifar.y_train.numpy()
    rng = np.random.default_rng(0)
    indices = {
        name: sorted(int(i) for i in rng.choice(np.flatnonzero(labels == c), 10, False))
        for c, name in enumerate(cifar.classes)
    }
    proxy = tmp_path / "random.json"
    proxy.write_text(json.dumps(_proxy("random", cifar.fingerprint, indices)))
    cfg = _config(
        inputs,
        tmp_path,
        "cifar",
        dataset=f"imagefolder:{cifar_source()}",
        data_root=str(cache_root),
        proxies=(str(proxy),),
        whole=False,
        archs=("w8-d1-relu-*",),
    )
    exp_dir = run_search(cfg)
    table = results.read_trials(exp_dir)
    assert len(table) == 2 and (table["status"] == "ok").all()
    assert (table["n_train"] == 100).all() and table["test_acc"].between(0, 1).all()
    manifest = results.read_manifest(exp_dir)
    assert manifest["fingerprint"] == cifar.fingerprint
    assert manifest["train_sets"]["random"]["bytes"] == 100 * 3 * 32 * 32


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


def test_bad_inputs_are_refused_before_anything_runs(inputs, digits, tmp_path):
    root = inputs["root"]
    indices = json.loads(inputs["proxies"][0].read_text())["indices"]
    foreign = root / "foreign.json"
    foreign.write_text(json.dumps(_proxy("random", "0123456789abcdef", indices)))
    out_of_range = root / "range.json"
    out_of_range.write_text(
        json.dumps(_proxy("random", digits.fingerprint, {**indices, "3": [len(digits.y_train)]}))
    )
    wrong_class = root / "wrong.json"
    first_of_class_1 = int(np.flatnonzero(digits.y_train.numpy() == 1)[0])
    wrong_class.write_text(
        json.dumps(_proxy("random", digits.fingerprint, {"0": [first_of_class_1]}))
    )
    not_json = root / "broken.json"
    not_json.write_text('{"format": "nasproxy-proxy/1", "indices": ')
    cases = [
        ({"proxies": (str(foreign),)}, "fingerprint 0123456789abcdef"),
        ({"proxies": (str(out_of_range),)}, "outside the train split"),
        ({"proxies": (str(wrong_class),)}, "is not of class '0'"),
        ({"proxies": (str(not_json),)}, "not valid JSON"),
        ({"proxies": (str(root / "absent.json"),)}, "cannot read"),
        ({"space": "no-such-space"}, "unknown space"),
        ({"archs": ("w999-*",)}, "matches no architecture"),
    ]
    for changes, message in cases:
        cfg = _config(inputs, tmp_path, "refused", **changes)
        with pytest.raises(NasproxyError, match=re.escape(message)):
            run_search(cfg)
        assert not (tmp_path / "refused").exists()


def test_train_set_names_disambiguate_and_refuse_clashes(inputs, digits, tmp_path):
    indices = json.loads(inputs["proxies"][0].read_text())["indices"]
    half = {k: v[:5] for k, v in indices.items()}
    a = tmp_path / "influence-small.json"
    b = tmp_path / "influence-large.json"
    a.write_text(json.dumps(_proxy("influence", digits.fingerprint, half)))
    b.write_text(json.dumps(_proxy("influence", digits.fingerprint, indices)))
    sets = resolve_train_sets([str(a), str(b)], True, digits)
    assert [s.name for s in sets] == ["influence-small", "influence-large", "whole"]
    assert [s.n_images for s in sets] == [50, 100, len(digits.y_train)]
    named = resolve_train_sets([f"mine={a}", str(b)], False, digits)
    assert [s.name for s in named] == ["mine", "influence-large"]

    other = tmp_path / "other"
    other.mkdir()
    (other / a.name).write_text(json.dumps(_proxy("influence", digits.fingerprint, indices)))
    with pytest.raises(NasproxyError, match="would be named"):
        resolve_train_sets([str(a), str(other / a.name)], False, digits)
    with pytest.raises(NasproxyError, match="select the same images"):
        resolve_train_sets([str(a), str(a)], False, digits)
    c = tmp_path / "c.json"
    c.write_text(json.dumps(_proxy("whole", digits.fingerprint, half)))
    with pytest.raises(NasproxyError, match="'whole'"):
        resolve_train_sets([str(c)], True, digits)


def test_arch_patterns_match_like_brute_force():
    space = spaces.load("convnet720")
    globbed = select_archs(space, ["w32-d1-*-batchnorm-*", "*-sigmoid-none-none"])
    expected = [
        a
        for a in space
        if fnmatch.fnmatchcase(a.id, "w32-d1-*-batchnorm-*")
        or fnmatch.fnmatchcase(a.id, "*-sigmoid-none-none")
    ]
    assert globbed == expected and len(expected) == 3 * 3 + 16
    regexed = select_archs(space, [r"re:w(32|64)-d[12]-relu-.*-maxpooling"])
    assert regexed == [
        a
        for a in space
        if a.width in (32, 64) and a.depth in (1, 2) and a.act == "relu" and a.pool == "maxpooling"
    ]
    with pytest.raises(NasproxyError, match="bad regular expression"):
        select_archs(space, ["re:w(32"])
    assert len(select_archs(space, ["re:w32.*"])) == 180
    with pytest.raises(NasproxyError, match="matches no architecture"):
        select_archs(space, ["re:w32"])  # a pattern must match the whole id


@pytest.mark.parametrize("n", [1, 7, 24, 100, 260, 540, 719])
def test_stratified_sample_balances_every_field(n):
    space = spaces.load("convnet720")
    for seed in (0, 1):
        sample = stratified_sample(list(space), n, seed)
        assert len(sample) == len(set(sample)) == n
        assert sample == [a for a in space if a in set(sample)]  # space order
        for name in FIELDS:
            options = {getattr(a, name) for a in space}
            counts = Counter(getattr(a, name) for a in sample)
            spread = [counts.get(v, 0) for v in options]
            assert max(spread) - min(spread) <= 1, (seed, name, spread)
    assert stratified_sample(list(space), n, 3) == stratified_sample(list(space), n, 3)
    if 1 < n < 700:
        assert stratified_sample(list(space), n, 3) != stratified_sample(list(space), n, 4)
    assert stratified_sample(list(space), 800, 0) == list(space)


def test_chunks_cover_each_unit_once_within_one_training_set():
    archs = spaces.load("convnet720")[:40]
    pending = [(ts, seed, a.id) for ts in ("p", "whole") for seed in (0, 1) for a in archs]
    cost = {a.id: a.macs(3, 10, 32) for a in archs}
    sizes = {"p": 1000, "whole": 45000}
    chunks = plan_trials(
        pending, sizes, False, 64, trial_size=16, slots=4, cost=lambda k: cost[k[2]]
    )
    assert sorted(k for c in chunks for k in c.units) == sorted(pending)
    assert all(len(stack) == 1 for c in chunks for stack in c.stacks)  # not fused
    assert all(1 <= len(c.units) <= 16 and len({k[0] for k in c.units}) == 1 for c in chunks)
    assert len({c.id for c in chunks}) == len(chunks)
    assert len(chunks) == 2 * math.ceil(80 / 16)
    # few units: spread over every slot rather than one big chunk
    few = plan_trials(pending[:6], sizes, False, 64, 16, 4, lambda k: cost[k[2]])
    assert [len(c.units) for c in few] == [2, 2, 2]


def _shape(arch_id: str) -> tuple:
    a = spaces.Arch.from_id(arch_id)
    return (a.width, a.depth, a.norm, a.pool)


def _brute_force_groups(pending, sizes):
    """Units that may share a stack: one shape (all but the activation), one set size."""
    groups: dict[tuple, set] = {}
    for key in pending:
        groups.setdefault((_shape(key[2]), sizes[key[0]]), set()).add(key)
    return groups


@pytest.mark.parametrize("max_stack", [1, 2, 3, 5, 64])
def test_stacks_partition_pending_units_into_compatible_groups(max_stack):
    archs = [a.id for a in spaces.load("convnet720")[:7]]  # 3 activations of some shapes
    sizes = {"influence": 1000, "random": 1000, "herding": 1000, "small": 500, "whole": 45000}
    all_keys = [(ts, seed, a) for ts in sizes for seed in (0, 1, 2) for a in archs]
    rng = np.random.default_rng(max_stack)
    stored = {k for k in all_keys if rng.random() < 0.3}  # partly stored stacks
    pending = [k for k in all_keys if k not in stored]
    stacks = plan_stacks(pending, sizes, max_stack)
    flat = [k for stack in stacks for k in stack]
    assert sorted(flat) == sorted(pending) and len(flat) == len(set(flat))  # each once
    assert not stored & set(flat)  # a stored unit never trains again
    groups = _brute_force_groups(pending, sizes)
    for stack in stacks:
        assert 1 <= len(stack) <= max_stack
        assert len({(_shape(k[2]), sizes[k[0]]) for k in stack}) == 1  # lockstep-compatible
    for members in groups.values():  # as few stacks as the bound allows, even in size
        mine = [st for st in stacks if st[0] in members]
        assert len(mine) == math.ceil(len(members) / max_stack)
        assert max(map(len, mine)) - min(map(len, mine)) <= 1
    # the proxies of 1,000 images stack together, the 500-image one and whole apart
    if max_stack >= 9:
        assert any({k[0] for k in st} == {"influence", "random", "herding"} for st in stacks)
    # chunks: every stack whole in exactly one chunk, about trial_size units each
    cost = dict.fromkeys(archs, 1.0)
    chunks = plan_chunks(stacks, 8, 3, lambda k: cost[k[2]] * sizes[k[0]])
    assert sorted(st for c in chunks for st in c.stacks) == sorted(stacks)
    assert all(len(c.stacks) == 1 or len(c.units) <= 8 for c in chunks)


def test_a_partly_stored_stack_schedules_only_its_missing_units():
    arch = "w32-d1-relu-none-none"
    sizes = {"a": 1000, "b": 1000, "whole": 45000}
    all_keys = [(ts, seed, arch) for ts in sizes for seed in (0, 1)]
    stored = {("a", 0, arch), ("b", 1, arch), ("whole", 0, arch)}
    pending = [k for k in all_keys if k not in stored]
    chunks = plan_trials(pending, sizes, True, 64, 16, 1, lambda k: 1.0)
    stacks = sorted(st for c in chunks for st in c.stacks)
    assert stacks == [(("a", 1, arch), ("b", 0, arch)), (("whole", 1, arch),)]


def test_whole_subset_is_class_balanced_and_seeded(digits):
    sets = resolve_train_sets((), True, digits, whole_per_class=7, whole_seed=3)
    (whole,) = sets
    labels = digits.y_train.numpy()[whole.indices]
    assert whole.name == "whole" and whole.n_images == 70
    assert np.bincount(labels, minlength=10).tolist() == [7] * 10
    again = resolve_train_sets((), True, digits, whole_per_class=7, whole_seed=3)[0]
    other = resolve_train_sets((), True, digits, whole_per_class=7, whole_seed=4)[0]
    assert np.array_equal(whole.indices, again.indices)
    assert not np.array_equal(whole.indices, other.indices)
    assert resolve_train_sets((), True, digits)[0].indices is None
    with pytest.raises(NasproxyError, match="exceeds class"):
        resolve_train_sets((), True, digits, whole_per_class=10_000)


# --- the fused sweep ---------------------------------------------------------------------

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


def _accuracy_table(exp_dir: Path):
    return results.read_trials(exp_dir).set_index(["train_set", "seed", "arch"]).sort_index()


def test_fused_and_plain_sweeps_agree_exactly_in_float64(inputs, digits, norm_pool_space, tmp_path):
    """Every norm and pooling type (a stratified sample of 6 covers them), two activations,
    2 proxies x 2 seeds: the stacked sweep
    (stacks of 4) gives the plain sweep's table, accuracies to 1e-9 (float64, exact rng)."""
    import torch

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
    for column in ("val_acc", "test_acc"):
        assert np.abs(plain[column] - fused[column]).max() <= 1e-9
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
    assert np.abs(plain["test_acc"] - fused["test_acc"]).max() <= 3 / len(digits.y_test)


def test_an_injected_stack_failure_is_split_down_and_recorded(
    inputs, digits, monkeypatch, tmp_path
):
    """Every stack holding one architecture fails (as out of memory would): it splits in
    halves down to the plain trainer for that architecture, the rows say why, and the
    other shape trains as one stack."""
    import torch

    from nasproxy import multitrain

    victim = "w8-d1-sigmoid-batchnorm-maxpooling"
    real = multitrain._train_stack
    attempts: list[int] = []

    def failing(archs, data, index_sets, cfgs, options):
        if victim in [a.id for a in archs]:
            attempts.append(len(cfgs))
            raise torch.OutOfMemoryError("CUDA out of memory (injected)")
        return real(archs, data, index_sets, cfgs, options)

    monkeypatch.setattr(multitrain, "_train_stack", failing)
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


def test_fast_options_take_the_device_defaults_and_the_cli_flags(monkeypatch, inputs, tmp_path):
    from nasproxy import cli, search
    from nasproxy.search import FAST_DEFAULTS, FastChoice

    assert FastChoice().resolve("cpu") == FAST_DEFAULTS["cpu"]
    cuda = FastChoice(bf16=True).resolve("cuda")
    assert cuda.bf16 and cuda.cuda_graphs == FAST_DEFAULTS["cuda"].cuda_graphs
    assert not FastChoice(cuda_graphs=True).resolve("cpu").cuda_graphs  # graphs need CUDA
    with pytest.raises(NasproxyError, match="rng mode"):
        FastChoice(rng="bogus")
    with pytest.raises(NasproxyError, match="--fuse"):
        SearchConfig(name="x", whole=True, fuse="maybe")
    with pytest.raises(NasproxyError, match="max stack"):
        SearchConfig(name="x", whole=True, max_stack=0)

    seen = []
    monkeypatch.setattr(search, "run_search", lambda cfg, progress=None: seen.append(cfg))
    monkeypatch.setattr(cli, "_refuse_failed_units", lambda exp_dir: None)  # no sweep ran
    args = ["search", "--whole", "--name", "flags", "--results-dir", str(tmp_path)]
    assert cli.main([*args, "--fuse", "on", "--max-stack", "8", "--rng", "shared",
                     "--bf16", "--no-cuda-graphs"]) == 0  # fmt: skip
    assert cli.main(args) == 0
    on, default = seen
    assert (on.fuse, on.max_stack) == ("on", 8)
    assert on.fast == FastChoice(rng="shared", bf16=True, channels_last=None, cuda_graphs=False)
    assert (default.fuse, default.max_stack, default.fast) == ("auto", None, FastChoice())


def test_a_gpu_trial_cuts_a_stack_to_its_memory_share(digits, monkeypatch):
    """The memory bound: pieces as even as possible, none above what the estimate fits
    into MEMORY_FRACTION of the trial's share of the GPU (brute force over sizes)."""
    import types

    import torch

    from nasproxy.multitrain import stack_memory_bytes
    from nasproxy.search import trial

    arch = spaces.Arch.from_id("w128-d3-relu-batchnorm-maxpooling")
    one = stack_memory_bytes(arch, digits, 1, 100, 128)
    per_model = stack_memory_bytes(arch, digits, 2, 100, 128) - one
    total = int((one + 2.5 * per_model) / (0.5 * trial.MEMORY_FRACTION))  # 3 fit in a half
    props = types.SimpleNamespace(total_memory=total)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda device: props)
    keys = [("p", seed, arch.id) for seed in range(8)]
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


def test_the_eta_follows_the_planner_cost_model_not_the_unit_count(tmp_path, monkeypatch):
    """The costliest units run first: one whole-split unit done in 100 s leaves ten units of
    a hundredth of its cost, about 10 s of work, not the 1,000 s a count per unit says."""
    from nasproxy.search import lock, sweep
    from nasproxy.train import TrainRecord

    clock = [0.0]
    monkeypatch.setattr(sweep.time, "perf_counter", lambda: clock[0])
    big = ("whole", 0, "w8-d1-relu-batchnorm-avgpooling")
    small = [("random", 0, f"w8-d1-{act}-batchnorm-avgpooling") for act in ("relu", "elu")]
    small = [(ts, seed, arch) for ts, _, arch in small for seed in range(5)]
    costs = {big: 100.0, **{key: 1.0 for key in small}}
    events = []
    state = sweep._Sweep(tmp_path, {}, 11, events.append, ["whole", "random"], [])
    state.plan_cost(costs.__getitem__, [big, *small])

    def finish(key, at):
        clock[0] = at
        record = TrainRecord(key[2], "ok", "", seed=key[1], epochs=1, n_train=10)
        state.record(results.make_row(spaces.Arch.from_id(key[2]), key[0], "", record))

    with lock.experiment_lock(tmp_path):
        finish(big, 100.0)
        assert events[-1].eta_s == pytest.approx(10.0)
        finish(small[0], 101.0)
        assert events[-1].eta_s == pytest.approx(101.0 * 9 / 101)


def test_run_numbers_ignore_folders_that_only_look_numbered(tmp_path):
    from nasproxy.search.experiment import RAY_DIR, next_run_number

    for name in ("run-002", "run-\u00b2\u00b2\u00b2", "run-abc", "other"):
        (tmp_path / RAY_DIR / name).mkdir(parents=True)
    assert next_run_number(tmp_path) == 3


# --- the runners ---------------------------------------------------------------------------

# what a unit's training gives; the rest of a row says where and how fast it ran
RESULT_COLUMNS = [
    c for c in results.COLUMNS if c not in ("wall_s", "device", "arch", "train_set", "seed")
]


@pytest.mark.slow
def test_local_and_ray_runners_give_identical_rows(cluster, inputs, tmp_path):
    """The same tiny sweep in this process and through Ray Tune: the same units, and every
    unit the same numbers, bit for bit (one thread each, float32, exact rng)."""
    tables = {}
    for runner in ("local", "ray"):
        cfg = _config(
            inputs, tmp_path, f"same-{runner}", archs=("w8-d1-*-batchnorm-*",), seeds=(0, 1),
            runner=runner,
        )  # fmt: skip
        tables[runner] = _accuracy_table(run_search(cfg))
        assert results.read_manifest(cfg.exp_dir)["runs"][-1]["runner"] == runner
    local, ray = tables["local"], tables["ray"]
    assert len(local) == 3 * 3 * 2 and local.index.equals(ray.index)
    assert (local["status"] == "ok").all() and (local["device"] == "cpu").all()
    for column in RESULT_COLUMNS:
        assert local[column].equals(ray[column]), column


def test_the_local_runner_does_not_import_ray(inputs, tmp_path):
    """``--runner local`` end to end in a fresh interpreter: a complete sweep, no Ray."""
    args = [
        "search", "--dataset", "digits", "--space", inputs["space"],
        "--proxy", str(inputs["proxies"][0]), "--archs", "w8-d1-relu-*", "--epochs", "1",
        "--name", "no-ray", "--results-dir", str(tmp_path), "--runner", "local",
    ]  # fmt: skip
    code = (
        "import sys\nfrom nasproxy import cli\n"
        f"code = cli.main({args!r})\n"
        "print(code, sorted(m for m in sys.modules if m == 'ray' or m.startswith('ray.')))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "0 []", done.stdout + done.stderr
    table = results.read_trials(tmp_path / "no-ray")
    assert len(table) == 2 and (table["status"] == "ok").all()
    assert results.read_manifest(tmp_path / "no-ray")["runs"][-1]["runner"] == "local"


def test_a_local_trial_that_raises_isolates_its_unit_and_records_it_failed(
    inputs, monkeypatch, tmp_path
):
    """An error escaping a trial (here: storing one unit) fails its chunk; as on Ray, the
    chunk's other units run again a trial each and only the bad unit is a failed row."""
    from nasproxy.search import trial

    victim = ("herding", 0, "w8-d1-leakyrelu-none-maxpooling")
    real = trial._store
    calls: Counter = Counter()

    def store(plan, key, record):
        calls[key] += 1
        if key == victim:
            raise OSError("disk full (injected)")
        return real(plan, key, record)

    monkeypatch.setattr(trial, "_store", store)
    cfg = _config(inputs, tmp_path, "raises", whole=False, runner="local", trial_size=4)
    table = _accuracy_table(run_search(cfg))
    assert len(table) == 12
    failed = table[table["status"] != "ok"]
    assert list(failed.index) == [victim] and (failed["status"] == "failed").all()
    assert failed["reason"].iloc[0] == "trial raised: OSError: disk full (injected)"
    assert calls[victim] == 2  # in its chunk, then alone
    assert max(calls.values()) == 2 and sum(calls.values()) < 2 * 12  # only the rest re-run
    run = results.read_manifest(cfg.exp_dir)["runs"][-1]
    assert run["crashed_trials"] == 2 and run["runner"] == "local"


def test_a_local_run_stops_on_ctrl_c_and_on_a_lost_lock(inputs, monkeypatch, tmp_path):
    """Ctrl-C (KeyboardInterrupt in this process) and a lock taken over by another driver
    stop a local sweep after the unit at hand; the stored units resume, none twice."""
    from nasproxy.search import lock, trial

    real = trial._store
    stored: list = []

    def store(plan, key, record):
        row = real(plan, key, record)
        stored.append(key)
        if len(stored) == 2:
            raise KeyboardInterrupt
        if len(stored) == 4:  # another driver takes the experiment
            (Path(plan.exp_dir) / lock.LOCK_NAME).write_text(json.dumps({"token": "other"}))
        return row

    monkeypatch.setattr(trial, "_store", store)
    cfg = _config(inputs, tmp_path, "stopped", whole=False, runner="local", trial_size=4)
    with pytest.raises(KeyboardInterrupt):
        run_search(cfg)
    assert len(_units(cfg.exp_dir)) == 2
    assert results.read_manifest(cfg.exp_dir)["runs"][-1]["interrupted"] is True
    with pytest.raises(lock.LockLostError, match="lost the lock"):
        run_search(cfg)
    assert len(stored) == 4 and len(set(stored)) == 4 and len(_units(cfg.exp_dir)) == 4
    (cfg.exp_dir / lock.LOCK_NAME).unlink()
    monkeypatch.setattr(trial, "_store", real)
    events = []
    run_search(cfg, progress=events.append)
    trained = [results.row_key(e.row) for e in events if e.row is not None]
    assert len(trained) == 8 and not set(trained) & set(stored)
    table = results.read_trials(cfg.exp_dir)
    assert len(table) == 12 and (table["status"] == "ok").all()
    assert len(results.read_manifest(cfg.exp_dir)["runs"]) == 2  # the lost run wrote none


def test_runner_choices_and_local_with_an_address_are_one_line_errors(tmp_path):
    from nasproxy import cli

    with pytest.raises(NasproxyError, match="takes no --address"):
        SearchConfig(name="x", whole=True, runner="local", address="auto")
    with pytest.raises(NasproxyError, match="--runner must be ray or local"):
        SearchConfig(name="x", whole=True, runner="dask")
    args = ["search", "--whole", "--name", "x", "--results-dir", str(tmp_path)]
    assert cli.main([*args, "--runner", "local", "--address", "auto"]) == 2
    assert not (tmp_path / "x").exists()
