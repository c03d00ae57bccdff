"""A sweep's unit files away from the host that trains them: one archive, and its rates.

The experiments' manifests and unit files travel as one tar.gz (:func:`pack`,
:func:`unpack`), so a GPU host returns a few files; :func:`rates` measures a running sweep
on the device that runs it; :func:`check_data`, :func:`has_gpu_bench` and
:func:`shape_globs` prepare such a run. The run they serve: results/README.md, "Table 1 on
a GPU host: what a run does"; the ``nasproxy units`` command: docs/search.md.
"""

from __future__ import annotations

import contextlib
import copy
import io
import json
import re
import tarfile
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from nasproxy import results
from nasproxy.errors import NasproxyError, first_line
from nasproxy.io import atomic_write_bytes, check_output_dir, check_output_file
from nasproxy.spaces import Space, parse_arch

NAME = r"[A-Za-z0-9_.-]+"
MEMBER = re.compile(
    rf"(?P<exp>{NAME})/(?:{re.escape(results.MANIFEST)}"
    rf"|{results.UNITS_DIR}/{NAME}(?:@[1-9][0-9]*)?/s[0-9]+/{NAME}\.json)"  # a set BASE@N
)
MAX_MEMBER_BYTES = 1 << 20  # a unit file is about 1 kB; a manifest a few hundred kB
PAPER_EPOCHS = 100


def _experiment_files(exp_dir: Path) -> list[Path]:
    """The manifest and every finished unit file of an experiment (no temporaries)."""
    files = sorted((exp_dir / results.UNITS_DIR).glob("*/s*/*.json"))
    return [exp_dir / results.MANIFEST, *files]


def pack(results_dir: Path, experiments: Sequence[str], out: Path) -> int:
    """Write ``out`` (tar.gz) with each experiment's manifest and unit files; returns how
    many unit files it holds.

    Each name is a plain folder name (as ``search --name``) of an experiment with a
    manifest; ``out`` is checked before anything is read. The archive is written under a
    temporary name and renamed, so a reader (or a run stopped at its time limit) sees the
    previous archive or the new one, never half of one.
    """
    check_output_file(out, "archive")
    dirs = []
    for exp in dict.fromkeys(experiments):  # each once
        exp_dir = Path(results_dir) / results.check_name(exp)
        if not (exp_dir / results.MANIFEST).is_file():
            raise NasproxyError(
                f"no experiment {exp!r} in {results_dir} (no {exp_dir / results.MANIFEST})"
            )
        dirs.append(exp_dir)
    buffer = io.BytesIO()
    n_units = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for exp_dir in dirs:
            for path in _experiment_files(exp_dir):
                try:
                    mtime, blob = int(path.stat().st_mtime), path.read_bytes()
                except FileNotFoundError:
                    continue  # a unit file removed between the listing and the read
                except OSError as exc:
                    raise NasproxyError(f"cannot read {path} ({exc.strerror or exc})") from None
                info = tarfile.TarInfo(str(path.relative_to(results_dir)))
                info.size, info.mtime = len(blob), mtime
                tar.addfile(info, io.BytesIO(blob))
                n_units += path.name != results.MANIFEST
    try:
        atomic_write_bytes(out, buffer.getvalue())
    except OSError as exc:
        raise NasproxyError(f"cannot write archive {out} ({exc.strerror or exc})") from None
    return n_units


@dataclass
class _Incoming:
    """One experiment of an archive, checked: its manifest and unit files (path in the
    experiment -> content and row)."""

    manifest: dict[str, Any]
    units: dict[str, tuple[bytes, dict[str, Any]]] = field(default_factory=dict)


