"""Benchmark: one sweep through ``nasproxy search`` itself (Ray included), plain against fused.

The same stratified slice of the space is swept twice per workload, in one run on one
device, through ``nasproxy.search.run_search`` on one local Ray (started once, its start
timed apart): ``--fuse off`` (every unit trained alone by ``train``) and ``--fuse on``
(the units of a shape stacked into one ``train_many`` network).

  proxy  every architecture of the slice on P random proxy sets of ``--proxy-size``
         images (class-balanced, like the real proxies) x S seeds
  whole  every architecture of the slice on a class-balanced slice of the train split
         (``--whole-slice`` images; the search's --whole-per-class) x S seeds

The slice is a stratified sample of ``--archs`` architectures, each with all three
activations (``--activations all``, the default), as in the full space, where the fused
sweep stacks the activations of a shape: stacks of 3 x P x S (proxy) and 3 x S (whole).

Recorded per workload and path: the sweep's wall time (run_search from call to return),
the summed training seconds of its rows, achieved TFLOP/s (6 x MACs per training image,
2 x MACs per evaluated val/test image, over the wall time), and for the pair the ratio
plain / fused, the per-unit |val acc fused - val acc plain| (mean, max) beside the plain
path's seed-to-seed std of val accuracy, the stack sizes and any fallbacks.

``--tiny`` is a CPU smoke run (digits, a few small nets, seconds of training): it writes
ratios only, since its absolute times say nothing about any other machine.

Usage:  python scripts/bench_sweep.py --tiny
        python scripts/bench_sweep.py --dataset imagefolder:PATH --archs 8 --epochs 5
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd

from nasproxy import results, spaces
from nasproxy.data import Dataset, load_dataset
from nasproxy.io import atomic_write_json
from nasproxy.provenance import provenance
from nasproxy.proxies.build import proxy_record, write_proxy
from nasproxy.proxies.random import random_per_class
from nasproxy.search import FastChoice, SearchConfig, run_search, select_archs
from nasproxy.spaces import ACTIVATIONS, Arch
from nasproxy.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
TINY = {  # defaults of a CPU smoke run: 2 shapes x 3 activations
    "dataset": "digits",
    "archs": 2,
    "pattern": ["w32-d1-*"],
    "proxies": 2,
    "proxy_size": 50,
    "seeds": 2,
    "epochs": 1,
    "batch_size": 32,
    "whole_slice": 200,
    "whole_epochs": 1,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="CPU smoke preset; writes ratios only")
    p.add_argument(
        "--dataset",
        default=None,
        help="default: $NASPROXY_DATA (a CIFAR-10 copy) if set, else digits",
    )
    p.add_argument("--data-root", default=None)
    p.add_argument("--space", default="convnet720")
    p.add_argument("--archs", type=int, default=8, help="a stratified sample of N archs")
    p.add_argument(
        "--activations",
        choices=("all", "sampled"),
        default="all",
        help="all: each sampled architecture with every activation (default)",
    )
    p.add_argument("--pattern", action="append", default=None, help="restrict to id globs")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument("--proxies", type=int, default=4, help="proxy sets (proxy workload)")
    p.add_argument("--proxy-size", type=int, default=1000, help="images per proxy set")
    p.add_argument("--seeds", type=int, default=2)
    p.add_argument("--epochs", type=int, default=2, help="epochs of the proxy workload")
    p.add_argument("--whole-slice", type=int, default=5000, help="images of the whole workload")
    p.add_argument("--whole-epochs", type=int, default=1)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--workloads", default="proxy,whole", help="comma list: proxy, whole")
    p.add_argument("--gpus-per-trial", type=float, default=None, help="as nasproxy search")
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument("--trial-size", type=int, default=16)
    p.add_argument("--max-stack", type=int, default=None)
    p.add_argument("--rng", choices=("exact", "shared"), default=None)
    for flag in ("--bf16", "--channels-last", "--cuda-graphs"):
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None)
    p.add_argument("--out", default=None, help="default: results/bench/sweep-<device>.json")
    p.add_argument("--ratios-only", action="store_true", help="leave absolute times out")
    p.add_argument("--note", default="", help="a remark stored with the numbers")
    args = p.parse_args(argv)
    if args.tiny:
        for key, value in TINY.items():
            if getattr(args, key) == p.get_default(key):
                setattr(args, key, value)
        args.ratios_only = True
    if args.dataset is None:
        cifar = os.environ.get("NASPROXY_DATA")
        args.dataset = f"imagefolder:{cifar}" if cifar else "digits"
    return args


def arch_slice(args: argparse.Namespace, data: Dataset) -> list[str]:
    """The sampled architecture ids, with every activation of their shapes if asked."""
    space = spaces.load(args.space, image_size=data.image_size)
    archs = select_archs(space, args.pattern or (), args.archs, args.sample_seed)
    if args.activations == "all":
        wanted = {replace(a, act=act).id for a in archs for act in ACTIVATIONS}
        return [a.id for a in space if a.id in wanted]
    return [a.id for a in archs]


def write_proxies(data: Dataset, count: int, size: int, where: Path) -> list[str]:
    """``count`` seeded class-balanced random proxy files of ``size`` images."""
    per_class = size // data.num_classes
    labels = data.y_train.numpy()
    paths = []
    for k in range(count):
        chosen = random_per_class(labels, per_class, seed=k)
        record = proxy_record(data, chosen, method="random", per_class=per_class, seed=k)
        path = where / f"random-{k}.json"
        write_proxy(record, path)
        paths.append(f"p{k}={path}")
    return paths


def sweep_flops(table: pd.DataFrame, data: Dataset) -> float:
    """6 x MACs per training image seen plus 2 x MACs per evaluated val and test image."""
    evaluated = len(data.y_val) + len(data.y_test)
    total = 0.0
    for arch_id, images in table.groupby("arch")["images_seen"].sum().items():
        macs = Arch.from_id(str(arch_id)).macs(data.in_channels, data.num_classes, data.image_size)
        n_units = int((table["arch"] == arch_id).sum())
        total += macs * (6.0 * images + 2.0 * evaluated * n_units)
    return total


def compare(plain: pd.DataFrame, fused: pd.DataFrame, n_val: int) -> dict[str, Any]:
    """Per-unit accuracy differences, beside the plain path's seed-to-seed std."""
    key = ["train_set", "seed", "arch"]
    both = plain[[*key, "val_acc"]].merge(
        fused[[*key, "val_acc"]], on=key, how="inner", suffixes=("", "_fused")
    )
    diff = (both["val_acc"] - both["val_acc_fused"]).abs()
    seed_std = plain.groupby(["train_set", "arch"])["val_acc"].std(ddof=1)
    return {
        "units_compared": len(both),
        "val_acc_diff_mean": float(diff.mean()),
        "val_acc_diff_max": float(diff.max()),
        "seed_std_plain": float(seed_std.mean()) if seed_std.notna().any() else None,
        "val_examples": n_val,
    }


