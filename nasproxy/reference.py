"""A published whole-set reference: architecture -> whole-set accuracy, with its protocol.

``nasproxy report --reference FILE`` lets such a table stand in for the whole split (Table 1,
the search outcome, the plots), labelled as external wherever it appears. The file is CSV
(UTF-8) under a header of ``# key: value`` lines, so that a table copied from a paper can
be written by hand and read by eye::

    # nasproxy whole-set reference
    # dataset: cifar10
    # epochs: 200
    # source: NATS-Bench topology space (Dong et al., TPAMI 2021)
    arch,val_acc,test_acc
    |nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|skip_connect~0|nor_conv_3x3~1|skip_connect~2|,0.8421,0.9337

The header names the protocol: ``dataset`` (checked against the experiment's), ``epochs``
and ``source`` are required, other keys are kept and shown. The needed columns are
``arch``, ``val_acc`` and ``test_acc`` (fractions in 0..1, as in the trials table; an empty
cell is an accuracy the source does not give); other columns are ignored. Architecture ids
go through a ``canonical`` function (an id of any form -> the experiment's form): an id it
refuses is counted, never guessed. ``nasproxy reference import-nats`` writes such a file
from NATS-Bench (``nasproxy.natsbench``); docs/search.md ("Report") explains it for users.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from nasproxy.errors import NasproxyError
from nasproxy.io import atomic_write_text

TITLE = "nasproxy whole-set reference"
COLUMNS = ("arch", "val_acc", "test_acc")  # the needed columns, in the order written
PROTOCOL_KEYS = ("dataset", "epochs", "source")  # the needed header keys
ROW = "whole (external)"  # the reference's row in Table 1 (its train_set)


def identity(arch: str) -> str:
    """The default ``canonical``: every id as written."""
    return arch


@dataclass(frozen=True)
class Reference:
    """A reference table read by :func:`read_reference`: per canonical id, its accuracies."""

    path: Path
    protocol: dict[str, str]  # dataset, epochs, source, then the header's other keys
    val: dict[str, float]  # canonical id -> whole-set validation accuracy (NaN: not given)
    test: dict[str, float]  # canonical id -> whole-set test accuracy (NaN: not given)
    unknown: tuple[str, ...]  # ids of the file that ``canonical`` refused, in file order

    @property
    def dataset(self) -> str:
        return self.protocol["dataset"]

    def short(self) -> str:
        """The reference in a few words, for figures: external, its file, dataset, epochs."""
        p = self.protocol
        return f"external reference {self.path.name} ({p['dataset']}, {p['epochs']} epochs)"

    def details(self) -> str:
        """Every ``key: value`` of the reference's header, and its file, in one line."""
        return "; ".join([*(f"{k}: {v}" for k, v in self.protocol.items()), f"file: {self.path}"])

    def check_dataset(self, manifest: Mapping[str, Any]) -> None:
        """Refuse a reference of another dataset than the experiment's (``manifest``'s
        ``dataset`` spec or its short ``dataset_name``, compared without case)."""
        names = [str(manifest[k]) for k in ("dataset_name", "dataset") if manifest.get(k)]
        if not names:
            raise NasproxyError(
                f"the experiment's manifest records no dataset, so reference {self.path} "
                "cannot be checked against it"
            )
        if self.dataset.lower() not in {n.lower() for n in names}:
            raise NasproxyError(
                f"reference {self.path} is of dataset {self.dataset!r}, the experiment of "
                f"{names[0]!r}: a reference of another dataset cannot stand in for its "
                "whole split"
            )

    def accuracies(self, archs: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(val, test) of ``archs`` in their order, NaN where the reference has none; refused
        when it holds none of them (the wrong file, or ids the experiment does not use)."""
        if not any(a in self.val for a in archs):
            raise NasproxyError(
                f"reference {self.path} holds none of the experiment's {len(archs)} "
                f"architectures (e.g. {archs[0]!r}): it cannot stand in for the whole split"
            )
        nan = float("nan")
        val = np.array([self.val.get(a, nan) for a in archs], dtype=float)
        test = np.array([self.test.get(a, nan) for a in archs], dtype=float)
        return val, test

    def coverage(self, archs: Sequence[str]) -> dict[str, int]:
        """Table 1's trials_* counts for the reference, one "trial" an architecture:
        present = in the reference, not_ok = in it without both accuracies."""
        present = [a for a in archs if a in self.val]
        partial = [a for a in present if not _both(self.val[a], self.test[a])]
        return {
            "trials_expected": len(archs),
            "trials_present": len(present),
            "trials_missing": len(archs) - len(present),
            "trials_not_ok": len(partial),
            "unexpected": 0,
        }

    def notes(self, archs: Sequence[str]) -> list[str]:
        """One line on the experiment's architectures the reference has (missing ones are
        counted and named), and one on ids of the file that are no architecture, if any."""
        cov = self.coverage(archs)
        line = f"{ROW}: {cov['trials_present']}/{cov['trials_expected']} architectures"
        missing = [a for a in archs if a not in self.val]
        gaps = []
        if missing:
            gaps.append(f"{len(missing)} not in the reference, not scored (e.g. {missing[0]})")
        if cov["trials_not_ok"]:
            gaps.append(f"{cov['trials_not_ok']} without both a validation and a test accuracy")
        line += "; " + "; ".join(gaps) if gaps else " (complete)"
        out = [line]
        if self.unknown:
            out.append(
                f"{ROW}: {len(self.unknown)} id(s) of {self.path.name} are not architectures"
                f" of the space, skipped (e.g. {self.unknown[0]!r})"
            )
        return out


def _both(val: float, test: float) -> bool:
    return math.isfinite(val) and math.isfinite(test)


def read_reference(path: str | Path, canonical: Callable[[str], str] = identity) -> Reference:
    """Read and check a reference file (see the module docstring); ids through ``canonical``.

    Refused, in one line: a missing or unreadable file, a header without dataset, epochs
    or source, a table without the needed columns, an accuracy that is not a fraction in
    0..1, an id given twice (after ``canonical``), a file whose every id is refused.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise NasproxyError(f"cannot read reference {path}: {exc}") from None
    lines = text.splitlines()
    head = 0
    protocol: dict[str, str] = {}
    while head < len(lines) and lines[head].startswith("#"):
        key, sep, value = lines[head][1:].partition(":")
        if sep and key.strip():
            protocol[key.strip().lower()] = value.strip()
        head += 1
    lacking = [k for k in PROTOCOL_KEYS if not protocol.get(k)]
    if lacking:
        raise NasproxyError(
            f"reference {path} lacks the header line(s) {', '.join(f'# {k}: ...' for k in lacking)}"
            f" (a reference names its {', '.join(PROTOCOL_KEYS)})"
        )
    table = csv.reader(io.StringIO("\n".join(lines[head:])))
    rows = [r for r in table if any(c.strip() for c in r)]
    header = [c.strip() for c in rows[0]] if rows else []
    absent = [c for c in COLUMNS if c not in header]
    if absent:
        raise NasproxyError(
            f"reference {path} has no {', '.join(absent)} column: its table needs the columns "
            f"{', '.join(COLUMNS)} (found: {', '.join(header) or 'none'})"
        )
    where = {c: header.index(c) for c in COLUMNS}
    val: dict[str, float] = {}
    test: dict[str, float] = {}
    unknown: list[str] = []
    line_of: dict[str, int] = {}
    for n, row in enumerate(rows[1:], start=2):
        cells = {c: (row[i].strip() if i < len(row) else "") for c, i in where.items()}
        try:
            arch = canonical(cells["arch"])
        except (NasproxyError, ValueError, KeyError):
            unknown.append(cells["arch"])
            continue
        if arch in line_of:
            raise NasproxyError(
                f"reference {path}: architecture {arch} is given twice (table rows "
                f"{line_of[arch]} and {n}); keep one"
            )
        line_of[arch] = n
        val[arch] = _accuracy(cells["val_acc"], "val_acc", path, n)
        test[arch] = _accuracy(cells["test_acc"], "test_acc", path, n)
    if not val:
        raise NasproxyError(
            f"reference {path} has no architecture"
            + (f": none of its {len(unknown)} ids is one (e.g. {unknown[0]!r})" if unknown else "")
        )
    ordered = {k: protocol[k] for k in PROTOCOL_KEYS}
    ordered.update({k: v for k, v in protocol.items() if k not in ordered})
    return Reference(path, ordered, val, test, tuple(unknown))


