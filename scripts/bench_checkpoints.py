"""Benchmark: a unit's time with and without its epoch checkpoints, side by side in one run.

The paper's protocol shape: an architecture trained on a proxy of ``--per-class`` (100)
images a class, evaluated on the validation split (10% of the train split: 5,000 images on
CIFAR-10). The same unit (``train``, as a sweep trains a proxy unit: no test split) runs
``--pairs`` times with the checkpoint setting ``--checkpoints`` (default 4: E/27, E/9, E/3
and E) and with ``none``, alternating which goes first, so that a drift of the machine's
load falls on both. Recorded:

  measured   per pair, the extra time of the checkpoints over the unit without them, as a
             share of the unit's time without them, at the run's ``--epochs``
  parts      the seconds of one training epoch and of one evaluation of the validation
             split (timed apart on the trained model, ``--eval-repeats`` times, median)
  protocol   the share at the paper's 100 epochs, extrapolated from the parts: the early
             checkpoints' evaluations over the unit's time (100 epochs plus its final
             evaluation, which a unit makes with or without checkpoints); an estimate

Each pair also checks that the checkpoints changed no training: the same history and
val_acc with and without them. Writes ``results/bench/checkpoints-<device type>.json``
(command, commit, date, device, versions, threads, load average).

Usage:  NASPROXY_CIFAR=PATH/cifar10-jpeg python scripts/bench_checkpoints.py
        (the decode cache: --data-root, or $NASPROXY_DATA_ROOT)
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasproxy.checkpoints import checkpoint_epochs
from nasproxy.data import Dataset, dataset_name, default_data_root, load_dataset
from nasproxy.io import atomic_write_json
from nasproxy.provenance import provenance
from nasproxy.spaces import Arch
from nasproxy.train import (
    EVAL_BATCH,
    TrainConfig,
    accuracy,
    eval_batch,
    fit,
    init_model,
    normalize,
    resolve_device,
    train,
)

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_EPOCHS = 100  # the paper's epochs per architecture, for the extrapolation
GOAL = 0.05  # the issue's bound on the checkpoints' share of a unit's time at the protocol


def balanced(data: Dataset, per_class: int, seed: int) -> np.ndarray:
    """A seeded class-balanced subset of the train split, ``per_class`` images a class."""
    rng = np.random.default_rng(seed)
    labels = data.y_train.numpy()
    chosen = [rng.choice(np.flatnonzero(labels == c), per_class, replace=False) for c in
              range(data.num_classes)]  # fmt: skip
    return np.sort(np.concatenate(chosen))


@torch.no_grad()
def logits(model: torch.nn.Module, data: Dataset, step: int) -> torch.Tensor:
    """The validation split's logits in eval mode, in passes of ``step`` images."""
    device = next(model.parameters()).device
    model.eval()
    x = data.x_val
    return torch.cat(
        [model(normalize(x[i : i + step].to(device), data)) for i in range(0, len(x), step)]
    )


