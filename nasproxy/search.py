"""The NAS sweep on Ray Tune: every architecture x training set x seed, resumable.

How trials map to work
----------------------
A *work unit* is one (architecture, training set, seed): one call of ``train.train()`` and one
row of the results table. A Tune *trial* is a *chunk* of up to ``trial_size`` (default 16)
work units of the same training set, trained one after another in the trial's worker, which
reports each unit as it finishes. Starting a trial in a fresh worker costs seconds (a process,
torch imports, the dataset, a CUDA context, first-call warm-up) while a unit on a 1,000-image
proxy trains in seconds, so one trial a unit would spend much of a proxy sweep starting
workers. Two things remove that: a chunk pays the start once for ``trial_size`` units, and
Tune hands a finished trial's worker to the next trial (``reuse_actors``, on by default), so
a slot starts a worker once per sweep (scripts/bench_search_overhead.py measures both).

Chunks are planned per training set: when a set has fewer than ``trial_size`` x slots units
(slots = trials the cluster runs at once), its units are spread over all slots so none idles.
Within a set the units are sorted by estimated cost (multiply-accumulates) and dealt out
round-robin, so chunks carry similar work; the costliest chunks (the whole train split) are
queued first, so the short ones fill in at the end.

Resources and data
------------------
Each trial asks for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (fractional values
pack several trials on one GPU; by default 0.25 when the cluster has GPUs, else none) and
trains on the GPU Ray assigned it, else on the CPU. The dataset goes into the object store
once (``tune.with_parameters``) and every trial reads it from there, on any node, with no
dataset cache needed on the workers (for CIFAR-10's 184 MB of uint8 that read took ~0.3 s on
the 2-core benchmark machine, an .npz cache load ~0.1 s; once a trial either way); the proxy
indices travel the same way. ``address`` joins an existing cluster (every node needs nasproxy
installed, and the results directory should be storage all nodes mount, as Tune's own files
under DIR/EXP/ray/ are); without one a local Ray starts with the machine's CPUs and GPUs and
stops at the end.

Results, resume, failures
-------------------------
Each finished unit is written by its trial as its own file under ``DIR/EXP/units/`` (atomic
rename; see ``nasproxy.results``); the driver also writes any it hears of but cannot see (a
node without the shared results directory) and rebuilds trials.parquet/csv as results
arrive and at the end. The unit files are the source of truth: running the same sweep again
schedules only units without a file (a torn file counts as missing) plus those recorded as
``failed`` (out of memory, crashed worker: often transient); ``ok`` and ``diverged`` units
never run twice. Tune's own experiment restore is not used: it replays the old grid of
trials, while the store already names exactly the units left. Within a run Tune retries a
trial whose worker died (``max_failures``); the retry skips the units already stored. Units
of a trial that keeps crashing are retried once more a trial each, so a single bad unit is
isolated, and what still crashes is recorded as ``failed`` with the error.

A sweep's protocol (dataset fingerprint, space, epochs, seeds, training settings, training
sets) is fixed in ``manifest.json`` when it starts; the same name with a different protocol is
refused. The architecture selection may grow between runs (the manifest lists the union).
The manifest's ``wall_s`` gives, per training set, the summed training seconds of its units
(the cost of searching on that set); ``sweep_wall_s`` the driver's wall time over all runs,
and ``runs`` each run's provenance (commit, cluster, trial size, units trained).
"""

from __future__ import annotations

import contextlib
import fnmatch
import hashlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np

from nasproxy import __version__, results, spaces
from nasproxy.data import Dataset, load_dataset
from nasproxy.errors import NasproxyError
from nasproxy.proxies.base import check_budget
from nasproxy.proxies.build import parse_proxy, proxy_indices
from nasproxy.proxies.random import random_per_class
from nasproxy.results import WHOLE, UnitKey
from nasproxy.spaces import FIELDS, Arch, Space
from nasproxy.train import TrainConfig, TrainRecord, train

DEFAULT_TRIAL_SIZE = 16
DEFAULT_GPU_SHARE = 0.25  # trials per GPU = 4 when the cluster has GPUs and none is asked for
HASH_CHARS = 12
CONSOLIDATE_EVERY_S = 30.0
NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
RAY_DIR = "ray"

# Ray and Tune defaults that only add noise or work for this use (set unless the user did).
RAY_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard logger per trial
    "RAY_AIR_NEW_OUTPUT": "0",
}


