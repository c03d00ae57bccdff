"""The shared scoring run: one backbone trained on the whole train split, cached on disk.

Herding, forgetting and influence-based pruning all read the same trained network. It is
trained once per (dataset fingerprint, backbone, training settings, seed) and stored under
``<cache_dir>/scoring/<key>/``:

  ``model.pt``     the state dict (``torch.save``; read back with ``weights_only=True``)
  ``arrays.npz``   ``features`` (n, d) float32 penultimate features of every training
                   example (eval mode, no augmentation), ``probs`` (n, C) float32 softmax
                   outputs, ``labels`` (n,), ``head_weight`` / ``head_bias`` of the trained
                   classifier, and the forgetting statistics recorded during that same
                   training: ``forgetting_events`` (n,) int64 and ``ever_learned`` (n,) bool
  ``meta.json``    the key, the per-epoch history, timings, the artifact ``hash`` and
                   where it ran (``platform``: device, CPU threads, machine, CPU model,
                   torch version; absent from runs cached by earlier versions)

The directory is written under a temporary name and renamed into place, so a reader sees
all of it or none of it. The hash is the sha256 of the key and of both data files; it is
checked on every load and recorded in every proxy file built from the artifact. A damaged
artifact (unreadable, or not matching its hash) is discarded and trained again, with a
one-line warning.

On a CPU the run uses one thread (``SCORING_THREADS``) whatever torch's setting: with more,
the order of the floating-point sums in the convolutions depends on the thread count, and
so do the features and every scoring-based proxy (docs/reliability.md, "Same seed, same
bytes"; ``scripts/bench_scoring_threads.py`` measures what the pinning costs). The thread
count is not part of the cache key, as the device is not: a cached run is reused
wherever it was made, and its ``platform`` says where that was.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import platform
import shutil
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from nasproxy.data import Dataset
from nasproxy.errors import CacheWarning, NasproxyError
from nasproxy.io import (
    atomic_write_bytes,
    atomic_write_json,
    check_output_dir,
    private_to_default,
)
from nasproxy.provenance import cpu_model, device_name
from nasproxy.settings import Check, check_fields, setting
from nasproxy.spaces import parse_arch
from nasproxy.train import (
    EVAL_BATCH,
    TrainConfig,
    batches,
    fit,
    normalize,
    resolve_device,
    torch_threads,
)

FORMAT = "nasproxy-scoring/1"
# The ConvNet family of the space at width 128 and depth 4, so that 32x32 images end in
# 2x2 x 128 = 512-d features: a 5,130-parameter head for 10 classes, whose Hessian, factor
# and S (CIFAR-10) fit in about 1.4 GB, where the 2,048-d features of the depth-3 net need
# 16x the Hessian and are refused by the influence method's memory guard.
DEFAULT_BACKBONE = "w128-d4-relu-instancenorm-avgpooling"
RESNET18 = "resnet18"
# Long enough for the backbone to fit its training split, so that forgetting statistics
# and herding features describe a trained network; half the search protocol's 100 epochs.
DEFAULT_EPOCHS = 50
# The CPU threads of a scoring run: one, so that its bytes do not depend on the machine's
# core count or torch's thread setting (docs/reliability.md, "Same seed, same bytes").
SCORING_THREADS = 1
FILES = ("model.pt", "arrays.npz")
ARRAYS = (
    "features",
    "probs",
    "labels",
    "head_weight",
    "head_bias",
    "forgetting_events",
    "ever_learned",
)

Progress = Callable[[str], None]


def is_backbone(name: str) -> bool:
    """Whether ``name`` names a scoring network: an architecture id (a ConvNet or a
    NAS-Bench-201 cell) or resnet18."""
    try:
        return name == RESNET18 or bool(parse_arch(name))
    except NasproxyError:
        return False


def _as_trainer(name: str, **meta: Any) -> Any:
    """The scoring run's setting of the trainer's ``name`` (a ``TrainConfig`` field): its
    default, check and help (``meta`` overrides them), under a key of its own."""
    declared = next(f for f in fields(TrainConfig) if f.name == name)
    own = {"default": declared.default, "check": declared.metadata["check"]}
    own["help"] = "scoring run: " + declared.metadata["help"]
    return setting(**{**own, **meta})


@dataclass(frozen=True)
class ScoringConfig:
    """The backbone and how it is trained; every field is part of the cache key (``key``).

    Each field is a setting (``nasproxy.settings``): a ``build-proxy`` flag and a ``run
    --set`` key of its name (``backbone_epochs``: ``--backbone-epochs``). The training
    settings are the trainer's, under ``backbone_`` keys beside a search's own."""

    backbone: str = setting(
        DEFAULT_BACKBONE,
        check=Check(
            is_backbone,
            "an architecture id (w32-d3-relu-instancenorm-avgpooling, a NAS-Bench-201 cell) "
            "or resnet18",
        ),
        help="scoring network: a ConvNet id (the w128-d4 one has 512-d features on 32x32 "
        "images), a NAS-Bench-201 cell (64-d features) or resnet18 (CIFAR ResNet-18)",
    )
    backbone_epochs: int = _as_trainer(
        "epochs", default=DEFAULT_EPOCHS, help="epochs of the scoring run"
    )
    backbone_seed: int = _as_trainer(
        "seed",
        internal=False,
        help="seed of the scoring run: initialisation, batch order, augmentation (default 0 "
        "in a preset, --seed in build-proxy)",
    )
    backbone_batch_size: int = _as_trainer("batch_size")
    backbone_lr: float = _as_trainer("lr")
    backbone_momentum: float = _as_trainer("momentum")
    backbone_weight_decay: float = _as_trainer("weight_decay")
    backbone_augment: bool = _as_trainer("augment", flag="--no-backbone-augment")

    def __post_init__(self) -> None:
        check_fields(self)

    def train_config(self, device: str) -> TrainConfig:
        """The trainer's settings for this backbone on ``device``."""
        return TrainConfig(
            epochs=self.backbone_epochs,
            batch_size=self.backbone_batch_size,
            lr=self.backbone_lr,
            momentum=self.backbone_momentum,
            weight_decay=self.backbone_weight_decay,
            augment=self.backbone_augment,
            seed=self.backbone_seed,
            device=device,
        )

    def key(self) -> dict[str, Any]:
        """The settings by the names of the cache key and of a proxy file's ``backbone``
        record (the trainer's: ``epochs``, ``seed``, ...), which stay as they were."""
        return {
            "backbone": self.backbone,
            "epochs": self.backbone_epochs,
            "seed": self.backbone_seed,
            "batch_size": self.backbone_batch_size,
            "lr": self.backbone_lr,
            "momentum": self.backbone_momentum,
            "weight_decay": self.backbone_weight_decay,
            "augment": self.backbone_augment,
        }

    def record(self) -> dict[str, Any]:
        """The settings as a proxy file's ``backbone`` record names them: the key's names,
        the backbone as ``id``."""
        return {("id" if k == "backbone" else k): v for k, v in self.key().items()}


