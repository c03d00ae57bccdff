"""The results store of a sweep: one small file per work unit, a consolidated table, a manifest.

Layout of an experiment directory ``DIR/EXP/``::

    units/<train_set>/s<seed>/<arch>.json   one completed work unit each (the source of truth)
    trials.parquet, trials.csv              every unit as one tidy row (``COLUMNS``)
    manifest.json                           dataset, space, protocol, train sets, provenance

A unit file is written once, atomically (temporary name, then rename), by whoever finished
the unit, so a crash never leaves a torn row: a file either parses completely or is treated
as missing and the unit runs again. The table is rebuilt from the unit files at any time
(``consolidate``) and is itself written atomically; readers use only the table
(``read_trials``) and the manifest (``read_manifest``), each read here and nowhere else.
The search writes the store (docs/search.md); ``nasproxy report`` reads it. Nothing here
trains: the trial builds a unit's row (``nasproxy.search.trial.make_row``), so the store and
the report load neither torch nor the trainer.
"""

from __future__ import annotations

import io
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, NamedTuple

import pandas as pd

from nasproxy.errors import NasproxyError, first_line
from nasproxy.io import (
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_output_dir,
)

UNIT_FORMAT = "nasproxy-unit/1"
UNITS_DIR = "units"
MANIFEST = "manifest.json"
TRIALS_PARQUET = "trials.parquet"
TRIALS_CSV = "trials.csv"
WHOLE = "whole"  # the train_set name of the whole training split
# A training set with its own epochs: BASE@N, the set BASE trained for N epochs (N >= 1, no
# leading zero) instead of the protocol's (docs/search.md, "Training sets with their own epochs")
_OWN_EPOCHS = re.compile(r"(.+)@([1-9][0-9]*)")
# An experiment name is one folder name under the results directory: never absolute,
# never a path, never "." or ".." (it cannot start with a dot).
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
LOCK = ".lock"  # the driver's lock file in an experiment (nasproxy.search.lock)
# What nasproxy itself writes at the top of an experiment directory: the store, Ray
# Tune's run folders, the proxies of `nasproxy run`, and the report's tables and plots.
OWN_ENTRIES = frozenset(
    {
        UNITS_DIR,
        MANIFEST,
        TRIALS_PARQUET,
        TRIALS_CSV,
        "ray",
        "proxies",
        "reference.csv",
        "table1.md",
        "table1.csv",
        "table1.tex",
        "table1_seeds.csv",
        "proxy_vs_whole.png",
        "correlation.png",
        "acc_vs_time.png",
        "search_outcome.csv",
        "halving.csv",
        "frontier.md",
        "frontier.csv",
        "frontier.png",
    }
)

# The columns of trials.parquet / trials.csv, in order, with their dtypes.
COLUMNS: dict[str, str] = {
    "arch": "string",
    "width": "int64",
    "depth": "int64",
    "act": "string",
    "norm": "string",
    "pool": "string",
    "train_set": "string",
    "proxy_hash": "string",
    "seed": "int64",
    "epochs": "int64",
    "val_acc": "float64",
    "val_checkpoints": "string",  # JSON {"epoch": val_acc, ...} (checkpoint_accs reads it)
    "test_acc": "float64",
    "train_loss": "float64",
    "status": "string",
    "reason": "string",
    "wall_s": "float64",
    "warmup_s": "float64",
    "images_seen": "int64",
    "n_train": "int64",
    "device": "string",
    "stack_size": "int64",
    "trainer": "string",
    "fallback": "string",
}
# Columns added after the first unit files were written, and their value in those files
# (all such units trained one at a time with the plain trainer).
# warmup_s: 0.0, as those units' wall_s still holds their process's warm-up.
# val_checkpoints: "", those units recorded no checkpoints.
LATER_COLUMNS: dict[str, Any] = {
    "stack_size": 1,
    "trainer": "plain",
    "fallback": "",
    "warmup_s": 0.0,
    "val_checkpoints": "",
}
STATUSES = ("ok", "diverged", "failed")


