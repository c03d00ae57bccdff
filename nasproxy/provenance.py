"""Where a result came from: the commit, date and device, and the command of a benchmark.

One helper for every record that says so: the search's manifest (``git_commit``,
``utc_now``), each unit row's device (``device_name``) and the record every script under
``scripts/`` writes beside its numbers (``provenance``), so a number in ``results/`` can
be traced to the code, the hardware and the command that produced it (results/README.md).
Importing this module is cheap: torch is imported by the functions that need it.
"""

from __future__ import annotations

import os
import platform
import shlex
import subprocess
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nasproxy import __version__

if TYPE_CHECKING:
    import torch

REPO = Path(__file__).resolve().parent.parent


def git_commit(where: Path | None = None) -> str:
    """``git rev-parse HEAD`` of the repository holding ``where`` (default: this package),
    or "unknown" outside a repository or without git."""
    where = where or Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "-C", str(where), "rev-parse", "HEAD"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return out.stdout.strip() or "unknown"


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


def device_name(device: torch.device) -> str:
    """The hardware's name as every unit row records it: the GPU's name, else "cpu"."""
    if device.type == "cuda":
        import torch

        return torch.cuda.get_device_name(device)
    return "cpu"


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``, else what the platform reports)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def command(argv: Sequence[str] | None = None) -> str:
    """The command that ran this script, as a shell line (its path relative to the repo)."""
    script = Path(sys.argv[0]).resolve()
    shown = script.relative_to(REPO) if script.is_relative_to(REPO) else Path(sys.argv[0])
    args = sys.argv[1:] if argv is None else list(argv)
    return shlex.join(["python", str(shown), *args])


def provenance(
    device: torch.device | str = "cpu", argv: Sequence[str] | None = None
) -> dict[str, Any]:
    """The record a benchmark writes beside its numbers: command, commit, date, device.

    ``device`` is where the measured work ran; ``argv`` the script's arguments when its
    ``main`` was called with its own list (default: ``sys.argv``). On a CPU the device's
    name is the CPU model.
    """
    import torch

    dev = torch.device(device)
    return {
        "command": command(argv),
        "git_commit": git_commit(),
        "date": utc_now(),
        "device": str(dev),
        "device_type": dev.type,
        "device_name": device_name(dev) if dev.type == "cuda" else cpu_model(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "nasproxy": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