def build_backbone(backbone: str, data: Dataset) -> nn.Module:
    """The untrained backbone (``.embed`` features, ``.classifier`` head) for ``data``."""
    if backbone == RESNET18:
        from nasproxy.models_resnet import CifarResNet18

        return CifarResNet18(data.in_channels, data.num_classes)
    from nasproxy.models import build_model

    return build_model(parse_arch(backbone), data.in_channels, data.num_classes, data.image_size)


class ForgettingTracker:
    """An observer of ``fit`` that counts forgetting events (Toneva et al., ICLR 2019).

    A forgetting event is a presentation at which an example is misclassified after being
    classified correctly at its previous presentation. ``ever_learned`` marks the examples
    classified correctly at least once. State stays on the device: no host sync per step.
    """

    def __init__(self, n: int, device: torch.device | str = "cpu"):
        self.previous = torch.zeros(n, dtype=torch.bool, device=device)
        self.ever_learned = torch.zeros(n, dtype=torch.bool, device=device)
        self.events = torch.zeros(n, dtype=torch.long, device=device)

    def __call__(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        forgotten = self.previous[indices] & ~correct
        # index_add_ writes into the counts (events[indices][mask] += 1 would update a copy)
        self.events.index_add_(0, indices, forgotten.long())
        self.previous[indices] = correct
        self.ever_learned[indices] = self.ever_learned[indices] | correct


class _EpochReporter:
    """An observer that reports one line per epoch (running training accuracy)."""

    def __init__(
        self,
        steps_per_epoch: int,
        epochs: int,
        label: str,
        progress: Progress,
        device: torch.device,
    ):
        self.steps_per_epoch, self.epochs, self.label = steps_per_epoch, epochs, label
        self.progress = progress
        self.step = 0
        self.correct = torch.zeros((), dtype=torch.long, device=device)
        self.seen = 0
        self.start = time.perf_counter()

    def __call__(self, indices: torch.Tensor, correct: torch.Tensor) -> None:
        self.correct += correct.sum()
        self.seen += len(indices)
        self.step += 1
        if self.step % self.steps_per_epoch == 0:
            acc = self.correct.item() / self.seen  # one host sync per epoch
            epoch = self.step // self.steps_per_epoch
            self.progress(
                f"scoring run {self.label}: epoch {epoch}/{self.epochs}, "
                f"train acc {acc:.3f}, {time.perf_counter() - self.start:.0f} s"
            )
            self.correct.zero_()
            self.seen = 0


@dataclass(frozen=True, eq=False)
class ScoringArtifact:
    """A trained backbone's view of the train split (see the module docstring)."""

    path: Path
    key: dict[str, Any]
    hash: str
    features: np.ndarray
    probs: np.ndarray
    labels: np.ndarray
    head_weight: np.ndarray
    head_bias: np.ndarray
    forgetting_events: np.ndarray
    ever_learned: np.ndarray
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def backbone(self) -> str:
        return str(self.key["backbone"])

    def load_backbone(self, data: Dataset, device: str = "cpu") -> nn.Module:
        """The trained backbone, from the checkpoint (plain tensors only: weights_only)."""
        model = build_backbone(self.backbone, data)
        state = torch.load(self.path / "model.pt", map_location="cpu", weights_only=True)
        model.load_state_dict(state)
        return model.to(resolve_device(device)).eval()


def scoring_key(data: Dataset, cfg: ScoringConfig) -> dict[str, Any]:
    """What identifies a scoring run: the data, the backbone and its training."""
    return {"format": FORMAT, "fingerprint": data.fingerprint, **cfg.key()}


def artifact_dir(cache_dir: str | Path, data: Dataset, cfg: ScoringConfig) -> Path:
    """``<cache_dir>/scoring/<fingerprint>-<backbone>-e<epochs>-s<seed>-<sha256(key)[:12]>``."""
    digest = hashlib.sha256(_canonical(scoring_key(data, cfg))).hexdigest()[:12]
    run = f"{cfg.backbone}-e{cfg.backbone_epochs}-s{cfg.backbone_seed}"
    return Path(cache_dir) / "scoring" / f"{data.fingerprint}-{run}-{digest}"


def platform_record(device: torch.device) -> dict[str, Any]:
    """Where torch work runs now: the device's name, torch's CPU threads, the machine, the
    CPU model and the torch version (what a scoring run's and a proxy's bytes depend on
    beyond their settings)."""
    return {
        "device": device_name(device),
        "threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
    }


def scoring_run(
    data: Dataset,
    cfg: ScoringConfig,
    cache_dir: str | Path,
    device: str = "auto",
    progress: Progress | None = None,
    *,
    threads: int | None = SCORING_THREADS,
) -> ScoringArtifact:
    """The cached artifact for (``data``, ``cfg``); trains and stores it on first use.

    ``threads``: torch's CPU threads while it trains (default one, so that the bytes do not
    depend on the machine; None: torch's setting, which can be faster on many cores, the
    bytes then depend on the count). Not part of the key: a cached run is reused whatever
    its count.
    """
    if threads is not None and threads < 1:
        raise NasproxyError(f"scoring threads must be at least 1, got {threads}")
    path = artifact_dir(cache_dir, data, cfg)
    if path.exists():
        try:
            artifact = load_artifact(path, data)
        except NasproxyError as exc:  # damaged: its key is in its name, so retrain it
            warnings.warn(f"{exc}; training it again", CacheWarning, stacklevel=2)
            _discard(path)
        else:
            if progress is not None:
                progress(f"reusing the scoring run in {path}")
            return artifact
    check_output_dir(path.parent, "scoring cache folder")  # before training, not after
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=_mkdir(path.parent)))
    try:
        private_to_default(tmp)  # the folder is renamed into place: not private
        with torch_threads(threads):
            _train_into(tmp, data, cfg, device, progress)
        try:
            tmp.rename(path)
        except OSError:  # another process stored the same run first: keep theirs
            if not (path / "meta.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return load_artifact(path, data)


def load_artifact(path: str | Path, data: Dataset) -> ScoringArtifact:
    """Read and verify a stored artifact (hash, dataset fingerprint, shapes)."""
    path = Path(path)
    try:
        meta = json.loads((path / "meta.json").read_text())
        if not isinstance(meta, dict) or not isinstance(meta.get("key"), dict):
            raise ValueError("meta.json is not a scoring record")
        digest = _artifact_hash(meta["key"], path)
    except (OSError, ValueError, KeyError) as exc:
        raise NasproxyError(f"scoring cache {path} is unreadable ({exc}); delete it") from None
    if digest != meta.get("hash"):
        raise NasproxyError(f"scoring cache {path} does not match its hash; delete it")
    key = meta["key"]
    if key.get("fingerprint") != data.fingerprint:
        raise NasproxyError(
            f"scoring cache {path} was built on dataset fingerprint {key.get('fingerprint')}, "
            f"this dataset is {data.fingerprint}"
        )
    try:
        with np.load(path / "arrays.npz", allow_pickle=False) as z:
            arrays = {name: z[name] for name in ARRAYS}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise NasproxyError(f"scoring cache {path} is unreadable ({exc}); delete it") from None
    if not np.array_equal(arrays["labels"], data.y_train.numpy()):
        raise NasproxyError(f"scoring cache {path} has labels that differ from the dataset's")
    return ScoringArtifact(path=path, key=key, hash=digest, meta=meta, **arrays)


def _discard(path: Path) -> None:
    """Remove a damaged artifact: renamed out of the way first, so no reader sees half of it."""
    trash = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".damaged", dir=path.parent))
    try:
        path.rename(trash / path.name)
    except FileNotFoundError:  # another process discarded it first
        pass
    shutil.rmtree(trash, ignore_errors=True)


