"""nasproxy.search.halving: successive halving on a proxy with a stub trainer whose
accuracies the test sets: each rung's survivors against a brute-force ranking, the pick,
a driver killed (-9) between and within rungs then rerun (no unit lost or trained twice),
and the refusals of rates and rungs that cannot run."""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import subprocess
import sys

import pytest

from nasproxy import cli, results, spaces
from nasproxy.errors import NasproxyError
from nasproxy.search import run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.search.halving import default_rungs, most_rungs, rung_epochs
from nasproxy.search.trial import make_row
from nasproxy.spaces import Arch
from nasproxy.train import TrainConfig, TrainRecord
from tests.search.conftest import REPO, _config, _units
from tests.test_shortlist import _brute_force

# twelve architectures: rungs of 12, 6, 3 and 2 candidates at ETA 2
SPACE12 = """name: space12
options:
  width: [8]
  depth: [1, 2]
  act: [relu, leakyrelu, sigmoid]
  norm: [none, batchnorm]
  pool: [maxpooling]
"""
LEVELS = (0.2, 0.4, 0.6, 0.8)  # few values, so that ties at a cut are common
PROXIES = ("random", "herding")


def accuracy(key: tuple[str, int, str]) -> float:
    """The stub's validation accuracy of a unit: a fixed function of its key."""
    h = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return LEVELS[h[0] % len(LEVELS)]


def stub_test_acc(key: tuple[str, int, str]) -> float:
    """The stub's test accuracy of a unit: another fixed function of its key."""
    h = hashlib.sha256("/".join(map(str, key)).encode()).digest()
    return (h[1] % 97) / 100


def stub_runner(kill_in_call: int | None = None, kill_after: int = 0, failing: set = frozenset()):
    """A stand-in for ``sweep._run_pending`` storing rows of ``accuracy`` with each set's
    own epochs; it kills its process (SIGKILL) in call ``kill_in_call`` after
    ``kill_after`` units, and stores the units of ``failing`` (a set the test may change
    between runs) as failed. Returns the function and the units each call was given."""
    calls: list[list[tuple[str, int, str]]] = []

    def run(cfg, data, train_sets, pending, sweep):
        calls.append(list(pending))
        by = {ts.name: ts for ts in train_sets}
        for i, key in enumerate(pending):
            if len(calls) == kill_in_call and i == kill_after:
                os.kill(os.getpid(), signal.SIGKILL)
            name, seed, arch = key
            epochs = by[name].epochs or cfg.train.epochs
            n = by[name].n_images
            record = TrainRecord(
                arch=arch, status="ok", reason="", seed=seed, epochs=epochs, n_train=n,
                train_loss=0.1, val_acc=accuracy(key), test_acc=stub_test_acc(key),
                wall_s=float(epochs),
                images_seen=n * epochs, device="stub",
            )  # fmt: skip
            if key in failing:
                record = TrainRecord(arch, "failed", "out of memory (stub)", seed=seed,
                                     epochs=epochs, n_train=n, device="stub")  # fmt: skip
            row = make_row(Arch.from_id(arch), name, by[name].proxy_hash, record)
            results.write_unit(sweep.exp_dir, row)
            sweep.record(row)
        return {}

    return run, calls


@pytest.fixture
def space12(tmp_path) -> str:
    path = tmp_path / "space12.yaml"
    path.write_text(SPACE12)
    return str(path)