@dataclass(frozen=True)
class SearchConfig:
    """One sweep: which architectures, on which training sets, how, and where to."""

    name: str  # experiment name: results go to results_dir/name
    dataset: str = "digits"  # dataset spec, as for load_dataset
    proxies: tuple[str, ...] = ()  # proxy JSON files, "PATH" or "NAME=PATH"
    whole: bool = False  # also train on the whole train split (train_set "whole")
    # with whole: the reference is a seeded, class-balanced subset of this many per class
    # (for budgets that cannot afford the whole split; recorded in the protocol)
    whole_per_class: int | None = None
    space: str = "convnet720"  # a space name or a YAML path
    archs: tuple[str, ...] = ()  # id patterns: globs, or regexes with a "re:" prefix
    sample: int | None = None  # a stratified sample of this many architectures
    sample_seed: int = 0
    seeds: tuple[int, ...] = (0,)  # training seeds; each (arch, train set) runs once per seed
    train: TrainConfig = TrainConfig()  # epochs, batch size, lr, ...; seed/device set per unit
    data_root: str | None = None
    val_fraction: float = 0.1
    split_seed: int = 0
    results_dir: str = "results"
    trial_size: int = DEFAULT_TRIAL_SIZE  # work units per Tune trial (at most)
    gpus_per_trial: float | None = None  # None: DEFAULT_GPU_SHARE with GPUs, else 0
    cpus_per_trial: float = 1.0
    address: str | None = None  # join this Ray cluster ("auto" or host:port)
    max_failures: int = 2  # Tune retries of a trial whose worker crashed
    reuse_actors: bool = True  # run the next trial in a finished trial's worker (no restart)
    fresh: bool = False  # delete this experiment's directory first

    def __post_init__(self) -> None:
        if not NAME_PATTERN.fullmatch(self.name):
            raise NasproxyError(
                f"bad experiment name {self.name!r}: use letters, digits, '.', '_' and '-'"
            )
        if not self.proxies and not self.whole:
            raise NasproxyError("nothing to train on: give --proxy files and/or --whole")
        if self.whole_per_class is not None and (not self.whole or self.whole_per_class < 1):
            raise NasproxyError("--whole-per-class needs --whole and a positive count")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise NasproxyError(f"seeds must be distinct and at least one, got {self.seeds}")
        if self.trial_size < 1:
            raise NasproxyError(f"trial size must be at least 1, got {self.trial_size}")
        if not self.cpus_per_trial > 0:
            raise NasproxyError(f"cpus per trial must be positive, got {self.cpus_per_trial}")
        if self.gpus_per_trial is not None and self.gpus_per_trial < 0:
            raise NasproxyError(f"gpus per trial must be >= 0, got {self.gpus_per_trial}")
        if self.max_failures < 0:
            raise NasproxyError(f"max failures must be >= 0, got {self.max_failures}")
        if self.sample is not None and self.sample < 1:
            raise NasproxyError(f"sample size must be at least 1, got {self.sample}")

    @property
    def exp_dir(self) -> Path:
        """The experiment directory (absolute)."""
        return (Path(self.results_dir) / self.name).resolve()


@dataclass(frozen=True)
class Progress:
    """A progress event: counts over the whole experiment, ETA from this run's pace."""

    done: int
    total: int
    failed: int
    diverged: int
    elapsed_s: float
    eta_s: float | None
    row: dict[str, Any] | None = None  # the unit that just finished, if any
    message: str = ""  # a note on the plan or a phase, if any


ProgressFn = Callable[[Progress], None]


@dataclass(frozen=True, eq=False)
class TrainSet:
    """A training set of the sweep: a proxy's train-split indices, or the whole split."""

    name: str
    indices: np.ndarray | None  # None: the whole train split
    n_images: int
    proxy_path: str | None = None
    proxy_hash: str = ""
    epsilon: float | None = None

    def manifest_entry(self, data: Dataset) -> dict[str, Any]:
        """The manifest record: provenance and size (uint8 bytes of its images)."""
        per_image = data.in_channels * data.image_size**2
        return {
            "proxy_path": self.proxy_path,
            "proxy_hash": self.proxy_hash,
            "n_images": self.n_images,
            "bytes": self.n_images * per_image,
            "epsilon": self.epsilon,
        }


@dataclass(frozen=True)
class Chunk:
    """The work of one Tune trial: units of one training set, as (arch id, seed)."""

    id: str
    train_set: str
    units: tuple[tuple[str, int], ...]


# --- architecture selection ------------------------------------------------------------