class UnitKey(NamedTuple):
    """The identity of one work unit: its row's ``train_set``, ``seed`` and ``arch``."""

    train_set: str
    seed: int
    arch: str  # the architecture's id


def split_epochs(name: str) -> tuple[str, int | None]:
    """A training-set name as (base set, its own epochs): ``"whole@5"`` is ("whole", 5); a
    name without ``@N`` trains the protocol's epochs: (name, None)."""
    match = _OWN_EPOCHS.fullmatch(name)
    return (match[1], int(match[2])) if match else (name, None)


def row_key(row: Mapping[str, Any]) -> UnitKey:
    """The identity of a row's work unit."""
    return UnitKey(str(row["train_set"]), int(row["seed"]), str(row["arch"]))


def unit_path(exp_dir: Path, key: UnitKey) -> Path:
    """Where the unit file of ``key`` lives."""
    return Path(exp_dir) / UNITS_DIR / key.train_set / f"s{key.seed}" / f"{key.arch}.json"


def write_unit(
    exp_dir: Path, row: Mapping[str, Any], extra: Mapping[str, Any] | None = None
) -> Path:
    """Record a finished unit atomically; ``extra`` (history, params, ...) rides along.

    The extra fields stay in the unit file; only ``COLUMNS`` reach the table.
    """
    missing = [c for c in COLUMNS if c not in row]
    if missing:
        raise ValueError(f"row lacks {', '.join(missing)}")
    payload = {"format": UNIT_FORMAT, "row": {c: row[c] for c in COLUMNS}, **(extra or {})}
    return atomic_write_text(unit_path(exp_dir, row_key(row)), json.dumps(payload) + "\n")


def read_unit(path: Path) -> dict[str, Any] | None:
    """The row of a unit file, or None when it is missing, torn or not a unit of its path."""
    try:
        text = Path(path).read_text()
    except (OSError, ValueError):
        return None
    return parse_unit(text, path)


def parse_unit(text: str | bytes, path: Path) -> dict[str, Any] | None:
    """The row of a unit file's content ``text`` stored at ``path``, or None when it is torn
    or not a unit of that path (``nasproxy units unpack`` checks an archive's members with it
    before anything is written)."""
    try:
        payload = json.loads(text)
    except ValueError:
        return None
    if not isinstance(payload, dict) or payload.get("format") != UNIT_FORMAT:
        return None
    row = payload.get("row")
    if not isinstance(row, dict):
        return None
    row = {**LATER_COLUMNS, **row}
    if set(row) != set(COLUMNS):
        return None
    try:
        key = row_key(row)
    except (TypeError, ValueError):
        return None
    if row["status"] not in STATUSES:
        return None
    if Path(path).parts[-3:] != (key.train_set, f"s{key.seed}", f"{key.arch}.json"):
        return None  # a file moved or copied to the wrong place
    return row


def read_units(exp_dir: Path, skipped: list[Path] | None = None) -> dict[UnitKey, dict[str, Any]]:
    """Every valid unit of an experiment, by key; torn or foreign files are skipped (and
    appended to ``skipped`` when given: their units count as missing and train again)."""
    rows: dict[UnitKey, dict[str, Any]] = {}
    for path in sorted((Path(exp_dir) / UNITS_DIR).glob("*/s*/*.json")):
        row = read_unit(path)
        if row is not None:
            rows[row_key(row)] = row
        elif skipped is not None:
            skipped.append(path)
    return rows


def remove_stale_temporaries(exp_dir: Path) -> int:
    """Delete temporary files left by writes a crash interrupted; returns how many."""
    stale = list((Path(exp_dir) / UNITS_DIR).glob("*/s*/.*.tmp"))
    for path in stale:
        path.unlink(missing_ok=True)
    return len(stale)


def to_frame(rows: Iterable[Mapping[str, Any]]) -> pd.DataFrame:
    """Rows as a table with exactly ``COLUMNS``, in order, with fixed dtypes."""
    frame = pd.DataFrame(list(rows), columns=list(COLUMNS))
    return frame.astype(COLUMNS)


