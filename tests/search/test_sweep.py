"""nasproxy.search.sweep: a sweep end to end (rows checked against a retrained unit),
input refusals, the ETA, a stopped sweep resumed, and finding the
architecture (``--whole-top``) against a brute-force top K with a stub trainer whose
accuracies the test sets."""

from __future__ import annotations

import fnmatch
import hashlib
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from nasproxy import cli, results, shortlist, spaces
from nasproxy.errors import NasproxyError
from nasproxy.proxies.build import write_proxy
from nasproxy.proxies.proxy_file import selection_hash
from nasproxy.report import make_report
from nasproxy.search import lock, run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.search.trial import make_row
from nasproxy.spaces import Arch
from nasproxy.train import TrainConfig, TrainRecord, train
from tests.search.conftest import (
    REPO,
    SMALL,
    _config,
    _none_left,
    _proxy,
    _search_command,
    _units,
    _wait,
)
from tests.test_shortlist import _brute_force


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
    assert table["val_acc"].between(0, 1).all()
    whole = table["train_set"] == "whole"  # a proxy unit skips the test split
    assert table.loc[whole, "test_acc"].between(0, 1).all()
    assert table.loc[~whole, "test_acc"].isna().all()
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


def test_bad_inputs_are_refused_before_anything_runs(inputs, digits, tmp_path):
    root = inputs["root"]
    indices = json.loads(inputs["proxies"][0].read_text())["indices"]
    foreign = root / "foreign.json"
    write_proxy(_proxy("random", digits, indices, fingerprint="0123456789abcdef"), foreign)
    out_of_range = root / "range.json"
    beyond = {**indices, "3": [len(digits.y_train)]}
    write_proxy(_proxy("random", digits, indices, indices=beyond), out_of_range)
    wrong_class = root / "wrong.json"
    first_of_class_1 = int(np.flatnonzero(digits.y_train.numpy() == 1)[0])
    write_proxy(_proxy("random", digits, indices, indices={"0": [first_of_class_1]}), wrong_class)
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


def test_the_eta_follows_the_planner_cost_model_not_the_unit_count(tmp_path, monkeypatch):
    """The costliest units run first: one whole-split unit done in 100 s leaves ten units of
    a hundredth of its cost, about 10 s of work, not the 1,000 s a count per unit says."""
    clock = [0.0]
    monkeypatch.setattr(sweep_module.time, "perf_counter", lambda: clock[0])
    big = ("whole", 0, "w8-d1-relu-batchnorm-avgpooling")
    small = [("random", 0, f"w8-d1-{act}-batchnorm-avgpooling") for act in ("relu", "elu")]
    small = [(ts, seed, arch) for ts, _, arch in small for seed in range(5)]
    costs = {big: 100.0, **{key: 1.0 for key in small}}
    events = []
    state = sweep_module._Sweep(tmp_path, {}, 11, events.append, ["whole", "random"], [])
    state.plan_cost(costs.__getitem__, [big, *small])

    def finish(key, at):
        clock[0] = at
        record = TrainRecord(key[2], "ok", "", seed=key[1], epochs=1, n_train=10)
        state.record(make_row(spaces.Arch.from_id(key[2]), key[0], "", record))

    with lock.experiment_lock(tmp_path):
        finish(big, 100.0)
        assert events[-1].eta_s == pytest.approx(10.0)
        finish(small[0], 101.0)
        assert events[-1].eta_s == pytest.approx(101.0 * 9 / 101)


def _ok_row(key: tuple[str, int, str], status: str = "ok") -> dict:
    record = TrainRecord(key[2], status, "", seed=key[1], epochs=1, n_train=10)
    return make_row(spaces.Arch.from_id(key[2]), key[0], "", record)