def run_workload(
    args: argparse.Namespace,
    workload: str,
    data: Dataset,
    archs: list[str],
    proxies: list[str],
    work: Path,
) -> dict[str, Any]:
    whole = workload == "whole"
    train = TrainConfig(
        epochs=args.whole_epochs if whole else args.epochs, batch_size=args.batch_size
    )
    fast = FastChoice(args.rng, args.bf16, args.channels_last, args.cuda_graphs)
    out: dict[str, Any] = {"epochs": train.epochs}
    tables = {}
    for path, fuse in (("plain", "off"), ("fused", "on")):
        cfg = SearchConfig(
            name=f"{workload}-{path}",
            dataset=args.dataset,
            data_root=args.data_root,
            proxies=() if whole else tuple(proxies),
            whole=whole,
            whole_per_class=args.whole_slice // data.num_classes if whole else None,
            space=args.space,
            archs=tuple(archs),  # exact ids
            seeds=tuple(range(args.seeds)),
            train=train,
            results_dir=str(work),
            trial_size=args.trial_size,
            gpus_per_trial=args.gpus_per_trial,
            cpus_per_trial=args.cpus_per_trial,
            fuse=fuse,
            max_stack=args.max_stack,
            fast=fast,
        )
        start = time.perf_counter()
        exp_dir = run_search(cfg)
        wall = time.perf_counter() - start
        table = results.read_trials(exp_dir)
        tables[path] = table
        flops = sweep_flops(table, data)
        out[path] = {
            "wall_s": wall,
            "train_s": float(table["wall_s"].sum()),
            "tflops": flops / wall / 1e12,
            "units": len(table),
            "not_ok": int((table["status"] != "ok").sum()),
            "stack_sizes": dict(sorted(Counter(map(int, table["stack_size"])).items())),
            "trainers": sorted(set(table["trainer"])),
            "fallbacks": int((table["fallback"] != "").sum()),
            "devices": sorted(set(table["device"])),
        }
        print(f"{workload:>5} {path:>5}: {wall:8.2f} s wall, {len(table)} units", flush=True)
    out["ratio"] = out["plain"]["wall_s"] / out["fused"]["wall_s"]
    out["train_ratio"] = out["plain"]["train_s"] / max(out["fused"]["train_s"], 1e-12)
    out.update(compare(tables["plain"], tables["fused"], len(data.y_val)))
    if args.ratios_only:
        for path in ("plain", "fused"):
            for field in ("wall_s", "train_s", "tflops"):
                del out[path][field]
    print(
        f"{workload:>5}: ratio {out['ratio']:.2f} (training {out['train_ratio']:.2f}), "
        f"val acc diff max {out['val_acc_diff_max']:.4f} vs seed std "
        f"{out['seed_std_plain']}",
        flush=True,
    )
    return out


def main(argv: Sequence[str] | None = None) -> None:
    args = parse_args(argv)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    data = load_dataset(args.dataset, args.data_root)
    work = Path(tempfile.mkdtemp(prefix="nasproxy-bench-sweep-"))
    try:
        proxies = write_proxies(data, args.proxies, args.proxy_size, work)
        archs = arch_slice(args, data)
        start = time.perf_counter()
        ray.init(address="local", include_dashboard=False, log_to_driver=False,
                 logging_level=logging.ERROR)  # fmt: skip
        ray_init_s = time.perf_counter() - start
        try:
            workloads = {
                name: run_workload(args, name, data, archs, proxies, work)
                for name in args.workloads.split(",")
            }
        finally:
            ray.shutdown()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    devices = sorted({d for w in workloads.values() for d in w["plain"]["devices"]})
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    result = {
        **provenance(device_type, argv),
        "device": ", ".join(devices),  # what the trials ran on (a cluster may mix)
        "ray_version": ray.__version__,
        "dataset": args.dataset,
        "archs": archs,
        "settings": {k: v for k, v in vars(args).items() if k not in ("out", "note", "data_root")},
        "ray_init_s": None if args.ratios_only else ray_init_s,
        "ratios_only": args.ratios_only,
        "note": args.note,
        "workloads": workloads,
    }
    out = Path(args.out or REPO / "results" / "bench" / f"sweep-{device_type}.json")
    atomic_write_json(out, result)
    print(out)


if __name__ == "__main__":
    main()