def select_archs(
    space: Space,
    patterns: Sequence[str] = (),
    sample: int | None = None,
    sample_seed: int = 0,
) -> list[Arch]:
    """The architectures matching any pattern (all when none), then an optional sample.

    A pattern is a shell glob on ids (``w32-*-relu-*``) or, with a ``re:`` prefix, a Python
    regular expression; both must match the whole id. A pattern matching nothing is refused.
    """
    archs = list(space)
    if patterns:
        keep = np.zeros(len(archs), dtype=bool)
        for pattern in patterns:
            match = _matcher(pattern)
            hits = np.array([match(a.id) for a in archs], dtype=bool)
            if not hits.any():
                raise NasproxyError(f"--archs {pattern!r} matches no architecture of {space.name}")
            keep |= hits
        archs = [a for a, k in zip(archs, keep, strict=True) if k]
    if sample is not None:
        archs = stratified_sample(archs, sample, sample_seed)
    return archs


def _matcher(pattern: str) -> Callable[[str], bool]:
    if pattern.startswith("re:"):
        try:
            regex = re.compile(pattern[3:])
        except re.error as exc:
            raise NasproxyError(f"--archs {pattern!r}: bad regular expression ({exc})") from None
        return lambda s: regex.fullmatch(s) is not None
    return lambda s: fnmatch.fnmatchcase(s, pattern)


def stratified_sample(archs: Sequence[Arch], n: int, seed: int) -> list[Arch]:
    """``n`` distinct architectures whose field values are spread as evenly as possible.

    Aim: each value of a field with k options appears floor(n/k) or ceil(n/k) times, for
    every field at once. Construction: (1) greedy picks, each an architecture not yet taken
    whose values have the lowest total count so far, ties broken by a seeded random order
    (on a full Cartesian space the combination of every field's least-used values is almost
    always free, so this alone keeps each field within one); (2) then swaps of a taken and a
    free architecture while one lowers the sum over fields of squared value counts (which is
    smallest when counts are equal). On convnet720 this balances every field to within one
    for every n; on a filtered set it is a best effort. Returned in the input order.
    """
    if n >= len(archs):
        return list(archs)
    rng = np.random.default_rng(seed)
    codes = np.empty((len(archs), len(FIELDS)), dtype=np.int64)
    counts = []
    for j, name in enumerate(FIELDS):
        values = sorted({getattr(a, name) for a in archs})
        code = {v: i for i, v in enumerate(values)}
        codes[:, j] = [code[getattr(a, name)] for a in archs]
        counts.append(np.zeros(len(values), dtype=np.int64))
    tiebreak = rng.permutation(len(archs))
    taken = np.zeros(len(archs), dtype=bool)

    def move(out: int | None, into: int) -> None:
        taken[into] = True
        for j in range(len(FIELDS)):
            counts[j][codes[into, j]] += 1
            if out is not None:
                counts[j][codes[out, j]] -= 1
        if out is not None:
            taken[out] = False

    for _ in range(n):
        score = sum(counts[j][codes[:, j]] for j in range(len(FIELDS))).astype(np.float64)
        score[taken] = np.inf
        move(None, int(np.lexsort((tiebreak, score))[0]))
    while True:
        held, free = np.flatnonzero(taken), np.flatnonzero(~taken)
        # change of sum(count^2)/2 when held[a] is swapped for free[b]
        delta = np.zeros((len(held), len(free)))
        for j in range(len(FIELDS)):
            ch, cf = codes[held, j], codes[free, j]
            gain = counts[j][cf][None, :] - counts[j][ch][:, None] + 1
            delta += (ch[:, None] != cf[None, :]) * gain
        a, b = np.unravel_index(int(np.argmin(delta)), delta.shape)
        if delta[a, b] >= 0:
            break
        move(int(held[a]), int(free[b]))
    return [a for a, t in zip(archs, taken, strict=True) if t]


# --- training sets -----------------------------------------------------------------------


@dataclass(frozen=True)
class _ProxyFile:
    path: Path
    name: str | None  # given explicitly as NAME=PATH
    payload: dict[str, Any]
    digest: str


def _parse_proxy_arg(arg: str) -> tuple[str | None, Path]:
    """``NAME=PATH`` or ``PATH``."""
    name, sep, rest = arg.partition("=")
    if sep and NAME_PATTERN.fullmatch(name) and not Path(arg).exists():
        return name, Path(rest)
    return None, Path(arg)


def _read_proxy(arg: str) -> _ProxyFile:
    """Read and parse a proxy file, checking its format; no dataset needed yet."""
    name, path = _parse_proxy_arg(arg)
    try:
        blob = path.read_bytes()
    except OSError as exc:
        raise NasproxyError(f"cannot read proxy file {path} ({exc.strerror or exc})") from None
    payload = parse_proxy(blob, path)
    for key in ("method", "fingerprint", "indices"):
        if key not in payload:
            raise NasproxyError(f"proxy file {path} lacks {key!r}")
    digest = hashlib.sha256(blob).hexdigest()[:HASH_CHARS]
    return _ProxyFile(path, name, payload, digest)


