"""What a sweep is asked to do (``SearchConfig``, its settings declared once), its training
sets and its progress events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasproxy import results
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.multitrain import RNG_MODES, FastOptions
from nasproxy.results import WHOLE
from nasproxy.search.halving import check_halving
from nasproxy.settings import (
    SEED,
    Check,
    SettingError,
    above,
    at_least,
    check_fields,
    ref,
    setting,
    within,
)
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


# A set's name: BASE@N, N a whole number of at least 1 (no leading zero).
OWN_EPOCHS = Check(
    lambda v: results.split_epochs(v)[1] is not None,
    "SET@N: a proxy's training-set name or whole, then @ and its epochs (a whole number "
    "of at least 1)",
)


def parse_seeds(text: str) -> tuple[int, ...]:
    """Training seeds from text, as ``search --seeds`` and ``run --set seeds=`` take them.

    A count N means seeds 0..N-1; a comma list names them (``0,3,7``; one seed: ``5,``).
    """
    parts = [p.strip() for p in text.split(",") if p.strip()]
    if text.strip() == "0":
        raise NasproxyError("seeds: want a count of at least 1 (or a comma list), got '0'")
    if not parts or not all(p.isdecimal() for p in parts):
        raise NasproxyError(
            f"seeds: want a count N (seeds 0..N-1) or a comma list (0,3,7; one seed: 5,), "
            f"got {text!r}"
        )
    return tuple(int(p) for p in parts) if "," in text else tuple(range(int(parts[0])))


@dataclass(frozen=True)
class FastChoice:
    """The stacked path's options as asked for; None leaves one to the device's default."""

    rng: str | None = setting(
        None,
        choices=RNG_MODES,
        help="stacked random streams: exact (each unit's own, as unfused; default) or shared",
    )
    bf16: bool | None = setting(None, help="bfloat16 autocast in stacks (default off)")
    channels_last: bool | None = setting(None, help="NHWC activations in stacks (default off)")
    cuda_graphs: bool | None = setting(
        None, help="replay each stacked step as a CUDA graph (default on CUDA)"
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def resolve(self, device_type: str) -> FastOptions:
        """The options a trial on ``device_type`` ("cuda", "cpu", ...) trains with."""
        base = FAST_DEFAULTS.get(device_type, FAST_DEFAULTS["cpu"])
        asked = {k: v for k, v in asdict(self).items() if v is not None}
        return replace(base, **asked).effective(torch.device(device_type))


@dataclass(frozen=True)
class SearchSettings:
    """How to sweep: every setting of a search but its name and proxy files, so that an
    experiment (``nasproxy.presets.Preset``) can hold them before its proxies exist.

    Each field is a setting (``nasproxy.settings``): ``nasproxy search`` has a flag and
    ``nasproxy run`` a ``--set`` key for it, both read by the field's parser.
    """

    dataset: str = setting(
        "digits",
        help="digits (embedded), cifar10, cifar100 or imagefolder:PATH (folder or .tar.gz)",
    )
    # None: on when --whole-archs, --whole-sample or --whole-top chooses its architectures
    whole: bool | None = setting(
        None,
        help="also train on the whole train split (--whole-archs, --whole-sample and "
        "--whole-top turn it on; --no-whole keeps it off and refuses them)",
    )
    whole_per_class: int | None = setting(
        None,
        metavar="N",
        check=at_least(1),
        help="with --whole: use a seeded class-balanced subset of N per class as the reference",
    )
    space: str = setting("convnet720", help="a space name or a .yaml path")
    archs: tuple[str, ...] = setting(
        (),
        repeat=True,
        metavar="PATTERN",
        help="architectures whose id matches a glob (w32-*-relu-*), or a regex with a re: "
        "prefix (repeatable; default all)",
    )
    sample: int | None = setting(
        None, metavar="N", check=at_least(1), help="a stratified sample of N archs"
    )
    sample_seed: int = setting(0, check=SEED, help="seed of --sample and --whole-sample")
    # None/() with whole_sample None: as the proxies, or with whole_top none but the confirmed
    whole_archs: tuple[str, ...] = setting(
        (),
        repeat=True,
        metavar="PATTERN",
        help="the whole split's own architectures, as --archs (default: the proxies')",
    )
    whole_sample: int | None = setting(
        None,
        metavar="N",
        check=at_least(1),
        help="a stratified sample of N of the whole split's architectures, as --sample",
    )
    whole_top: int | None = setting(
        None,
        metavar="K",
        check=at_least(1),
        help="after the proxy units, train the K best by mean proxy validation accuracy on "
        "the whole split too (a tie at the cut goes to the smaller id)",
    )
    whole_by: str = setting(
        "all",
        flag="--by",
        metavar="PROXY",
        help="with --whole-top: the proxy (training-set name) whose top K are confirmed, or "
        "all (default): the union of every proxy's top K",
    )
    grow_whole: bool = setting(
        False,
        help="on a resume, choose the whole split's architectures as this command says "
        "(--whole-archs, --whole-sample, --whole-top, --by) where the experiment recorded "
        "another choice; without it the recorded choice is kept, and a line says so",
    )
    epoch_sets: tuple[str, ...] = setting(
        (),
        flag="--also",
        repeat=True,
        metavar="SET@N",
        check=OWN_EPOCHS,
        help="also train SET (a proxy's training-set name, or whole) for N epochs instead of "
        "--epochs, as a training set of its own named SET@N, on the proxies' architectures "
        "(repeatable; whole@N needs no --whole)",
    )
    equal_compute: bool = setting(
        False,
        help="also train the whole split at each proxy's compute: whole@N, N = epochs x proxy "
        "images / whole images rounded half up (at least 1), on the proxies' architectures",
    )
    halving: int | None = setting(
        None,
        metavar="ETA",
        check=at_least(2),
        help="successive halving on each proxy: rungs of increasing epochs (the last the "
        "proxy's own units), only the best 1/ETA of a rung go on to the next",
    )
    halving_rungs: int | None = setting(
        None,
        metavar="R",
        check=at_least(2),
        help="with --halving: R rungs, rung r training epochs // ETA^(R-1-r) (default: as many "
        "as the epochs hold, no more than halving the architectures down to one needs)",
    )
    seeds: tuple[int, ...] = setting(
        (0,),
        parse=parse_seeds,
        check=SEED,
        nonempty=True,
        default_text="1",
        help="training seeds, each (arch, train set) runs once per seed: a count N "
        "(seeds 0..N-1) or a list: 0,3,7 (one seed: 5,)",
    )
    train: TrainConfig = TrainConfig()  # epochs, batch size, lr, ...; seed/device set per unit
    data_root: str | None = setting(
        None,
        help="download and cache folder (default $NASPROXY_DATA_ROOT or ~/.cache/nasproxy)",
    )
    val_fraction: float = setting(
        0.1,
        check=within(0, 1, low_open=True, high_open=True),
        help="held out of train per class (the ranking reads it: more than 0)",
    )
    split_seed: int = setting(0, check=SEED, help="seed of the validation split")
    results_dir: str = setting("results", metavar="DIR", help="results go to DIR/NAME")
    trial_size: int = setting(
        DEFAULT_TRIAL_SIZE, check=at_least(1), help="work units (arch x set x seed) per Tune trial"
    )
    gpus_per_trial: float | None = setting(
        None,
        check=at_least(0),
        help=f"GPU share of a trial, e.g. 0.25 (default {DEFAULT_GPU_SHARE} with GPUs, else 0)",
    )
    cpus_per_trial: float = setting(1.0, check=above(0), help="CPUs of a trial")
    address: str | None = setting(
        None, help="join a Ray cluster (auto or host:port); default a local Ray"
    )
    runner: str = setting(
        "ray",
        choices=RUNNERS,
        help="run trials on Ray Tune (default) or one after another in this process (no Ray)",
    )
    max_failures: int = setting(
        2, check=at_least(0), help="Tune retries of a trial whose worker crashed"
    )
    reuse_actors: bool = setting(
        True,
        flag="--no-reuse-actors",
        help="start a fresh worker for every trial (default: reuse finished ones)",
    )
    fresh: bool = setting(False, help="delete this experiment and start over")
    fuse: str = setting(
        "auto",
        choices=FUSE_MODES,
        help="train the units of one architecture and training-set size together as one "
        "stacked network (nasproxy.multitrain; auto: when the trials have a GPU)",
    )
    max_stack: int | None = setting(
        None,
        metavar="N",
        check=at_least(1),
        help=f"at most N units a stack (default {DEFAULT_MAX_STACK}; a GPU trial also caps "
        "it by its memory)",
    )
    fast: FastChoice = FastChoice()  # the stacked path's options
    rebuild_manifest: bool = setting(
        False,
        help="write a damaged or missing manifest.json anew from this command (the one that "
        "made the experiment), keeping and checking the stored unit files",
    )

    def __post_init__(self) -> None:
        check_fields(self)

    def config(self, name: str, proxies: tuple[str, ...] = (), **changes: Any) -> SearchConfig:
        """The sweep of these settings named ``name``, on ``proxies``, with ``changes``."""
        values = {f.name: getattr(self, f.name) for f in fields(SearchSettings)}
        return SearchConfig(**{**values, **changes}, name=name, proxies=proxies)


@dataclass(frozen=True)
class SearchConfig(SearchSettings):
    """One sweep: which architectures, on which training sets, how, and where to. Its
    ``whole`` is a bool: left None, it is on when the whole split's architectures are chosen
    (``whole_archs``, ``whole_sample``, ``whole_top``)."""

    name: str = setting(kw_only=True, help="experiment name: results go to DIR/NAME")
    proxies: tuple[str, ...] = setting(
        (),
        kw_only=True,
        flag="--proxy",
        repeat=True,
        metavar="[NAME=]PATH",
        help="a proxy file (repeatable); its train_set name is its method, or NAME",
    )

    def __post_init__(self) -> None:
        if self.whole is None:  # implied by a choice of the whole split's architectures
            chosen = self.whole_sample is not None or self.whole_top is not None
            object.__setattr__(self, "whole", chosen or bool(self.whole_archs))
        super().__post_init__()
        results.check_name(self.name)
        whole, whole_top = ref("whole"), ref("whole_top")
        if not self.proxies and not self.whole:
            raise SettingError(f"nothing to train on: give {ref('proxies')} files and/or {whole}")
        if self.whole_per_class is not None and not (self.whole or wants_whole(self)):
            raise SettingError(f"{ref('whole_per_class')} needs {whole}")
        if len(set(self.seeds)) != len(self.seeds):
            raise SettingError(f"{ref('seeds')} must be distinct, got {self.seeds}")
        if (self.whole_archs or self.whole_sample is not None or self.whole_top) and not self.whole:
            raise SettingError(  # whole given as false
                f"{ref('whole_archs')}, {ref('whole_sample')} and {whole_top} need {whole}"
            )
        if self.whole_top is not None and not self.proxies:
            raise SettingError(f"{whole_top} needs at least one proxy ({ref('proxies')})")
        if self.whole_by != "all" and self.whole_top is None:
            raise SettingError(
                f"{ref('whole_by')} chooses the proxy of {whole_top}: give {whole_top} K"
            )
        if self.runner == "local" and self.address:
            raise SettingError(
                f"{ref('runner')} local runs in this process: it takes no {ref('address')}"
            )
        check_own_epochs(self)
        if self.fresh and self.rebuild_manifest:
            raise SettingError(
                f"{ref('fresh')} deletes what {ref('rebuild_manifest')} would keep: give one"
            )

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
    epochs: int | None = None  # its own epochs (a set BASE@N), None: the protocol's
    draw: dict[str, Any] | None = None  # method, per_class, draw of a proxy built as a draw

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
            **(self.draw or {}),  # the report groups draws by (method, per_class)
        } | ({"epochs": self.epochs} if self.epochs is not None else {})


def check_own_epochs(cfg: SearchConfig) -> None:
    """Refuse, before any work, own-epochs and halving settings that cannot run and need
    no file read: a repeated set, N equal to the protocol's epochs (the set BASE itself),
    ``--equal-compute`` or ``--halving`` without a proxy, rungs that do not fit the epochs."""
    epochs = cfg.train.epochs
    seen = set()
    for name in cfg.epoch_sets:
        base, n = results.split_epochs(name)
        if name in seen:
            raise SettingError(f"{ref('epoch_sets')} {name} is given twice")
        seen.add(name)
        if n == epochs:
            raise SettingError(
                f"{ref('epoch_sets')} {name}: {n} epochs are the protocol's, so it would be "
                f"training set {base} itself; give other epochs"
            )
    if cfg.equal_compute and not cfg.proxies:
        raise SettingError(f"{ref('equal_compute')} matches each proxy: give {ref('proxies')}")
    check_halving(cfg.halving, cfg.halving_rungs, epochs, len(cfg.proxies))


def wants_whole(cfg: SearchConfig) -> bool:
    """Whether a set with its own epochs is built on the whole split."""
    bases = {results.split_epochs(name)[0] for name in cfg.epoch_sets}
    return cfg.equal_compute or WHOLE in bases
