"""Benchmark: a unit's time with and without its epoch checkpoints, side by side in one run.

The paper's protocol shape: an architecture trained on a proxy of ``--per-class`` (100)
images a class and evaluated on the validation split (10% of the train split: 5,000
images on CIFAR-10). Two measurements, in one process:

  pairs     the same unit (``train`` as a sweep trains a proxy unit: no test split) run
            ``--pairs`` times with the checkpoint setting ``--checkpoints`` (default 4:
            E/27, E/9, E/3 and E) and with ``none``, alternating which goes first; per
            pair the extra time of the checkpoints as a share of the unit without them,
            at the run's ``--epochs``, and whether training was unchanged (the same
            history and val_acc with and without)
  parts     ``--repeats`` times, one training epoch of the unit's model then one
            evaluation of the validation split, back to back, so that each evaluation /
            epoch ratio is taken under one load of the machine (a shared machine's load
            drifts by 2x within minutes); also, once, the evaluation in passes of
            ``EVAL_BATCH`` (the GPU's) against the CPU's and whether their logits agree

The share at the paper's 100 epochs is extrapolated from the parts: with r the median
evaluation / epoch ratio and k the early checkpoints of a 100-epoch run (3 by default),
k r / (100 + r) (the unit's time: 100 epochs and the final evaluation, which a unit
makes with or without checkpoints). It is an estimate; the pairs at fewer epochs are
the direct measurement. Writes ``results/bench/checkpoints-<device type>.json``
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
    """Seconds of ``work()`` (the device synchronised at the end) and its result."""
    start = time.perf_counter()
    out = work()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def pair(arch: str, data: Dataset, idx: np.ndarray, cfgs: dict, first: str, n_early: int):
    """The unit with and without checkpoints, ``first`` first; what the pair measured."""
    order = (first, "without" if first == "with" else "with")
    recs = {name: train(arch, data, idx, cfgs[name], test=False) for name in order}
    with_, without = recs["with"], recs["without"]
    extra = with_.wall_s - without.wall_s
    return {
        "first": first,
        "with_s": with_.wall_s,
        "without_s": without.wall_s,
        "share": extra / without.wall_s,
        "per_evaluation_s": extra / max(1, n_early),
        "checkpoints": {str(e): a for e, a in with_.checkpoints.items()},
        "training_unchanged": with_.history == without.history and with_.val_acc == without.val_acc,
    }


def parts(
    arch: str, data: Dataset, idx: np.ndarray, cfg: TrainConfig, repeats: int
) -> dict[str, Any]:
    """``repeats`` times one epoch of training then one evaluation of the validation
    split, back to back, on the unit's model (warmed by one epoch first); then the
    evaluation in passes of ``EVAL_BATCH`` against the device's (``eval_batch``)."""
    device = resolve_device(cfg.device)
    model = init_model(Arch.from_id(arch), data, cfg.seed, device)
    one = replace(cfg, epochs=1)
    fit(model, data, idx, one)
    epochs, evals = [], []
    for _ in range(repeats):
        epochs.append(timed(lambda: fit(model, data, idx, one), device)[0])
        evals.append(timed(lambda: accuracy(model, data, data.x_val, data.y_val), device)[0])
    ratios = [e / t for e, t in zip(evals, epochs, strict=True)]
    wide_s, wide = timed(lambda: logits(model, data, EVAL_BATCH), device)
    ours_s, ours = timed(lambda: logits(model, data, eval_batch(device)), device)
    return {
        "epoch_s": epochs,
        "evaluation_s": evals,
        "evaluation_over_epoch": ratios,
        "evaluation_over_epoch_median": statistics.median(ratios),
        "eval_batch": eval_batch(device),
        "evaluation_s_in_own_passes": ours_s,
        f"evaluation_s_in_passes_of_{EVAL_BATCH}": wide_s,
        f"same_logits_in_passes_of_{EVAL_BATCH}": bool(torch.equal(wide, ours)),
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
    parser.add_argument("--epochs", type=int, default=9, help="epochs of each paired unit")
    parser.add_argument("--checkpoints", default="4", help="the setting measured against none")
    parser.add_argument("--pairs", type=int, default=3, help="units with and without, each")
    parser.add_argument("--repeats", type=int, default=10, help="epoch-evaluation pairs timed")
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
        f"{len(data.y_val)} validation images; {args.arch}, {args.epochs} epochs, "
        f"checkpoints {args.checkpoints} (early: {early})",
        flush=True,
    )
    train(args.arch, data, idx[:2], replace(base, epochs=1, batch_size=2))  # the warm-up

    pairs = []
    for p in range(args.pairs):
        first = "with" if p % 2 == 0 else "without"
        pairs.append(pair(args.arch, data, idx, cfgs, first, len(early)))
        got = pairs[-1]
        print(
            f"pair {p + 1}: with {got['with_s']:.1f} s, without {got['without_s']:.1f} s, "
            f"share {got['share']:+.1%}, training unchanged: {got['training_unchanged']}",
            flush=True,
        )
    part = parts(args.arch, data, idx, base, args.repeats)
    ratio = part["evaluation_over_epoch_median"]
    protocol_early = [
        e for e in checkpoint_epochs(args.checkpoints, PROTOCOL_EPOCHS) if e < PROTOCOL_EPOCHS
    ]
    share = len(protocol_early) * ratio / (PROTOCOL_EPOCHS + ratio)
    low, high = min(part["evaluation_over_epoch"]), max(part["evaluation_over_epoch"])
    measured = [p["share"] for p in pairs]
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
        "measured_share_median": statistics.median(measured),
        "parts": part,
        "protocol": {
            "epochs": PROTOCOL_EPOCHS,
            "early_checkpoints": protocol_early,
            "share_estimate": share,
            "share_estimate_range": [
                len(protocol_early) * r / (PROTOCOL_EPOCHS + r) for r in (low, high)
            ],
            "goal": GOAL,
            "within_goal": share <= GOAL,
        },
        "notes": args.note,
    }
    tag = torch.device(args.device).type
    path = atomic_write_json(args.out / f"checkpoints-{tag}.json", record)
    print(
        f"evaluation of {len(data.y_val)} images / training epoch of {len(idx)}: median "
        f"{ratio:.2f} ({low:.2f}-{high:.2f}) of {args.repeats}; measured share at "
        f"{args.epochs} epochs {statistics.median(measured):+.1%} (median of {len(pairs)}); "
        f"at {PROTOCOL_EPOCHS} epochs ({len(protocol_early)} early checkpoints) {share:.2%} "
        f"(estimate; goal <= {GOAL:.0%})"
    )
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