def _accuracy(cell: str, column: str, path: Path, row: int) -> float:
    """A cell as a fraction in 0..1 (empty: NaN, not given); anything else refused."""
    if not cell:
        return float("nan")
    try:
        value = float(cell)
    except ValueError:
        raise NasproxyError(
            f"reference {path}, table row {row}: {column} {cell!r} is not a number"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise NasproxyError(
            f"reference {path}, table row {row}: {column} {cell} is not a fraction in 0..1"
            " (accuracies are fractions, e.g. 0.9337 for 93.37%)"
        )
    return value


def write_reference(
    path: str | Path,
    protocol: Mapping[str, Any],
    rows: Sequence[Mapping[str, Any]],
) -> Path:
    """Write a reference file atomically: the header (``protocol``: dataset, epochs, source
    and any other keys, one ``# key: value`` line each), then ``rows`` (dicts with the
    needed columns, any more columns after them; NaN written as an empty cell)."""
    lacking = [k for k in PROTOCOL_KEYS if k not in protocol]
    if lacking:
        raise ValueError(f"a reference's protocol needs {', '.join(lacking)}")
    extra = [c for c in (rows[0] if rows else {}) if c not in COLUMNS]
    out = io.StringIO()
    out.write(f"# {TITLE}\n")
    for key, value in protocol.items():
        out.write(f"# {key}: {' '.join(str(value).split())}\n")
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow([*COLUMNS, *extra])
    for r in rows:
        writer.writerow([_cell(r[c]) for c in (*COLUMNS, *extra)])
    return atomic_write_text(path, out.getvalue())


def _cell(value: Any) -> str:
    if isinstance(value, float | np.floating):
        value = float(value)
        return "" if not math.isfinite(value) else repr(value)  # reads back exactly
    return str(value)
