"""The command line: one-line errors for bad inputs, exit codes, interrupts, progress."""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from rich.console import Console

import nasproxy.pipeline as pipeline_module
import nasproxy.proxies.build as build_module
import nasproxy.search as search_module
import nasproxy.search.sweep as sweep_module
from nasproxy import results
from nasproxy.cli import main
from nasproxy.errors import NasproxyError
from nasproxy.search import Progress, SearchConfig
from nasproxy.search.trial import make_row
from nasproxy.spaces import Arch
from nasproxy.train import TrainRecord
from tests.search.conftest import default_sigint

REPO = Path(__file__).resolve().parent.parent
TINY_SPACE = """name: tiny2
options:
  width: [8]
  depth: [1]
  act: [relu, sigmoid]
  norm: [none]
  pool: [maxpooling]
"""


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasproxy: error: "), err
    return err[0]


def _proxy_file(path: Path, digits, indices: dict) -> Path:
    """A proxy file of ``digits`` whose per-class indices are ``indices``, valid or not."""
    record = build_module.proxy_record(digits, np.array([0]), method="random")
    record |= {"indices": indices, "n_images": sum(len(v) for v in indices.values())}
    return build_module.write_proxy(record, path)


def test_bad_outputs_and_inputs_are_one_line_errors_not_tracebacks(
    tmp_path, digits, cache_root, capsys, monkeypatch
):
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    space = tmp_path / "tiny2.yaml"
    space.write_text(TINY_SPACE)
    huge = _proxy_file(tmp_path / "huge.json", digits, {"0": [10**30]})

    def no_compute(*args, **kwargs):
        raise AssertionError("the work started before its output location was checked")

    monkeypatch.setattr(build_module, "scoring_run", no_compute)
    monkeypatch.setattr(sweep_module, "_run_pending", no_compute)
    data = ["--dataset", "digits", "--data-root", str(cache_root)]
    search = ["search", *data, "--space", str(space), "--epochs", "1"]
    cases = {
        "build-proxy --out under a file": (
            ["build-proxy", "--method", "random", *data, "--out", str(a_file / "p.json")],
            "is a file, not a folder",
        ),
        "build-proxy --out a folder": (
            ["build-proxy", "--method", "random", *data, "--out", str(tmp_path)],
            "is a folder, not a file",
        ),
        "search --results-dir a file": (
            [*search, "--whole", "--name", "x", "--results-dir", str(a_file)],
            "is a file, not a folder",
        ),
        "search index too large for an integer": (
            [*search, "--proxy", str(huge), "--name", "x", "--results-dir", str(tmp_path)],
            "outside the train split",
        ),
        "train on a device that does not exist": (
            ["train", "--arch", "w8-d1-relu-none-none", *data, "--device", "cuda:99"],
            "not available",
        ),
        "train on a device that is no device": (
            ["train", "--arch", "w8-d1-relu-none-none", *data, "--device", "gpu0"],
            "unknown device",
        ),
        "a validation split that leaves a class no training image": (
            ["train", "--arch", "w8-d1-relu-none-none", *data, "--val-fraction", "0.999"],
            "no training image",
        ),
        "run --results-dir a file": (
            [
                "run",
                "--preset",
                "smoke",
                "--data-root",
                str(cache_root),
                "--results-dir",
                str(a_file),
            ],
            "is a file, not a folder",
        ),
    }
    for what, (argv, message) in cases.items():
        assert main(argv) == 2, what
        assert message in _one_line_error(capsys), what
    assert a_file.read_text() == "x" and not (tmp_path / "x").exists()
    with pytest.raises(SystemExit) as usage:  # argparse's usage error
        main(["space", "convnet720", "--num-classes", "0"])
    assert usage.value.code == 2 and "positive integer" in capsys.readouterr().err


def _unit(train_set: str, arch: str, status: str) -> dict:
    reason = "" if status == "ok" else status
    record = TrainRecord(arch, status, reason, seed=0, epochs=1, n_train=10)
    return make_row(Arch.from_id(arch), train_set, "", record)