def consolidate(
    exp_dir: Path,
    train_set_order: Iterable[str] = (),
    arch_order: Iterable[str] = (),
) -> pd.DataFrame:
    """Rebuild trials.parquet and trials.csv from the unit files; returns the table.

    Rows are sorted by train set, seed and architecture, each in the given order when one is
    given (the manifest's), else alphabetically.
    """
    exp_dir = Path(exp_dir)
    rows = list(read_units(exp_dir).values())
    ts_rank = {name: i for i, name in enumerate(train_set_order)}
    arch_rank = {name: i for i, name in enumerate(arch_order)}

    def sort_key(row: Mapping[str, Any]) -> tuple:
        key = row_key(row)
        ts_at = ts_rank.get(key.train_set, len(ts_rank))
        arch_at = arch_rank.get(key.arch, len(arch_rank))
        return (ts_at, key.train_set, key.seed, arch_at, key.arch)

    frame = to_frame(sorted(rows, key=sort_key))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(exp_dir / TRIALS_PARQUET, buffer.getvalue())
    atomic_write_text(exp_dir / TRIALS_CSV, frame.to_csv(index=False))
    return frame


def read_trials(exp_dir: Path) -> pd.DataFrame:
    """The consolidated table of an experiment, with exactly ``COLUMNS`` and their dtypes.

    The one reader of the table: ``trials.parquet``, else ``trials.csv`` (the same table as
    text); a table from before a column of ``LATER_COLUMNS`` existed gets that column's
    value for it. A missing, unreadable or incomplete table is a one-line error.
    """
    exp_dir = Path(exp_dir)
    parquet, csv = exp_dir / TRIALS_PARQUET, exp_dir / TRIALS_CSV
    if not parquet.is_file() and not csv.is_file():
        raise NasproxyError(f"{parquet} does not exist; run `nasproxy search` first")
    path = parquet if parquet.is_file() else csv
    numeric = [c for c, dtype in COLUMNS.items() if dtype != "string"]
    try:
        if path == parquet:
            frame = pd.read_parquet(path)
        else:  # an empty string is text in a text column, a missing number in the others
            nan = ["", "nan", "NaN"]
            frame = pd.read_csv(path, keep_default_na=False, na_values=dict.fromkeys(numeric, nan))
    except Exception as exc:  # pyarrow and the CSV parser have no common error class
        raise NasproxyError(f"cannot read {path} ({first_line(exc, with_type=True)})") from None
    for column, value in LATER_COLUMNS.items():
        if column not in frame.columns:
            frame[column] = value
    missing = [c for c in COLUMNS if c not in frame.columns]
    if missing:
        raise NasproxyError(f"{path} lacks the column(s) {', '.join(missing)}")
    try:
        return frame[list(COLUMNS)].astype(COLUMNS)
    except (TypeError, ValueError) as exc:
        raise NasproxyError(f"{path} holds a value of the wrong type ({first_line(exc)})") from None


def checkpoint_value(accs: Mapping[int, float]) -> str:
    """The ``val_checkpoints`` cell of a unit's checkpoints (epoch -> validation accuracy):
    a JSON object with decimal-string epochs in ascending order, or "" when there are none."""
    if not accs:
        return ""
    return json.dumps({str(int(e)): float(accs[e]) for e in sorted(accs)})


def checkpoint_accs(value: Any) -> dict[int, float]:
    """The checkpoints of a ``val_checkpoints`` cell, epoch -> validation accuracy, epochs
    ascending; {} for "" or a missing value (a unit without checkpoints, an older file).

    The one reader of the column; a cell that is not such an object is a one-line error.
    """
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return {}
    if not isinstance(value, str):
        raise NasproxyError(f"val_checkpoints holds {value!r}, not text")
    if not value.strip():
        return {}
    try:
        parsed = json.loads(value)
        accs = {int(e): float(a) for e, a in parsed.items()}
    except (ValueError, TypeError, AttributeError):
        raise NasproxyError(
            f"val_checkpoints holds {value[:80]!r}, not a JSON object of epoch: accuracy"
        ) from None
    return dict(sorted(accs.items()))


