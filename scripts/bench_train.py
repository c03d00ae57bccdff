"""Benchmark: the plain trainer (one model at a time) against the stacked multi-model trainer.

Both paths train the same stratified sample of the search space on the same device in one
run, with the same seeds and training sets:

  proxy  every sampled architecture on P proxy sets of ``--proxy-size`` images x S seeds
         (plain: P*S calls of ``train``; fast: one ``train_many`` stack of P*S models)
  whole  every sampled architecture on a slice of the train split x S seeds; the time of
         a whole-split epoch is extrapolated linearly from the slice (labelled as such)

For each workload it prints and records wall time, images/s, achieved TFLOP/s
(6 x MACs per training image for forward and backward, 2 x MACs per evaluated image),
the speed-up, and the per-model val-accuracy difference between the paths.

``--tiny`` is a CPU smoke run (digits, a few small nets, seconds): its ratios say nothing
about a GPU. Timings exclude one warm-up call of each path; on CUDA every timed region
ends with torch.cuda.synchronize().

Usage (GPU):  python scripts/bench_train.py --dataset imagefolder:PATH/cifar10-jpeg.tar.gz
              python scripts/bench_train.py --bf16 --channels-last --cuda-graphs ...
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from nasproxy import spaces
from nasproxy.data import Dataset, load_dataset
from nasproxy.io import atomic_write_json
from nasproxy.multitrain import FastOptions, train_many
from nasproxy.provenance import provenance
from nasproxy.spaces import Arch
from nasproxy.train import TrainConfig, TrainRecord, resolve_device, train

REPO = Path(__file__).resolve().parent.parent
PROTOCOL_EPOCHS = 100  # the paper's epochs per architecture, for the extrapolations
TINY = {  # defaults of a CPU smoke run: small nets, few images, one epoch
    "dataset": "digits",
    "archs": 3,
    "max_width": 32,
    "max_depth": 1,
    "proxies": 2,
    "proxy_size": 64,
    "seeds": 2,
    "epochs": 1,
    "batch_size": 32,
    "whole_slice": 128,
    "whole_epochs": 1,
    "threads": 1,
    "eval_size": 100,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke preset (sets the defaults)")
    p.add_argument(
        "--dataset",
        default=None,
        help="default: $NASPROXY_DATA (a CIFAR-10 copy) if set, else digits",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--space", default="convnet720")
    p.add_argument("--archs", type=int, default=30, help="architectures in the sample")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--max-width", type=int, default=None, help="restrict the sample")
    p.add_argument("--max-depth", type=int, default=None, help="restrict the sample")
    p.add_argument("--proxies", type=int, default=4, help="proxy sets per architecture")
    p.add_argument("--proxy-size", type=int, default=1000, help="images per proxy set")
    p.add_argument("--seeds", type=int, default=2, help="seeds per training set")
    p.add_argument("--epochs", type=int, default=2, help="epochs of the proxy workload")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--whole-slice", type=int, default=5000, help="images of the whole workload")
    p.add_argument("--whole-epochs", type=int, default=1)
    p.add_argument(
        "--eval-size",
        type=int,
        default=1000,
        help="val and test images each run is evaluated on (0: the full splits)",
    )
    p.add_argument("--workloads", default="proxy,whole")
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--rng", default="exact", choices=("exact", "shared"))
    p.add_argument("--bf16", action="store_true", help="bfloat16 autocast (fast path)")
    p.add_argument("--channels-last", action="store_true", help="NHWC (fast path)")
    p.add_argument("--compile", action="store_true", help="torch.compile the stack (fast path)")
    p.add_argument("--cuda-graphs", action="store_true", help="CUDA-graph steps (CUDA only)")
    p.add_argument("--out", default=None, help="JSON path (default results/bench/train-DEV.json)")
    if p.parse_known_args(argv)[0].tiny:
        p.set_defaults(**TINY)  # flags given explicitly still win
    args = p.parse_args(argv)
    if args.dataset is None:
        cifar = os.environ.get("NASPROXY_DATA")
        args.dataset = f"imagefolder:{cifar}" if cifar else "digits"
    return args


def stratified_sample(
    space: Sequence[Arch], n: int, seed: int, max_width: int | None, max_depth: int | None
) -> list[Arch]:
    """``n`` architectures: pick k takes its (norm, pooling) stratum round-robin along the
    diagonals of that grid and its (width, depth) round-robin over that grid, the activation
    at random; so the first 15 picks cover every norm x pooling and the first 16 every
    width x depth (the cost of a step is mostly width and depth)."""
    rng = np.random.default_rng(seed)
    pool = [
        a
        for a in space
        if (max_width is None or a.width <= max_width)
        and (max_depth is None or a.depth <= max_depth)
    ]
    strata: dict[tuple[str, str], list[Arch]] = {}
    for arch in pool:
        strata.setdefault((arch.norm, arch.pool), []).append(arch)
    norms = list(dict.fromkeys(a.norm for a in pool))
    pools = list(dict.fromkeys(a.pool for a in pool))

    def diagonal(key: tuple[str, str]) -> tuple[int, int]:
        i, j = norms.index(key[0]), pools.index(key[1])
        return ((j - i) % len(pools), i)

    keys = sorted(strata, key=diagonal)
    widths = sorted({a.width for a in pool})
    depths = sorted({a.depth for a in pool})
    chosen: list[Arch] = []
    for k in range(min(n, len(pool))):
        width, depth = widths[k % len(widths)], depths[(k // len(widths)) % len(depths)]
        members = [a for a in strata[keys[k % len(keys)]] if a not in chosen]
        preferred = [a for a in members if (a.width, a.depth) == (width, depth)]
        members = preferred or members or [a for a in pool if a not in chosen]
        chosen.append(members[int(rng.integers(len(members)))])
    return chosen


def subsample_eval(data: Dataset, size: int, seed: int) -> Dataset:
    """``data`` with at most ``size`` random val and test images: a short benchmark run would
    otherwise spend half its time evaluating, where a 100-epoch run spends a few percent."""
    if size <= 0:
        return data
    rng = np.random.default_rng(seed)
    val = np.sort(rng.permutation(len(data.y_val))[:size])
    test = np.sort(rng.permutation(len(data.y_test))[:size])
    return replace(
        data,
        x_val=data.x_val[val],
        y_val=data.y_val[val],
        x_test=data.x_test[test],
        y_test=data.y_test[test],
    )


def timed(device: torch.device, fn: Callable[[], list[TrainRecord]]) -> tuple[float, list]:
    """Wall seconds of ``fn`` with the device drained before and after."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def flops(records: list[TrainRecord], data: Dataset) -> float:
    """Floating-point operations of the runs: 6 x MACs per training image (forward and
    backward), 2 x MACs per evaluated image (forward)."""
    evaluated = len(data.y_val) + len(data.y_test)
    return float(sum(r.macs * (6 * r.images_seen + 2 * evaluated) for r in records))


