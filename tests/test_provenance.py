"""The provenance helpers: checked against git, the clock, the argv and what an import loads."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nasproxy.provenance import device_name, git_commit, provenance, utc_now

REPO = Path(__file__).resolve().parent.parent


def _head() -> str:
    out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True)
    return out.stdout.strip() or "unknown"


def test_the_record_names_this_commit_this_device_now_and_the_arguments() -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    record = provenance("cpu", ["--n", "5", "--note", "two words"])
    assert record["git_commit"] == _head()
    assert before <= datetime.fromisoformat(record["date"]) <= before + timedelta(minutes=1)
    assert (record["device"], record["device_type"]) == ("cpu", "cpu")
    assert record["device_name"] == record["cpu_model"] and record["cpu_model"]
    words = shlex.split(record["command"])
    assert words[0] == "python" and words[2:] == ["--n", "5", "--note", "two words"]


def test_a_benchmark_script_writes_the_record(tmp_path: Path) -> None:
    args = ["--n", "400", "--dim", "8", "--per-class", "5", "--out", str(tmp_path)]
    script = REPO / "scripts" / "bench_influence.py"
    subprocess.run([sys.executable, str(script), *args], check=True, capture_output=True)
    record = json.loads((tmp_path / "influence-cpu.json").read_text())
    assert record["command"] == shlex.join(["python", "scripts/bench_influence.py", *args])
    assert record["git_commit"] == _head() and record["device_type"] == "cpu"


def test_git_commit_outside_a_repository_is_unknown(tmp_path: Path) -> None:
    assert git_commit(tmp_path) == "unknown"
    assert git_commit(REPO) == _head()


def test_a_unit_row_names_a_cpu_cpu_and_the_date_is_utc_to_the_second() -> None:
    import torch

    assert device_name(torch.device("cpu")) == "cpu"
    now = datetime.fromisoformat(utc_now())
    assert now.utcoffset() == timedelta(0) and now.microsecond == 0


def test_importing_it_does_not_import_torch_or_the_results_store() -> None:
    code = "import sys, nasproxy.provenance; print(sorted({'torch', 'pandas'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"
