"""Benchmark: a repeat proxy build on the same scoring run, cold cache against warm cache.

What a build reuses from the disk cache beside its scoring run (``nasproxy/influence/head.py``):
the refitted softmax head, S (n x P, the influence method's input and every epsilon's),
and the Cholesky factor of H (the epsilon of a method when S was never computed). Each
is timed cold (computed and stored) and warm (read back and verified), in one run:

  influence  refit + S + epsilon of a random kept set     (an influence build's head work)
  factor     Hessian + factor + epsilon, head cached       (a non-influence build's)

and the ratios cold / warm are reported. Selection itself (the solver, the method) is not
cached: it depends on the seed and the budget.

Default input: synthetic features (n = 50,000, d = 512, C = 10: CIFAR-10's training set
under the 512-d default backbone; the cost depends on the sizes only), as in
``bench_influence.py``. Writes ``results/bench/repeat-build-<device>.json``.

Usage:  python scripts/bench_repeat_build.py [--n 50000 --dim 512] [--device cuda]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_influence import _sync, _synthetic  # noqa: E402

from nasproxy.influence.head import RefitHead, head_cache  # noqa: E402
from nasproxy.io import atomic_write_json  # noqa: E402
from nasproxy.provenance import provenance  # noqa: E402
from nasproxy.proxies.random import random_per_class  # noqa: E402
from nasproxy.scoring import ScoringArtifact  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def _artifact(folder: Path, features: np.ndarray, labels: np.ndarray) -> ScoringArtifact:
    """A scoring artifact around synthetic features (a zero head to refit from)."""
    c = int(labels.max()) + 1
    digest = hashlib.sha256(features.tobytes() + labels.tobytes()).hexdigest()
    return ScoringArtifact(
        path=folder,
        key={"synthetic": True},
        hash=digest,
        features=features,
        probs=np.full((len(labels), c), 1.0 / c, dtype=np.float32),
        labels=labels,
        head_weight=np.zeros((c, features.shape[1]), dtype=np.float32),
        head_bias=np.zeros(c, dtype=np.float32),
        forgetting_events=np.zeros(len(labels), dtype=np.int64),
        ever_learned=np.ones(len(labels), dtype=bool),
    )


def _timed(device: torch.device, work) -> tuple[float, float]:
    start = time.perf_counter()
    value = work()
    _sync(device)
    return time.perf_counter() - start, value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=50_000, help="synthetic examples")
    parser.add_argument("--dim", type=int, default=512, help="synthetic feature dimension")
    parser.add_argument("--classes", type=int, default=10, help="synthetic classes")
    parser.add_argument("--l2", type=float, default=5e-4, help="the SGD weight decay")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (the P x P work)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--note", action="append", default=[], help="recorded in the JSON")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    features, labels = _synthetic(args.n, args.dim, args.classes, args.seed)
    kept = random_per_class(labels, 100, args.seed)
    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="bench-repeat-") as tmp:
        art = _artifact(Path(tmp), features, labels)

        def influence_build() -> float:
            head = RefitHead.load_or_fit(art, args.l2, device)
            head.influence()
            return head.epsilon(kept)

        def factor_build() -> float:
            return RefitHead.load_or_fit(art, args.l2, device).epsilon(kept)

        cold_inf, eps_cold = _timed(device, influence_build)
        warm_inf, eps_warm = _timed(device, influence_build)
        head_cache(art, args.l2).remove("influence")  # keep the head, drop S
        cold_fac, eps_fac_cold = _timed(device, factor_build)
        warm_fac, eps_fac_warm = _timed(device, factor_build)
        sizes = {p.name: p.stat().st_size for p in head_cache(art, args.l2).folder.iterdir()}

    p = args.classes * (args.dim + 1)
    record = {
        "benchmark": "repeat build on one scoring run: cold against warm disk cache",
        **provenance(device, argv),
        "torch_threads": torch.get_num_threads(),
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "n": args.n,
        "dim": args.dim,
        "parameters": p,
        "timings_s": {
            "influence_cold": cold_inf,
            "influence_warm": warm_inf,
            "factor_cold": cold_fac,
            "factor_warm": warm_fac,
        },
        "speedup": {"influence": cold_inf / warm_inf, "factor": cold_fac / warm_fac},
        "epsilon_cold_warm": [eps_cold, eps_warm, eps_fac_cold, eps_fac_warm],
        "cache_bytes": sizes,
        "notes": [
            "influence_*: head refit (cold) or read + S computed (cold) or read, then epsilon",
            "factor_*: with the head cached, H + Cholesky (cold) or the factor read, then "
            "epsilon by one solve",
            "warm reads include the sha256 verification of every cache file",
            *args.note,
        ],
    }
    tag = "cuda" if device.type == "cuda" else "cpu"
    path = atomic_write_json(args.out / f"repeat-build-{tag}.json", record)
    print(f"{args.n:,} x {args.dim} features, {p:,} parameters, device {device}")
    for name, value in record["timings_s"].items():
        print(f"{name:<16} {value:>9.2f} s")
    print(f"speed-up: influence {cold_inf / warm_inf:.1f}x, factor {cold_fac / warm_fac:.1f}x")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