def test_the_periodic_table_takes_a_bounded_share_of_the_drivers_time(tmp_path, monkeypatch):
    """A consolidation reads every unit file, so its cost grows with the store: each one
    (but the last) is followed by at least 100 times its own time, which keeps the table
    within 1% of the driver's time however large the store (10 s every 30 s: 25%)."""
    clock = [0.0]
    spent = []

    def consolidate(*args, **kwargs):  # a table of a large store: 10 s each
        spent.append(10.0)
        clock[0] += 10.0

    monkeypatch.setattr(sweep_module.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(sweep_module.results, "consolidate", consolidate)
    keys = [("random", s, a.id) for s in range(4) for a in spaces.load("convnet720")]
    state = sweep_module._Sweep(tmp_path, {}, len(keys), None, ["random"], [])
    with lock.experiment_lock(tmp_path):
        for key in keys:  # one unit a second of training
            clock[0] += 1.0
            state.record(_ok_row(key))
    assert spent, "the table is still refreshed during a long sweep"
    assert sum(spent[:-1]) <= 0.01 * clock[0]


def test_progress_counts_cost_one_look_a_unit(tmp_path):
    """Each event's failed and diverged counts equal a recount over every unit done, yet
    each unit's status is read once, not once an event (n^2/2 reads for n units)."""
    reads = [0]

    class Row(dict):
        def __getitem__(self, name):
            reads[0] += name == "status"
            return super().__getitem__(name)

    archs = [a.id for a in spaces.load("convnet720")][:300]
    statuses = ["ok", "failed", "diverged", "ok"]
    rows = [Row(_ok_row(("random", 0, a), statuses[i % 4])) for i, a in enumerate(archs)]
    stored = {results.row_key(r): r for r in rows[:50]}  # done before this run
    events = []
    state = sweep_module._Sweep(tmp_path, dict(stored), 300, events.append, ["random"], [])
    with lock.experiment_lock(tmp_path):
        for row in rows[50:]:
            state.record(row)
    for i, event in enumerate(events):
        done = [dict(r)["status"] for r in rows[: 51 + i]]
        assert (event.failed, event.diverged) == (done.count("failed"), done.count("diverged"))
    assert reads[0] <= 2 * len(rows)


LEVELS = (0.25, 0.5, 0.75)  # few values, so that ties at the cut are common


def accuracy(key: tuple[str, int, str]) -> tuple[float, float]:
    """The stub's (val, test) accuracy of a unit: a fixed function of its key."""
    h = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return LEVELS[h[0] % 3], (h[1] % 97) / 100


def wall(key: tuple[str, int, str]) -> float:
    """The stub's training seconds of a unit (whole-split units cost more, per arch)."""
    return 1.0 if key[0] != "whole" else 10.0 + sum(key[2].encode()) % 7


def stub_runner(kill_in_call: int | None = None, kill_after: int = 0, failing: set = frozenset()):
    """A stand-in for ``sweep._run_pending`` storing rows of ``accuracy``; it kills its own
    process (SIGKILL) in call ``kill_in_call`` after ``kill_after`` units, and stores the
    units of ``failing`` (a set the test may change between runs) as failed. Returns the
    function and the list of the units each call was given."""
    calls: list[list[tuple[str, int, str]]] = []

    def run(cfg, data, train_sets, pending, sweep):
        calls.append(list(pending))
        by = {ts.name: ts for ts in train_sets}
        for i, key in enumerate(pending):
            if len(calls) == kill_in_call and i == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            name, seed, arch = key
            val, test = accuracy(key)
            n = by[name].n_images
            record = TrainRecord(
                arch=arch, status="ok", reason="", seed=seed, epochs=cfg.train.epochs,
                n_train=n, train_loss=0.1, val_acc=val, test_acc=test, wall_s=wall(key),
                images_seen=n * cfg.train.epochs, device="stub",
            )  # fmt: skip
            if key in failing:
                record = TrainRecord(arch, "failed", "out of memory (stub)", seed=seed,
                                     epochs=cfg.train.epochs, n_train=n, device="stub")  # fmt: skip
            row = make_row(Arch.from_id(arch), name, by[name].proxy_hash, record)
            results.write_unit(sweep.exp_dir, row)  # as a trial does, over a failed unit's
            sweep.record(row)
        return {}

    return run, calls


def _brute_force_top(archs: list[str], score: dict[str, float], k: int) -> list[str]:
    """The brute-force top ``k`` of ``archs`` by ``score`` (tests/test_shortlist.py), sorted."""
    return sorted(_brute_force({a: score[a] for a in archs}, k))


def _mean_val(name: str, archs: list[str], seeds: tuple[int, ...]) -> dict[str, float]:
    return {a: sum(accuracy((name, s, a))[0] for s in seeds) / len(seeds) for a in archs}


def test_each_training_set_sweeps_its_own_architectures_and_the_whole_set_only_grows(
    inputs, digits, monkeypatch, tmp_path
):
    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    ids = spaces.load(inputs["space"]).ids
    relu = [a for a in ids if "-relu-" in a]
    cfg = _config(inputs, tmp_path, "per-set", whole_archs=("w8-d1-relu-*",), seeds=(0, 1))
    exp_dir = run_search(cfg)
    planned = {
        (ts, s, a)
        for s in (0, 1)
        for ts, archs in (("random", ids), ("herding", ids), ("whole", relu))
        for a in archs
    }
    assert set(results.read_units(exp_dir)) == planned and len(calls) == 1
    manifest = results.read_manifest(exp_dir)
    assert manifest["train_sets"]["whole"]["archs"] == relu
    assert manifest["train_sets"]["random"]["archs"] == ids == manifest["archs"]
    stored = {p: p.read_bytes() for p in _units(exp_dir)}

    # grow the whole split's set (asked for: another choice than the recorded one): only the
    # new units train, the stored files stay as they are
    grown = replace(cfg, whole_archs=("w8-d1-relu-*", "w8-d1-sigmoid-*"), grow_whole=True)
    run_search(grown)
    sigmoid = [a for a in ids if "-sigmoid-" in a]
    assert set(calls[1]) == {("whole", s, a) for s in (0, 1) for a in sigmoid}
    assert all(p.read_bytes() == blob for p, blob in stored.items())
    whole = [a for a in ids if a in relu + sigmoid]
    assert results.read_manifest(exp_dir)["train_sets"]["whole"]["archs"] == whole

    # a narrower command neither trains nor drops anything: the manifest keeps the union
    run_search(cfg)
    assert len(calls) == 2
    assert results.read_manifest(exp_dir)["train_sets"]["whole"]["archs"] == whole
    report = make_report(exp_dir, top_k=2, n_boot=10)
    coverage = report.table.set_index("train_set")
    assert coverage.loc["whole", "trials_expected"] == len(whole) * 2
    assert coverage.loc["whole", "trials_missing"] == 0
    assert coverage.loc["random", "trials_expected"] == len(ids) * 2

    # a manifest written before the sets had their own lists still reads (all: "archs")
    old = results.read_manifest(exp_dir)
    for entry in old["train_sets"].values():
        del entry["archs"]
    results.write_manifest(exp_dir, old)
    run_search(grown)
    assert len(calls) == 2  # every unit of the command is stored
    assert results.read_manifest(exp_dir)["train_sets"]["whole"]["archs"] == ids

    # a changed proxy is still refused
    labels = digits.y_train.numpy()
    changed = tmp_path / "changed.json"
    indices = {
        n: [int(i) for i in (labels == c).nonzero()[0][:10]] for c, n in enumerate(digits.classes)
    }
    write_proxy(_proxy("random", digits, indices), changed)
    with pytest.raises(NasproxyError, match="training set 'random'"):
        run_search(replace(cfg, proxies=(f"random={changed}", str(inputs["proxies"][1]))))
    assert all(p.read_bytes() == blob for p, blob in stored.items())


@pytest.mark.parametrize("by", ["all", "random", "herding"])
@pytest.mark.parametrize("k", [1, 2, 4])
def test_whole_top_confirms_the_brute_force_top_k(inputs, monkeypatch, tmp_path, by, k):
    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    ids = spaces.load(inputs["space"]).ids
    seeds = (0, 1)
    cfg = _config(inputs, tmp_path, f"top-{by}-{k}", whole_top=k, whole_by=by, seeds=seeds)
    exp_dir = run_search(cfg)

    tops = {n: _brute_force_top(ids, _mean_val(n, ids, seeds), k) for n in ("random", "herding")}
    want = set(tops["random"]) | set(tops["herding"]) if by == "all" else set(tops[by])
    stored = results.read_units(exp_dir)
    assert {a for ts, _, a in stored if ts == "whole"} == want
    assert len(stored) == 2 * len(ids) * len(seeds) + len(want) * len(seeds)
    assert [len(c) for c in calls] == [2 * len(ids) * len(seeds), len(want) * len(seeds)]
    assert all(ts != "whole" for ts, _, _ in calls[0])  # the proxies first, then the shortlist
    manifest = results.read_manifest(exp_dir)
    assert set(manifest["train_sets"]["whole"]["archs"]) == want
    assert {n: sorted(v) for n, v in manifest["whole_top"]["shortlists"].items()} == tops

    run_search(cfg)  # a rerun has nothing left to train
    assert len(calls) == 2


def test_by_must_name_a_proxy_of_the_sweep(inputs, tmp_path):
    with pytest.raises(NasproxyError, match="whole_by 'nope' is not a training set"):
        run_search(_config(inputs, tmp_path, "by", whole_top=2, whole_by="nope"))
    with pytest.raises(NasproxyError, match="whole_top need whole"):
        _config(inputs, tmp_path, "no-whole", whole=False, whole_top=2)


def test_a_rerun_that_would_change_the_whole_choice_keeps_the_recorded_one(
    inputs, monkeypatch, tmp_path, capsys
):
    """A --whole-top experiment resumed without the flag confirms as recorded (one line
    says so, before any work) instead of training every architecture on the whole split;
    --grow-whole takes the command's choice, and so does a manifest's older record."""
    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    ids = spaces.load(inputs["space"]).ids
    cfg = _config(inputs, tmp_path, "keep", whole_top=1)
    exp_dir = run_search(cfg)
    confirmed = {a for ts, _, a in results.read_units(exp_dir) if ts == "whole"}
    assert 1 <= len(confirmed) <= 2 and len(calls) == 2

    def rerun(changed, old_manifest: bool = False) -> list[str]:
        if old_manifest:  # as an older nasproxy wrote it: the choice only in "whole_top"
            manifest = results.read_manifest(exp_dir)
            del manifest["whole_choice"]
            results.write_manifest(exp_dir, manifest)
        events = []
        monkeypatch.setattr(sweep_module, "_run_pending", lambda *a: pytest.fail("trained"))
        run_search(changed, progress=events.append)
        monkeypatch.setattr(sweep_module, "_run_pending", run)
        return [e.message for e in events if e.message]

    without, by = replace(cfg, whole_top=None), replace(cfg, whole_by="random")
    for changed, old in ((without, False), (without, True), (by, False)):
        messages = rerun(changed, old)
        assert "chose the whole split's architectures with --whole-top 1" in messages[0]
        assert "--grow-whole" in messages[0] and "\n" not in messages[0]
        assert {a for ts, _, a in results.read_units(exp_dir) if ts == "whole"} == confirmed
        assert results.read_manifest(exp_dir)["whole_choice"]["whole_top"] == 1
    assert not [m for m in rerun(cfg) if "chose" in m]  # the same choice: no note
    argv = [
        "search", "--dataset", "digits", "--space", inputs["space"], "--whole",
        "--proxy", str(inputs["proxies"][0]), "--proxy", str(inputs["proxies"][1]),
        "--epochs", "1", "--name", "keep", "--results-dir", str(tmp_path),
    ]  # fmt: skip
    capsys.readouterr()
    assert cli.main(argv) == 0  # the command line says so, and gives the kept outcome
    out, err = capsys.readouterr()
    assert "the recorded choice is kept" in err
    assert len([ln for ln in out.splitlines() if ln.startswith("search outcome")]) == 2

    run_search(replace(cfg, whole_top=None, grow_whole=True))  # asked for: the proxies' archs
    assert set(calls[2]) == {("whole", 0, a) for a in ids if a not in confirmed}
    assert results.read_manifest(exp_dir)["whole_choice"]["whole_top"] is None


def test_a_failed_unit_outside_the_current_lists_trains_again(inputs, monkeypatch, tmp_path):
    """A whole-split unit confirmed by an earlier shortlist that failed is retried after the
    shortlist moved on (here: a proxy unit that failed succeeds and outranks it), so the
    rerun the exit code asks for ends the failures rather than repeating forever."""
    ids = spaces.load(inputs["space"]).ids
    score = pd.Series(_mean_val("random", ids, (0,)))
    best = shortlist.top_k(score, 1)[0]
    second = shortlist.top_k(score.drop(best), 1)[0]
    failing = {("random", 0, best), ("whole", 0, second)}
    run, calls = stub_runner(failing=failing)
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    cfg = _config(inputs, tmp_path, "moved", whole_top=1, whole_by="random")
    exp_dir = run_search(cfg)
    assert results.read_manifest(exp_dir)["whole_top"]["shortlists"]["random"] == [second]
    failing.clear()  # what failed was transient
    events = []
    run_search(cfg, progress=events.append)
    assert results.read_manifest(exp_dir)["whole_top"]["shortlists"]["random"] == [best]
    table = results.read_trials(exp_dir)
    assert (table["status"] == "ok").all() and len(table) == 2 * len(ids) + 2
    assert ("whole", 0, second) in calls[2]
    assert any("1 failed work unit outside" in e.message for e in events)


# --- a stopped sweep resumes -----------------------------------------------------------------

STUB_DRIVER = """
import json, sys
from nasproxy.search import SearchConfig, run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.train import TrainConfig
from tests.search.test_sweep import stub_runner
args = json.loads(sys.argv[1])
run, calls = stub_runner(kill_in_call=2, kill_after=args.pop("kill_after"))
sweep_module._run_pending = run
run_search(SearchConfig(train=TrainConfig(epochs=1), **args))
"""


def _stop_a_ray_driver(stop: str, cluster: str, inputs, tmp_path: Path, marked) -> None:
    """``nasproxy search`` of SMALL in a process of its own: killed (-9) once a unit is
    stored, its stacks fused on the test's cluster; or Ctrl-C (SIGINT to its process
    group, as a terminal sends it) to a driver that starts its own Ray, while that Ray
    starts (its node processes exist, ray.init has not returned) or once a unit is stored.
    Checks what the stop itself must leave."""
    exp_dir = tmp_path / "stopped"
    extra = ["--address", cluster, "--fuse", "on"] if stop.startswith("kill") else []
    command = _search_command(inputs, tmp_path, "stopped", "--archs", SMALL, *extra)
    proc = marked(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if stop == "ctrl-c while Ray starts":
        _wait(lambda: any("raylet" in c for c in marked.left().values()), proc, "a raylet")
    else:
        _wait(lambda: _units(exp_dir), proc, "a finished unit")
    if stop.startswith("kill"):
        proc.send_signal(signal.SIGKILL)
        stderr = proc.communicate(timeout=120)[1].decode()
        assert 0 < len(_units(exp_dir)) < 9, stderr
        time.sleep(1.0)  # let Ray stop the dead driver's workers
        return
    os.killpg(proc.pid, signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130, stderr  # not a crash (-11), not an error (2)
    assert "Traceback" not in stderr
    assert _none_left(marked) == {}  # no Ray process of the driver's is left
    if stop == "ctrl-c while trials run":
        assert results.read_manifest(exp_dir)["runs"][-1]["interrupted"] is True


@pytest.mark.parametrize(
    "stop",
    [
        pytest.param("kill -9 mid-sweep, fused", marks=pytest.mark.slow),
        pytest.param("ctrl-c while Ray starts", marks=pytest.mark.slow),
        pytest.param("ctrl-c while trials run", marks=pytest.mark.slow),
        "kill -9 as stage 2 starts",
        "kill -9 within stage 2",
    ],
)
def test_a_stopped_sweep_resumes_every_unit_exactly_once(
    request, inputs, marked, monkeypatch, tmp_path, stop
):
    """A driver stopped mid-sweep, then the same sweep again: no unit lost, none trained
    twice, every stored unit file left as it was; a third run has nothing to do. The
    ``--whole-top`` cases: a stub driver kills itself (-9) as the second stage starts or
    after 3 of its units; the rerun trains only the missing confirmation units of the
    brute-force shortlists."""
    exp_dir = tmp_path / "stopped"
    ids = spaces.load(inputs["space"]).ids
    if "stage 2" in stop:
        kill_after = 0 if "starts" in stop else 3
        args = {
            "name": "stopped", "dataset": "digits", "whole": True, "space": inputs["space"],
            "proxies": [str(p) for p in inputs["proxies"]], "results_dir": str(tmp_path),
            "whole_top": 3, "seeds": [0, 1], "kill_after": kill_after,
        }  # fmt: skip
        proc = subprocess.run(
            [sys.executable, "-c", STUB_DRIVER, json.dumps(args)], cwd=REPO, capture_output=True
        )
        assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
        stage_1 = {(ts, s, a) for ts in ("random", "herding") for s in (0, 1) for a in ids}
        stored = set(results.read_units(exp_dir))
        assert stage_1 <= stored and len(stored) == len(stage_1) + kill_after
        tops = {
            n: _brute_force_top(ids, _mean_val(n, ids, (0, 1)), 3) for n in ("random", "herding")
        }
        confirmed = set(tops["random"]) | set(tops["herding"])
        planned = stage_1 | {("whole", s, a) for s in (0, 1) for a in confirmed}
        monkeypatch.setattr(sweep_module, "_run_pending", stub_runner()[0])
        cfg = _config(inputs, tmp_path, "stopped", whole_top=3, seeds=(0, 1))
    else:
        _stop_a_ray_driver(stop, request.getfixturevalue("cluster"), inputs, tmp_path, marked)
        archs = [a for a in ids if fnmatch.fnmatchcase(a, SMALL)]
        planned = {(ts, 0, a) for ts in ("random", "herding", "whole") for a in archs}
        fuse = "on" if stop.startswith("kill") else "auto"
        cfg = _config(inputs, tmp_path, "stopped", trial_size=2, archs=(SMALL,), fuse=fuse)

    before = _units(exp_dir)
    events = []
    run_search(cfg, progress=events.append)
    after = _units(exp_dir)
    trained = [results.row_key(e.row) for e in events if e.row is not None]
    assert all(after[p] == text for p, text in before.items())  # stored units not re-run
    assert set(results.read_units(exp_dir)) == planned  # none lost
    assert len(set(trained)) == len(trained) == len(planned) - len(before)  # none twice
    table = results.read_trials(exp_dir)
    assert len(table) == len(planned) and not table.duplicated(["arch", "train_set", "seed"]).any()
    assert (table["status"] == "ok").all()
    if "stage 2" in stop:  # the first stage was complete: only confirmation units ran
        assert {k[0] for k in trained} == {"whole"}
    elif stop.startswith("kill"):  # a shape's stacks: 2 proxies x 3 activations, whole: 3
        whole = table["train_set"] == "whole"
        assert table.loc[~whole, "stack_size"].max() <= 6 and table["stack_size"].max() > 1
        assert table.loc[whole, "stack_size"].max() <= 3
        assert table["trainer"].str.startswith("stacked").all()
    else:
        assert (table["stack_size"] == 1).all() and (table["trainer"] == "plain").all()

    # a third run has nothing to do: no unit trained, no file touched, no Ray run started
    events = []
    runs = sorted((exp_dir / "ray").glob("*"))
    run_search(cfg, progress=events.append)
    assert [e.row for e in events if e.row is not None] == []
    assert _units(exp_dir) == after and sorted((exp_dir / "ray").glob("*")) == runs


@pytest.mark.parametrize("exhaustive", [True, False])
def test_the_search_outcome_matches_a_recomputation_from_trials_csv(
    inputs, monkeypatch, tmp_path, capsys, exhaustive
):
    run, _ = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    name = f"outcome-{exhaustive}"
    argv = [
        "search", "--dataset", "digits", "--space", inputs["space"], "--whole",
        "--proxy", str(inputs["proxies"][0]), "--proxy", str(inputs["proxies"][1]),
        "--whole-top", "2", "--seeds", "0,1", "--epochs", "1",
        "--name", name, "--results-dir", str(tmp_path),
    ]  # fmt: skip
    if exhaustive:
        argv += ["--whole-archs", "*"]
    assert cli.main(argv) == 0
    printed = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("search outc")]
    exp_dir = tmp_path / name
    make_report(exp_dir, top_k=5, n_boot=10)
    got = pd.read_csv(exp_dir / "search_outcome.csv", comment="#").set_index("train_set")

    trials = pd.read_csv(exp_dir / "trials.csv")
    ids = spaces.load(inputs["space"]).ids
    whole = trials[trials["train_set"] == "whole"]
    wval = whole.groupby("arch")["val_acc"].apply(list).to_dict()
    wtest = whole.groupby("arch")["test_acc"].apply(list).to_dict()
    lists = {}
    for proxy in ("random", "herding"):
        rows = trials[trials["train_set"] == proxy]
        score = {a: statistics.mean(g["val_acc"]) for a, g in rows.groupby("arch")}
        lists[proxy] = _brute_force_top(ids, score, 2)
    confirmed = set(lists["random"]) | set(lists["herding"])
    for proxy, top in lists.items():
        best_val = max(statistics.mean(wval[a]) for a in top)
        pick = min(a for a in top if statistics.mean(wval[a]) == best_val)
        row = got.loc[proxy]
        assert row["pick"] == pick and row["confirmed"] == 2 and row["whole_top"] == 2
        assert row["pick_test"] == pytest.approx(statistics.mean(wtest[pick]))
        assert row["pick_test_std"] == pytest.approx(statistics.stdev(wtest[pick]))
        above = [a for a in confirmed if statistics.mean(wtest[a]) > statistics.mean(wtest[pick])]
        assert row["rank"] == 1 + len(above) and row["n_confirmed"] == len(confirmed)
        proxy_s = trials.loc[trials["train_set"] == proxy, "wall_s"].sum()
        confirm_s = whole.loc[whole["arch"].isin(top), "wall_s"].sum()
        assert row["proxy_s"] == pytest.approx(proxy_s)
        assert row["confirm_s"] == pytest.approx(confirm_s)
        if exhaustive:
            best = max(statistics.mean(v) for v in wtest.values())
            assert row["regret"] == pytest.approx(best - statistics.mean(wtest[pick]))
            exhaustive_s = whole["wall_s"].sum()
            assert not row["exhaustive_estimated"]
        else:
            assert pd.isna(row["regret"])
            # the units that ran, then the others by MACs x images at their rate (digits)
            manifest = json.loads((exp_dir / "manifest.json").read_text())
            assert manifest["data_shape"] == {"in_channels": 1, "num_classes": 10, "image_size": 32}
            cost = {a: Arch.from_id(a).macs(1, 10, 32) * whole["n_train"].iloc[0] for a in ids}
            rate = whole["wall_s"].sum() / sum(cost[a] for a in whole["arch"])
            rest = sum(cost[a] for a in ids if a not in set(whole["arch"])) * 2
            exhaustive_s = whole["wall_s"].sum() + rate * rest
            assert row["exhaustive_estimated"]
        assert row["exhaustive_s"] == pytest.approx(exhaustive_s)
        assert row["cost_ratio"] == pytest.approx((proxy_s + confirm_s) / exhaustive_s)
        line = next(ln for ln in printed if f"outcome: {proxy} picks {pick}:" in ln)
        assert f"{(proxy_s + confirm_s) / exhaustive_s:.2f}x" in line
        assert ("estimated" in line) != exhaustive
    assert len(printed) == 2
    assert "## Search outcome" in (exp_dir / "table1.md").read_text()


def test_a_rebuilt_manifest_recovers_each_sets_architectures_from_the_units(
    inputs, monkeypatch, tmp_path
):
    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    cfg = _config(inputs, tmp_path, "rebuilt", whole_archs=("w8-d1-sigmoid-*",), whole_top=1)
    exp_dir = run_search(cfg)
    original = results.read_manifest(exp_dir)
    (exp_dir / results.MANIFEST).unlink()
    run_search(replace(cfg, rebuild_manifest=True))
    assert len(calls) == 2  # nothing trained again
    rebuilt = results.read_manifest(exp_dir)
    for key in ("archs", "train_sets", "whole_top"):
        assert rebuilt[key] == original[key], key


@pytest.mark.slow
def test_both_stages_train_through_ray(cluster, inputs, tmp_path):
    """The real trainer on a Ray cluster: the proxies, then each proxy's top 1."""
    events = []
    cfg = _config(inputs, tmp_path, "real", whole_top=1, address=cluster, trial_size=6)
    exp_dir = run_search(cfg, progress=events.append)
    table = results.read_trials(exp_dir)
    manifest = results.read_manifest(exp_dir)
    lists = manifest["whole_top"]["shortlists"]
    whole = sorted(table.loc[table["train_set"] == "whole", "arch"])
    assert whole == sorted(set(lists["random"]) | set(lists["herding"]))
    for name in ("random", "herding"):  # the list is the best proxy score (ties: smaller id)
        rows = table[table["train_set"] == name].sort_values(["val_acc", "arch"])
        best = rows[rows["val_acc"] == rows["val_acc"].max()]["arch"].min()
        assert lists[name] == [best]
    assert (table["status"] == "ok").all() and len(table) == 12 + len(whole)
    assert any("confirming each proxy's top 1" in e.message for e in events)
    assert [r["units_trained"] for r in manifest["runs"]] == [12 + len(whole)]
