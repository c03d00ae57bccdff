"""nasproxy.search.runner: the local runner beside Ray's: the same rows, no Ray imported,
a raising trial isolated, Ctrl-C and a lost lock."""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from nasproxy import results
from nasproxy.search import lock, run_search, trial
from tests.search.conftest import REPO, SMALL, _accuracy_table, _config, _units

# what a unit's training gives; the rest of a row says where and how fast it ran
RESULT_COLUMNS = [
    c
    for c in results.COLUMNS
    if c not in ("wall_s", "warmup_s", "device", "arch", "train_set", "seed")
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


def test_a_local_run_writes_no_unit_once_its_lock_file_is_deleted(inputs, monkeypatch, tmp_path):
    """The lock file deleted while a unit trains: that unit is not stored, nor any after it
    (the trial's own check takes a missing lock in a shared results folder as lost)."""
    cfg = _config(inputs, tmp_path, "deleted", whole=False, runner="local", archs=(SMALL,))
    real = trial.train

    def train(*args, **kwargs):
        (cfg.exp_dir / lock.LOCK_NAME).unlink(missing_ok=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(trial, "train", train)
    with pytest.raises(lock.LockLostError, match="nobody holds it now"):
        run_search(cfg)
    assert _units(cfg.exp_dir) == {}
    assert results.read_manifest(cfg.exp_dir)["runs"] == []  # the lost run wrote no record