def write_manifest(exp_dir: Path, manifest: Mapping[str, Any]) -> Path:
    """Write manifest.json atomically (non-finite floats become null)."""
    return atomic_write_json(Path(exp_dir) / MANIFEST, _finite(manifest))


def read_manifest(exp_dir: Path) -> dict[str, Any] | None:
    """The manifest of an experiment, or None when there is none yet."""
    path = Path(exp_dir) / MANIFEST
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise NasproxyError(f"cannot read {path} ({first_line(exc, with_type=True)})") from None
    if not isinstance(manifest, dict):
        raise NasproxyError(f"{path} is not a JSON object")
    return manifest


def check_name(name: str, what: str = "experiment name") -> str:
    """``name`` if it is a plain folder name (``NAME_PATTERN``), else a one-line error."""
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise NasproxyError(
            f"bad {what} {name!r}: use letters, digits, '.', '_' and '-' "
            "(a folder name inside the results directory, not a path)"
        )
    return name


def experiment_dir(results_dir: str | Path, name: str) -> Path:
    """``results_dir/name``, after checking the name and that the folder can be written."""
    check_name(name)
    check_output_dir(results_dir, "results directory")
    exp_dir = Path(results_dir) / name
    if exp_dir.is_symlink() or (exp_dir.exists() and not exp_dir.is_dir()):
        raise NasproxyError(f"{exp_dir} is not a folder; choose another experiment name")
    return exp_dir


def foreign_entries(exp_dir: Path) -> list[str]:
    """What in ``exp_dir`` nasproxy did not write; empty for a folder that is its experiment.

    An experiment holds nothing but ``OWN_ENTRIES`` (unit files in their layout, proxy
    files in ``proxies/``) and the hidden temporaries of interrupted atomic writes, and
    unless it is empty, a nasproxy manifest, unit file or proxy file proves it is one.
    """
    exp_dir = Path(exp_dir)
    if exp_dir.is_symlink() or not exp_dir.is_dir():
        return [exp_dir.name]
    entries = [p for p in exp_dir.iterdir() if not _lock_file(p)]
    foreign = sorted(p.name for p in entries if p.name not in OWN_ENTRIES and not _temporary(p))
    units, proxies = exp_dir / UNITS_DIR, exp_dir / "proxies"
    layouts = [  # (folder, depth of its files), e.g. units/<train_set>/s<seed>/<arch>.json
        (units, 3),
        (proxies, 1),
    ]
    for folder, depth in layouts:
        foreign += sorted(
            str(p.relative_to(exp_dir))
            for p in folder.rglob("*")
            if (p.is_file() or p.is_symlink())
            and (
                p.is_symlink()
                or len(p.relative_to(folder).parts) != depth
                or not (p.suffix == ".json" or _temporary(p))
            )
        )
    if foreign or not entries:
        return foreign
    proven = (
        _is_json(exp_dir / MANIFEST, lambda m: {"protocol", "train_sets"} <= set(m))
        or any(read_unit(p) is not None for p in units.glob("*/s*/*.json"))
        or any(
            _is_json(p, lambda m: str(m.get("format", "")).startswith("nasproxy-proxy/"))
            for p in proxies.glob("*.json")
        )
    )
    return [] if proven else [f"no nasproxy {MANIFEST}, unit or proxy file"]


def _lock_file(path: Path) -> bool:
    """The experiment's lock (``LOCK``) or its guard and temporaries (``LOCK.*``)."""
    return path.name == LOCK or path.name.startswith(f"{LOCK}.")


def _temporary(path: Path) -> bool:
    """A temporary of ``nasproxy.io``'s atomic writes (``.NAME.XXXX.tmp``)."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _is_json(path: Path, test: Callable[[dict[str, Any]], bool]) -> bool:
    try:
        obj = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(obj, dict) and test(obj)


def _finite(obj: Any) -> Any:
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, Mapping):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_finite(v) for v in obj]
    return obj
