"""nasproxy.search.lock: one driver per experiment, under races, pauses, containers, dead
breakers and a takeover: real processes (``marked``, killed at the test's end)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from nasproxy import results
from nasproxy.errors import NasproxyError
from nasproxy.search import lock, run_search
from nasproxy.search.lock import BREAK_NAME, LOCK_NAME, STALE_S, experiment_lock
from tests.search.conftest import SMALL, _config, _search_command, _units, _wait


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


def test_the_lock_is_reentrant_however_the_path_is_spelled(tmp_path, monkeypatch):
    """``nasproxy run`` holds the lock under a relative results dir while its search takes it
    again under the absolute one: the same driver, not a second one."""
    monkeypatch.chdir(tmp_path)
    with experiment_lock(Path("results") / "exp"):
        with experiment_lock(tmp_path / "results" / "exp"):
            assert (tmp_path / "results" / "exp" / LOCK_NAME).is_file()
        assert (tmp_path / "results" / "exp" / LOCK_NAME).is_file()
    assert not (tmp_path / "results" / "exp").exists()


def _holder_script(exp_dir: Path, release: Path, *setup: str) -> str:
    """A process that takes the lock (after ``setup``), says so, and holds it until told."""
    return "\n".join(
        [
            "import os, time",
            "from nasproxy.search import lock",
            *setup,
            f"with lock.experiment_lock({str(exp_dir)!r}):",
            "    print('got', flush=True)",
            f"    while not os.path.exists({str(release)!r}):",
            "        time.sleep(0.05)",
        ]
    )


def _wait_line(proc: subprocess.Popen, expected: str, timeout_s: float = 120) -> None:
    line = proc.stdout.readline().decode().strip()  # type: ignore[union-attr]
    assert line == expected, (line, proc.poll())


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_paused_holder_on_this_host_keeps_its_lock(tmp_path, marked, monkeypatch):
    """Ctrl-Z (SIGSTOP) for longer than the stale age: the holder's heartbeat stops, but its
    process lives, so a second driver on this host is refused, not handed the experiment."""
    exp_dir, release = tmp_path / "paused", tmp_path / "release"
    holder = marked(
        [sys.executable, "-c", _holder_script(exp_dir, release)], stdout=subprocess.PIPE
    )
    _wait_line(holder, "got")
    monkeypatch.setattr(lock, "STALE_S", 1.0)
    os.killpg(holder.pid, signal.SIGSTOP)
    try:
        time.sleep(2.0)  # the heartbeat is older than STALE_S now
        with pytest.raises(NasproxyError, match=f"pid {holder.pid} on "):
            with experiment_lock(exp_dir):
                pass
        assert json.loads((exp_dir / LOCK_NAME).read_text())["pid"] == holder.pid
    finally:
        os.killpg(holder.pid, signal.SIGCONT)
    release.touch()
    assert holder.wait(timeout=60) == 0
    assert not exp_dir.exists()


def test_a_live_driver_in_another_container_with_this_hostname_is_not_judged_dead(tmp_path):
    """Its pid means nothing in this PID namespace: only its heartbeat may say it is gone."""
    exp_dir = tmp_path / "container"
    exp_dir.mkdir()
    lock_file = exp_dir / LOCK_NAME
    other = {
        "pid": _dead_pid(),  # no such process here; it runs in the other container
        "host": socket.gethostname(),
        "host_id": f"{socket.gethostname()}/same-boot/4026531999",
        "started": "then",
        "token": "theirs",
    }
    lock_file.write_text(json.dumps(other))
    with pytest.raises(NasproxyError, match=f"pid {other['pid']} on "):
        with experiment_lock(exp_dir):
            pass
    assert json.loads(lock_file.read_text())["token"] == "theirs"
    old = time.time() - lock.STALE_S - 5  # its heartbeat stopped: now it is stale
    os.utime(lock_file, (old, old))
    with experiment_lock(exp_dir):
        assert json.loads(lock_file.read_text())["pid"] == os.getpid()
    assert not lock_file.exists()


def test_a_break_guard_left_by_a_dead_driver_blocks_nobody(tmp_path, marked):
    """A driver died while breaking a stale lock (its guard file stays, fresh): the next
    driver still clears the stale lock and takes it, at once."""
    exp_dir = tmp_path / "guard"
    exp_dir.mkdir()
    (exp_dir / LOCK_NAME).write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "host_id": lock.host_id(),
                    "started": "then", "token": "dead"})
    )  # fmt: skip
    (exp_dir / BREAK_NAME).write_text("")
    with experiment_lock(exp_dir):
        assert json.loads((exp_dir / LOCK_NAME).read_text())["pid"] == os.getpid()
    assert not any(p.name.startswith(LOCK_NAME) for p in exp_dir.iterdir())

    # a breaker alive inside its guard makes the others wait, not take the lock twice
    release = tmp_path / "release"
    script = (
        "import fcntl, os, time\n"
        f"fd = os.open({str(exp_dir / BREAK_NAME)!r}, os.O_CREAT | os.O_RDWR)\n"
        "fcntl.flock(fd, fcntl.LOCK_EX)\n"
        "print('got', flush=True)\n"
        f"while not os.path.exists({str(release)!r}):\n"
        "    time.sleep(0.05)\n"
    )
    breaker = marked([sys.executable, "-c", script], stdout=subprocess.PIPE)
    _wait_line(breaker, "got")
    (exp_dir / LOCK_NAME).write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "host_id": lock.host_id(),
                    "started": "then", "token": "dead"})
    )  # fmt: skip
    with pytest.raises(NasproxyError, match="other drivers keep taking it"):
        with experiment_lock(exp_dir):
            pass
    breaker.kill()  # it dies holding the guard: the kernel drops its flock
    breaker.wait()
    with experiment_lock(exp_dir):
        assert json.loads((exp_dir / LOCK_NAME).read_text())["pid"] == os.getpid()


def _snapshot(exp_dir: Path) -> dict[str, bytes]:
    """Every result file of the experiment (not the lock, not Tune's own run folders)."""
    return {
        str(p.relative_to(exp_dir)): p.read_bytes()
        for p in exp_dir.rglob("*")
        if p.is_file()
        and not p.name.startswith(LOCK_NAME)
        and p.relative_to(exp_dir).parts[0] != "ray"
    }


@pytest.mark.slow
def test_a_driver_that_lost_its_lock_stops_in_one_line_and_writes_nothing_more(
    cluster, inputs, tmp_path, marked
):
    """Driver A is paused; a driver on another host judges its lock stale and takes it; A
    resumes: it (and its trials) write nothing more, and it ends with one line, exit 3."""
    name = "taken"
    exp_dir = tmp_path / name
    command = _search_command(inputs, tmp_path, name, "--address", cluster, "--epochs", "3")
    driver = (  # no periodic table: a pause in the middle of writing it would land after
        "import sys\n"
        "from nasproxy.search import lock, sweep\n"
        "lock.HEARTBEAT_S = 0.2\n"
        "sweep.CONSOLIDATE_EVERY_S = 1e9\n"
        "from nasproxy.cli import main\n"
        f"sys.exit(main({command[3:]!r}))\n"
    )
    a = marked([sys.executable, "-c", driver], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _wait(lambda: _units(exp_dir), a, "a finished unit")
    os.killpg(a.pid, signal.SIGSTOP)
    release = tmp_path / "release"
    elsewhere = [
        "lock.host_id = lambda: 'elsewhere'",  # a driver on another host
        "lock.STALE_S = 1.0",
        "while True:",
        "    try:",
        f"        with lock.experiment_lock({str(exp_dir)!r}):",
        "            print('got', flush=True)",
        f"            while not os.path.exists({str(release)!r}):",
        "                time.sleep(0.05)",
        "        break",
        "    except Exception:",
        "        time.sleep(0.2)",
    ]
    b = marked(
        [sys.executable, "-c", "import os, time\nfrom nasproxy.search import lock\n"
         + "\n".join(elsewhere)],
        stdout=subprocess.PIPE,
    )  # fmt: skip
    try:
        _wait_line(b, "got")
        time.sleep(1.0)  # a trial's write that began before the takeover lands
        taken = _snapshot(exp_dir)
    finally:
        os.killpg(a.pid, signal.SIGCONT)
    out, err = (s.decode() for s in a.communicate(timeout=180))
    assert a.returncode == 3, err
    errors = [line for line in err.splitlines() if line.startswith("nasproxy: error:")]
    assert len(errors) == 1 and "lost the lock" in errors[0], err
    assert "Traceback" not in err, err
    time.sleep(3.0)  # whatever trial the cluster still runs for A gets to its next unit
    assert _snapshot(exp_dir) == taken
    assert json.loads((exp_dir / LOCK_NAME).read_text())["host_id"] == "elsewhere"
    release.touch()
    assert b.wait(timeout=60) == 0
    assert len(results.read_units(exp_dir)) < 18  # the takeover came mid-sweep


def test_a_trial_checks_the_token_where_the_results_are_shared(tmp_path):
    """A trial refuses to write a unit once the lock names another holder; a node without
    the results directory (no lock file there) is not taken for a lost lock."""
    exp_dir = tmp_path / "trial"
    with experiment_lock(exp_dir):
        token = lock.held_token(exp_dir)
        lock.check_token(exp_dir, token)
        with pytest.raises(lock.LockLostError, match="lost the lock"):
            lock.check_token(exp_dir, "another")
    lock.check_token(tmp_path / "elsewhere", token)  # no such folder on this node
    (tmp_path / "elsewhere" / "units").mkdir(parents=True)
    lock.check_token(tmp_path / "elsewhere", token)  # units written there, but no manifest


def test_a_trial_takes_a_deleted_lock_in_a_shared_folder_as_lost(tmp_path):
    """Where the experiment's manifest is seen the results folder is shared with the driver,
    so a lock file missing there was deleted: the trial stops rather than write a unit."""
    exp_dir = tmp_path / "shared"
    with experiment_lock(exp_dir):
        token = lock.held_token(exp_dir)
        results.write_manifest(exp_dir, {"protocol": {}, "train_sets": {}})
        (exp_dir / LOCK_NAME).unlink()
        with pytest.raises(lock.LockLostError, match="nobody holds it now"):
            lock.check_token(exp_dir, token)


@pytest.mark.parametrize("old", [False, True])
def test_a_lock_that_is_a_directory_is_refused_in_one_line(tmp_path, old):
    """A directory where the lock file belongs (stale by its age, or not) is no driver's
    lock: one line that says so, exit code 2, and the directory is left as it is."""
    exp_dir = tmp_path / "dir-lock"
    (exp_dir / LOCK_NAME / "inside").mkdir(parents=True)
    if old:
        then = time.time() - STALE_S - 5
        os.utime(exp_dir / LOCK_NAME, (then, then))
    with pytest.raises(NasproxyError) as info:
        with experiment_lock(exp_dir):
            pass
    assert "is a directory" in str(info.value) and "\n" not in str(info.value)
    assert info.value.exit_code == 2
    assert (exp_dir / LOCK_NAME / "inside").is_dir()
    assert sorted(p.name for p in exp_dir.iterdir()) == [LOCK_NAME]
