"""Arrays derived from a scoring run (refitted head, Hessian factor, S), cached on disk.

An entry ``NAME`` is two files in one folder: ``NAME.npz`` (the arrays, ``np.savez``,
read back with ``allow_pickle=False``) and ``NAME.json`` (the key the arrays depend on,
the sha256 of the ``.npz`` and each array's shape and dtype). Both are written under a
temporary name and renamed, the arrays first. A read returns the arrays only when the
JSON parses, names the requested key, and the ``.npz`` matches its hash and its shapes;
anything else (missing, torn, damaged, stale) is deleted and read as a miss, so the
caller recomputes: a damaged cache file is never a dead end.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nasproxy.io import atomic_write_json, atomic_writer

FORMAT = "nasproxy-cache/1"


class ArrayCache:
    """The entries of one folder that share ``key`` (what every entry depends on)."""

    def __init__(
        self, folder: str | Path, key: dict[str, Any], progress: Callable[[str], None] | None
    ):
        self.folder = Path(folder)
        self.key = {"format": FORMAT, **key}
        self.progress = progress

    def has(self, name: str) -> bool:
        """Whether an entry ``name`` is on disk (unverified: ``load`` checks it)."""
        return any(path.exists() for path in self._paths(name))

    def load(self, name: str) -> dict[str, np.ndarray] | None:
        """The arrays stored as ``name``, verified; None (and the entry removed) otherwise."""
        meta_path, data_path = self._paths(name)
        if not self.has(name):
            return None
        try:
            meta = json.loads(meta_path.read_text())
            if meta.get("key") != self.key:
                raise ValueError("it was stored for another scoring run or setting")
            if _sha256(data_path) != meta.get("sha256"):
                raise ValueError("its data does not match its hash")
            with np.load(data_path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
            shapes = {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()}
            if shapes != meta.get("arrays"):
                raise ValueError("its arrays differ from the ones recorded")
        except Exception as exc:  # any damage at all (bad zip, bad JSON, I/O) is a miss
            self._note(f"cache {data_path} is unusable ({exc}); recomputing it")
            self.remove(name)
            return None
        return arrays

    def store(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        """Store ``arrays`` as ``name``; a cache that cannot be written is only reported."""
        meta_path, data_path = self._paths(name)
        try:
            with atomic_writer(data_path) as fh:
                np.savez(fh, **arrays)
            meta = {
                "key": self.key,
                "sha256": _sha256(data_path),
                "arrays": {k: [list(v.shape), str(v.dtype)] for k, v in arrays.items()},
            }
            atomic_write_json(meta_path, meta)
        except OSError as exc:
            self._note(f"cannot write cache {data_path} ({exc.strerror or exc}); not cached")
            self.remove(name)

    def remove(self, name: str) -> None:
        """Delete an entry (both files), if present."""
        for path in self._paths(name):
            try:
                path.unlink(missing_ok=True)
            except OSError:
                pass

    def _paths(self, name: str) -> tuple[Path, Path]:
        return self.folder / f"{name}.json", self.folder / f"{name}.npz"

    def _note(self, line: str) -> None:
        if self.progress is not None:
            self.progress(line)


def _sha256(path: Path) -> str:
    with open(path, "rb") as fh:
        return hashlib.file_digest(fh, "sha256").hexdigest()