def _train_set_names(proxies: Sequence[_ProxyFile], whole: bool) -> list[str]:
    """Each proxy's name: given, else its method; methods used twice go by file stem."""
    methods = [str(p.payload["method"]) for p in proxies]
    names = []
    for proxy, method in zip(proxies, methods, strict=True):
        if proxy.name is not None:
            names.append(proxy.name)
        elif methods.count(method) > 1:
            names.append(proxy.path.stem)
        else:
            names.append(method)
    taken = {WHOLE: "--whole"} if whole else {}
    for proxy, name in zip(proxies, names, strict=True):
        if not NAME_PATTERN.fullmatch(name):
            raise NasproxyError(
                f"proxy file {proxy.path}: {name!r} is not usable as a training-set name; "
                "name it with --proxy NAME=PATH"
            )
        if name in taken:
            raise NasproxyError(
                f"two training sets would be named {name!r} ({taken[name]} and {proxy.path}); "
                "name them with --proxy NAME=PATH"
            )
        taken[name] = str(proxy.path)
    return names


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
    proxies = [_read_proxy(arg) for arg in proxy_args]
    seen: dict[str, Path] = {}
    for proxy in proxies:
        if proxy.digest in seen:
            raise NasproxyError(f"proxy files {seen[proxy.digest]} and {proxy.path} are identical")
        seen[proxy.digest] = proxy.path
    names = _train_set_names(proxies, whole)
    sets = []
    for proxy, name in zip(proxies, names, strict=True):
        indices = proxy_indices(proxy.payload, data, f"proxy file {proxy.path}")
        epsilon = proxy.payload.get("epsilon")
        sets.append(
            TrainSet(
                name=name,
                indices=indices,
                n_images=int(indices.size),
                proxy_path=str(proxy.path.resolve()),
                proxy_hash=proxy.digest,
                epsilon=float(epsilon) if epsilon is not None else None,
            )
        )
    if whole and whole_per_class is None:
        sets.append(TrainSet(WHOLE, None, len(data.y_train)))
    elif whole:
        check_budget(data, whole_per_class)
        subset = random_per_class(data.y_train.numpy(), whole_per_class, whole_seed)
        sets.append(TrainSet(WHOLE, subset, int(subset.size)))
    return sets


# --- planning --------------------------------------------------------------------------


def plan_chunks(
    pending: Sequence[UnitKey],
    trial_size: int,
    slots: int,
    cost: Callable[[UnitKey], float],
) -> list[Chunk]:
    """Group pending units into trials: per training set, balanced, costliest first.

    A set of n units gets ceil(n / s) chunks of at most s = min(trial_size, ceil(n / slots))
    units each; its units, sorted by ``cost``, are dealt out round-robin so chunks carry
    similar work. Chunks are returned costliest first.
    """
    by_set: dict[str, list[UnitKey]] = {}
    for key in pending:
        by_set.setdefault(key[0], []).append(key)
    chunks: list[tuple[float, Chunk]] = []
    for name, keys in by_set.items():
        size = max(1, min(trial_size, math.ceil(len(keys) / max(slots, 1))))
        n_chunks = math.ceil(len(keys) / size)
        ordered = sorted(keys, key=lambda k: (-cost(k), k))
        for j in range(n_chunks):
            mine = ordered[j::n_chunks]
            chunk = Chunk(f"{name}-{j:04d}", name, tuple((arch, seed) for _, seed, arch in mine))
            chunks.append((sum(cost(k) for k in mine), chunk))
    chunks.sort(key=lambda pair: (-pair[0], pair[1].id))
    return [chunk for _, chunk in chunks]


def protocol(cfg: SearchConfig) -> dict[str, Any]:
    """What makes two runs comparable: the training settings, seeds and data split."""
    settings = asdict(cfg.train)
    settings.pop("seed")
    settings.pop("device")
    return {
        **settings,
        "seeds": list(cfg.seeds),
        "whole_per_class": cfg.whole_per_class,
        "val_fraction": cfg.val_fraction,
        "split_seed": cfg.split_seed,
    }


# --- the trial ---------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class _TrialPlan:
    """Everything a trial needs besides the dataset; shipped once through the object store."""

    exp_dir: str
    chunks: dict[str, Chunk]
    indices: dict[str, np.ndarray | None]
    hashes: dict[str, str]
    train: TrainConfig
    threads: int
    run: int


