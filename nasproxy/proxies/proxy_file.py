"""The proxy file: its format, and the one place it is made, written, read and checked.

A proxy file (JSON, format ``nasproxy-proxy/1``) records the method, its options, the
seed, the dataset and its fingerprint, the kept train-split indices per class name,
n_images and epsilon; a build adds its ``draw`` (the seed, null for a method with no
randomness: ``nasproxy.proxies.draws``), the backbone and the scoring artifact's hash,
diagnostics, timings and where it ran (``platform``: device, CPU threads, machine, CPU
model, torch; the scoring run's own is ``backbone.platform``, null for runs cached by
earlier versions). ``proxy_record`` is the one place a record is made (by
``build_proxy``, and by scripts and tests that need a proxy file without a build),
``write_proxy`` the one writer, ``open_proxy`` the one reader of the bytes (format and
required fields checked, never unpickled) and ``proxy_indices`` the one check of a
record against a dataset (fingerprint and every index); ``load_proxy`` is both.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from nasproxy.data import dataset_name
from nasproxy.errors import NasproxyError
from nasproxy.io import atomic_write_json

if TYPE_CHECKING:
    from nasproxy.data import Dataset

FORMAT = "nasproxy-proxy/1"
REQUIRED = ("method", "fingerprint", "indices")  # what a sweep reads before the dataset
HASH_CHARS = 12


@dataclass(frozen=True)
class ProxyFile:
    """A proxy file as read: its path, its record, and the hash of its bytes (the proxy
    hash of manifests written before ``selection_hash``)."""

    path: Path
    record: dict[str, Any]
    file_hash: str


def proxy_record(
    data: Dataset,
    kept: np.ndarray,
    *,
    method: str,
    per_class: int | None = None,
    seed: int = 0,
    params: dict[str, Any] | None = None,
    epsilon: float | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The proxy record (format ``nasproxy-proxy/1``) that keeps the train-split indices
    ``kept`` of ``data``: the indices listed per class name, their count, the dataset and
    its fingerprint, the method, its budget, seed, parameters and epsilon, then ``extra``
    fields (``build_proxy`` adds the backbone, diagnostics and timings). ``kept`` is checked
    as a method's selection is (``check_selection``), so the record reads back with
    ``proxy_indices``; ``write_proxy`` writes it.
    """
    kept = check_selection(kept, data, per_class, f"the kept set of the {method} proxy")
    labels = data.y_train.numpy()
    record = {
        "format": FORMAT,
        "method": method,
        "per_class": per_class,
        "seed": seed,
        "params": dict(params or {}),
        "dataset": data.spec,
        "fingerprint": data.fingerprint,
        "indices": {name: kept[labels[kept] == c].tolist() for c, name in enumerate(data.classes)},
        "n_images": int(len(kept)),
        "epsilon": epsilon,
    }
    clash = sorted(record.keys() & extra.keys())
    if clash:  # these follow from data and kept: an extra field must not contradict them
        raise NasproxyError(f"proxy record: {', '.join(clash)} cannot be given as extra fields")
    return record | extra


def check_selection(result: Any, data: Dataset, per_class: int | None, source: str) -> np.ndarray:
    """``result`` as sorted int64 train-split indices, refused in one line unless it is a
    flat list of distinct integers in range with ``per_class`` of every class (when given)."""
    n = len(data.y_train)
    try:
        array = np.asarray(result)
    except Exception:  # a ragged or exotic object
        raise NasproxyError(f"{source} gave {type(result).__name__}, not indices") from None
    if array.ndim == 0 and array.dtype == object:  # None, a generator, any non-sequence
        raise NasproxyError(f"{source} gave {type(result).__name__}, not a list of indices")
    if array.ndim != 1 or not (array.size == 0 or np.issubdtype(array.dtype, np.integer)):
        raise NasproxyError(
            f"{source} gave an array of shape {array.shape} and dtype {array.dtype}, "
            "not a flat list of integer indices"
        )
    indices = array.astype(np.int64)
    outside = indices[(indices < 0) | (indices >= n)]
    if outside.size:
        raise NasproxyError(
            f"{source} gave index {int(outside[0])}, outside the train split (0..{n - 1})"
        )
    indices = np.sort(indices)
    repeated = indices[1:][np.diff(indices) == 0]
    if repeated.size:
        raise NasproxyError(f"{source} gave index {int(repeated[0])} more than once")
    if indices.size == 0:
        raise NasproxyError(f"{source} gave no indices")
    if per_class is not None:
        counts = np.bincount(data.y_train.numpy()[indices], minlength=data.num_classes)
        for c, count in enumerate(counts):
            if count != per_class:
                raise NasproxyError(
                    f"{source} gave {count} images of class {data.classes[c]!r}, "
                    f"expected {per_class} (the per-class budget)"
                )
    return indices


# What a proxy record holds besides its selection: measurements of the head's fit (params)
# and of the scoring run (backbone), which may differ between two identical builds.
# (the indices themselves are the selection: how the scoring run went is not part of it)
RUN_PARAMS = frozenset(
    {
        "head_l2",
        "head_grad_norm",
        "head_iterations",
        "head_newton_steps",
        "head_loss",
        "objective_value",
    }
)
SELECTION_FIELDS = ("fingerprint", "method", "per_class", "seed", "params", "indices")


