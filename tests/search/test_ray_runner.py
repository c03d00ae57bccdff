"""nasproxy.search.ray_runner: the data through Ray's object store, and crashed trial
workers (recovered by Tune, or read back from its ResultGrid)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

from nasproxy import results
from nasproxy.proxies.build import write_proxy
from nasproxy.search import run_search
from tests.search.conftest import (
    SMALL,
    _config,
    _kill,
    _none_left,
    _proxy,
    _search_command,
    _units,
    _wait,
)


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
    write_proxy(_proxy("random", cifar, indices), proxy)
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
    assert (table["n_train"] == 100).all() and table["val_acc"].between(0, 1).all()
    manifest = results.read_manifest(exp_dir)
    assert manifest["fingerprint"] == cifar.fingerprint
    assert manifest["train_sets"]["random"]["bytes"] == 100 * 3 * 32 * 32


def _trial_workers(session: int) -> list[int]:
    """Tune's trial actors in the process session ``session`` (a driver's own Ray)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            sid = int((entry / "stat").read_text().rsplit(")", 1)[-1].split()[3])
            title = (entry / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if sid == session and title.startswith(b"ray::ImplicitFunc"):
            found.append(int(entry.name))
    return found


def _kill_trial_workers(
    inputs, tmp_path: Path, name: str, marked, *extra: str
) -> tuple[subprocess.Popen, str, str]:
    """Start a sweep of SMALL named ``name``, SIGKILL its trial workers once a unit is stored,
    and let it finish; returns the process, its stdout and its stderr."""
    proc = marked(
        _search_command(inputs, tmp_path, name, "--archs", SMALL, *extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    _wait(lambda: _units(tmp_path / name) and _trial_workers(proc.pid), proc, "a running trial")
    for pid in _trial_workers(proc.pid):
        _kill(pid)
    out, err = (stream.decode() for stream in proc.communicate(timeout=300))
    return proc, out, err


@pytest.mark.slow
def test_a_worker_crash_tune_recovers_is_recorded_and_told_in_one_line(inputs, tmp_path, marked):
    exp_dir = tmp_path / "crash"
    proc, out, err = _kill_trial_workers(inputs, tmp_path, "crash", marked)
    assert proc.returncode == 0, err
    assert out == f"{exp_dir}\n"  # no Ray notice on stdout, only the result's location
    assert "Traceback" not in err, err
    told = [line for line in err.splitlines() if "crashed (" in line]
    assert told and all(line.startswith("nasproxy search: trial ") for line in told), err
    run = results.read_manifest(exp_dir)["runs"][-1]
    assert len(run["recovered_crashes"]) == len(told)
    table = results.read_trials(exp_dir)
    assert len(table) == 9 and (table["status"] == "ok").all()
    assert _none_left(marked) == {}


@pytest.mark.slow
def test_a_trial_that_gives_up_is_read_from_the_result_grid_and_its_units_rerun(
    inputs, tmp_path, marked
):
    """With --max-failures 0 a killed worker ends its trial: the error comes back in Tune's
    ResultGrid, the run counts the crashed trial, and its missing units train again alone."""
    exp_dir = tmp_path / "gives-up"
    proc, out, err = _kill_trial_workers(
        inputs, tmp_path, "gives-up", marked, "--max-failures", "0"
    )
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    # every line is the run's own: Tune's log of the trials that gave up is not shown
    assert all(line.startswith(("nasproxy search: ", "[")) for line in err.splitlines()), err
    run = results.read_manifest(exp_dir)["runs"][-1]
    assert run["crashed_trials"] >= 1 and run["recovered_crashes"] == [], err
    table = results.read_trials(exp_dir)
    assert len(table) == 9 and (table["status"] == "ok").all()
    assert _none_left(marked) == {}
