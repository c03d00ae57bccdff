"""Benchmark: the influence step of dataset pruning (Yang et al., ICLR 2023, Eq. 2 and Eq. 4).

Times, on one device, the work that follows the scoring run for the ``influence`` proxy:

  refit      ``refit_head``: the softmax head refitted to the optimum of mean CE + (l2/2)||theta||^2
  hessian    ``head_hessian``: the exact P x P Hessian (P = C (d + 1))
  influence  ``parameter_influence`` given that Hessian: Cholesky factor and the n x P matrix S
  select     ``select_kept``: greedy forward selection + 1-swap search, ``--per-class`` per class

Default input: synthetic features (n = 50,000, d = 512, C = 10: the size of CIFAR-10's
training set under a 512-d head, 5,130 parameters), drawn as ReLU(class centre + noise) so
that the head fits them about as well as a trained network's features; the cost of every
step depends on the sizes only, not on the values. ``--features PATH`` reads a scoring
artifact's ``arrays.npz`` (``features``, ``labels``, and ``head_weight`` / ``head_bias`` as
the refit's starting point) instead.

Prints a table and writes ``results/bench/influence-<device>.json`` (device, CPU model,
threads, load average, command, git commit, date, timings, refit report, objective).

Usage:  python scripts/bench_influence.py                      # CPU
        python scripts/bench_influence.py --device cuda        # the P x P work on a GPU
        python scripts/bench_influence.py --features CACHE/scoring/KEY/arrays.npz
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasproxy.influence.estimate import head_hessian, parameter_influence, refit_head
from nasproxy.influence.solvers import objective_value, select_kept
from nasproxy.io import atomic_write_json
from nasproxy.provenance import provenance

REPO = Path(__file__).resolve().parent.parent
BUDGET_S = {"cpu": 600.0, "cuda": 60.0}  # the targets: 10 minutes on CPU, 1 minute on a GPU


def _synthetic(n: int, d: int, c: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(c), -(-n // c))[:n]
    rng.shuffle(labels)
    centres = rng.standard_normal((c, d)) * 0.5
    features = np.maximum(centres[labels] + rng.standard_normal((n, d)), 0.0)
    return features.astype(np.float32), labels.astype(np.int64)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=Path, help="a scoring artifact's arrays.npz")
    parser.add_argument("--n", type=int, default=50_000, help="synthetic examples")
    parser.add_argument("--dim", type=int, default=512, help="synthetic feature dimension")
    parser.add_argument("--classes", type=int, default=10, help="synthetic classes")
    parser.add_argument("--l2", type=float, default=5e-4, help="the SGD weight decay")
    parser.add_argument("--per-class", type=int, default=100, help="kept examples per class")
    parser.add_argument("--project-dim", type=int, default=None, help="select in k dims")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the P x P work)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", action="append", default=[], help="recorded in the JSON")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)

    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    load_before = os.getloadavg()
    init = None
    if args.features is not None:
        with np.load(args.features, allow_pickle=False) as z:
            features, labels = z["features"], z["labels"].astype(np.int64)
            if "head_weight" in z.files:
                init = torch.nn.Linear(features.shape[1], z["head_weight"].shape[0])
                with torch.no_grad():
                    init.weight.copy_(torch.from_numpy(z["head_weight"]))
                    init.bias.copy_(torch.from_numpy(z["head_bias"]))
        source = str(args.features)
    else:
        features, labels = _synthetic(args.n, args.dim, args.classes, args.seed)
        source = f"synthetic ReLU(class centre + noise), seed {args.seed}"
    n, d = features.shape
    c = int(labels.max()) + 1
    timings: dict[str, float] = {}

    start = time.perf_counter()
    head, info = refit_head(features, labels, c, args.l2, init=init)
    _sync(device)
    timings["refit"] = time.perf_counter() - start

    start = time.perf_counter()
    hess = head_hessian(features, labels, head, args.l2, device=device)
    _sync(device)
    timings["hessian"] = time.perf_counter() - start

    start = time.perf_counter()
    s = parameter_influence(features, labels, head, args.l2, hessian=hess, device=device)
    _sync(device)
    timings["influence"] = time.perf_counter() - start
    del hess

    start = time.perf_counter()
    kept = select_kept(s, labels, args.per_class, seed=args.seed, project_dim=args.project_dim)
    timings["select"] = time.perf_counter() - start
    timings["total"] = sum(timings.values())

    rng = np.random.default_rng(args.seed)
    random_values = [
        objective_value(
            s,
            np.concatenate(
                [
                    rng.choice(np.flatnonzero(labels == k), args.per_class, replace=False)
                    for k in range(c)
                ]
            ),
        )
        for _ in range(5)
    ]
    record: dict[str, Any] = {
        "benchmark": "influence step: refit, Hessian, S, greedy selection",
        **provenance(device, argv),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "input": source,
        "n": n,
        "dim": d,
        "classes": c,
        "parameters": c * (d + 1),
        "l2": args.l2,
        "kept_per_class": args.per_class,
        "project_dim": args.project_dim,
        "s_dtype": str(s.dtype),
        "refit": info,
        "timings_s": timings,
        "budget_s": BUDGET_S.get(device.type),
        "within_budget": timings["total"] <= BUDGET_S.get(device.type, float("inf")),
        "objective_removed_sum": objective_value(s, kept),
        "objective_random_kept_sets": random_values,
        "notes": [
            "refit (L-BFGS + Newton-CG) and select run on the CPU (numpy) whatever --device is",
            "objective_*: ||sum of S over the removed examples||_2 for the greedy kept set "
            "and for 5 random kept sets with the same class counts",
            *args.note,
        ],
    }
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = atomic_write_json(args.out / f"influence-{tag}.json", record)

    print(f"{n:,} examples x {d} features, {c} classes: {c * (d + 1):,} parameters ({source})")
    print(f"device: {device} ({record['device_name']}), torch threads {torch.get_num_threads()}")
    print(f"{'step':<10} {'seconds':>9}")
    for name, value in timings.items():
        print(f"{name:<10} {value:>9.1f}")
    print(f"refit gradient norm {info['grad_norm']:.2e} after {info['iterations']} L-BFGS its.")
    print(
        f"||sum_removed S||: greedy {record['objective_removed_sum']:.4g}, "
        f"random kept sets {np.median(random_values):.4g} (median of 5)"
    )
    print(f"written {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
