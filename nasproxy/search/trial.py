"""The work of one trial, without Ray: train each planned stack's missing units and store
every unit as its own file.

A stack trains as one ``nasproxy.multitrain.train_many`` call when the sweep fuses (falling
back in halves down to the plain trainer), else unit by unit with ``nasproxy.train.train``.
A unit already stored is reported, not trained again, so a retried trial or a resumed sweep
trains only what is missing. On a GPU a stack is first cut into even pieces that
``nasproxy.multitrain.largest_stack`` fits into ``MEMORY_FRACTION`` of the trial's GPU share.
See docs/search.md#fused-training. A unit's row is built here from the trainer's record
(``make_row``); ``nasproxy.results`` only stores it. Both runners (``runner``,
``ray_runner``) run trials through this module and take its callbacks' types.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasproxy import results
from nasproxy.data import Dataset
from nasproxy.errors import first_line
from nasproxy.multitrain import largest_stack, train_many, unstackable
from nasproxy.provenance import utc_now
from nasproxy.results import WHOLE, UnitKey
from nasproxy.search.config import FastChoice
from nasproxy.search.lock import check_token
from nasproxy.search.plan import Chunk
from nasproxy.spaces import AnyArch, parse_arch
from nasproxy.train import TrainConfig, TrainRecord, train

MEMORY_FRACTION = 0.6  # of the trial's GPU share, for one stack (the rest: CUDA context, cache)

RowFn = Callable[[dict[str, Any]], None]  # takes each unit's row, as soon as it is stored
NoteFn = Callable[[str], None]  # takes a line for the user (a crash Tune recovered from)


@dataclass(frozen=True, eq=False)
class TrialPlan:
    """Everything a trial needs besides the dataset; shipped once through the object store."""

    exp_dir: str
    chunks: dict[str, Chunk]
    indices: dict[str, np.ndarray | None]
    hashes: dict[str, str]
    train: TrainConfig
    threads: int
    run: int
    fuse: bool = False  # train each stack as one network (else unit by unit)
    fast: FastChoice = FastChoice()  # the stacked path's options
    gpu_share: float = 0.0  # the trial's GPU resource, for the memory bound of a stack
    lock_token: str = ""  # the driver's lock: a unit is written only while it holds it
    epochs: dict[str, int] = field(default_factory=dict)  # sets with their own (BASE@N)

    def unit_train(self, key: UnitKey, device: str) -> TrainConfig:
        """The training settings of unit ``key``: its seed, device and its set's epochs."""
        epochs = self.epochs.get(key.train_set, self.train.epochs)
        return replace(self.train, seed=key.seed, device=device, epochs=epochs)


def run_chunk(plan: TrialPlan, data: Dataset, chunk_id: str, device: str, report: RowFn) -> None:
    """Train the missing units of chunk ``chunk_id`` on ``device``; ``report`` every row
    (stored ones too), as soon as its unit file is written."""
    exp_dir = Path(plan.exp_dir)
    for stack in plan.chunks[chunk_id].stacks:
        missing = []
        for key in stack:
            row = results.read_unit(results.unit_path(exp_dir, key))
            if row is None or row["status"] == "failed":
                missing.append(key)
            else:
                report(row)
        if not missing:
            continue
        if not plan.fuse:
            for key in missing:
                report(_store(plan, key, _train_plain(plan, data, key, device)))
            continue
        for piece in _fit_memory(plan, data, missing, device):
            for key, record in zip(piece, _train_fused(plan, data, piece, device), strict=True):
                report(_store(plan, key, record))


