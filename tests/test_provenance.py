"""The provenance record every benchmark writes: checked against git, the clock and the argv."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from nasproxy.provenance import provenance

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
