"""Where and how result files are written: atomically, and only where writing can succeed.

A reader never sees a half-written file, and an output location that cannot be written is
refused before the work that would fill it starts. A written file has the mode the umask
gives any new file (not the private mode of its temporary). What users are promised:
docs/reliability.md.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any, BinaryIO

from nasproxy.errors import NasproxyError

# Result files and folders get these modes less the umask, as open() and mkdir() give them:
# readable by others under the usual umask 0022 (results on storage a cluster shares).
FILE_MODE = 0o666
DIR_MODE = 0o777


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike[str]) -> Iterator[BinaryIO]:
    """A binary file that appears as ``path`` (renamed into place, synced) only when the
    block ends without an error; otherwise nothing is left behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, FILE_MODE & ~umask())  # mkstemp makes it private (0600)
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def umask() -> int:
    """The process's file mode creation mask (read without changing it, where Linux allows)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (a brief, process-wide change)
    os.umask(mask)
    return mask


def private_to_default(path: str | os.PathLike[str]) -> None:
    """Give a folder made by ``tempfile.mkdtemp`` (mode 0700) the mode the umask asks for."""
    os.chmod(path, DIR_MODE & ~umask())


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to a temporary file beside ``path`` and rename it into place."""
    with atomic_writer(path) as fh:
        fh.write(data)
    return Path(path)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` (UTF-8) atomically."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, key-sorted JSON atomically."""
    return atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def check_output_dir(path: str | os.PathLike[str], what: str = "output folder") -> Path:
    """Refuse, before any work starts, a folder that cannot be created or written.

    ``path`` may not exist yet; its nearest existing ancestor must then be a writable folder.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise NasproxyError(f"{what} {path} is a file, not a folder")
    _check_writable(path, path, what)
    return path


def check_output_file(path: str | os.PathLike[str], what: str = "output file") -> Path:
    """Refuse, before any work starts, a file path that cannot be written (atomically)."""
    path = Path(path)
    if path.is_dir():
        raise NasproxyError(f"{what} {path} is a folder, not a file")
    _check_writable(path.parent, path, what)
    return path


def _check_writable(folder: Path, target: Path, what: str) -> None:
    """``folder`` exists as a writable folder, or can be created under its nearest ancestor."""
    existing = folder
    while not existing.exists() and existing.parent != existing:
        existing = existing.parent
    if not existing.is_dir():
        raise NasproxyError(f"cannot write {what} {target}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise NasproxyError(f"cannot write {what} {target}: {existing} is not writable")