def unpack(archive: Path, results_dir: Path, replace: bool = False) -> dict[str, int]:
    """Merge an archive's manifests and unit files into ``results_dir`` and rebuild each
    experiment's trials table; returns unit files per experiment.

    Nothing is written before the whole archive is read and checked: only manifests and
    unit files (no links, no paths outside ``results_dir``), each parsed, each unit of its
    manifest's protocol, each manifest compatible with the stored one. Each experiment's
    lock is held meanwhile (a running driver's experiment is refused). A stored unit is
    never replaced by a different one unless ``replace``, except a failed one (a resume
    would retrain it); identical ones are left as they are. The manifests are merged
    (training sets, architectures and runs: the union), then each file is written
    atomically, so ``nasproxy report EXP`` works on the result.
    """
    from nasproxy.search.lock import ensure_held, experiment_lock

    check_output_dir(results_dir, "results directory")
    incoming = _check_archive(archive, _read_archive(archive))
    created = not Path(results_dir).exists()
    try:
        with contextlib.ExitStack() as locks:
            dirs = {exp: results.experiment_dir(results_dir, exp) for exp in incoming}
            for exp_dir in dirs.values():
                locks.enter_context(experiment_lock(exp_dir))
            plans = {exp: _plan(archive, dirs[exp], incoming[exp], replace) for exp in incoming}
            for exp, (manifest, writes) in plans.items():
                exp_dir = dirs[exp]
                try:
                    if manifest is not None:
                        ensure_held(exp_dir)
                        results.write_manifest(exp_dir, manifest)
                    for rel, blob in writes.items():
                        ensure_held(exp_dir)
                        atomic_write_bytes(exp_dir / rel, blob)
                    ensure_held(exp_dir)
                    order = manifest or results.read_manifest(exp_dir) or {}
                    results.consolidate(exp_dir, order["train_sets"], order["archs"])
                except OSError as exc:
                    raise NasproxyError(
                        f"cannot write {exc.filename or exp_dir} ({exc.strerror or exc}); what "
                        "was written is whole: run the same unpack again to finish"
                    ) from None
    except BaseException:
        if created:  # nothing written: leave no empty results directory either
            with contextlib.suppress(OSError):
                Path(results_dir).rmdir()
        raise
    return {exp: len(found.units) for exp, found in incoming.items()}


def _read_archive(archive: Path) -> dict[str, bytes]:
    """Every member of ``archive`` by name, after checking that each is a manifest or a
    unit file of a plain experiment name, of a sane size, and there only once."""
    blobs: dict[str, bytes] = {}
    try:
        with tarfile.open(archive, mode="r:gz") as tar:
            for member in tar:
                if member.isdir():
                    continue
                parts = member.name.split("/")
                if (
                    not member.isfile()
                    or MEMBER.fullmatch(member.name) is None
                    or {".", ".."} & set(parts)
                    or not results.NAME_PATTERN.fullmatch(parts[0])
                ):
                    raise NasproxyError(
                        f"{archive}: {member.name!r} is not a manifest or unit file; "
                        "nothing unpacked"
                    )
                if member.size > MAX_MEMBER_BYTES:
                    raise NasproxyError(
                        f"{archive}: {member.name} is {member.size} bytes; too large; "
                        "nothing unpacked"
                    )
                if member.name in blobs:
                    raise NasproxyError(f"{archive}: {member.name} appears twice; nothing unpacked")
                blobs[member.name] = tar.extractfile(member).read()
    except (OSError, EOFError, zlib.error, tarfile.TarError) as exc:
        raise NasproxyError(
            f"cannot read {archive} as a tar.gz ({first_line(exc, with_type=True)}); "
            "nothing unpacked"
        ) from None
    return blobs


