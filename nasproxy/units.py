"""A sweep's unit files away from the host that trains them: one archive, and its rates.

The experiments' manifests and unit files travel as one tar.gz (:func:`pack`,
:func:`unpack`), so a GPU host returns a few files; :func:`rates` measures a running sweep
on the device that runs it; :func:`check_data`, :func:`has_gpu_bench` and
:func:`shape_globs` prepare such a run. The run they serve: results/README.md, "Table 1 on
a GPU host: what a run does"; the ``nasproxy units`` command: docs/search.md.
"""

from __future__ import annotations

import io
import json
import re
import tarfile
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from nasproxy import results
from nasproxy.errors import NasproxyError
from nasproxy.io import atomic_write_bytes

NAME = r"[A-Za-z0-9_.-]+"
MEMBER = re.compile(
    rf"(?P<exp>{NAME})/(?:{re.escape(results.MANIFEST)}"
    rf"|{results.UNITS_DIR}/{NAME}/s[0-9]+/{NAME}\.json)"
)
MAX_MEMBER_BYTES = 1 << 20  # a unit file is about 1 kB; a manifest a few hundred kB
PAPER_EPOCHS = 100


def _experiment_files(exp_dir: Path) -> list[Path]:
    """The manifest and every finished unit file of an experiment (no temporaries)."""
    files = sorted((exp_dir / results.UNITS_DIR).glob("*/s*/*.json"))
    manifest = exp_dir / results.MANIFEST
    return ([manifest] if manifest.is_file() else []) + files


def pack(results_dir: Path, experiments: Sequence[str], out: Path) -> int:
    """Write ``out`` (tar.gz) with each experiment's manifest and unit files; returns how
    many unit files it holds. Experiments that do not exist yet are skipped.

    The archive is written under a temporary name and renamed, so a reader (or a run
    stopped at its time limit) sees the previous archive or the new one, never half of one.
    """
    buffer = io.BytesIO()
    n_units = 0
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for exp in experiments:
            exp_dir = results_dir / exp
            for path in _experiment_files(exp_dir):
                try:
                    blob = path.read_bytes()
                except OSError:
                    continue  # removed between the listing and the read
                info = tarfile.TarInfo(str(path.relative_to(results_dir)))
                info.size, info.mtime = len(blob), int(path.stat().st_mtime)
                tar.addfile(info, io.BytesIO(blob))
                n_units += path.name != results.MANIFEST
    atomic_write_bytes(out, buffer.getvalue())
    return n_units


def unpack(archive: Path, results_dir: Path) -> dict[str, int]:
    """Put an archive's manifests and unit files under ``results_dir`` and rebuild each
    experiment's trials table; returns unit files per experiment.

    Only manifests and unit files are accepted (no links, no paths outside
    ``results_dir``), each written atomically, so ``nasproxy report EXP`` works on the result.
    """
    try:
        tar = tarfile.open(archive, mode="r:gz")
    except (OSError, tarfile.TarError) as exc:
        raise NasproxyError(f"cannot read {archive} as a tar.gz ({exc})") from None
    counts: dict[str, int] = {}
    with tar:
        members = tar.getmembers()
        for member in members:
            match = MEMBER.fullmatch(member.name)
            if member.isdir():
                continue
            if not member.isfile() or match is None or {".", ".."} & set(member.name.split("/")):
                raise NasproxyError(
                    f"{archive}: {member.name!r} is not a manifest or unit file; nothing unpacked"
                )
            if member.size > MAX_MEMBER_BYTES:
                raise NasproxyError(f"{archive}: {member.name} is {member.size} bytes; too large")
        for member in members:
            if member.isdir():
                continue
            blob = tar.extractfile(member).read()
            atomic_write_bytes(results_dir / member.name, blob)
            exp = member.name.split("/", 1)[0]
            counts.setdefault(exp, 0)
            counts[exp] += not member.name.endswith("/" + results.MANIFEST)
    for exp in counts:
        exp_dir = results_dir / exp
        manifest = results.read_manifest(exp_dir)
        if manifest is None:
            raise NasproxyError(f"{archive} holds unit files of {exp} but no manifest")
        results.consolidate(exp_dir, manifest.get("train_sets", {}), manifest.get("archs", []))
    return counts


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
    elapsed = max(now - since, 1e-9)

    def rate(done: int, images: int) -> str:
        return (
            f"{done} in the last {elapsed:.0f} s = {60 * done / elapsed:.1f} units/min,"
            f" {images / elapsed:,.0f} images/s"
        )

    lines = []
    for exp in experiments:
        exp_dir = results_dir / exp
        manifest = results.read_manifest(exp_dir)
        if manifest is None:
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
    as the sweep: the defaults); raises on the first mismatch."""
    from nasproxy.data import load_dataset

    data = load_dataset(dataset, data_root)
    for path in proxies:
        try:
            recorded = json.loads(path.read_text()).get("fingerprint")
        except (OSError, ValueError) as exc:
            raise NasproxyError(f"cannot read proxy file {path} ({exc})") from None
        if recorded != data.fingerprint:
            raise NasproxyError(
                f"{path} was built on dataset fingerprint {recorded}, "
                f"{dataset} is {data.fingerprint}"
            )
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
    first = min(a.act for a in archs)
    one_per_shape = [a for a in archs if a.act == first]
    picked = stratified_sample(one_per_shape, n, seed)
    return [a.id.replace(f"-{first}-", "-*-", 1) for a in picked]