def _train_unit(
    plan: _TrialPlan, data: Dataset, train_set: str, arch_id: str, seed: int, device: str
) -> dict[str, Any]:
    """Train one unit and store it; any error becomes a ``failed`` row, not a dead trial."""
    arch = Arch.from_id(arch_id)
    cfg = replace(plan.train, seed=seed, device=device)
    indices = plan.indices[train_set]
    try:
        record = train(arch, data, indices, cfg)
    except Exception as exc:  # one unit's error must not take its chunk down
        n_train = len(data.y_train) if indices is None else len(indices)
        first_line = (str(exc).splitlines() or [""])[0]
        record = TrainRecord(
            arch=arch_id,
            status="failed",
            reason=f"{exc.__class__.__name__}: {first_line}",
            seed=seed,
            epochs=cfg.epochs,
            n_train=n_train,
            device=device,
        )
    row = results.make_row(arch, train_set, plan.hashes[train_set], record)
    extra = {
        "history": record.history,
        "params": record.params,
        "macs": record.macs,
        "images_per_s": record.images_per_s,
        "run": plan.run,
        "finished": _now(),
    }
    results.write_unit(Path(plan.exp_dir), row, extra)
    return row


def _trainable(config: dict[str, Any], data: Dataset, plan: _TrialPlan) -> None:
    """A Tune trial: train the units of one chunk, reporting each; skip units stored already."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(plan.threads)
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    chunk = plan.chunks[config["chunk"]]
    for arch_id, seed in chunk.units:
        key = (chunk.train_set, seed, arch_id)
        row = results.read_unit(results.unit_path(Path(plan.exp_dir), key))
        if row is None or row["status"] == "failed":
            row = _train_unit(plan, data, chunk.train_set, arch_id, seed, device)
        tune.report({"row": json.dumps(row)})


def _chunk_name(trial: Any) -> str:
    return str(trial.config["chunk"])


# --- the driver --------------------------------------------------------------------------


class _Collector:
    """Driver side: receives each finished unit, stores it if unseen, reports progress."""

    def __init__(self, sweep: _Sweep):
        self.sweep = sweep
        self.errors: dict[str, str] = {}

    def on_result(self, result: Mapping[str, Any]) -> None:
        if "row" in result:
            self.sweep.record(json.loads(result["row"]))

    def on_error(self, chunk_id: str, error: str) -> None:
        self.errors[chunk_id] = error


def _tune_callback(collector: _Collector) -> Any:
    """A ``tune.Callback`` forwarding results and errors to ``collector``."""
    from ray import tune

    class _Forward(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            collector.on_result(result)

        def on_trial_error(self, iteration, trials, trial, **info):
            text = trial.get_error() or "the trial's worker died"
            lines = [line for line in str(text).splitlines() if line.strip()]
            collector.on_error(_chunk_name(trial), lines[-1] if lines else "unknown error")

        def __reduce__(self):  # Tune pickles its run config; the live collector stays out
            return (tune.Callback, ())

    return _Forward()


class _Sweep:
    """The state of one run of the driver: what is done, counts, progress, consolidation."""

    def __init__(
        self,
        exp_dir: Path,
        done: dict[UnitKey, dict[str, Any]],
        total: int,
        progress: ProgressFn | None,
        train_set_order: Sequence[str],
        arch_order: Sequence[str],
    ):
        self.exp_dir = exp_dir
        self.done = done
        self.total = total
        self.progress = progress
        self.train_set_order = list(train_set_order)
        self.arch_order = list(arch_order)
        self.start = time.perf_counter()
        self.done_at_start = len(done)
        self.trained = 0
        self.last_consolidated = self.start

    def record(self, row: dict[str, Any]) -> None:
        key = results.row_key(row)
        if key in self.done:
            return  # a retried trial re-reports the units it found stored
        if results.read_unit(results.unit_path(self.exp_dir, key)) is None:
            results.write_unit(self.exp_dir, row)  # the trial ran where DIR is not shared
        self.done[key] = row
        self.trained += 1
        self.emit(row=row)
        if time.perf_counter() - self.last_consolidated > CONSOLIDATE_EVERY_S:
            self.consolidate()

    def consolidate(self) -> None:
        results.consolidate(self.exp_dir, self.train_set_order, self.arch_order)
        self.last_consolidated = time.perf_counter()

    def emit(self, row: dict[str, Any] | None = None, message: str = "") -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.start
        remaining = self.total - self.n_done
        eta = elapsed / self.trained * remaining if self.trained else None
        statuses = [r["status"] for r in self.done.values()]
        self.progress(
            Progress(
                done=self.n_done,
                total=self.total,
                failed=statuses.count("failed"),
                diverged=statuses.count("diverged"),
                elapsed_s=elapsed,
                eta_s=eta,
                row=row,
                message=message,
            )
        )

    @property
    def n_done(self) -> int:
        return len(self.done)


def run_search(cfg: SearchConfig, progress: ProgressFn | None = None) -> Path:
    """Run (or resume) the sweep ``cfg``; returns the experiment directory.

    Everything a user can get wrong (space, proxy files, dataset, protocol of an existing
    experiment, resources) is checked before any training starts.
    """
    spaces.resolve_path(cfg.space)
    for arg in cfg.proxies:  # a missing or unreadable file fails before the dataset loads
        _read_proxy(arg)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.val_fraction, cfg.split_seed)
    space = spaces.load(cfg.space, image_size=data.image_size)
    archs = select_archs(space, cfg.archs, cfg.sample, cfg.sample_seed)
    train_sets = resolve_train_sets(
        cfg.proxies, cfg.whole, data, cfg.whole_per_class, cfg.split_seed
    )

    exp_dir = cfg.exp_dir
    if cfg.fresh:
        remove_experiment(exp_dir)
    previous = _check_existing(exp_dir)
    manifest = _manifest(cfg, data, space, archs, train_sets, previous)
    results.write_manifest(exp_dir, manifest)
    results.remove_stale_temporaries(exp_dir)

    all_keys = [(ts.name, seed, a.id) for ts in train_sets for seed in cfg.seeds for a in archs]
    stored = results.read_units(exp_dir)
    # failed units (out of memory, crashed worker: often transient) run again; ok and
    # diverged ones are final
    done = {k: stored[k] for k in all_keys if k in stored and stored[k]["status"] != "failed"}
    pending = [k for k in all_keys if k not in done]
    sweep = _Sweep(
        exp_dir, done, len(all_keys), progress, manifest["train_sets"], manifest["archs"]
    )

    started, t0 = _now(), time.perf_counter()
    run_info: dict[str, Any] = {"started": started, "units_pending": len(pending)}
    try:
        if pending:
            run_info.update(_run_pending(cfg, data, archs, train_sets, pending, sweep))
        else:
            sweep.emit(message=f"all {len(all_keys)} work units are done; nothing to run")
    finally:
        sweep.consolidate()
        run_info["wall_s"] = time.perf_counter() - t0
        run_info["units_trained"] = sweep.trained
        _finish_manifest(exp_dir, run_info)
    missing = [k for k in pending if k not in sweep.done]
    if missing:
        raise NasproxyError(
            f"the sweep stopped with {len(missing)} of {len(all_keys)} work units unfinished; "
            "run the same command again to continue"
        )
    return exp_dir


def _run_pending(
    cfg: SearchConfig,
    data: Dataset,
    archs: Sequence[Arch],
    train_sets: Sequence[TrainSet],
    pending: Sequence[UnitKey],
    sweep: _Sweep,
) -> dict[str, Any]:
    """Start or join Ray, run the pending units as Tune trials; returns run provenance."""
    by_name = {ts.name: ts for ts in train_sets}
    macs = {a.id: a.macs(data.in_channels, data.num_classes, data.image_size) for a in archs}

    def cost(key: UnitKey) -> float:
        return float(macs[key[2]]) * by_name[key[0]].n_images

    with _ray_session(cfg.address) as cluster:
        gpus = cfg.gpus_per_trial
        if gpus is None:
            gpus = DEFAULT_GPU_SHARE if cluster["gpus"] > 0 else 0.0
        slots = _slots(cfg.cpus_per_trial, gpus)
        chunks = plan_chunks(pending, cfg.trial_size, slots, cost)
        sweep.emit(
            message=(
                f"{len(pending)} work units to run ({sweep.n_done} of {sweep.total} done) in "
                f"{len(chunks)} trials of up to {max(len(c.units) for c in chunks)} units; "
                f"{slots} at a time ({cfg.cpus_per_trial:g} CPU, {gpus:g} GPU each) on "
                f"{cluster['description']}"
            )
        )
        plan = _TrialPlan(
            exp_dir=str(sweep.exp_dir),
            chunks={c.id: c for c in chunks},
            indices={ts.name: ts.indices for ts in train_sets},
            hashes={ts.name: ts.proxy_hash for ts in train_sets},
            train=cfg.train,
            threads=max(1, int(cfg.cpus_per_trial)),
            run=_next_run_number(sweep.exp_dir),
        )
        resources = {"cpu": cfg.cpus_per_trial, "gpu": gpus}
        errors = _fit(cfg, data, plan, resources, chunks, sweep, f"run-{plan.run:03d}")
        missing = [k for k in pending if k not in sweep.done]
        if errors and missing and len(errors) < len(chunks):
            # isolate the crashing unit(s): the rest of an errored chunk gets its own trials
            solo = plan_chunks(missing, 1, slots, cost)
            sweep.emit(message=f"{len(errors)} trials crashed; retrying {len(missing)} units alone")
            plan = replace(plan, chunks={c.id: c for c in solo})
            name = f"run-{plan.run:03d}-isolated"
            errors.update(_fit(cfg, data, plan, resources, solo, sweep, name))
            missing = [k for k in pending if k not in sweep.done]
        if errors:
            reason = "; ".join(sorted(set(errors.values())))[:500]
            for key in missing:
                sweep.record(_crash_row(key, by_name[key[0]], cfg, reason))
        return {
            "run": plan.run,
            "trial_size": cfg.trial_size,
            "trials": len(chunks),
            "cpus_per_trial": cfg.cpus_per_trial,
            "gpus_per_trial": gpus,
            "slots": slots,
            "cluster": cluster["description"],
            "crashed_trials": len(errors),
            "git_commit": results.git_commit(),
            "nasproxy_version": __version__,
        }


def _fit(
    cfg: SearchConfig,
    data: Dataset,
    plan: _TrialPlan,
    resources: dict[str, float],
    chunks: Sequence[Chunk],
    sweep: _Sweep,
    name: str,
) -> dict[str, str]:
    """One Tune experiment over ``chunks``; returns the errors of trials that gave up."""
    from ray import tune

    collector = _Collector(sweep)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, data=data, plan=plan), resources
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"chunk": tune.grid_search([c.id for c in chunks])},
        tune_config=tune.TuneConfig(
            trial_name_creator=_chunk_name,
            trial_dirname_creator=_chunk_name,
            reuse_actors=cfg.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(sweep.exp_dir / RAY_DIR),
            verbose=0,
            callbacks=[_tune_callback(collector)],
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
        ),
    )
    with _quiet_logger("ray.tune"):  # no per-trial metrics files to read back: expected
        tuner.fit()
    return collector.errors


def _crash_row(key: UnitKey, train_set: TrainSet, cfg: SearchConfig, reason: str) -> dict:
    train_set_name, seed, arch_id = key
    record = TrainRecord(
        arch=arch_id,
        status="failed",
        reason=f"worker crashed {cfg.max_failures + 1} times: {reason}",
        seed=seed,
        epochs=cfg.train.epochs,
        n_train=train_set.n_images,
    )
    return results.make_row(Arch.from_id(arch_id), train_set_name, train_set.proxy_hash, record)


@contextlib.contextmanager
def _ray_session(address: str | None) -> Iterator[dict[str, Any]]:
    """Join ``address``, reuse a Ray this process already runs, or start a local one."""
    for key, value in RAY_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    import ray

    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            else:  # "local": never attach to some other cluster running on this machine
                ray.init(
                    address="local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            detail = (str(exc).strip().splitlines() or [exc.__class__.__name__])[0]
            raise NasproxyError(
                f"cannot start or join {where} ({detail}); check the address and that both "
                "sides run the same Ray version; a cluster with token authentication needs "
                "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            ) from None
        started = True
    try:
        yield _cluster()
    finally:
        if started:
            ray.shutdown()


def _cluster() -> dict[str, Any]:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    description = f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs, {gpus:g} GPUs"
    return {"nodes": nodes, "cpus": cpus, "gpus": gpus, "description": description}


def _slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the cluster runs at once; refuse a trial no node can hold."""
    import ray

    slots = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node["Resources"]
        fit = math.floor(res.get("CPU", 0.0) / cpus_per_trial + 1e-9)
        if gpus_per_trial > 0:
            fit = min(fit, math.floor(res.get("GPU", 0.0) / gpus_per_trial + 1e-9))
        slots += fit
    if slots == 0:
        raise NasproxyError(
            f"no node of the Ray cluster has {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs "
            "free for a trial; lower --cpus-per-trial / --gpus-per-trial"
        )
    return slots


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)


