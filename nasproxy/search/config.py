"""What a sweep is asked to do (``SearchConfig``), its training sets and its progress events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasproxy import results
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.multitrain import RNG_MODES, FastOptions
from nasproxy.train import TrainConfig

DEFAULT_TRIAL_SIZE = 16
DEFAULT_GPU_SHARE = 0.25  # trials per GPU = 4 when the cluster has GPUs and none is asked for
FUSE_MODES = ("auto", "on", "off")
RUNNERS = ("ray", "local")  # nasproxy.search.runner
# Most units one stack trains at once, before the memory bound of the trial's GPU share.
# The sweep's natural stacks are smaller (one shape: activations x proxies x seeds).
DEFAULT_MAX_STACK = 64
# The stacked path's options when not given, per device type. The CUDA values are
# PROVISIONAL: chosen without a GPU measurement. CUDA graphs replay the same kernels (no
# change beyond rounding) and remove launch overhead; bf16 and channels-last change the
# arithmetic and stay off until a measurement shows accuracies within seed noise.
FAST_DEFAULTS: dict[str, FastOptions] = {
    "cuda": FastOptions(rng="exact", bf16=False, channels_last=False, cuda_graphs=True),
    "cpu": FastOptions(rng="exact", bf16=False, channels_last=False, cuda_graphs=False),
}


@dataclass(frozen=True)
class FastChoice:
    """The stacked path's options as asked for; None leaves one to the device's default."""

    rng: str | None = None  # "exact" (each unit's own random streams) or "shared"
    bf16: bool | None = None
    channels_last: bool | None = None
    cuda_graphs: bool | None = None

    def __post_init__(self) -> None:
        if self.rng is not None and self.rng not in RNG_MODES:
            raise NasproxyError(
                f"unknown rng mode {self.rng!r}; choose from {', '.join(RNG_MODES)}"
            )

    def resolve(self, device_type: str) -> FastOptions:
        """The options a trial on ``device_type`` ("cuda", "cpu", ...) trains with."""
        base = FAST_DEFAULTS.get(device_type, FAST_DEFAULTS["cpu"])
        asked = {k: v for k, v in asdict(self).items() if v is not None}
        return replace(base, **asked).effective(torch.device(device_type))


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
    # the whole split's own architectures (None/() with whole_sample None: as the proxies,
    # or with whole_top, none but the confirmed): id patterns, then a stratified sample
    whole_archs: tuple[str, ...] = ()
    whole_sample: int | None = None
    # after the proxy units: train the K best by mean proxy validation accuracy on the
    # whole split too, of the proxy named whole_by, or each proxy's K best ("all")
    whole_top: int | None = None
    whole_by: str = "all"
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
    # train the units of one shape and training-set size together, as one stacked
    # network (nasproxy.multitrain): "auto" = when the trials have a GPU
    fuse: str = "auto"
    max_stack: int | None = None  # most units a stack; None: DEFAULT_MAX_STACK
    fast: FastChoice = FastChoice()  # the stacked path's options
    rebuild_manifest: bool = False  # write the manifest anew from this config + unit files
    runner: str = "ray"  # "ray" (Ray Tune) or "local" (this process, no Ray: tests, pdb)

    def __post_init__(self) -> None:
        results.check_name(self.name)
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
        if (self.whole_archs or self.whole_sample is not None or self.whole_top) and not self.whole:
            raise NasproxyError("--whole-archs, --whole-sample and --whole-top need --whole")
        if self.whole_sample is not None and self.whole_sample < 1:
            raise NasproxyError(f"whole sample size must be at least 1, got {self.whole_sample}")
        if self.whole_top is not None and (self.whole_top < 1 or not self.proxies):
            raise NasproxyError("--whole-top needs a positive K and at least one --proxy")
        if self.whole_by != "all" and self.whole_top is None:
            raise NasproxyError("--by chooses the proxy of --whole-top: give --whole-top K")
        if self.fuse not in FUSE_MODES:
            raise NasproxyError(f"--fuse must be one of {', '.join(FUSE_MODES)}, got {self.fuse!r}")
        if self.max_stack is not None and self.max_stack < 1:
            raise NasproxyError(f"max stack must be at least 1, got {self.max_stack}")
        if self.runner not in RUNNERS:
            raise NasproxyError(f"--runner must be ray or local, got {self.runner!r}")
        if self.runner == "local" and self.address:
            raise NasproxyError("--runner local runs in this process: it takes no --address")
        if self.fresh and self.rebuild_manifest:
            raise NasproxyError("--fresh deletes what --rebuild-manifest would keep: give one")

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
    proxy_hash: str = ""  # of what defines the selection (proxies.build.selection_hash)
    epsilon: float | None = None
    selection: dict[str, str] | None = None  # the hash field by field, to name a change
    file_hash: str = ""  # of the file's bytes: what older manifests recorded as proxy_hash

    def manifest_entry(self, data: Dataset, archs: list[str]) -> dict[str, Any]:
        """The manifest record: provenance, size (uint8 bytes of its images) and the ids
        of the architectures it trains."""
        per_image = data.in_channels * data.image_size**2
        return {
            "archs": archs,
            "proxy_path": self.proxy_path,
            "proxy_hash": self.proxy_hash,
            "n_images": self.n_images,
            "bytes": self.n_images * per_image,
            "epsilon": self.epsilon,
            "selection": self.selection,
        }