def _check_archive(archive: Path, blobs: dict[str, bytes]) -> dict[str, _Incoming]:
    """The archive's experiments, each manifest and unit file parsed and checked against
    its manifest; the first problem is a one-line error."""
    from nasproxy.search.experiment import unit_problem

    def refuse(what: str) -> NasproxyError:
        return NasproxyError(f"{archive}: {what}; nothing unpacked")

    incoming: dict[str, _Incoming] = {}
    for exp in dict.fromkeys(name.split("/", 1)[0] for name in blobs):
        name = f"{exp}/{results.MANIFEST}"
        if name not in blobs:
            raise refuse(f"it holds unit files of {exp} but no {name}")
        try:
            manifest = json.loads(blobs[name])
        except ValueError as exc:
            raise refuse(f"{name} is not JSON ({first_line(exc)})") from None
        problem = _manifest_problem(manifest)
        if problem is not None:
            raise refuse(f"{name} {problem}")
        incoming[exp] = _Incoming(manifest)
    for exp, found in incoming.items():
        manifest = found.manifest
        listed = set(manifest["archs"])
        space = Space(manifest.get("space", ""), [parse_arch(a) for a in listed])
        prefix = f"{exp}/"
        for name, blob in blobs.items():
            if not name.startswith(prefix) or name == prefix + results.MANIFEST:
                continue
            row = results.parse_unit(blob, Path(name))
            if row is None:
                raise refuse(f"{name} is not a unit file of its path (torn, or not nasproxy's)")
            entry = manifest["train_sets"].get(row["train_set"])
            problem = (
                f"architecture {row['arch']}, which its manifest lacks"
                if row["arch"] not in listed
                else unit_problem(row, entry, manifest["protocol"], space)
            )
            if problem is not None:
                raise refuse(f"{name} is not of its experiment's protocol: it has {problem}")
            found.units[name.removeprefix(prefix)] = (blob, row)
        try:
            results.to_frame(row for _, row in found.units.values())
        except (TypeError, ValueError):
            for name, (_, row) in found.units.items():
                try:
                    results.to_frame([row])
                except (TypeError, ValueError) as exc:
                    raise refuse(
                        f"{prefix}{name} holds a value of the wrong type ({first_line(exc)})"
                    ) from None
    return incoming


def _manifest_problem(manifest: Any) -> str | None:
    """What makes ``manifest`` unusable for an unpack (a phrase), or None: the types of the
    fields the units are checked against and the merge reads."""

    def ints(value: Any) -> bool:
        return isinstance(value, list) and all(_is_int(v) for v in value)

    def ids(value: Any) -> bool:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            return False
        try:
            for arch in value:
                parse_arch(arch)
        except NasproxyError:
            return False
        return True

    if not isinstance(manifest, dict):
        return "is not a JSON object"
    protocol, sets = manifest.get("protocol"), manifest.get("train_sets")
    if (
        not isinstance(protocol, dict)
        or not _is_int(protocol.get("epochs"))
        or not ints(protocol.get("seeds"))
    ):
        return "lacks a 'protocol' with whole-number 'epochs' and 'seeds'"
    if not isinstance(sets, dict) or not all(
        isinstance(entry, dict)
        and _is_int(entry.get("n_images"))
        and isinstance(entry.get("proxy_hash"), str)
        and ids(entry.get("archs", []))
        and isinstance(entry.get("legacy_hashes", []), list)
        for entry in sets.values()
    ):
        return "lacks 'train_sets', each with a 'proxy_hash', whole-number 'n_images', 'archs'"
    if not ids(manifest.get("archs")) or not isinstance(manifest.get("space", ""), str):
        return "lacks its 'archs' (architecture ids)"
    runs, whole_top = manifest.get("runs", []), manifest.get("whole_top", {})
    if not isinstance(runs, list) or not all(isinstance(r, dict) for r in runs):
        return "has 'runs' that are not a list of objects"
    if not isinstance(whole_top, dict):
        return "has a 'whole_top' that is not an object"
    return None


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _plan(
    archive: Path, exp_dir: Path, found: _Incoming, replace: bool
) -> tuple[dict[str, Any] | None, dict[str, bytes]]:
    """The manifest to write in ``exp_dir`` (None: the stored one stays) and the unit files
    to write (path in the experiment -> content); refuses a manifest unlike the stored
    one and, unless ``replace``, a unit file unlike a stored unit that did not fail."""
    from nasproxy.search.experiment import add_totals, check_existing, protocol_checks

    stored = check_existing(exp_dir)
    if stored is not None:
        for what, before, now in protocol_checks(stored, found.manifest):
            if before != now:
                raise NasproxyError(
                    f"{archive}: experiment {exp_dir.name!r} in {exp_dir.parent} has {what} "
                    f"{before}, the archive's {now}; nothing unpacked: unpack it into another "
                    "--results-dir"
                )
    rows = results.read_units(exp_dir)
    writes: dict[str, bytes] = {}
    differ: list[tuple[str, dict[str, Any], dict[str, Any]]] = []
    for rel, (blob, row) in found.units.items():
        path = exp_dir / rel
        try:
            if path.read_bytes() == blob:
                continue  # the same unit file: nothing to do
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise NasproxyError(f"cannot read {path} ({exc.strerror or exc})") from None
        old = rows.get(results.row_key(row))
        if old is not None and old["status"] != "failed" and not replace:
            differ.append((rel, old, row))
        writes[rel] = blob
        rows[results.row_key(row)] = row
    if differ:
        (rel, old, new), more = differ[0], len(differ) - 1
        raise NasproxyError(
            f"{archive}: unit file {rel} differs from the one stored in {exp_dir} (stored: "
            f"{old['status']}, val_acc {old['val_acc']}; archive: {new['status']}, val_acc "
            f"{new['val_acc']}){f' and {more} more do' if more else ''}; nothing unpacked: "
            "keep the stored units, or give --replace to take the archive's"
        )
    if stored is None:  # its totals are of the very units it comes with
        return found.manifest, writes
    manifest = _merge(stored, found.manifest)
    if manifest == stored and not writes:
        return None, writes  # nothing new: the stored manifest stays as it is
    add_totals(manifest, results.to_frame(rows.values()))
    return manifest, writes