# --- the experiment directory and its manifest -------------------------------------------


def remove_experiment(exp_dir: Path) -> None:
    """Delete an experiment directory (--fresh), refusing anything that is not one."""
    if not exp_dir.exists():
        return
    looks_like_one = (exp_dir / results.MANIFEST).exists() or (exp_dir / results.UNITS_DIR).is_dir()
    if not exp_dir.is_dir() or (not looks_like_one and any(exp_dir.iterdir())):
        raise NasproxyError(f"{exp_dir} is not a nasproxy experiment; refusing to delete it")
    shutil.rmtree(exp_dir)


def _check_existing(exp_dir: Path) -> dict[str, Any] | None:
    previous = results.read_manifest(exp_dir)
    if previous is None and (exp_dir / results.UNITS_DIR).is_dir():
        raise NasproxyError(f"{exp_dir} holds results but no manifest.json; use --fresh")
    return previous


def _manifest(
    cfg: SearchConfig,
    data: Dataset,
    space: Space,
    archs: Sequence[Arch],
    train_sets: Sequence[TrainSet],
    previous: dict[str, Any] | None,
) -> dict[str, Any]:
    """The manifest of this run; refuses a protocol that differs from an existing one."""
    manifest: dict[str, Any] = {
        "dataset": data.spec,
        "dataset_name": _dataset_name(data.spec),
        "fingerprint": data.fingerprint,
        "space": space.name,
        "space_size": len(space),
        "archs": [a.id for a in archs],
        "protocol": protocol(cfg),
        "train_sets": {ts.name: ts.manifest_entry(data) for ts in train_sets},
        "hardware": "",
        "nasproxy_version": __version__,
        "git_commit": results.git_commit(),
        "wall_s": {},
        "sweep_wall_s": 0.0,
        "runs": [],
        "created": _now(),
    }
    if previous is None:
        return manifest
    _refuse_different(cfg.name, previous, manifest)
    union = set(previous.get("archs", [])) | set(manifest["archs"])
    manifest["archs"] = [a for a in space.ids if a in union]
    for key in ("hardware", "wall_s", "sweep_wall_s", "runs", "created"):
        manifest[key] = previous.get(key, manifest[key])
    return manifest


