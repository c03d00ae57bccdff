"""A sweep's training sets: each ``--proxy [NAME=]PATH`` file, then the whole split.

Each proxy file is read with ``nasproxy.proxies.proxy_file`` (the one reader) and named
by ``NAME=``, else its method, else (a method given twice) its file stem; two files that
select the same images the same way, or two sets of one name, are refused. The whole
split is every train image, or a seeded class-balanced subset (``--whole-per-class``).
A proxy built as a draw gives its manifest entry its ``method``, ``per_class`` and ``draw``
(``draw_fields``), by which the report groups draws.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from nasproxy import results
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.proxies.base import check_budget
from nasproxy.proxies.proxy_file import (
    ProxyFile,
    open_proxy,
    proxy_indices,
    selection_fields,
    selection_hash,
)
from nasproxy.proxies.random import random_per_class
from nasproxy.results import WHOLE
from nasproxy.search.config import TrainSet


@dataclass(frozen=True)
class _Proxy:
    file: ProxyFile
    name: str | None  # given explicitly as NAME=PATH
    digest: str  # of what defines the selection


def _parse_proxy_arg(arg: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH``."""
    name, sep, rest = arg.partition("=")
    if sep and results.NAME_PATTERN.fullmatch(name) and not Path(arg).exists():
        return name, Path(rest)
    return None, Path(arg)


def _read(arg: str) -> _Proxy:
    name, path = _parse_proxy_arg(arg)
    file = open_proxy(path)
    return _Proxy(file, name, selection_hash(file.record))


def proxy_names(proxy_args: Sequence[str], whole: bool) -> list[str]:
    """The training-set names of ``--proxy [NAME=]PATH`` arguments, each file read and its
    format checked (no dataset needed yet: a bad file fails before the dataset loads)."""
    return _names([_read(arg) for arg in proxy_args], whole)


def _names(proxies: Sequence[_Proxy], whole: bool) -> list[str]:
    """Each proxy's name: given, else its method; methods used twice go by file stem."""
    methods = [str(p.file.record["method"]) for p in proxies]
    names = []
    for proxy, method in zip(proxies, methods, strict=True):
        if proxy.name is not None:
            names.append(proxy.name)
        elif methods.count(method) > 1:
            names.append(proxy.file.path.stem)
        else:
            names.append(method)
    taken = {WHOLE: "--whole"} if whole else {}
    for proxy, name in zip(proxies, names, strict=True):
        if not results.NAME_PATTERN.fullmatch(name):
            raise NasproxyError(
                f"proxy file {proxy.file.path}: {name!r} is not usable as a training-set name; "
                "name it with --proxy NAME=PATH"
            )
        if name in taken:
            raise NasproxyError(
                f"two training sets would be named {name!r} ({taken[name]} and "
                f"{proxy.file.path}); name them with --proxy NAME=PATH"
            )
        taken[name] = str(proxy.file.path)
    return names


def draw_fields(record: dict[str, Any]) -> dict[str, Any] | None:
    """A proxy record's ``method``, ``per_class`` and ``draw``, which its manifest entry
    copies; None for a file built before proxies had draws (its set is a group of its own
    in the report)."""
    if "draw" not in record:
        return None
    return {key: record.get(key) for key in ("method", "per_class", "draw")}


def resolve_train_sets(
    proxy_args: Sequence[str],
    whole: bool,
    data: Dataset,
    whole_per_class: int | None = None,
    whole_seed: int = 0,
) -> list[TrainSet]:
    """The sweep's training sets, in order: each proxy file, then the whole split.

    With ``whole_per_class`` the "whole" reference is a seeded class-balanced subset.
    """
    proxies = [_read(arg) for arg in proxy_args]
    seen: dict[str, Path] = {}
    for proxy in proxies:
        if proxy.digest in seen:
            raise NasproxyError(
                f"proxy files {seen[proxy.digest]} and {proxy.file.path} select the same images "
                "the same way"
            )
        seen[proxy.digest] = proxy.file.path
    names = _names(proxies, whole)
    sets = []
    for proxy, name in zip(proxies, names, strict=True):
        record = proxy.file.record
        indices = proxy_indices(record, data, f"proxy file {proxy.file.path}")
        epsilon = record.get("epsilon")
        sets.append(
            TrainSet(
                name=name,
                indices=indices,
                n_images=int(indices.size),
                proxy_path=str(proxy.file.path.resolve()),
                proxy_hash=proxy.digest,
                epsilon=float(epsilon) if epsilon is not None else None,
                selection=selection_fields(record),
                file_hash=proxy.file.file_hash,
                draw=draw_fields(record),
            )
        )
    if whole and whole_per_class is None:
        sets.append(TrainSet(WHOLE, None, len(data.y_train)))
    elif whole:
        check_budget(data, whole_per_class)
        subset = random_per_class(data.y_train.numpy(), whole_per_class, whole_seed)
        sets.append(TrainSet(WHOLE, subset, int(subset.size)))
    return sets
