"""How much of a sweep of short trials is Ray Tune orchestration rather than training?

Runs one sweep (N small ConvNets of convnet720 x one 1,000-image proxy x 1 epoch on
``digits``) through ``nasproxy.search.run_search`` several ways, back to back on one Ray
cluster started once:

  trial-size 1, fresh worker per trial     one work unit a Tune trial (Tune's default)
  trial-size 1, reused workers             one unit a trial, Tune's reuse_actors
  trial-size 16, fresh worker per trial    chunks of units, a new worker each
  trial-size 16, reused workers            the default of ``nasproxy search``
  the default again on a larger sweep      (all 45 w32-d1 archs x 2 seeds)

For each: orchestration share = 1 - (sum of the units' training seconds) / (slots x sweep
wall seconds), the part of the trial slots' time not spent in train(); with one slot this is
(wall - training) / wall. The sweep wall covers run_search from call to return with Ray
already up; it is split into setup (dataset, checks, planning), trials (Tune start to the
last unit reported) and finish; ``ray.init`` is timed apart. A second part times how a
CIFAR-10-sized dataset reaches a worker: from the object store (what the search does) or
loaded from an .npz cache by the worker itself.

    .venv/bin/python scripts/bench_search_overhead.py [--archs 16] [--out PATH]
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

from nasproxy import results
from nasproxy.data import load_dataset
from nasproxy.io import atomic_write_json
from nasproxy.provenance import provenance
from nasproxy.proxies.build import proxy_record, write_proxy
from nasproxy.proxies.random import random_per_class
from nasproxy.search import DEFAULT_TRIAL_SIZE, SearchConfig, run_search
from nasproxy.train import TrainConfig

REPO = Path(__file__).resolve().parent.parent
SMALL_ARCHS = "w32-d1-*"  # the cheapest ConvNets of convnet720 (45 of them)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", type=int, default=16, help="architectures in the sweep")
    parser.add_argument(
        "--scale-seeds", type=int, default=2, help="seeds of the larger default sweep (0: skip)"
    )
    parser.add_argument("--per-class", type=int, default=100, help="proxy images per class")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument(
        "--cpus-per-trial",
        type=float,
        default=float(os.cpu_count() or 1),
        help="default: every core, so one trial runs at a time",
    )
    parser.add_argument("--out", default=str(REPO / "results/bench/search-overhead-cpu.json"))
    parser.add_argument("--note", default="", help="a remark stored with the numbers")
    args = parser.parse_args()

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    import torch

    torch.set_num_threads(1)
    t0 = time.perf_counter()
    ray.init(address="local", include_dashboard=False, log_to_driver=False,
             logging_level=logging.ERROR)  # fmt: skip
    ray_init_s = time.perf_counter() - t0

    work = Path(tempfile.mkdtemp(prefix="nasproxy-bench-"))
    data = load_dataset("digits")
    proxy = _write_proxy(work / "random.json", data, args.per_class)
    base = SearchConfig(
        name="x",
        dataset="digits",
        proxies=(str(proxy),),
        archs=(SMALL_ARCHS,),
        sample=args.archs,
        train=TrainConfig(epochs=args.epochs),
        results_dir=str(work / "results"),
        cpus_per_trial=args.cpus_per_trial,
        gpus_per_trial=0.0,
    )
    variants = [
        ("trial-size 1, fresh worker per trial", {"trial_size": 1, "reuse_actors": False}),
        ("trial-size 1, reused workers", {"trial_size": 1}),
        (f"trial-size {DEFAULT_TRIAL_SIZE}, fresh worker per trial", {"reuse_actors": False}),
        (f"trial-size {DEFAULT_TRIAL_SIZE}, reused workers (default)", {}),
    ]
    if args.scale_seeds:
        variants.append(
            (
                f"trial-size {DEFAULT_TRIAL_SIZE}, reused workers (default), all {SMALL_ARCHS} "
                f"x {args.scale_seeds} seeds",
                {"sample": None, "seeds": tuple(range(args.scale_seeds))},
            )
        )
    sweeps = [_sweep(label, replace(base, name=f"v{i}", **changes))
              for i, (label, changes) in enumerate(variants)]  # fmt: skip
    transport = _transport(ray)
    ray.shutdown()
    shutil.rmtree(work)

    baseline = sweeps[0]["orchestration_share"]
    record = {
        "what": "Ray Tune orchestration share of a sweep of short trials (CPU)",
        **provenance("cpu"),
        "machine_note": (
            f"{os.cpu_count()} cores shared with other jobs while measured; absolute seconds "
            "are noisy, the comparison between variants run back to back is the point"
        ),
        "ray_version": ray.__version__,
        "sweep": {
            "dataset": "digits",
            "archs": f"{args.archs} sampled from convnet720 {SMALL_ARCHS}",
            "proxy_images": int(args.per_class * data.num_classes),
            "epochs": args.epochs,
            "cpus_per_trial": args.cpus_per_trial,
        },
        "ray_init_s": round(ray_init_s, 3),
        "sweeps": sweeps,
        "share_ratio_vs_trial_size_1": {
            s["variant"]: round(s["orchestration_share"] / baseline, 4) for s in sweeps
        },
        "data_transport": transport,
        "note": args.note,
    }
    atomic_write_json(Path(args.out), record)
    print(json.dumps(record, indent=2))


def _sweep(label: str, cfg: SearchConfig) -> dict:
    """Run one sweep; split its wall time into setup, trials and finish."""
    marks: list[tuple[float, bool]] = []  # (time, is a finished unit)
    t0 = time.perf_counter()
    exp_dir = run_search(
        cfg, progress=lambda e: marks.append((time.perf_counter(), e.row is not None))
    )
    wall = time.perf_counter() - t0
    table = results.read_trials(exp_dir)
    run = results.read_manifest(exp_dir)["runs"][-1]
    train_s = float(table["wall_s"].sum())
    slots, trials = int(run["slots"]), int(run["trials"])
    planned = next(t for t, is_row in marks if not is_row)  # the plan note: Tune starts
    last = max(t for t, is_row in marks if is_row)
    trials_s = last - planned
    return {
        "variant": label,
        "trial_size": cfg.trial_size,
        "reuse_actors": cfg.reuse_actors,
        "units": len(table),
        "trials": trials,
        "slots": slots,
        "sweep_wall_s": round(wall, 3),
        "setup_s": round(planned - t0, 3),  # dataset, checks, manifest, planning
        "trials_s": round(trials_s, 3),  # Tune start to the last unit reported
        "finish_s": round(wall - (last - t0), 3),  # Tune shutdown, table, manifest
        "train_s_sum": round(train_s, 3),
        "orchestration_share": round(1 - train_s / (slots * wall), 4),
        "orchestration_share_within_trials": round(1 - train_s / (slots * trials_s), 4),
        "orchestration_s_per_trial": round((slots * trials_s - train_s) / trials, 3),
        "train_s_per_unit": round(train_s / len(table), 3),
        "statuses": {k: int(v) for k, v in table["status"].value_counts().items()},
    }


def _write_proxy(path: Path, data, per_class: int) -> Path:
    kept = random_per_class(data.y_train.numpy(), per_class, seed=0)
    return write_proxy(proxy_record(data, kept, method="random", per_class=per_class), path)


def _transport(ray) -> dict:
    """Seconds for a worker to get CIFAR-10-sized uint8 arrays: object store vs .npz cache."""
    import torch

    from nasproxy.data import Dataset

    rng = np.random.default_rng(0)
    shapes = {
        "x_train": (45000, 3, 32, 32),
        "x_val": (5000, 3, 32, 32),
        "x_test": (10000, 3, 32, 32),
    }
    arrays = {k: rng.integers(0, 256, s, dtype=np.uint8) for k, s in shapes.items()}
    labels = {k: np.zeros(v[0], dtype=np.int64) for k, v in shapes.items()}
    data = Dataset(
        spec="synthetic", classes=tuple(str(i) for i in range(10)),
        x_train=torch.from_numpy(arrays["x_train"]), y_train=torch.from_numpy(labels["x_train"]),
        x_val=torch.from_numpy(arrays["x_val"]), y_val=torch.from_numpy(labels["x_val"]),
        x_test=torch.from_numpy(arrays["x_test"]), y_test=torch.from_numpy(labels["x_test"]),
        fingerprint="0", mean=(0.5,) * 3, std=(0.25,) * 3,
    )  # fmt: skip
    nbytes = sum(a.nbytes for a in arrays.values())
    cache = Path(tempfile.mkdtemp(prefix="nasproxy-bench-npz-")) / "data.npz"
    np.savez(cache, **arrays)

    t0 = time.perf_counter()
    ref = ray.put(data)
    put_s = time.perf_counter() - t0

    @ray.remote(num_cpus=1)
    def from_store(refs: list) -> float:
        t = time.perf_counter()
        got = ray.get(refs[0])
        assert got.x_train.shape[0] == 45000
        return time.perf_counter() - t

    @ray.remote(num_cpus=1)
    def from_npz(path: str) -> float:
        t = time.perf_counter()
        with np.load(path) as z:
            x = {k: torch.from_numpy(z[k]) for k in z.files}
        assert x["x_train"].shape[0] == 45000
        return time.perf_counter() - t

    ray.get([from_store.remote([ref]), from_npz.remote(str(cache))])  # warm the workers
    store = [ray.get(from_store.remote([ref])) for _ in range(3)]
    npz = [ray.get(from_npz.remote(str(cache))) for _ in range(3)]
    shutil.rmtree(cache.parent)
    return {
        "bytes": nbytes,
        "driver_put_s": round(put_s, 3),
        "worker_get_from_object_store_s": [round(s, 3) for s in store],
        "worker_load_npz_cache_s": [round(s, 3) for s in npz],
    }


if __name__ == "__main__":
    main()