@pytest.mark.parametrize(
    "statuses, code", [(("ok", "ok"), 0), (("ok", "diverged"), 0), (("ok", "failed"), 3)]
)
def test_search_exit_code_says_whether_units_failed(
    tmp_path, digits, capsys, monkeypatch, statuses, code
):
    """The sweep's own outcome (stubbed here) decides the exit code; the table is the truth."""
    archs = ["w8-d1-relu-none-none", "w8-d1-sigmoid-none-none"]

    def finished_sweep(cfg, progress=None):
        exp_dir = Path(cfg.results_dir) / cfg.name
        for arch, status in zip(archs, statuses, strict=True):
            results.write_unit(exp_dir, _unit("whole", arch, status))
        results.consolidate(exp_dir)
        return exp_dir

    monkeypatch.setattr(search_module, "run_search", finished_sweep)
    argv = ["search", "--dataset", "digits", "--whole", "--name", "e", "--results-dir"]
    assert main([*argv, str(tmp_path)]) == code
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "e")  # the experiment is printed either way
    if code:
        assert err.count("\n") == 1 and "1 of 2 work units failed" in err
    else:
        assert err == ""


@pytest.mark.slow
def test_interrupt_exits_130_with_one_line_and_the_store_resumes(tmp_path, cache_root):
    space = tmp_path / "tiny2.yaml"
    space.write_text(TINY_SPACE)
    command = [
        sys.executable, "-m", "nasproxy.cli", "search", "--dataset", "digits",
        "--data-root", str(cache_root), "--space", str(space), "--whole", "--seeds", "3",
        "--epochs", "2", "--trial-size", "1", "--name", "cut", "--results-dir", str(tmp_path),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    units = tmp_path / "cut" / "units"
    proc = subprocess.Popen(
        command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        start_new_session=True,  # its own process group: everything it starts is found below
        preexec_fn=default_sigint,  # Ctrl-C reaches it as a user's would
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 240
        while not list(units.glob("*/s*/*.json")) and proc.poll() is None:
            assert time.monotonic() < deadline, "no unit finished in time"
            time.sleep(0.1)
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        _reap_group(proc.pid)
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 130, lines
    assert lines[-1] == "nasproxy: interrupted" and "Traceback" not in err.decode()
    done = len(list(units.glob("*/s*/*.json")))
    assert 1 <= done < 6
    # the store resumes: the same command finishes the rest and exits 0
    rest = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, timeout=300)
    assert rest.returncode == 0, rest.stderr.decode()[-2000:]
    table = results.read_trials(tmp_path / "cut")
    assert len(table) == 6 and not table.duplicated(["arch", "seed"]).any()


def _reap_group(pgid: int) -> None:
    """Give the interrupted driver's process group 20 s to end, then kill what is left."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    os.killpg(pgid, signal.SIGKILL)
    pytest.fail("processes of the interrupted run were still running 20 s later")


def _event(done: int, status: str | None, message: str = "") -> Progress:
    row = None if status is None else _unit("whole", "w8-d1-relu-none-none", status)
    if row is not None:
        row["val_acc"] = 0.5
    return Progress(done, 4, 0, 0, 1.0, 3.0, row, message)


def test_search_progress_is_a_bar_on_a_terminal_and_plain_lines_otherwise(capsys):
    from nasproxy.cli import SearchProgress

    terminal = io.StringIO()
    console = Console(file=terminal, force_terminal=True, width=80, color_system=None)
    with SearchProgress(console) as progress:
        progress(_event(0, None, "4 work units to run [/tmp]"))
        progress(_event(1, "ok"))
        progress(_event(2, "diverged"))
    shown = terminal.getvalue()
    assert "nasproxy search: 4 work units to run [/tmp]" in shown  # verbatim, not markup
    assert "2/4" in shown and "━" in shown  # rich's bar and its count
    assert "diverged" in shown  # a unit that did not train well stays on screen
    assert capsys.readouterr().err == ""

    plain = Console(file=io.StringIO(), force_terminal=False)
    with SearchProgress(plain) as progress:
        progress(_event(0, None, "4 work units to run"))
        progress(_event(1, "ok"))
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "nasproxy search: 4 work units to run"
    assert err[1].startswith("[1/4] ok       w8-d1-relu-none-none whole s0 val 0.500")
    assert np.all(["\x1b" not in line for line in err])


class _Stop(NasproxyError):
    """Ends a stubbed command once it has shown what it would run."""


def _search_config_of(argv: list[str], monkeypatch) -> SearchConfig:
    """The SearchConfig that ``nasproxy search|run ARGV`` hands to ``run_search`` (stubbed)."""
    seen: list[SearchConfig] = []

    def capture(cfg, progress=None):
        seen.append(cfg)
        raise _Stop("stopped before training")

    monkeypatch.setattr(search_module, "run_search", capture)  # as `search` calls it
    monkeypatch.setattr(pipeline_module, "run_search", capture)  # as `run` calls it
    monkeypatch.setattr(pipeline_module, "build_proxies", lambda *a, **k: [])
    assert main(argv) == 2
    assert len(seen) == 1
    return seen[0]


@pytest.mark.parametrize("text, seeds", [("3", (0, 1, 2)), ("3,", (3,)), ("0,4", (0, 4))])
def test_search_seeds_and_run_set_seeds_mean_the_same(
    tmp_path, cache_root, monkeypatch, capsys, text, seeds
):
    """`search --seeds 3` and `run --set seeds=3` both mean seeds 0, 1, 2 (a count)."""
    common = ["--results-dir", str(tmp_path), "--data-root", str(cache_root)]
    search = ["search", "--dataset", "digits", "--whole", "--name", "e", "--seeds", text]
    run = ["run", "--preset", "smoke", "--set", f"seeds={text}"]
    assert _search_config_of([*search, *common], monkeypatch).seeds == seeds
    capsys.readouterr()
    assert _search_config_of([*run, *common], monkeypatch).seeds == seeds
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert len(notices) == ("," not in text)  # the changed meaning is said, once


@pytest.mark.parametrize(
    "items, seeds, notice",
    [
        (["seeds=3", "seeds=5,"], (5,), None),
        (["seeds=5,", "seeds=2"], (0, 1), "seeds=2 now means seeds 0..1"),
        (["seeds= 4 "], (0, 1, 2, 3), "seeds=4 now means seeds 0..3"),
    ],
)
def test_the_seeds_notice_says_what_the_run_takes(
    tmp_path, cache_root, monkeypatch, capsys, items, seeds, notice
):
    """The notice is of the seeds the run takes (the last ``seeds`` item, as parsed), not
    of an item a later one replaced."""
    argv = ["run", "--preset", "smoke", "--results-dir", str(tmp_path)]
    argv += ["--data-root", str(cache_root), *(f"--set={item}" for item in items)]
    assert _search_config_of(argv, monkeypatch).seeds == seeds
    notices = [line for line in capsys.readouterr().err.splitlines() if "notice" in line]
    assert [notice in line for line in notices] == ([] if notice is None else [True])


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--name", "e", "--proxy", "p.json", "--whole-top", "2"],
        ["search", "--name", "e", "--whole-archs", "w32-d1-*"],
        ["search", "--name", "e", "--whole-sample", "3"],
        ["run", "--preset", "find", "--set", "whole=none"],
    ],
)
def test_choosing_the_whole_split_s_architectures_turns_it_on(
    tmp_path, cache_root, monkeypatch, argv
):
    """``--whole-top``, ``--whole-archs`` and ``--whole-sample`` imply ``--whole``."""
    common = ["--results-dir", str(tmp_path), "--data-root", str(cache_root)]
    assert _search_config_of([*argv, *common], monkeypatch).whole is True
    assert _search_config_of(["search", "--name", "e", "--proxy", "p.json", *common],
                             monkeypatch).whole is False  # fmt: skip


@pytest.mark.parametrize("bad", ["0", "", "a", "1,-2", "-1", "²"])
def test_bad_seeds_are_one_line_errors_for_both_commands(tmp_path, capsys, bad):
    for argv in (
        ["search", "--whole", "--name", "e", f"--seeds={bad}"],
        ["run", "--preset", "smoke", "--set", f"seeds={bad}"],
    ):
        assert main([*argv, "--results-dir", str(tmp_path)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "seeds" in err, err


def test_run_address_reaches_the_search_and_is_checked_before_the_proxies(
    tmp_path, cache_root, monkeypatch, capsys
):
    """`run --address` is the search's cluster; one that is not a Ray cluster stops it first."""
    common = ["--results-dir", str(tmp_path), "--data-root", str(cache_root)]

    def no_build(*args, **kwargs):
        raise AssertionError("proxies built for a cluster that does not answer")

    with monkeypatch.context() as patch:
        patch.setattr(pipeline_module, "build_proxies", no_build)
        with socket.socket() as server:  # answers TCP, but is not Ray
            server.bind(("127.0.0.1", 0))
            server.listen()
            address = f"127.0.0.1:{server.getsockname()[1]}"
            assert main(["run", "--preset", "smoke", "--address", address, *common]) == 2
            err = capsys.readouterr().err
            assert err.count("\n") == 1 and "is not a Ray cluster" in err, err
        assert main(["run", "--preset", "smoke", "--address", address, *common]) == 2  # closed
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "cannot reach the Ray cluster" in err, err
    assert not (tmp_path / "smoke").exists()

    checked: list[str | None] = []
    monkeypatch.setattr(sweep_module, "check_address", checked.append)  # a cluster is up
    argv = ["run", "--preset", "smoke", "--address", address, *common]
    cfg = _search_config_of(argv, monkeypatch)
    assert cfg.address == address and checked == [address]
    assert _search_config_of(["run", "--preset", "smoke", *common], monkeypatch).address is None


@pytest.mark.parametrize(
    "seeds, message",
    [("0", "a count of at least 1"), ("\u00b2", "or a comma list"), ("1,x", "comma list")],
)
def test_bad_seeds_are_one_line(capsys, seeds, message):
    assert main(["search", "--name", "x", "--seeds", seeds]) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err


@pytest.fixture
def unwritable(tmp_path):
    """A folder this process cannot write in: a read-only one, or for root (who writes
    anywhere) /proc/self, which the kernel keeps unwritable."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
    elif Path("/proc/self").is_dir() and not os.access("/proc/self", os.W_OK):
        yield Path("/proc/self")
    else:
        pytest.skip("no folder here that this process cannot write")


def test_every_path_argument_refuses_a_file_a_folder_and_an_unwritable_place(
    tmp_path, cache_root, unwritable, capsys, monkeypatch
):
    """Each path argument of search, run, report, build-proxy, train and units, given a file
    where a folder belongs, a folder where a file belongs, a missing input or a place that
    cannot be written: one line, exit code 2, nothing written, no work started."""
    from tests.test_settings import _reach, _Reached

    monkeypatch.setattr(sweep_module, "experiment_lock", _reach)
    monkeypatch.setattr(pipeline_module, "experiment_lock", _reach)
    monkeypatch.setattr(build_module, "scoring_run", _reach)
    monkeypatch.setattr(build_module, "write_proxy", _reach)
    monkeypatch.setattr("nasproxy.train.train", _reach)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    a_folder = tmp_path / "a-folder.yaml"  # a folder with a file's name
    a_folder.mkdir()
    missing = tmp_path / "missing.json"
    a_module = tmp_path / "a-folder.py"
    a_module.mkdir()
    cannot = unwritable / "nasproxy-cannot"
    data = ["--dataset", "digits", "--data-root", str(cache_root)]
    search = ["search", "--name", "e", "--whole", *data]
    run = ["run", "--preset", "smoke", "--set", "methods=random"]
    build = ["build-proxy", "--method", "random", "--dataset", "digits"]
    train = ["train", "--arch", "w8-d1-relu-none-none", "--dataset", "digits"]
    folders = [a_file, a_file / "under", cannot]  # outputs that must be writable folders
    cases = [
        *[[*search, "--results-dir", str(p)] for p in folders],
        *[[*run, "--data-root", str(cache_root), "--results-dir", str(p)] for p in folders],
        *[[*run, "--data-root", str(p)] for p in folders],  # the scoring cache is written
        # read-only data roots are read (search, train, build-proxy); run writes its cache
        *[[*build, "--data-root", str(p), "--out", "p.json"] for p in folders[:2]],
        *[[*command, "--data-root", str(p)] for command in (search, train) for p in folders[:2]],
        *[[*build, *data, "--out", str(p)] for p in (a_folder, a_file / "p.json", cannot)],
        *[[*build, *data, "--from-indices", str(p)] for p in (a_folder, missing)],
        *[[*build, *data, "--method", f"{p}:select"] for p in (a_module, tmp_path / "no.py")],
        *[[*search, "--proxy", str(p)] for p in (a_folder, missing)],
        *[[*search, "--space", str(p)] for p in (a_folder, tmp_path / "missing.yaml")],
        *[[*search, "--dataset", f"imagefolder:{p}"] for p in (a_file, missing)],
        *[["report", "e", "--results-dir", str(p)] for p in (a_file, missing, unwritable)],
        *[["units", "pack", "e", "--out", str(p)] for p in (a_folder, a_file / "a.tgz", cannot)],
        *[["units", "pack", "e", "--results-dir", str(p), "--out", "a.tgz"] for p in folders],
        *[["units", "unpack", str(p)] for p in (a_file, a_folder, missing)],
        *[["units", "unpack", str(a_file), "--results-dir", str(p)] for p in folders],
        *[
            ["units", "rates", "e", "--since", "0", "--results-dir", str(p)]
            for p in (a_file, missing)
        ],
    ]
    for argv in cases:
        try:
            assert main(argv) == 2, argv
        except _Reached:
            raise AssertionError(f"{argv}: the work started") from None
        assert _one_line_error(capsys), argv
    assert a_file.read_text() == "x" and not list(a_folder.iterdir())
    assert not list(work.iterdir()) and not missing.exists()


def test_run_refuses_a_setting_given_both_as_a_flag_and_as_set(tmp_path, capsys, monkeypatch):
    """``--results-dir A`` beside ``--set results_dir=B``: neither silently wins."""
    from tests.test_settings import _reach

    monkeypatch.setattr(pipeline_module, "experiment_lock", _reach)  # no run, ever
    argv = ["run", "--preset", "smoke", "--results-dir", str(tmp_path / "a")]
    assert main([*argv, "--set", f"results_dir={tmp_path / 'b'}"]) == 2
    assert "--results-dir and --set results_dir give the same setting" in _one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_refusals_name_the_settings_as_the_user_wrote_them(tmp_path, capsys):
    """``run --set`` keys by key, ``search`` flags by flag, ``run``'s own flags by flag."""
    results = ["--results-dir", str(tmp_path)]
    assert main(["run", "--preset", "find", "--set", "whole=false", *results]) == 2
    line = _one_line_error(capsys)
    assert "whole_archs, whole_sample and whole_top need whole" in line and "--" not in line
    argv = ["search", "--name", "e", "--proxy", "p.json", "--no-whole", "--whole-top", "3"]
    assert main([*argv, *results]) == 2
    assert "--whole-archs, --whole-sample and --whole-top need --whole" in _one_line_error(capsys)
    assert main(["run", "--preset", "smoke", "--set", "methods=", *results]) == 2
    assert "methods needs at least one item" in _one_line_error(capsys)
    assert main(["run", "--preset", "find", "--set", "whole_by=random", "--set", "whole_top=none",
                 *results]) == 2  # fmt: skip
    assert "whole_by chooses the proxy of whole_top: give whole_top K" in _one_line_error(capsys)
    assert not list(tmp_path.iterdir())


def test_space_describes_lists_and_samples_cells_and_refuses_a_bad_id(capsys) -> None:
    short = "c3-no.c3-sk.c3.ap"
    text = "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|"
    records = []
    for given in (short, text):
        assert main(["space", "nb201", "--describe", given]) == 0
        records.append(json.loads(capsys.readouterr().out))
    assert records[0] == records[1] and records[0]["id"] == short
    assert records[0]["index"] == records[0]["benchmark_index"] and records[0]["params"] == 802426
    assert main(["space", "nb201", "--sample", "10", "--seed", "2"]) == 0
    sample = capsys.readouterr().out.split()
    assert len(set(sample)) == 10
    assert main(["space", "nb201", "--archs", "|none~0|+*"]) == 0
    assert len(capsys.readouterr().out.split()) == 5**5
    for bad in ("c3-no.c9-sk.c3.ap", "|none~0|+|none~0|none~1|", "|none~0|+|none~0|none~2|+|a~0|"):
        assert main(["space", "nb201", "--describe", bad]) == 2
        captured = capsys.readouterr()
        assert captured.out == "" and captured.err.count("\n") == 1
        assert captured.err.startswith("nasproxy: error: bad cell")