def _refuse_different(name: str, old: Mapping[str, Any], new: Mapping[str, Any]) -> None:
    """One-line error naming the first difference between two protocols."""

    def sets(m: Mapping[str, Any]) -> dict[str, Any]:
        return {
            k: {"proxy_hash": v.get("proxy_hash"), "n_images": v.get("n_images")}
            for k, v in m.get("train_sets", {}).items()
        }

    checks = [  # the fingerprint, not the spec: the same images may move to another path
        ("dataset fingerprint", old.get("fingerprint"), new["fingerprint"]),
        ("space", old.get("space"), new["space"]),
        ("space size", old.get("space_size"), new["space_size"]),
    ]
    old_protocol, new_protocol = old.get("protocol", {}), new["protocol"]
    for key in sorted(set(old_protocol) | set(new_protocol)):
        checks.append((key, old_protocol.get(key), new_protocol.get(key)))
    old_sets, new_sets = sets(old), sets(new)
    checks.append(("training sets", sorted(old_sets), sorted(new_sets)))
    for ts in sorted(set(old_sets) & set(new_sets)):
        checks.append((f"training set {ts!r}", old_sets[ts], new_sets[ts]))
    for what, before, now in checks:
        if before != now:
            raise NasproxyError(
                f"experiment {name!r} was run with {what} {before}, this run asks for {now}; "
                "use another --name, or --fresh to start over"
            )