def _fit_memory(
    plan: TrialPlan, data: Dataset, keys: Sequence[UnitKey], device: str
) -> list[list[UnitKey]]:
    """The stack cut into even pieces that fit the trial's GPU memory (one piece off GPU,
    and for runs that train one by one with the plain trainer)."""
    arch = parse_arch(keys[0].arch)
    if not device.startswith("cuda") or plan.gpu_share <= 0 or unstackable(arch, plan.train):
        return [list(keys)]
    total = torch.cuda.get_device_properties(torch.device(device)).total_memory
    budget = int(total * min(plan.gpu_share, 1.0) * MEMORY_FRACTION)
    indices = plan.indices[keys[0].train_set]
    n_images = len(data.y_train) if indices is None else len(indices)
    bf16 = plan.fast.resolve("cuda").bf16
    cap = largest_stack(arch, data, n_images, plan.train.batch_size, budget, bf16)
    count = math.ceil(len(keys) / cap)
    bounds = [round(j * len(keys) / count) for j in range(count + 1)]
    return [list(keys[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


def _train_fused(
    plan: TrialPlan, data: Dataset, keys: Sequence[UnitKey], device: str
) -> list[TrainRecord]:
    """One stack through train_many; an error it does not handle fails all its units."""
    archs = [key.arch for key in keys]  # one shape; activations may differ
    cfgs = [plan.unit_train(key, device) for key in keys]
    sets = [plan.indices[key.train_set] for key in keys]
    options = plan.fast.resolve(torch.device(device).type)
    tests = [key.train_set == WHOLE for key in keys]  # only the whole split's is read
    try:
        return train_many(archs, data, sets, cfgs, options, tests)
    except Exception as exc:  # one stack's error must not take its chunk down
        return [_failed(plan, data, key, device, exc) for key in keys]


def _train_plain(plan: TrialPlan, data: Dataset, key: UnitKey, device: str) -> TrainRecord:
    """One unit with the plain trainer; any error becomes a ``failed`` record. A proxy
    unit skips the test split: only the whole split's test accuracy is read."""
    try:
        cfg = plan.unit_train(key, device)
        test = key.train_set == WHOLE
        return train(key.arch, data, plan.indices[key.train_set], cfg, test=test)
    except Exception as exc:  # one unit's error must not take its chunk down
        return _failed(plan, data, key, device, exc)


def _failed(
    plan: TrialPlan, data: Dataset, key: UnitKey, device: str, exc: Exception
) -> TrainRecord:
    indices = plan.indices[key.train_set]
    return TrainRecord(
        arch=key.arch,
        status="failed",
        reason=first_line(exc, with_type=True),
        seed=key.seed,
        epochs=plan.unit_train(key, device).epochs,
        n_train=len(data.y_train) if indices is None else len(indices),
        device=device,
    )


def _store(plan: TrialPlan, key: UnitKey, record: TrainRecord) -> dict[str, Any]:
    """Write the unit file of ``key`` (atomic) and return its row."""
    row = make_row(parse_arch(key.arch), key.train_set, plan.hashes[key.train_set], record)
    extra = {
        "history": record.history,
        "params": record.params,
        "macs": record.macs,
        "images_per_s": record.images_per_s,
        "run": plan.run,
        "finished": utc_now(),
    }
    if plan.lock_token:
        check_token(plan.exp_dir, plan.lock_token)  # the driver lost the experiment: stop
    results.write_unit(Path(plan.exp_dir), row, extra)
    return row


def make_row(arch: AnyArch, train_set: str, proxy_hash: str, record: TrainRecord) -> dict[str, Any]:
    """The table row (``nasproxy.results.COLUMNS``) of one finished work unit, from the
    trainer's record. The columns width, depth, act, norm and pool hold a ConvNet's fields;
    a NAS-Bench-201 cell's row holds its skeleton's there (``Cell.row_fields``)."""
    return {
        "arch": arch.id,
        **arch.row_fields(),
        "train_set": train_set,
        "proxy_hash": proxy_hash,
        "seed": int(record.seed),
        "epochs": int(record.epochs),
        "val_acc": float(record.val_acc),
        "val_checkpoints": results.checkpoint_value(record.checkpoints),
        "test_acc": float(record.test_acc),
        "train_loss": float(record.train_loss),
        "status": record.status,
        "reason": record.reason,
        "wall_s": float(record.wall_s),
        "warmup_s": float(record.warmup_s),
        "images_seen": int(record.images_seen),
        "n_train": int(record.n_train),
        "device": record.device,
        "stack_size": int(record.stack_size),
        "trainer": record.trainer,
        "fallback": record.fallback,
    }
