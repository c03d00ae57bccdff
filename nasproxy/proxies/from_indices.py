"""``build-proxy --from-indices``: a selection made elsewhere, as a proxy method.

``read_indices`` reads the file (``.npy``/``.npz`` never unpickled, JSON, or text),
``infer_per_class`` the budget it keeps, and ``indices_method`` wraps it as a ``Method``
that ``build_proxy`` runs like any other: checked before anything else runs, and measured
like every method (its epsilon from a cached scoring run, or one ``--measure-epsilon``
makes). Recorded as method ``from-indices`` with the file and its sha256 as the source.
"""

from __future__ import annotations

import hashlib
import json
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.proxies.base import SelectionContext
from nasproxy.proxies.proxy_file import check_selection
from nasproxy.proxies.registry import Method

INTEGER = re.compile(r"[+-]?[0-9]+")


def read_indices(path: str | Path) -> np.ndarray:
    """Train-split indices from a file: ``.npy`` or ``.npz`` with one array (integers, never
    unpickled), ``.json`` (a list of integers) or text (integers separated by whitespace or
    commas); the suffix in any case."""
    path = Path(path)
    suffix = path.suffix.lower()
    try:
        if suffix in (".npy", ".npz"):
            values: Any = _read_numpy(path, suffix)
        elif suffix == ".json":
            try:
                values = json.loads(path.read_bytes())
            except (ValueError, UnicodeError) as exc:
                raise NasproxyError(f"indices file {path} is not valid JSON ({exc})") from None
            if not isinstance(values, list) or not all(
                isinstance(i, int) and not isinstance(i, bool) for i in values
            ):
                raise NasproxyError(f"indices file {path} is not a JSON list of integers")
        else:
            try:
                words = path.read_bytes().decode("utf-8").replace(",", " ").split()
            except UnicodeError:
                raise NasproxyError(
                    f"indices file {path} is not text; give a .npy, .npz, .json or text file"
                ) from None
            bad = next((w for w in words if not INTEGER.fullmatch(w)), None)
            if bad is not None:
                raise NasproxyError(f"indices file {path}: {bad!r} is not an integer")
            values = [int(w) for w in words]
    except OSError as exc:
        raise NasproxyError(f"cannot read indices file {path} ({exc.strerror or exc})") from None
    return np.asarray(values)


def _read_numpy(path: Path, suffix: str) -> np.ndarray:
    """The one array of a ``.npy`` or ``.npz`` file, never unpickled."""
    try:
        loaded = np.load(path, allow_pickle=False)
        if suffix == ".npy" or not isinstance(loaded, np.lib.npyio.NpzFile):
            if not isinstance(loaded, np.ndarray):
                raise ValueError("not an array")
            return loaded
        with loaded:
            if len(loaded.files) != 1:
                raise ValueError(f"it holds {len(loaded.files)} arrays, not one")
            return loaded[loaded.files[0]]
    except (ValueError, EOFError, zipfile.BadZipFile, KeyError) as exc:
        raise NasproxyError(
            f"indices file {path} is not a plain {suffix} of integers ({exc})"
        ) from None


def infer_per_class(indices: np.ndarray, data: Dataset, source: str) -> int:
    """The per-class budget a selection keeps: the same count of every class, else refused."""
    array = check_selection(indices, data, None, source)
    counts = np.bincount(data.y_train.numpy()[array], minlength=data.num_classes)
    if counts.min() != counts.max():
        low, high = int(counts.argmin()), int(counts.argmax())
        raise NasproxyError(
            f"{source} keeps {counts[low]} images of class {data.classes[low]!r} but "
            f"{counts[high]} of {data.classes[high]!r}; a proxy keeps the same number of "
            "every class (give --per-class to say how many)"
        )
    return int(counts[0])


def indices_method(path: str | Path, data: Dataset, per_class: int | None) -> tuple[Method, int]:
    """A ``Method`` that keeps the indices listed in ``path``, and its per-class budget
    (``per_class``, or the count of every class in the file when None). The indices are
    checked now, before anything else runs; the method reads no scoring run and has no
    randomness (one draw whatever the seeds)."""
    path = Path(path)
    source = f"indices file {path}"
    values = read_indices(path)
    if per_class is None:
        per_class = infer_per_class(values, data, source)
    kept = check_selection(values, data, per_class, source)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()

    def select(ctx: SelectionContext) -> np.ndarray:
        return kept

    origin = f"{path} (sha256 {digest})"
    return Method("from-indices", origin, select, builtin=False, deterministic=True), per_class