def _finish_manifest(exp_dir: Path, run_info: dict[str, Any]) -> None:
    """Add this run's provenance, the wall times and the hardware seen to the manifest."""
    manifest = results.read_manifest(exp_dir) or {}
    table = results.read_trials(exp_dir)
    manifest["runs"] = [*manifest.get("runs", []), run_info]
    manifest["sweep_wall_s"] = sum(r.get("wall_s", 0.0) for r in manifest["runs"])
    manifest["wall_s"] = {
        name: float(table.loc[table["train_set"] == name, "wall_s"].sum())
        for name in manifest.get("train_sets", {})
    }
    devices = sorted({str(d) for d in table["device"].dropna() if str(d)})
    clusters = sorted({r["cluster"] for r in manifest["runs"] if "cluster" in r})
    if devices or clusters:
        manifest["hardware"] = f"{', '.join(devices) or 'none yet'} ({'; '.join(clusters)})"
    manifest["updated"] = _now()
    results.write_manifest(exp_dir, manifest)


def _next_run_number(exp_dir: Path) -> int:
    runs = (exp_dir / RAY_DIR).glob("run-*")
    numbers = [int(p.name[4:7]) for p in runs if p.name[4:7].isdigit()]
    return max(numbers, default=0) + 1


def _dataset_name(spec: str) -> str:
    if spec.startswith("imagefolder:"):
        return Path(spec.split(":", 1)[1].rstrip("/")).name.removesuffix(".tar.gz")
    return spec


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


__all__ = [
    "Chunk",
    "Progress",
    "ProgressFn",
    "SearchConfig",
    "TrainSet",
    "plan_chunks",
    "protocol",
    "resolve_train_sets",
    "run_search",
    "select_archs",
    "stratified_sample",
]
