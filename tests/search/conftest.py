"""Shared by the search tests: a tiny space with two proxy files, one small local Ray per
module, the sweep's settings, and driver processes that are killed whatever they leave.

Every process a test starts with ``marked`` leads a session of its own and carries a
marker in its environment, so the processes it leaves behind (Ray's agents, raylets,
workers, even when orphaned) are found, by session or by marker, and killed.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nasproxy import results, spaces
from nasproxy.proxies.build import proxy_record, write_proxy
from nasproxy.search import SearchConfig
from nasproxy.train import TrainConfig

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
SMALL = "w8-d1-*-batchnorm-*"  # three architectures of one shape: nine work units
MARK = "NASPROXY_TEST_PROCESS"


@pytest.fixture(scope="package")
def cluster():
    """One small local Ray for the search tests (starting one costs seconds)."""
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
        write_proxy(_proxy(method, digits, indices, epsilon=0.5), path)
        proxies.append(path)
    return {"space": str(space), "proxies": proxies, "root": root}


def _proxy(method: str, data, kept: dict, epsilon: float | None = None, **changes) -> dict:
    """The proxy record nasproxy writes for the per-class index lists ``kept`` of ``data``;
    ``changes`` replace fields afterwards (to make a foreign or damaged one)."""
    chosen = np.sort(np.concatenate([np.asarray(v, dtype=np.int64) for v in kept.values()]))
    return proxy_record(data, chosen, method=method, epsilon=epsilon) | changes


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


def _accuracy_table(exp_dir: Path):
    """The experiment's trials, one row per (train_set, seed, arch), in that order."""
    return results.read_trials(exp_dir).set_index(["train_set", "seed", "arch"]).sort_index()


def _shape(arch_id: str) -> tuple:
    """What units must share to train as one stack: all of the architecture but its
    activation."""
    a = spaces.Arch.from_id(arch_id)
    return (a.width, a.depth, a.norm, a.pool)


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


def default_sigint() -> None:
    """In a started driver, before it runs: SIGINT's default disposition, so that Ctrl-C
    reaches it as a user's would even where the test process inherited it ignored (a child
    keeps an ignored SIGINT ignored, and Python then installs no KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def marked():
    """Start marked processes; afterwards kill whatever of them (and their children) is left."""
    mark = uuid.uuid4().hex
    started: list[subprocess.Popen] = []

    def start(args: list[str], **kwargs) -> subprocess.Popen:
        env = {**os.environ, MARK: mark, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
        proc = subprocess.Popen(
            args, cwd=REPO, env=env, start_new_session=True, preexec_fn=default_sigint, **kwargs
        )
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


def _none_left(marked, grace_s: float = 20) -> dict[int, str]:
    """The marked processes still alive after a grace period (Ray stops its own in seconds)."""
    deadline = time.monotonic() + grace_s
    while marked.left() and time.monotonic() < deadline:
        time.sleep(0.2)
    return marked.left()