def timed(work: Callable[[], Any], device: torch.device) -> tuple[float, Any]:
    start = time.perf_counter()
    out = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def parts(
    arch: str, data: Dataset, idx: np.ndarray, cfg: TrainConfig, repeats: int
) -> dict[str, Any]:
    """The seconds of one epoch of training and of one evaluation of the validation split
    (median of ``repeats``) on a model trained one epoch as the unit trains it; and the
    same evaluation in passes of ``EVAL_BATCH`` (the GPU's), with whether its logits are
    the trainer's bit for bit."""
    device = resolve_device(cfg.device)
    model = init_model(Arch.from_id(arch), data, cfg.seed, device)
    epoch_s, _ = timed(lambda: fit(model, data, idx, replace(cfg, epochs=1)), device)
    ours = [timed(lambda: accuracy(model, data, data.x_val, data.y_val), device)[0]
            for _ in range(repeats)]  # fmt: skip
    wide = [timed(lambda: logits(model, data, EVAL_BATCH), device) for _ in range(repeats)]
    return {
        "epoch_s": epoch_s,
        "evaluation_s": statistics.median(ours),
        "evaluation_times": ours,
        "eval_batch": eval_batch(device),
        f"evaluation_s_in_passes_of_{EVAL_BATCH}": statistics.median(t for t, _ in wide),
        f"same_logits_in_passes_of_{EVAL_BATCH}": bool(
            torch.equal(wide[0][1], logits(model, data, eval_batch(device)))
        ),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dataset",
        default="imagefolder:" + os.environ.get("NASPROXY_CIFAR", ""),
        help="default: CIFAR-10 (the JPEG q75 copy) at $NASPROXY_CIFAR",
    )
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--arch", default="w32-d3-relu-instancenorm-avgpooling")
    parser.add_argument("--per-class", type=int, default=100, help="proxy images a class")
    parser.add_argument("--epochs", type=int, default=18, help="epochs of each measured unit")
    parser.add_argument("--checkpoints", default="4", help="the setting measured against none")
    parser.add_argument("--pairs", type=int, default=2, help="units with and without, each")
    parser.add_argument("--eval-repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0, help="training and subset seed")
    parser.add_argument("--note", action="append", default=[], help="recorded in the JSON")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_before = os.getloadavg()
    start = time.perf_counter()
    data = load_dataset(args.dataset, data_root=args.data_root or default_data_root())
    load_s = time.perf_counter() - start
    idx = balanced(data, args.per_class, args.seed)
    base = TrainConfig(epochs=args.epochs, seed=args.seed, device=args.device)
    cfgs = {
        "with": replace(base, checkpoints=args.checkpoints),
        "without": replace(base, checkpoints="none"),
    }
    early = [e for e in checkpoint_epochs(args.checkpoints, args.epochs) if e < args.epochs]
    print(
        f"{dataset_name(data.spec)}: {len(idx)} training images, "
        f"{len(data.y_val)} validation images; "
        f"{args.arch}, {args.epochs} epochs, checkpoints {args.checkpoints} (early: {early})",
        flush=True,
    )
    train(args.arch, data, idx[:2], replace(base, epochs=1, batch_size=2))  # the warm-up

    pairs: list[dict[str, Any]] = []
    for p in range(args.pairs):
        order = ("with", "without") if p % 2 == 0 else ("without", "with")
        recs = {name: train(args.arch, data, idx, cfgs[name], test=False) for name in order}
        with_, without = recs["with"], recs["without"]
        pair = {
            "first": order[0],
            "with_s": with_.wall_s,
            "without_s": without.wall_s,
            "share": (with_.wall_s - without.wall_s) / without.wall_s,
            "per_evaluation_s": (with_.wall_s - without.wall_s) / max(1, len(early)),
            "checkpoints": {str(e): a for e, a in with_.checkpoints.items()},
            "training_unchanged": with_.history == without.history
            and with_.val_acc == without.val_acc,
        }
        pairs.append(pair)
        print(
            f"pair {p + 1}: with {with_.wall_s:.1f} s, without {without.wall_s:.1f} s, "
            f"share {pair['share']:+.2%}, training unchanged: {pair['training_unchanged']}",
            flush=True,
        )

    part = parts(args.arch, data, idx, base, args.eval_repeats)
    epoch_s, eval_s = part["epoch_s"], part["evaluation_s"]
    protocol_early = [
        e for e in checkpoint_epochs(args.checkpoints, PROTOCOL_EPOCHS) if e < PROTOCOL_EPOCHS
    ]
    unit_s = PROTOCOL_EPOCHS * epoch_s + eval_s  # training and the final evaluation
    protocol_share = len(protocol_early) * eval_s / unit_s
    measured = [pair["share"] for pair in pairs]
    # the same extrapolation from the pairs alone: an evaluation's extra time in them, an
    # epoch's time from the units without checkpoints (less their final evaluation)
    from_pairs = []
    for pair in pairs:
        epoch = (pair["without_s"] - eval_s) / args.epochs
        extra = len(protocol_early) * pair["per_evaluation_s"]
        from_pairs.append(extra / (PROTOCOL_EPOCHS * epoch + eval_s))
    record = {
        "benchmark": "a unit's time with its epoch checkpoints against without",
        **provenance(args.device, argv),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "dataset": dataset_name(data.spec),  # its name: the folder is the machine's
        "dataset_fingerprint": data.fingerprint,
        "dataset_load_s": load_s,
        "train_images": len(idx),
        "val_images": len(data.y_val),
        "arch": args.arch,
        "macs": Arch.from_id(args.arch).macs(data.in_channels, data.num_classes, data.image_size),
        "epochs": args.epochs,
        "batch_size": base.batch_size,
        "checkpoints": args.checkpoints,
        "early_checkpoints": early,
        "pairs": pairs,
        "measured_share": {
            "median": statistics.median(measured),
            "min": min(measured),
            "max": max(measured),
        },  # fmt: skip
        "parts": {**part, "evaluation_over_epoch": eval_s / epoch_s},
        "protocol": {
            "epochs": PROTOCOL_EPOCHS,
            "early_checkpoints": protocol_early,
            "unit_s_estimate": unit_s,
            "share_estimate": protocol_share,
            "share_estimate_from_pairs": from_pairs,
            "goal": GOAL,
            "within_goal": protocol_share <= GOAL,
        },
        "notes": args.note,
    }
    tag = torch.device(args.device).type
    path = atomic_write_json(args.out / f"checkpoints-{tag}.json", record)
    print(
        f"one epoch {epoch_s:.2f} s, one evaluation of {len(data.y_val)} images {eval_s:.2f} s "
        f"({eval_s / epoch_s:.2f} epochs); measured share at {args.epochs} epochs "
        f"{statistics.median(measured):+.2%} (median of {len(measured)}); at {PROTOCOL_EPOCHS} "
        f"epochs ({len(protocol_early)} early checkpoints) {protocol_share:.2%} (estimate, goal "
        f"<= {GOAL:.0%})"
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