def _expected(ids: list[str], eta: int, epochs: int, rungs: int, seeds: tuple[int, ...]):
    """Brute force: each proxy's rung sets, candidates per rung and pick."""
    eps = [epochs // eta ** (rungs - 1 - r) for r in range(rungs)]
    out = {}
    for proxy in PROXIES:
        names = [f"{proxy}@{e}" for e in eps[:-1]] + [proxy]
        cands = [sorted(ids)]
        for name in names:
            score = {a: sum(accuracy((name, s, a)) for s in seeds) / len(seeds) for a in cands[-1]}
            cands.append(sorted(_brute_force(score, math.ceil(len(score) / eta))))
        pick = _brute_force(
            {a: sum(accuracy((names[-1], s, a)) for s in seeds) for a in cands[-2]}, 1
        )
        out[proxy] = (names, cands[:-1], pick.pop())
    return eps, out


def test_rungs_fit_the_epochs():
    assert rung_epochs(100, 3, 3) == [11, 33, 100]
    assert rung_epochs(8, 2, 4) == [1, 2, 4, 8]
    for epochs in range(1, 60):
        for eta in range(2, 6):
            r = most_rungs(epochs, eta)
            assert eta ** (r - 1) <= epochs < eta**r
            eps = rung_epochs(epochs, eta, r)
            assert eps[0] >= 1 and eps[-1] == epochs and eps == sorted(set(eps))
    assert default_rungs(100, 3, 720) == 5 and default_rungs(100, 3, 12) == 3
    assert default_rungs(8, 2, 12) == 4 and default_rungs(8, 2, 3) == 2


@pytest.mark.parametrize("eta", [2, 3])
def test_each_rungs_survivors_are_the_brute_force_best(inputs, space12, monkeypatch, tmp_path, eta):
    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    seeds = (0, 1)
    cfg = _config(
        inputs, tmp_path, "halving", whole=False, space=space12, seeds=seeds,
        train=TrainConfig(epochs=9), halving=eta,
    )  # fmt: skip
    exp_dir = run_search(cfg)
    ids = spaces.load(space12).ids
    rungs = default_rungs(9, eta, len(ids))
    eps, want = _expected(ids, eta, 9, rungs, seeds)
    manifest = results.read_manifest(exp_dir)
    record = manifest["halving"]
    assert (record["eta"], record["epochs"]) == (eta, eps)
    stored = results.read_units(exp_dir)
    for proxy, (names, cands, pick) in want.items():
        mine = record["proxies"][proxy]
        assert mine["train_sets"] == names
        assert [sorted(c) for c in mine["candidates"]] == cands
        assert mine["pick"] == pick
        for name, cand, e in zip(names[:-1], cands, eps, strict=False):
            assert {(a, s) for ts, s, a in stored if ts == name} == {
                (a, s) for a in cand for s in seeds
            }
            assert all(row["epochs"] == e for k, row in stored.items() if k.train_set == name)
            entry = manifest["train_sets"][name]
            assert entry["epochs"] == e and sorted(entry["archs"]) == cand
        assert {a for ts, _, a in stored if ts == proxy} == set(ids)  # the full sweep
    # stage 1 (both proxies in full, rung 0), then one call a rung below the last
    assert len(calls) == rungs - 1
    assert {k[0] for k in calls[0]} == {*PROXIES, *(f"{p}@{eps[0]}" for p in PROXIES)}
    run_search(cfg)  # a rerun has nothing left to train
    assert len(calls) == rungs - 1


def test_a_failed_unit_stops_the_halving_until_a_rerun_retries_it(
    inputs, space12, monkeypatch, tmp_path
):
    seeds = (0, 1)
    ids = spaces.load(space12).ids
    eps, want = _expected(ids, 2, 8, 4, seeds)
    names, cands, pick = want["random"]
    broken = (names[1], 1, cands[1][0])  # a unit of rung 2
    failing = {broken}
    run, calls = stub_runner(failing=failing)
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    cfg = _config(
        inputs, tmp_path, "failing", whole=False, space=space12, seeds=seeds,
        train=TrainConfig(epochs=8), halving=2,
    )  # fmt: skip
    events = []
    exp_dir = run_search(cfg, progress=events.append)
    assert any("successive halving stops after rung 2: 1 of its units" in e.message for e in events)
    record = results.read_manifest(exp_dir)["halving"]["proxies"]["random"]
    assert len(record["candidates"]) == 2 and record["pick"] is None
    assert not any(ts == names[2] for ts, _, _ in results.read_units(exp_dir))
    failing.clear()
    run_search(cfg)
    assert calls[2] == [broken]  # the rerun retries the failed unit first, then goes on
    record = results.read_manifest(exp_dir)["halving"]["proxies"]["random"]
    assert [sorted(c) for c in record["candidates"]] == cands and record["pick"] == pick


STUB_DRIVER = """
import json, sys
from nasproxy.search import SearchConfig, run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.train import TrainConfig
from tests.search.test_halving import stub_runner
args = json.loads(sys.argv[1])
run, calls = stub_runner(kill_in_call=args.pop("kill_in_call"), kill_after=args.pop("kill_after"))
sweep_module._run_pending = run
run_search(SearchConfig(train=TrainConfig(epochs=8), **args))
"""


@pytest.mark.slow
@pytest.mark.parametrize("kill_in_call, kill_after", [(2, 0), (2, 5), (3, 0), (3, 1)])
def test_a_sweep_killed_between_or_within_rungs_resumes_every_unit_once(
    inputs, space12, monkeypatch, tmp_path, kill_in_call, kill_after
):
    """A stub driver kills itself (-9) as rung 1 or 2 starts or within it; the rerun
    trains exactly the missing units of the brute-force rungs, never a stored one."""
    seeds = (0, 1)
    args = {
        "name": "halted", "dataset": "digits", "space": space12, "results_dir": str(tmp_path),
        "proxies": [str(p) for p in inputs["proxies"]], "seeds": list(seeds), "halving": 2,
        "kill_in_call": kill_in_call, "kill_after": kill_after,
    }  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "-c", STUB_DRIVER, json.dumps(args)], cwd=REPO, capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    exp_dir = tmp_path / "halted"
    ids = spaces.load(space12).ids
    _, want = _expected(ids, 2, 8, 4, seeds)
    planned = {(p, s, a) for p in PROXIES for s in seeds for a in ids}
    for names, cands, _ in want.values():
        planned |= {
            (n, s, a) for n, c in zip(names[:-1], cands, strict=False) for a in c for s in seeds
        }
    before = _units(exp_dir)
    assert 0 < len(before) < len(planned)

    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    cfg = _config(
        inputs, tmp_path, "halted", whole=False, space=space12, seeds=seeds,
        train=TrainConfig(epochs=8), halving=2,
    )  # fmt: skip
    events = []
    run_search(cfg, progress=events.append)
    after = _units(exp_dir)
    trained = [results.row_key(e.row) for e in events if e.row is not None]
    assert all(after[p] == text for p, text in before.items())  # stored units not re-run
    assert set(results.read_units(exp_dir)) == planned  # none lost
    assert len(set(trained)) == len(trained) == len(planned) - len(before)  # none twice
    record = results.read_manifest(exp_dir)["halving"]
    assert {p: record["proxies"][p]["pick"] for p in PROXIES} == {p: w[2] for p, w in want.items()}
    n_calls = len(calls)
    run_search(cfg)  # a third run has nothing to do
    assert len(calls) == n_calls and _units(exp_dir) == after


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasproxy: error: "), err
    return err[0]