def _merge(stored: dict[str, Any], incoming: dict[str, Any]) -> dict[str, Any]:
    """The stored manifest with the archive's training sets, architectures (per set and
    all) and runs added, and the ``whole_top`` shortlists of whichever ran last; its own
    other fields (dataset path, created) kept."""
    from nasproxy.shortlist import train_set_archs

    merged = copy.deepcopy(stored)
    sets = merged["train_sets"]
    for name, entry in incoming["train_sets"].items():
        if name not in sets:
            sets[name] = copy.deepcopy(entry)
            continue
        if "archs" in sets[name] or "archs" in entry:  # else both sweep the top-level list
            mine = _union(train_set_archs(stored, name), train_set_archs(incoming, name))
            sets[name]["archs"] = mine
        legacy = _union(sets[name].get("legacy_hashes", []), entry.get("legacy_hashes", []))
        if legacy:
            sets[name]["legacy_hashes"] = legacy
    merged["archs"] = _union(stored.get("archs", []), incoming["archs"])
    runs = list(stored.get("runs", []))
    added = [r for r in incoming.get("runs", []) if r not in runs]
    if added:
        merged["runs"] = runs + added
    if "whole_top" in incoming and (
        "whole_top" not in merged or _last_started(incoming) > _last_started(stored)
    ):  # the shortlists of the latest run
        merged["whole_top"] = incoming["whole_top"]
    return merged


def _last_started(manifest: dict[str, Any]) -> str:
    """When the manifest's latest run started (an ISO time; "" for none)."""
    return max((str(run.get("started", "")) for run in manifest.get("runs", [])), default="")


def _union(first: Sequence[str], second: Sequence[str]) -> list[str]:
    """``first``, then what of ``second`` it lacks, each once, in order."""
    return list(dict.fromkeys([*first, *second]))


def _finished_s(unit: Path) -> float | None:
    """When a unit file says its unit finished (seconds since the epoch)."""
    try:
        stamp = json.loads(unit.read_text()).get("finished")
        return datetime.fromisoformat(stamp).timestamp() if stamp else None
    except (OSError, ValueError, TypeError, AttributeError):
        return None


