"""Benchmark: the scoring run with torch's thread count against the scoring run pinned to one
CPU thread, side by side in one run, on README's Python example.

For each thread count T (``--threads``, default 1,2,3,4) torch is set to T threads and, for
each of the two scoring modes,

  free     ``scoring_run(..., threads=None)``: trained with T threads (nasproxy before the pin)
  pinned   ``scoring_run(...)``: trained with ``SCORING_THREADS`` (1) whatever T

the scoring run is trained (in a fresh cache: timed), the influence proxy of README's
example is built on it, and the example's architecture is trained with T threads on the
proxy and on the whole split. Recorded per (mode, T): the scoring run's seconds, its
artifact hash, the largest feature difference from T = 1's, the proxy's index digest and
epsilon, and both val accuracies; per mode: how many distinct hashes, index sets and
accuracies the thread counts gave, and the spread (max - min) of each accuracy. The whole
split's line does not read the scoring run: it is trained once per T.

Writes ``results/bench/scoring-threads-<device>.json`` (command, commit, date, device,
versions, CPU threads, load average). The scoring runs use the CPU (pinning is about CPU
threads); ``--device`` is where the example's architecture trains.

Usage:  python scripts/bench_scoring_threads.py [--threads 1,2,3,4] [--epochs 8]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasproxy.data import default_data_root, load_dataset
from nasproxy.io import atomic_write_json
from nasproxy.provenance import provenance
from nasproxy.proxies.build import build_proxy, proxy_indices
from nasproxy.proxies.proxy_file import selection_fields
from nasproxy.scoring import SCORING_THREADS, ScoringConfig, scoring_run
from nasproxy.train import TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
MODES = {"free": None, "pinned": SCORING_THREADS}


def _spread(values: list[float]) -> float:
    return float(max(values) - min(values))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default="1,2,3,4", help="torch thread counts to compare")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--backbone", default="w32-d3-relu-instancenorm-avgpooling")
    parser.add_argument("--epochs", type=int, default=8, help="the scoring run's epochs")
    parser.add_argument("--per-class", type=int, default=20, help="the influence proxy's size")
    parser.add_argument("--arch", default="w32-d2-relu-instancenorm-avgpooling")
    parser.add_argument("--arch-epochs", type=int, default=4)
    parser.add_argument("--device", default="cpu", help="where the example's arch trains")
    parser.add_argument("--data-root", type=Path, default=None)
    parser.add_argument("--note", action="append", default=[], help="recorded in the JSON")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "bench")
    args = parser.parse_args(argv)

    counts = [int(t) for t in args.threads.split(",") if t]
    data = load_dataset(args.dataset, data_root=args.data_root or default_data_root())
    cfg = ScoringConfig(backbone=args.backbone, backbone_epochs=args.epochs)
    train_cfg = TrainConfig(epochs=args.arch_epochs, device=args.device)
    before = torch.get_num_threads()
    load_before = os.getloadavg()
    rows: list[dict[str, Any]] = []
    whole: dict[int, float] = {}
    reference: dict[str, np.ndarray] = {}
    with tempfile.TemporaryDirectory(prefix="bench-threads-") as tmp:
        for t in counts:
            torch.set_num_threads(t)
            whole[t] = train(args.arch, data, None, train_cfg).val_acc
            for mode, threads in MODES.items():
                cache = Path(tmp) / f"{mode}-{t}"
                start = time.perf_counter()
                art = scoring_run(data, cfg, cache, device="cpu", threads=threads)
                scoring_s = time.perf_counter() - start
                reference.setdefault(mode, art.features)
                # the build finds the run just made in its cache and reuses it
                proxy = build_proxy(data, "influence", args.per_class, 0, cache, cfg, device="cpu")
                kept = proxy_indices(proxy, data, "proxy")
                rec = train(args.arch, data, kept, train_cfg)
                rows.append(
                    {
                        "mode": mode,
                        "torch_threads": t,
                        "scoring_threads": art.meta["platform"]["threads"],
                        "scoring_s": scoring_s,
                        "artifact_hash": art.hash,
                        "max_feature_diff_vs_first": float(
                            np.abs(art.features - reference[mode]).max()
                        ),
                        "indices_digest": selection_fields(proxy)["indices"],
                        "epsilon": proxy["epsilon"],
                        "proxy_val_acc": rec.val_acc,
                        "whole_val_acc": whole[t],
                    }
                )
                print(
                    f"{mode:>6} T={t}: scoring {scoring_s:6.1f} s, hash {art.hash[:12]}, "
                    f"indices {rows[-1]['indices_digest']}, proxy val {rec.val_acc:.3f}, "
                    f"whole val {whole[t]:.3f}",
                    flush=True,
                )
    torch.set_num_threads(before)

    summary = {}
    for mode in MODES:
        mine = [r for r in rows if r["mode"] == mode]
        summary[mode] = {
            "distinct_artifact_hashes": len({r["artifact_hash"] for r in mine}),
            "distinct_index_sets": len({r["indices_digest"] for r in mine}),
            "proxy_val_acc_spread": _spread([r["proxy_val_acc"] for r in mine]),
            "scoring_s_total": sum(r["scoring_s"] for r in mine),
        }
    seconds = {(r["mode"], r["torch_threads"]): r["scoring_s"] for r in rows}
    ratios = {str(t): seconds["pinned", t] / seconds["free", t] for t in counts}
    record = {
        "benchmark": "scoring run with torch's threads (free) against pinned to one thread",
        **provenance("cpu", argv),
        "torch_threads_default": before,
        "load_average_before": list(load_before),
        "load_average_after": list(os.getloadavg()),
        "dataset": data.spec,
        "scoring": {k: cfg.key()[k] for k in ("backbone", "epochs", "seed")},
        "proxy": {"method": "influence", "per_class": args.per_class, "seed": 0},
        "arch": args.arch,
        "arch_epochs": args.arch_epochs,
        "arch_device": args.device,
        "thread_counts": counts,
        "rows": rows,
        "summary": summary,
        "whole_val_acc_spread": _spread(list(whole.values())),
        "scoring_time_ratio_pinned_over_free": ratios,
        "notes": args.note,
    }
    tag = torch.device(args.device).type
    path = atomic_write_json(args.out / f"scoring-threads-{tag}.json", record)
    for mode, s in summary.items():
        print(
            f"{mode}: {s['distinct_artifact_hashes']} artifact hash(es), "
            f"{s['distinct_index_sets']} index set(s), proxy val-acc spread "
            f"{s['proxy_val_acc_spread']:.3f}, scoring {s['scoring_s_total']:.1f} s in all"
        )
    print("scoring time pinned / free:", {t: round(r, 2) for t, r in ratios.items()})
    print(f"whole val-acc spread {record['whole_val_acc_spread']:.3f}")
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