def run_workload(
    name: str,
    archs: list[Arch],
    data: Dataset,
    sets: list[np.ndarray],
    cfgs: list[TrainConfig],
    options: FastOptions,
    device: torch.device,
) -> dict:
    """Time both paths on every architecture; totals, ratios and accuracy differences."""
    rows = []
    plain_total = fast_total = 0.0
    plain_records: list[TrainRecord] = []
    fast_records: list[TrainRecord] = []
    for arch in archs:
        plain_s, plain = timed(
            device, lambda a=arch: [train(a, data, s, c) for s, c in zip(sets, cfgs, strict=True)]
        )
        fast_s, fast = timed(device, lambda a=arch: train_many(a, data, sets, cfgs, options))
        plain_total += plain_s
        fast_total += fast_s
        plain_records += plain
        fast_records += fast
        diffs = [abs(f.val_acc - p.val_acc) for p, f in zip(plain, fast, strict=True)]
        rows.append(
            {
                "arch": str(arch),
                "macs": plain[0].macs,
                "plain_s": plain_s,
                "fast_s": fast_s,
                "speedup": plain_s / fast_s,
                "val_acc_plain": [p.val_acc for p in plain],
                "val_acc_fast": [f.val_acc for f in fast],
                "val_acc_diff_max": max(diffs),
                "status_fast": sorted(
                    {f"{f.status}: {f.reason}" if f.reason else f.status for f in fast}
                ),
            }
        )
    images = sum(r.images_seen for r in plain_records)
    all_diffs = [
        abs(f.val_acc - p.val_acc) for p, f in zip(plain_records, fast_records, strict=True)
    ]
    return {
        "workload": name,
        "models_per_arch": len(sets),
        "images_per_model": len(sets[0]),
        "epochs": cfgs[0].epochs,
        "plain": _path_stats(plain_total, images, flops(plain_records, data)),
        "fast": _path_stats(fast_total, images, flops(fast_records, data)),
        "speedup": plain_total / fast_total,
        "val_acc_diff_mean": float(np.nanmean(all_diffs)),
        "val_acc_diff_max": float(np.nanmax(all_diffs)),
        "val_examples": len(data.y_val),
        "seed_std_plain": _seed_std(plain_records, cfgs),
        "per_arch": rows,
    }