def _train_into(
    folder: Path, data: Dataset, cfg: ScoringConfig, device: str, progress: Progress | None
) -> None:
    """Train the backbone, record forgetting, extract features; write the three files."""
    train_cfg = cfg.train_config(device)
    dev = resolve_device(device)
    n = len(data.y_train)
    with torch.random.fork_rng(devices=[]):  # initialisation from the seed alone
        torch.manual_seed(cfg.backbone_seed)
        model = build_backbone(cfg.backbone, data)
    model = model.to(dev)
    tracker = ForgettingTracker(n, dev)
    observers: list[Callable[[torch.Tensor, torch.Tensor], None]] = [tracker]
    if progress is not None:
        gen = torch.Generator().manual_seed(0)  # only counts the trainer's batches
        steps = sum(1 for _ in batches(n, cfg.backbone_batch_size, gen, torch.device("cpu")))
        observers.append(_EpochReporter(steps, cfg.backbone_epochs, cfg.backbone, progress, dev))

    def observer(indices: torch.Tensor, correct: torch.Tensor) -> None:
        for watch in observers:
            watch(indices, correct)

    start = time.perf_counter()
    history, seen = fit(model, data, None, train_cfg, observer)
    train_s = time.perf_counter() - start
    if not math.isfinite(history[-1]["train_loss"]):
        raise NasproxyError(
            f"the {cfg.backbone} backbone diverged in epoch {len(history)}; "
            "try another --backbone or seed"
        )
    features, logits = _embed_all(model, data)
    arrays = {
        "features": features,
        "probs": torch.softmax(torch.from_numpy(logits), dim=1).numpy(),
        "labels": data.y_train.numpy(),
        "head_weight": model.classifier.weight.detach().cpu().float().numpy(),
        "head_bias": model.classifier.bias.detach().cpu().float().numpy(),
        "forgetting_events": tracker.events.cpu().numpy(),
        "ever_learned": tracker.ever_learned.cpu().numpy(),
    }
    state = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, state)
    atomic_write_bytes(folder / "model.pt", state.getvalue())
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    atomic_write_bytes(folder / "arrays.npz", buffer.getvalue())
    key = scoring_key(data, cfg)
    meta = {
        "key": key,
        "hash": _artifact_hash(key, folder),
        "history": history,
        "images_seen": seen,
        "train_s": train_s,
        "device": device_name(dev),
        "platform": platform_record(dev),
        "train_acc_eval": float((logits.argmax(1) == arrays["labels"]).mean()),
        "feature_dim": int(features.shape[1]),
    }
    atomic_write_json(folder / "meta.json", meta)


@torch.no_grad()
def _embed_all(model: nn.Module, data: Dataset) -> tuple[np.ndarray, np.ndarray]:
    """Penultimate features and logits of every training image (eval mode, no augmentation)."""
    device = next(model.parameters()).device
    model.eval()
    feats, logits = [], []
    for i in range(0, len(data.x_train), EVAL_BATCH):
        f = model.embed(normalize(data.x_train[i : i + EVAL_BATCH].to(device), data))
        feats.append(f.float().cpu())
        logits.append(model.classifier(f).float().cpu())
    return torch.cat(feats).numpy(), torch.cat(logits).numpy()


def _artifact_hash(key: dict[str, Any], folder: Path) -> str:
    """sha256 over the canonical key and the sha256 of each data file."""
    digest = hashlib.sha256(_canonical(key))
    for name in FILES:
        with open(folder / name, "rb") as fh:
            digest.update(name.encode() + hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def _canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True).encode()


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path
