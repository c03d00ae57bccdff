"""Where a measured number came from: the command, commit, date and device of a benchmark.

Every script under ``scripts/`` that writes a result puts ``provenance(device)`` into it,
so a number in ``results/`` can be traced to the code, the hardware and the command that
produced it (results/README.md).
"""

from __future__ import annotations

import os
import platform
import shlex
import sys
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from nasproxy import __version__
from nasproxy.results import git_commit

REPO = Path(__file__).resolve().parent.parent


def utc_now() -> str:
    """The current UTC time, ISO 8601 to the second."""
    return datetime.now(UTC).isoformat(timespec="seconds")


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
    ``main`` was called with its own list (default: ``sys.argv``).
    """
    dev = torch.device(device)
    name = torch.cuda.get_device_name(dev) if dev.type == "cuda" else cpu_model()
    return {
        "command": command(argv),
        "git_commit": git_commit(),
        "date": utc_now(),
        "device": str(dev),
        "device_type": dev.type,
        "device_name": name,
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "versions": {
            "nasproxy": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
        },
    }