def _path_stats(seconds: float, images: int, total_flops: float) -> dict:
    return {
        "s": seconds,
        "images_per_s": images / seconds,
        "tflops": total_flops / seconds / 1e12,
    }


def _seed_std(records: list[TrainRecord], cfgs: list[TrainConfig]) -> float | None:
    """Mean over (arch, training set) of the std of val accuracy across seeds: the noise
    an accuracy difference between the paths should be compared with."""
    seeds = sorted({c.seed for c in cfgs})
    if len(seeds) < 2:
        return None
    per_run = len(cfgs)
    stds = []
    for start in range(0, len(records), per_run):
        block = records[start : start + per_run]
        by_set: dict[int, list[float]] = {}
        for i, rec in enumerate(block):
            by_set.setdefault(i // len(seeds), []).append(rec.val_acc)
        stds += [float(np.std(v, ddof=1)) for v in by_set.values()]
    return float(np.nanmean(stds))


def make_runs(
    n_sets: int, set_size: int, seeds: int, data: Dataset, cfg: TrainConfig, seed: int
) -> tuple[list[np.ndarray], list[TrainConfig]]:
    """Training sets (random subsets of the train split) x seeds, set-major."""
    rng = np.random.default_rng(seed)
    n = len(data.y_train)
    if set_size > n:
        raise SystemExit(f"{set_size} images asked for, the train split has {n}")
    sets, cfgs = [], []
    for _ in range(n_sets):
        subset = np.sort(rng.choice(n, set_size, replace=False))
        for s in range(seeds):
            sets.append(subset)
            cfgs.append(TrainConfig(**{**asdict(cfg), "seed": s}))
    return sets, cfgs


def print_table(result: dict) -> None:
    print(
        f"device: {result['device_name']}   torch {result['versions']['torch']}   "
        f"options {result['options']}"
    )
    head = (
        f"{'workload':<8} {'models':>6} {'path':<5} {'time s':>9} {'img/s':>10} "
        f"{'TFLOP/s':>8} {'ratio':>6} {'d val acc':>10}"
    )
    print(head)
    print("-" * len(head))
    for w in result["workloads"].values():
        for path in ("plain", "fast"):
            st = w[path]
            ratio = f"{w['speedup']:6.2f}" if path == "fast" else ""
            diff = f"{w['val_acc_diff_max']:10.4f}" if path == "fast" else ""
            print(
                f"{w['workload']:<8} {w['models_per_arch']:>6} {path:<5} {st['s']:9.2f} "
                f"{st['images_per_s']:10.0f} {st['tflops']:8.4f} {ratio:>6} {diff:>10}"
            )
        if "extrapolated" in w:
            ex = w["extrapolated"]
            print(f"  {ex['label']}: plain {ex['plain_s']:.1f} s, fast {ex['fast_s']:.1f} s")
    if result["device_type"] == "cpu":
        print("CPU run: the ratios are a smoke test only and say nothing about a GPU.")


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data = load_dataset(args.dataset, data_root=args.data_root)
    data = subsample_eval(data, args.eval_size, args.sample_seed)
    space = spaces.load(args.space, image_size=data.image_size)
    archs = stratified_sample(space, args.archs, args.sample_seed, args.max_width, args.max_depth)
    options = FastOptions(
        rng=args.rng,
        bf16=args.bf16,
        channels_last=args.channels_last,
        compile=args.compile,
        cuda_graphs=args.cuda_graphs,
    )
    base = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, device=str(device))
    workloads = [w.strip() for w in args.workloads.split(",") if w.strip()]

    # warm-up of both paths (allocator, cuDNN/oneDNN set-up), excluded from the timings
    warm_sets, warm_cfgs = make_runs(1, min(64, len(data.y_train)), 2, data, base, 1)
    warm_cfgs = [TrainConfig(**{**asdict(c), "epochs": 1}) for c in warm_cfgs]
    timed(device, lambda: [train(archs[0], data, warm_sets[0], warm_cfgs[0])])
    timed(device, lambda: train_many(archs[0], data, warm_sets, warm_cfgs, options))

    results: dict[str, dict] = {}
    if "proxy" in workloads:
        sets, cfgs = make_runs(
            args.proxies, args.proxy_size, args.seeds, data, base, args.sample_seed
        )
        w = run_workload("proxy", archs, data, sets, cfgs, options, device)
        scale = PROTOCOL_EPOCHS / args.epochs * len(space) / len(archs)
        w["extrapolated"] = {
            "label": (
                f"one proxy sweep ({len(space)} archs x {len(sets)} models x "
                f"{PROTOCOL_EPOCHS} epochs), the measured time scaled linearly in epochs and "
                "archs (an estimate, not a measurement)"
            ),
            "plain_s": w["plain"]["s"] * scale,
            "fast_s": w["fast"]["s"] * scale,
        }
        results["proxy"] = w
    if "whole" in workloads:
        size = min(args.whole_slice, len(data.y_train))
        sets, cfgs = make_runs(1, size, args.seeds, data, base, args.sample_seed + 1)
        cfgs = [TrainConfig(**{**asdict(c), "epochs": args.whole_epochs}) for c in cfgs]
        w = run_workload("whole", archs, data, sets, cfgs, options, device)
        scale = len(data.y_train) / size / args.whole_epochs
        w["extrapolated"] = {
            "label": (
                f"one epoch of the whole train split ({len(data.y_train)} images) for the "
                f"{len(archs)} sampled archs, extrapolated linearly from a {size}-image slice "
                "(evaluation included in the measured part)"
            ),
            "plain_s": w["plain"]["s"] * scale,
            "fast_s": w["fast"]["s"] * scale,
        }
        results["whole"] = w

    result = {
        "benchmark": "plain trainer vs stacked multi-model trainer",
        **provenance(device, argv),
        "threads": torch.get_num_threads(),
        "dataset": args.dataset,
        "n_train": len(data.y_train),
        "n_val_evaluated": len(data.y_val),
        "n_test_evaluated": len(data.y_test),
        "space": args.space,
        "archs": [str(a) for a in archs],
        "settings": {k: v for k, v in vars(args).items() if k != "out"},
        "options": asdict(options.effective(device)),
        "workloads": results,
        "notes": [
            "time covers training and val/test evaluation of every model (on n_val_evaluated"
            " / n_test_evaluated images), warm-up excluded",
            "TFLOP/s from arch.macs: 6 x MACs per training image, 2 x MACs per evaluated image",
            "val_acc_diff: |fast - plain| per model, same seed and training set",
        ]
        + (["CPU run: ratios only, they say nothing about a GPU"] if device.type == "cpu" else [])
        + (
            ["cuda_graphs was asked for but needs CUDA: ignored"]
            if args.cuda_graphs and device.type != "cuda"
            else []
        ),
    }
    out = Path(args.out) if args.out else REPO / "results" / "bench" / f"train-{device.type}.json"
    atomic_write_json(out, result)
    print_table(result)
    print(f"wrote {out}")
    print(json.dumps({k: round(w["speedup"], 3) for k, w in results.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
