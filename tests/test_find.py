"""Finding the architecture: per-training-set architectures, ``--whole-top`` confirmation
(against a brute-force top K, across a kill -9 between its stages) and the search outcome
recomputed from trials.csv. The trainer is a stub whose accuracies the test sets."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
from dataclasses import replace

import pandas as pd
import pytest

from nasproxy import cli, results, spaces
from nasproxy.errors import NasproxyError
from nasproxy.report import make_report
from nasproxy.search import run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.spaces import Arch
from nasproxy.train import TrainRecord
from tests.search import test_sweep as test_search
from tests.search.test_sweep import REPO, _config, _proxy, _units

# the tiny space, two proxy files and the one small local Ray of tests/test_search.py
inputs = test_search.inputs
cluster = test_search.cluster

LEVELS = (0.25, 0.5, 0.75)  # few values, so that ties at the cut are common


def accuracy(key: tuple[str, int, str]) -> tuple[float, float]:
    """The stub's (val, test) accuracy of a unit: a fixed function of its key."""
    h = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return LEVELS[h[0] % 3], (h[1] % 97) / 100


def wall(key: tuple[str, int, str]) -> float:
    """The stub's training seconds of a unit (whole-split units cost more, per arch)."""
    return 1.0 if key[0] != "whole" else 10.0 + sum(key[2].encode()) % 7


def stub_runner(kill_in_call: int | None = None, kill_after: int = 0):
    """A stand-in for ``sweep._run_pending`` storing rows of ``accuracy``; it kills its own
    process (SIGKILL) in call ``kill_in_call`` after ``kill_after`` units. Returns the
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
            sweep.record(results.make_row(Arch.from_id(arch), name, by[name].proxy_hash, record))
        return {}

    return run, calls


def _brute_force_top(archs: list[str], score: dict[str, float], k: int) -> list[str]:
    """The one k-subset in which every member beats every non-member: a higher score, or
    the same score and a smaller id (the stated tie rule)."""
    k = min(k, len(archs))
    found = [
        set(s)
        for s in itertools.combinations(archs, k)
        if all(
            score[a] > score[b] or (score[a] == score[b] and a < b)
            for a in s
            for b in archs
            if b not in s
        )
    ]
    assert len(found) == 1
    return sorted(found[0])


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

    # grow the whole split's set: only the new units train, the stored files stay as they are
    grown = replace(cfg, whole_archs=("w8-d1-relu-*", "w8-d1-sigmoid-*"))
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
    changed.write_text(json.dumps(_proxy("random", digits.fingerprint, indices)))
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
    with pytest.raises(NasproxyError, match="--by 'nope' is not a training set"):
        run_search(_config(inputs, tmp_path, "by", whole_top=2, whole_by="nope"))
    with pytest.raises(NasproxyError, match="need --whole"):
        _config(inputs, tmp_path, "no-whole", whole=False, whole_top=2)


KILLED_RUN = """
import json, sys
from nasproxy.search import SearchConfig, run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.train import TrainConfig
from tests.test_find import stub_runner
args = json.loads(sys.argv[1])
run, calls = stub_runner(kill_in_call=2, kill_after=args.pop("kill_after"))
sweep_module._run_pending = run
run_search(SearchConfig(train=TrainConfig(epochs=1), **args))
"""


@pytest.mark.parametrize("kill_after", [0, 3])
def test_kill_between_or_within_the_stages_resumes_without_loss_or_repeat(
    inputs, monkeypatch, tmp_path, kill_after
):
    """kill -9 of a real driver process as stage 2 starts (0) or after 3 of its units; the
    rerun trains only what is missing, and every planned unit exists exactly once."""
    name = f"killed-{kill_after}"
    args = {
        "name": name, "dataset": "digits", "whole": True, "space": inputs["space"],
        "proxies": [str(p) for p in inputs["proxies"]], "results_dir": str(tmp_path),
        "whole_top": 3, "seeds": [0, 1], "kill_after": kill_after,
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, json.dumps(args)], cwd=REPO, capture_output=True
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    exp_dir = tmp_path / name
    before = _units(exp_dir)
    ids = spaces.load(inputs["space"]).ids
    assert len([p for p in before if "whole" not in p.parts]) == 2 * len(ids) * 2
    assert len([p for p in before if "whole" in p.parts]) == kill_after

    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    cfg = _config(inputs, tmp_path, name, whole_top=3, seeds=(0, 1))
    run_search(cfg)
    after = _units(exp_dir)
    assert all(after[p] == text for p, text in before.items())
    assert len(calls) == 1  # stage 1 was complete: only confirmation units ran
    trained = set(calls[0])
    assert not trained & {results.row_key(json.loads(t)["row"]) for t in before.values()}
    tops = {n: _brute_force_top(ids, _mean_val(n, ids, (0, 1)), 3) for n in ("random", "herding")}
    want = {("whole", s, a) for s in (0, 1) for a in set(tops["random"]) | set(tops["herding"])}
    whole = {k for k in results.read_units(exp_dir) if k[0] == "whole"}
    assert whole == want and len(trained) == len(want) - kill_after
    table = results.read_trials(exp_dir)
    assert not table.duplicated(["arch", "train_set", "seed"]).any()


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
        assert row["pick"] == pick and row["confirmed"] == 2 and row["k"] == 2
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
            mine = whole[whole["arch"].isin(top)]
            rate = mine["wall_s"].sum() / mine["images_seen"].sum()
            exhaustive_s = rate * whole["images_seen"].mean() * len(ids) * 2
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
