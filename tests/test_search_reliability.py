"""The sweep under faults: one driver per experiment, Ctrl-C, a dead cluster address, a
crashed worker, a damaged manifest; and experiments that grow by training set.

Every process a test starts leads a session of its own and carries a marker in its
environment, so the processes it leaves behind (Ray's agents, raylets, workers, even when
orphaned) are found, by session or by marker, and killed.
"""

from __future__ import annotations

import hashlib
import http.server
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nasproxy import results, spaces
from nasproxy.errors import NasproxyError
from nasproxy.proxies.build import selection_hash
from nasproxy.report import make_report
from nasproxy.search import run_search
from nasproxy.search.address import check_address
from nasproxy.search.lock import LOCK_NAME, STALE_S, experiment_lock
from nasproxy.train import TrainConfig
from tests.search import test_sweep as test_search
from tests.search.test_sweep import REPO, _config, _proxy, _units

MARK = "NASPROXY_TEST_PROCESS"


# the tiny space, two proxy files and the one small local Ray of tests/test_search.py
cluster = test_search.cluster
inputs = test_search.inputs


@pytest.fixture
def marked():
    """Start marked processes; afterwards kill whatever of them (and their children) is left."""
    mark = uuid.uuid4().hex
    started: list[subprocess.Popen] = []

    def start(args: list[str], **kwargs) -> subprocess.Popen:
        env = {**os.environ, MARK: mark, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.Popen(args, cwd=REPO, env=env, start_new_session=True, **kwargs)
        started.append(proc)
        return proc

    def left() -> dict[int, str]:
        return _marked_processes(mark, {p.pid for p in started})

    start.left = left  # type: ignore[attr-defined]
    yield start
    for proc in started:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    for pid in left():
        _kill(pid)


def _marked_processes(mark: str, sessions: set[int]) -> dict[int, str]:
    """pid -> command line of every live process in one of ``sessions`` or whose
    environment holds ``mark``."""
    found = {}
    needle = f"{MARK}={mark}".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            state, _, _, session = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[:4]
            if state != "Z" and (
                int(session) in sessions or needle in (entry / "environ").read_bytes()
            ):
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
                found[int(entry.name)] = cmdline.strip()
        except (OSError, ValueError):
            continue
    return found


def _kill(pid: int) -> None:
    try:
        os.kill(pid, signal.SIGKILL)
    except OSError:
        pass


SMALL = "w8-d1-*-batchnorm-*"  # three architectures: nine work units


def _search_command(inputs, results_dir: Path, name: str, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "nasproxy.cli", "search",
        "--dataset", "digits", "--space", inputs["space"],
        "--proxy", str(inputs["proxies"][0]), "--proxy", str(inputs["proxies"][1]), "--whole",
        "--epochs", "1", "--name", name, "--results-dir", str(results_dir),
        "--trial-size", "2", *extra,
    ]  # fmt: skip


def _wait(condition, proc: subprocess.Popen, what: str, timeout_s: float = 240) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if proc.poll() is not None:
            raise AssertionError(f"the driver ended (rc {proc.returncode}) before {what}")
        if time.monotonic() > deadline:
            raise AssertionError(f"no {what} within {timeout_s} s")
        time.sleep(0.05)


def _none_left(marked, grace_s: float = 20) -> dict[int, str]:
    """The marked processes still alive after a grace period (Ray stops its own in seconds)."""
    deadline = time.monotonic() + grace_s
    while marked.left() and time.monotonic() < deadline:
        time.sleep(0.2)
    return marked.left()


# --- one driver per experiment -------------------------------------------------------------


@pytest.mark.slow
def test_second_driver_is_refused_and_its_fresh_deletes_nothing(cluster, inputs, tmp_path, marked):
    name = "locked"
    exp_dir = tmp_path / name
    proc = marked(
        _search_command(inputs, tmp_path, name, "--address", cluster, "--archs", SMALL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    _wait(lambda: _units(exp_dir), proc, "a finished unit")
    host = socket.gethostname()
    for fresh in (False, True):
        before = _units(exp_dir)
        with pytest.raises(NasproxyError, match=f"pid {proc.pid} on {host}, since ") as info:
            run_search(_config(inputs, tmp_path, name, fresh=fresh, archs=(SMALL,)))
        assert "\n" not in str(info.value)
        after = _units(exp_dir)
        assert all(after.get(p) == text for p, text in before.items())  # nothing deleted
        assert (exp_dir / results.MANIFEST).is_file()

    # the running driver crashes: its lock cannot keep the experiment from resuming
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate()
    assert json.loads((exp_dir / LOCK_NAME).read_text())["pid"] == proc.pid
    time.sleep(1.0)  # let Ray stop the dead driver's workers
    exp = run_search(_config(inputs, tmp_path, name, trial_size=2, archs=(SMALL,)))
    assert len(results.read_trials(exp)) == 9
    assert not (exp_dir / LOCK_NAME).exists()
    assert not any(p.name.startswith(LOCK_NAME) for p in exp_dir.iterdir())


@pytest.mark.slow
def test_racing_drivers_get_the_lock_exactly_once(tmp_path, marked):
    """Eight processes take one experiment's lock at the same instant: one wins, and holds
    it until the other seven have been refused."""
    exp_dir, release = tmp_path / "race", tmp_path / "release"
    start_at = time.time() + 8.0
    script = (
        "import os, time\n"
        "from nasproxy.errors import NasproxyError\n"
        "from nasproxy.search.lock import experiment_lock\n"
        f"time.sleep(max(0.0, {start_at} - time.time()))\n"
        "try:\n"
        f"    with experiment_lock({str(exp_dir)!r}):\n"
        "        print('got', flush=True)\n"
        f"        while not os.path.exists({str(release)!r}):\n"
        "            time.sleep(0.05)\n"
        "except NasproxyError as exc:\n"
        "    print('refused', exc, flush=True)\n"
    )
    procs = [
        marked([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        for _ in range(8)
    ]
    deadline = time.monotonic() + 180
    while sum(p.poll() is not None for p in procs) < 7 and time.monotonic() < deadline:
        time.sleep(0.1)
    release.touch()
    outputs = [p.communicate(timeout=60)[0].decode() for p in procs]
    assert [o.split(" ")[0].strip() for o in outputs].count("got") == 1, outputs
    winner = procs[[o.startswith("got") for o in outputs].index(True)].pid
    refusals = [o for o in outputs if o.startswith("refused")]
    assert len(refusals) == 7 and all(f"pid {winner} on" in o for o in refusals), outputs
    assert not exp_dir.exists() or not any(exp_dir.iterdir())  # no lock or temporary left


def test_a_stale_lock_from_another_host_expires_and_a_fresh_one_holds(tmp_path):
    exp_dir = tmp_path / "other-host"
    exp_dir.mkdir()
    lock = exp_dir / LOCK_NAME
    lock.write_text(json.dumps({"pid": 1, "host": "elsewhere", "started": "then", "token": "t"}))
    with pytest.raises(NasproxyError, match="pid 1 on elsewhere, since then"):
        with experiment_lock(exp_dir):
            pass
    old = time.time() - STALE_S - 5  # the other host stopped refreshing it
    os.utime(lock, (old, old))
    with experiment_lock(exp_dir):
        assert json.loads(lock.read_text())["pid"] == os.getpid()
        with experiment_lock(exp_dir):  # re-entrant within a process
            pass
        assert lock.exists()
    assert not lock.exists()


# --- Ctrl-C ------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("moment", ["while Ray starts", "while trials run"])
def test_ctrl_c_leaves_no_ray_process_and_a_store_that_resumes(
    cluster, inputs, tmp_path, marked, moment
):
    """SIGINT to the driver's process group, as a terminal's Ctrl-C sends it."""
    name = "interrupted"
    exp_dir = tmp_path / name
    proc = marked(
        _search_command(inputs, tmp_path, name, "--archs", SMALL),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    if moment == "while Ray starts":  # its node processes exist, ray.init has not returned
        _wait(lambda: any("raylet" in c for c in marked.left().values()), proc, "a raylet")
    else:
        _wait(lambda: _units(exp_dir), proc, "a finished unit")
    os.killpg(proc.pid, signal.SIGINT)
    stderr = proc.communicate(timeout=120)[1].decode()
    assert proc.returncode == 130, stderr  # not a crash (-11), not an error (2)
    assert "Traceback" not in stderr
    assert _none_left(marked) == {}
    if moment == "while trials run":
        assert results.read_manifest(exp_dir)["runs"][-1]["interrupted"] is True

    before = _units(exp_dir)
    events = []
    cfg = _config(inputs, tmp_path, name, trial_size=2, archs=(SMALL,))
    run_search(cfg, progress=events.append)
    after = _units(exp_dir)
    assert len(after) == 9 and all(after[p] == text for p, text in before.items())
    assert len([e for e in events if e.row is not None]) == 9 - len(before)
    assert len(results.read_trials(exp_dir)) == 9


# --- an unreachable cluster ------------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_address_fails_in_seconds_and_creates_nothing(inputs, tmp_path, marked):
    address = f"127.0.0.1:{_closed_port()}"
    proc = marked(
        _search_command(inputs, tmp_path, "nowhere", "--address", address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=90)  # it used to wait on ray.init for minutes
    except subprocess.TimeoutExpired:
        pytest.fail(f"nasproxy search --address {address} still waits after 90 s")
    lines = err.decode().strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, lines
    assert f"cannot reach the Ray cluster at {address}" in lines[0]
    assert "RAY_AUTH_TOKEN" in lines[0]
    assert not (tmp_path / "nowhere").exists() and out == b""
    for bad in ("127.0.0.1", "127.0.0.1:\u00b2", "127.0.0.1:70000"):
        with pytest.raises(NasproxyError, match="not auto, local or host:port"):
            check_address(bad)


# --- a crashed worker, a damaged manifest ----------------------------------------------------


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
    run = results.read_manifest(exp_dir)["runs"][-1]
    assert run["crashed_trials"] >= 1 and run["recovered_crashes"] == [], err
    table = results.read_trials(exp_dir)
    assert len(table) == 9 and (table["status"] == "ok").all()
    assert _none_left(marked) == {}


@pytest.mark.slow
def test_a_damaged_or_missing_manifest_is_rebuilt_from_the_unit_files(cluster, inputs, tmp_path):
    cfg = _config(
        inputs, tmp_path, "rebuild", proxies=(str(inputs["proxies"][0]),), archs=("w8-d1-relu-*",)
    )
    exp_dir = run_search(cfg)
    original = results.read_manifest(exp_dir)
    units = _units(exp_dir)
    assert len(units) == 4

    for damage in ("torn", "missing"):
        manifest = exp_dir / results.MANIFEST
        if damage == "torn":
            manifest.write_text(manifest.read_text()[:40])
        else:
            manifest.unlink()
        with pytest.raises(NasproxyError, match="--rebuild-manifest"):
            run_search(cfg)
        wrong = replace(cfg, rebuild_manifest=True, train=TrainConfig(epochs=2))
        with pytest.raises(NasproxyError, match="has 1 epochs, this command gives 2"):
            run_search(wrong)
        lacking = replace(cfg, rebuild_manifest=True, whole=False)
        with pytest.raises(NasproxyError, match="training set 'whole', which this command lacks"):
            run_search(lacking)
        events = []
        run_search(replace(cfg, rebuild_manifest=True), progress=events.append)
        assert [e.row for e in events if e.row is not None] == []  # nothing retrained
        assert _units(exp_dir) == units
        rebuilt = results.read_manifest(exp_dir)
        for key in ("archs", "train_sets", "protocol", "fingerprint", "space", "wall_s"):
            assert rebuilt[key] == original[key], key
        assert rebuilt["rebuilt"]
    run_search(cfg)  # and the rebuilt manifest is accepted like the original


# --- growth by training set ------------------------------------------------------------------


@pytest.mark.slow
def test_adding_a_proxy_trains_only_its_units_and_keeps_every_stored_one(
    cluster, inputs, digits, tmp_path
):
    random_proxy, herding_proxy = (str(p) for p in inputs["proxies"])
    first = _config(inputs, tmp_path, "grow", proxies=(random_proxy,), seeds=(0, 1))
    exp_dir = run_search(first)
    stored = {p: p.read_bytes() for p in _units(exp_dir)}
    assert len(stored) == 6 * 2 * 2  # archs x seeds x (random, whole)

    events = []
    grown = replace(first, proxies=(random_proxy, herding_proxy))
    run_search(grown, progress=events.append)
    trained = [e.row for e in events if e.row is not None]
    assert len(trained) == 6 * 2 and {r["train_set"] for r in trained} == {"herding"}
    assert all(p.read_bytes() == blob for p, blob in stored.items())  # byte-identical
    manifest = results.read_manifest(exp_dir)
    assert set(manifest["train_sets"]) == {"random", "herding", "whole"}
    table = results.read_trials(exp_dir)
    assert len(table) == 36 and not table.duplicated(["arch", "train_set", "seed"]).any()
    report = make_report(exp_dir, top_k=3, n_boot=10)
    assert set(report.table["train_set"]) == {"random", "herding", "whole"}

    # a changed proxy under a stored name is refused; so is a run that drops a stored set
    labels = digits.y_train.numpy()
    changed = tmp_path / "changed.json"
    indices = {
        name: [int(i) for i in np.flatnonzero(labels == c)[:10]]
        for c, name in enumerate(digits.classes)
    }
    changed.write_text(json.dumps(_proxy("random", digits.fingerprint, indices)))
    with pytest.raises(NasproxyError, match="training set 'random'") as info:
        run_search(replace(grown, proxies=(f"random={changed}", herding_proxy)))
    assert "\n" not in str(info.value)
    with pytest.raises(NasproxyError, match=r"lacks \['herding'\]"):
        run_search(first)
    assert all(p.read_bytes() == blob for p, blob in stored.items())


def test_the_lock_is_reentrant_however_the_path_is_spelled(tmp_path, monkeypatch):
    """``nasproxy run`` holds the lock under a relative results dir while its search takes it
    again under the absolute one: the same driver, not a second one."""
    monkeypatch.chdir(tmp_path)
    with experiment_lock(Path("results") / "exp"):
        with experiment_lock(tmp_path / "results" / "exp"):
            assert (tmp_path / "results" / "exp" / LOCK_NAME).is_file()
        assert (tmp_path / "results" / "exp" / LOCK_NAME).is_file()
    assert not (tmp_path / "results" / "exp").exists()


def test_a_proxy_rebuilt_or_rewritten_resumes_and_a_changed_one_names_the_field(
    cluster, inputs, digits, tmp_path
):
    """The proxy hash covers what defines the selection, not when it was built or the JSON
    layout; an experiment of an older nasproxy (whole-file hashes) still resumes."""
    proxy = tmp_path / "random.json"
    record = json.loads(inputs["proxies"][0].read_text())
    proxy.write_text(json.dumps({**record, "created": "then", "timings": {"total_s": 1.0}}))
    cfg = _config(inputs, tmp_path, "rehash", proxies=(str(proxy),), whole=False,
                  archs=("w8-d1-relu-*",))  # fmt: skip
    exp_dir = run_search(cfg)
    units = _units(exp_dir)
    assert len(units) == 2

    # rebuilt by the same command (other time stamps), written with another layout
    proxy.write_text(
        json.dumps({**record, "created": "now", "timings": {"total_s": 2.0}}, indent=4)
    )
    events = []
    run_search(cfg, progress=events.append)
    assert not [e for e in events if e.row is not None] and _units(exp_dir) == units

    # really changed: refused, naming what changed
    changed = json.loads(json.dumps(record))
    first_class = next(iter(changed["indices"]))
    labels = digits.y_train.numpy()
    members = set(changed["indices"][first_class])
    spare = next(int(i) for i in np.flatnonzero(labels == 0) if int(i) not in members)
    changed["indices"][first_class] = sorted([*list(members)[1:], spare])
    proxy.write_text(json.dumps(changed))
    with pytest.raises(NasproxyError, match=r"its proxy's indices changed") as info:
        run_search(cfg)
    assert "\n" not in str(info.value) and "'random'" in str(info.value)
    changed = {**record, "params": {"solver": "other"}}
    proxy.write_text(json.dumps(changed))
    with pytest.raises(NasproxyError, match=r"its proxy's params changed"):
        run_search(cfg)

    # an experiment stored by an older nasproxy: proxy hash = the file's sha256[:12]
    proxy.write_text(json.dumps(record))
    old_hash = hashlib.sha256(proxy.read_bytes()).hexdigest()[:12]
    manifest = results.read_manifest(exp_dir)
    entry = manifest["train_sets"]["random"]
    entry["proxy_hash"] = old_hash
    del entry["selection"]
    results.write_manifest(exp_dir, manifest)
    for path in units:
        unit = json.loads(path.read_text())
        unit["row"]["proxy_hash"] = old_hash
        path.write_text(json.dumps(unit))
    events = []
    run_search(cfg, progress=events.append)
    assert not [e for e in events if e.row is not None]
    entry = results.read_manifest(exp_dir)["train_sets"]["random"]
    assert entry["proxy_hash"] == selection_hash(record) and entry["legacy_hashes"] == [old_hash]
    run_search(cfg)  # and again, now under the new hash
    (exp_dir / results.MANIFEST).unlink()
    run_search(replace(cfg, rebuild_manifest=True))  # its old units fit a rebuilt manifest
    entry = results.read_manifest(exp_dir)["train_sets"]["random"]
    assert entry["legacy_hashes"] == [old_hash]


def test_an_address_that_answers_but_is_not_ray_fails_in_one_line_creating_nothing(
    cluster, inputs, tmp_path, marked
):
    """A web server on the port: refused in seconds, before any folder or Ray exists."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        proc = marked(
            _search_command(inputs, tmp_path, "web", "--address", address),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(timeout=60)
    finally:
        server.shutdown()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert f"{address} answers but is not a Ray cluster" in lines[0]
    assert not (tmp_path / "web").exists() and out == b""
    assert _none_left(marked) == {}
    check_address(cluster)  # a real cluster's address passes


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # no request log on the test's stderr
        pass


@pytest.mark.slow
def test_rebuild_manifest_leaves_an_intact_one_and_a_stray_unit_is_named(cluster, inputs, tmp_path):
    """--rebuild-manifest on an intact manifest changes nothing of the protocol or history;
    a unit file of another protocol dropped into the store is refused, by its path, on a
    resume and on a rebuild (not blamed on the command)."""
    cfg = _config(inputs, tmp_path, "intact", proxies=(str(inputs["proxies"][0]),),
                  whole=False, archs=("w8-d1-relu-*",))  # fmt: skip
    exp_dir = run_search(cfg)
    manifest = (exp_dir / results.MANIFEST).read_bytes()
    units = _units(exp_dir)
    assert len(units) == 2
    with pytest.raises(
        NasproxyError, match="was run with seeds \\[0\\], this run asks for \\[5\\]"
    ):
        run_search(replace(cfg, seeds=(5,), rebuild_manifest=True))
    assert (exp_dir / results.MANIFEST).read_bytes() == manifest and _units(exp_dir) == units
    events = []
    run_search(replace(cfg, rebuild_manifest=True), progress=events.append)
    assert not [e for e in events if e.row is not None]
    kept = results.read_manifest(exp_dir)
    assert len(kept["runs"]) == 2 and "rebuilt" not in kept  # the history goes on

    # a unit trained for 5 epochs, dropped in as if it belonged here
    space = spaces.load(inputs["space"], image_size=8)
    other = next(a for a in space.ids if not a.startswith("w8-d1-relu"))
    row = results.read_unit(next(iter(units)))
    stray_row = {**row, "arch": other, "epochs": 5, **_fields(other)}
    stray = results.write_unit(exp_dir, stray_row)
    name = str(stray.relative_to(exp_dir))
    with pytest.raises(NasproxyError, match=f"unit file {name} in .* has 5 epochs") as info:
        run_search(cfg)
    assert "\n" not in str(info.value)
    (exp_dir / results.MANIFEST).unlink()
    with pytest.raises(NasproxyError, match=f"unit file {name} has 5 epochs.*unlike the other 2"):
        run_search(replace(cfg, rebuild_manifest=True))
    stray.unlink()
    run_search(replace(cfg, rebuild_manifest=True))
    assert len(results.read_trials(exp_dir)) == 2

    # a damaged unit trains again, and the run says so
    torn = next(iter(units))
    torn.write_text(torn.read_text()[:30])
    events = []
    run_search(cfg, progress=events.append)
    said = [e.message for e in events if "is damaged" in e.message]
    assert said == [
        f"unit file {torn} is damaged or misplaced; it is ignored, and its unit trains again"
    ]
    assert [results.row_key(e.row) for e in events if e.row is not None] == [results.row_key(row)]


def _fields(arch_id: str) -> dict:
    arch = spaces.Arch.from_id(arch_id)
    return {"width": arch.width, "depth": arch.depth, "act": arch.act, "norm": arch.norm,
            "pool": arch.pool}  # fmt: skip