def rates(results_dir: Path, experiments: Sequence[str], since: float, now: float) -> list[str]:
    """Lines: per training set of each experiment, the units stored of those planned and
    the units that finished since ``since`` (units/min, images/s); then per experiment,
    all its sets together: the same rates, the time its missing units would take at that
    rate, and an estimate of its full protocol (every architecture of the space, 100
    epochs, its sets and seeds) at the images/s its present mix of units achieves."""
    if not Path(results_dir).is_dir():
        raise NasproxyError(f"no results folder {results_dir}")
    elapsed = max(now - since, 1e-9)

    def rate(done: int, images: int) -> str:
        return (
            f"{done} in the last {elapsed:.0f} s = {60 * done / elapsed:.1f} units/min,"
            f" {images / elapsed:,.0f} images/s"
        )

    lines = []
    for exp in experiments:
        exp_dir = results_dir / results.check_name(exp)
        manifest = results.read_manifest(exp_dir)
        if manifest is None:
            lines.append(f"rate {exp}: no manifest yet")
            continue
        archs, seeds = manifest.get("archs", []), manifest.get("protocol", {}).get("seeds", [])
        epochs = manifest.get("protocol", {}).get("epochs")
        space_size = manifest.get("space_size", len(archs))
        totals = {"planned": 0, "stored": 0, "recent": 0, "images": 0, "full": 0}
        for ts, entry in manifest.get("train_sets", {}).items():
            planned = len(entry.get("archs", archs)) * len(seeds)  # the set's own, if listed
            stored = recent = images = 0
            for unit in (exp_dir / results.UNITS_DIR / ts).glob("s*/*.json"):
                row = results.read_unit(unit)
                if row is None or row["status"] == "failed":
                    continue
                stored += 1
                finished = _finished_s(unit)
                if finished is not None and finished >= since:
                    recent += 1
                    images += int(row["images_seen"])
            full = space_size * len(seeds) * int(entry["n_images"]) * PAPER_EPOCHS
            for key, value in zip(totals, (planned, stored, recent, images, full), strict=True):
                totals[key] += value
            line = f"rate {exp} {ts}: {stored}/{planned} units stored ({epochs} epochs)"
            lines.append(line + (f"; {rate(recent, images)}" if recent else ""))
        line = f"rate {exp} (all sets): {totals['stored']}/{totals['planned']} units stored"
        if totals["recent"]:
            missing = totals["planned"] - totals["stored"]
            line += (
                f"; {rate(totals['recent'], totals['images'])}; the {missing} missing at this"
                f" rate: {missing / totals['recent'] * elapsed:.0f} s; estimate for all"
                f" {space_size} archs at {PAPER_EPOCHS} epochs on these sets at this images/s:"
                f" {totals['full'] / (totals['images'] / elapsed) / 60:.1f} min"
            )
        lines.append(line)
    return lines


def check_data(dataset: str, proxies: Sequence[Path], data_root: str | None) -> str:
    """The dataset's fingerprint, checked against each proxy file's (same split settings
    as the sweep: the defaults); raises on the first file that cannot be read as a proxy
    file, or that was built on another dataset."""
    from nasproxy.data import load_dataset
    from nasproxy.proxies.proxy_file import check_fingerprint, read_proxy

    records = [read_proxy(path) for path in proxies]  # a bad file before the dataset loads
    data = load_dataset(dataset, data_root)
    for path, record in zip(proxies, records, strict=True):
        check_fingerprint(record, data, str(path), dataset)
    return data.fingerprint


def has_gpu_bench(folder: Path) -> list[Path]:
    """The sweep benchmark JSONs under ``folder`` measured on a CUDA device."""
    found = []
    for path in sorted(folder.glob("sweep*.json")):
        try:
            if json.loads(path.read_text()).get("device_type") == "cuda":
                found.append(path)
        except (OSError, ValueError):
            continue
    return found


def shape_globs(space_name: str, n: int, seed: int, within: Sequence[str] = ()) -> list[str]:
    """``--archs`` globs of a stratified sample of ``n`` shapes, every activation each
    (of the architectures matching ``within``, ``--archs`` patterns; default all).

    The sample is :func:`nasproxy.search.plan.stratified_sample` over the architectures
    of one activation (one per shape), so widths, depths, norms and poolings are as even
    as that sampler makes them; each glob then matches the shape's every activation.
    Complete shapes because a fused sweep trains a shape's activations as one stack: a
    sample of single architectures (nearly all of different shapes) would train one at a
    time.
    """
    from nasproxy import spaces
    from nasproxy.search.plan import select_archs, stratified_sample

    archs = select_archs(spaces.load(space_name), within)
    if not all(isinstance(a, spaces.Arch) for a in archs):
        raise NasproxyError(f"space {space_name} is not of ConvNets: its cells have no shapes")
    first = min(a.act for a in archs)
    one_per_shape = [a for a in archs if a.act == first]
    picked = stratified_sample(one_per_shape, n, seed)
    return [a.id.replace(f"-{first}-", "-*-", 1) for a in picked]