def test_rates_and_rungs_that_cannot_run_are_refused_before_any_work(
    inputs, space12, monkeypatch, tmp_path, capsys
):
    monkeypatch.setattr(sweep_module, "_run_pending", lambda *a: pytest.fail("trained"))
    proxy = ["--proxy", str(inputs["proxies"][0])]
    base = ["search", "--dataset", "digits", "--space", space12, "--name", "bad",
            "--results-dir", str(tmp_path), "--epochs", "8"]  # fmt: skip
    cases = [
        ([*proxy, "--halving", "1"], "--halving must be at least 2"),
        ([*proxy, "--halving", "x"], "bad value 'x' for --halving"),
        ([*proxy, "--halving", "9"], "--halving 9 needs at least 9 epochs"),
        ([*proxy, "--halving", "2", "--halving-rungs", "5"], "at most 4 rungs fit"),
        ([*proxy, "--halving-rungs", "3"], "--halving-rungs needs --halving"),
        (["--whole", "--halving", "2"], "--halving halves on a proxy"),
    ]
    for extra, message in cases:
        assert cli.main([*base, *extra]) == 2, extra
        assert message in _one_line_error(capsys), extra
        assert not (tmp_path / "bad").exists()
    with pytest.raises(NasproxyError, match="halving 3 needs at least 3 epochs"):
        _config(inputs, tmp_path, "bad", train=TrainConfig(epochs=2), halving=3)