def selection_fields(record: dict[str, Any]) -> dict[str, str]:
    """A short digest of each field that defines a proxy's selection: the dataset, the
    method, its budget, seed and parameters, and the indices (not when or how fast it was
    built, its epsilon or scoring run, nor the JSON layout)."""
    params = record.get("params")
    if isinstance(params, dict):
        params = {k: v for k, v in params.items() if k not in RUN_PARAMS}
    values = {**{k: record.get(k) for k in SELECTION_FIELDS}, "params": params}
    return {k: _digest(v) for k, v in values.items()}


def selection_hash(record: dict[str, Any]) -> str:
    """The hash of what defines a proxy's selection (``selection_fields``): the same for a
    proxy rebuilt with the same command or rewritten with another layout."""
    return _digest(selection_fields(record))


def _digest(value: Any) -> str:
    text = json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:HASH_CHARS]


def write_proxy(record: dict[str, Any], path: str | Path) -> Path:
    """Write a proxy record as indented JSON, atomically."""
    return atomic_write_json(path, record)


def parse_proxy(blob: bytes, path: str | Path) -> dict[str, Any]:
    """The record in a proxy file's bytes (JSON only, never unpickled), checking its format
    and that it has the fields every reader needs."""
    try:
        record = json.loads(blob)
    except ValueError as exc:
        raise NasproxyError(f"proxy file {path} is not valid JSON ({exc})") from None
    if not isinstance(record, dict) or record.get("format") != FORMAT:
        raise NasproxyError(f"{path} is not a nasproxy proxy file (format {FORMAT})")
    for key in REQUIRED:
        if key not in record:
            raise NasproxyError(f"proxy file {path} lacks {key!r}")
    return record


def open_proxy(path: str | Path) -> ProxyFile:
    """Read and parse the proxy file at ``path`` (no dataset needed yet): the one reader."""
    path = Path(path)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise NasproxyError(f"cannot read proxy file {path} ({exc.strerror or exc})") from None
    file_hash = hashlib.sha256(blob).hexdigest()[:HASH_CHARS]
    return ProxyFile(path, parse_proxy(blob, path), file_hash)


def read_proxy(path: str | Path) -> dict[str, Any]:
    """The raw record of a proxy file, after checking that it is one."""
    return open_proxy(path).record


def check_fingerprint(
    record: dict[str, Any], data: Dataset, source: str, dataset: str = "this dataset"
) -> None:
    """Refuse a record built on another dataset than ``data`` (called ``dataset``)."""
    if record.get("fingerprint") != data.fingerprint:
        raise NasproxyError(
            f"{source} was built on dataset fingerprint {record.get('fingerprint')}, "
            f"{dataset} is {data.fingerprint}"
        )


def proxy_indices(record: dict[str, Any], data: Dataset, source: str) -> np.ndarray:
    """A proxy record's sorted int64 train-split indices, checked against ``data``.

    Refuses a record built on another dataset (fingerprint), class names the dataset does
    not have, and indices that are out of range, duplicated, of the wrong class, or none.
    """
    check_fingerprint(record, data, source)
    per_class = record.get("indices")
    if not isinstance(per_class, dict):
        raise NasproxyError(f"{source} has no per-class indices")
    labels = data.y_train.numpy()
    parts = []
    for name, members in per_class.items():
        if name not in data.classes:
            raise NasproxyError(f"{source} names class {name!r}, which this dataset lacks")
        if not isinstance(members, list) or not all(
            isinstance(i, int) and not isinstance(i, bool) for i in members
        ):
            raise NasproxyError(f"{source}: indices of class {name!r} are not integers")
        outside = [i for i in members if not 0 <= i < len(labels)]  # before int64 can overflow
        if outside:
            raise NasproxyError(
                f"{source}: index {outside[0]} of class {name!r} is outside the train "
                f"split (0..{len(labels) - 1})"
            )
        idx = np.asarray(members, dtype=np.int64)
        wrong = idx[labels[idx] != data.classes.index(name)]
        if wrong.size:
            raise NasproxyError(
                f"{source}: train image {int(wrong[0])} is not of class {name!r} but of "
                "another class"
            )
        parts.append(idx)
    indices = np.sort(np.concatenate(parts)) if parts else np.zeros(0, dtype=np.int64)
    if indices.size == 0:
        raise NasproxyError(f"{source} selects no images")
    if np.unique(indices).size != indices.size:
        raise NasproxyError(f"{source} lists an image twice")
    if record.get("n_images") != len(indices):
        raise NasproxyError(
            f"{source} says n_images={record.get('n_images')} but lists {len(indices)}"
        )
    return indices


def load_proxy(path: str | Path, data: Dataset) -> np.ndarray:
    """The sorted int64 train-split indices of the proxy file at ``path``, checked."""
    return proxy_indices(read_proxy(path), data, f"proxy {path}")


def default_proxy_path(
    dataset: str, method: str, per_class: int | None, seed: int, epsilon: float | None = None
) -> Path:
    """``results/proxies/<dataset-name>-<method>-<per_class or eps...>-s<seed>.json``."""
    budget = f"eps{epsilon:g}" if epsilon is not None else str(per_class)
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", method).strip("-.") or "method"
    return Path("results") / "proxies" / f"{dataset_name(dataset)}-{name}-{budget}-s{seed}.json"
