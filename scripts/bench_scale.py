"""Benchmark: the sweep machinery at the paper's size, with a trainer that returns at once.

Behind the real planner, unit store, runners, lock and report, the two trainers a trial
calls (``nasproxy.search.trial.train`` and ``train_many``) are replaced by a double that
returns a made-up record at once (its validation accuracy a fixed function of the
architecture, training set and seed, so the shortlists are stable). The patch is a
``sitecustomize`` module in a temporary folder put first on PYTHONPATH: it patches the
trial module when it is imported, in the driver and in every Ray worker, which inherit
the driver's environment. Each sweep runs in its own driver process (this script with
``--drive``), so that a driver can be killed.

The sweep, at fraction f of the paper's size (f = 1: 720 architectures):

  proxies  5 class-balanced random proxy files of ``digits`` x 3 seeds x the
           architectures of 240 f stratified shapes (every activation; f = 1: all 720)
  whole    the whole train split on 32 f stratified shapes x 3 activations (as
           ``nasproxy units shapes`` and scripts/gpu_table1.sh choose them) x 3 seeds,
           then each proxy's top 10 (``--whole-top 10``) on the whole split
  fused    as on a GPU host: the units of a shape stack (5 proxies x 3 seeds x 3
           activations = 45 a stack), trial size 48

and what is timed in the driver (wrappers around the product's functions, nothing changed):

  setup     dataset, space, proxy files, manifest, the scan of the unit store
            (``check_units_fit``), until the first plan
  plan      ``plan_trials`` (stacks and chunks) of both stages
  confirm   ``--whole-top``'s shortlists from the stored units (stage 2's choice)
  dispatch  the runner's ``run`` (local: this process; ray: Tune trials on a local Ray),
            less the store writes, consolidations and trainer calls inside it
  store     every ``results.write_unit`` in the driver (local runner: all of them)
  consolidate  every ``results.consolidate`` (the trials table from all unit files)
  finish    ``finish_manifest`` (the run's record and wall times)
  ray_start ``ray.init`` of each Ray session (the sweep starts one per stage)
  report    ``nasproxy.report.make_report`` (Table 1, outcome, figures) after the sweep
  resume    local runner: the driver is killed (SIGKILL) once half the units are stored,
            then the same sweep runs again; checked: every unit of the uninterrupted
            sweep is stored, and no unit file stored before the kill was written again

Each size's times are fitted as t = a n^b over the sizes (n = work units); b <= 1 means
no part grows faster than linearly. The machinery's total is compared with the GPU time
of the sweep it serves, estimated from the paper's per-unit rates (Yang et al., "Dataset
Pruning", ICLR 2023, Table 1: 113 GPU-minutes for a 720-architecture sweep on a proxy,
3,029 on the whole set; 3,142 for the table).

    PYTHONPATH=$PWD python scripts/bench_scale.py [--fractions 0.125,0.25,0.5,1]
        [--ray-fractions 0.125,0.25] [--out results/bench/scale-cpu.json]
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parent.parent
PAPER_PROXY_SWEEP_MIN = 113.0  # GPU-minutes, 720 architectures on one proxy (Table 1)
PAPER_WHOLE_SWEEP_MIN = 3029.0  # GPU-minutes, 720 architectures on the whole set
PAPER_TABLE1_MIN = PAPER_PROXY_SWEEP_MIN + PAPER_WHOLE_SWEEP_MIN  # 3,142
PROXY_NAMES = ("random", "herding", "forgetting", "influence", "influence-kept-mean")
ALL_SHAPES = 240  # convnet720: 720 architectures = 240 shapes x 3 activations

# The double, installed in every Python process that imports nasproxy.search.trial.
SITECUSTOMIZE = """
import importlib.abc, os, sys, time, zlib

_TARGET = "nasproxy.search.trial"
SECONDS = [0.0, 0]  # time in the double, calls


def _score(*parts):
    return zlib.crc32("/".join(map(str, parts)).encode()) / 2**32


def _record(trial, arch, indices, cfg, data, stack):
    n = len(data.y_train) if indices is None else len(indices)
    val = 0.5 + 0.3 * _score(arch) + 0.05 * _score(arch, n, cfg.seed, _crc(indices))
    log = os.environ.get("BENCH_SCALE_TRAIN_LOG")
    if log:
        with open(log, "a") as f:
            f.write(f"{_crc(indices)} {cfg.seed} {arch} {os.getpid()}\\n")
    return trial.TrainRecord(
        arch=arch, status="ok", reason="", seed=cfg.seed, epochs=cfg.epochs, n_train=n,
        val_acc=val, test_acc=val - 0.01, train_loss=0.5, images_seen=n * cfg.epochs,
        device="cpu", stack_size=stack, trainer="bench double",
    )


def _crc(indices):
    return "whole" if indices is None else zlib.crc32(indices.tobytes())


def _patch(trial):
    def train(arch, data, indices, cfg):
        t = time.perf_counter()
        try:
            return _record(trial, arch, indices, cfg, data, 1)
        finally:
            SECONDS[0] += time.perf_counter() - t
            SECONDS[1] += 1

    def train_many(archs, data, sets, cfgs, options=None):
        t = time.perf_counter()
        try:
            return [_record(trial, a, s, c, data, len(archs)) for a, s, c in zip(archs, sets, cfgs)]
        finally:
            SECONDS[0] += time.perf_counter() - t
            SECONDS[1] += 1

    trial.train, trial.train_many = train, train_many


class _Finder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                break
        else:
            return None
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            _patch(module)

        spec.loader.exec_module = exec_module
        return spec


sys.meta_path.insert(0, _Finder())
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fractions", default="0.125,0.25,0.5,1", help="sizes, of 720 archs")
    parser.add_argument("--ray-fractions", default="0.125,0.25,0.5", help="sizes run on Ray too")
    parser.add_argument("--resume-fractions", default="0.125,0.25,0.5,1")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--whole-shapes", type=int, default=32, help="at full size")
    parser.add_argument("--whole-top", type=int, default=10)
    parser.add_argument("--trial-size", type=int, default=48)
    parser.add_argument("--per-class", type=int, default=20, help="images a class, a proxy")
    parser.add_argument("--n-boot", type=int, default=1000, help="the report's bootstrap")
    parser.add_argument("--work", default=None, help="a scratch folder (default: a temp one)")
    parser.add_argument("--out", default=str(REPO / "results/bench/scale-cpu.json"))
    parser.add_argument("--note", default="")
    parser.add_argument("--drive", default=None, help=argparse.SUPPRESS)  # one driver run
    args = parser.parse_args()
    if args.drive:
        drive(Path(args.drive))
        return
    orchestrate(args)


# --- the orchestrator ----------------------------------------------------------------------


def orchestrate(args: argparse.Namespace) -> None:
    from nasproxy.data import load_dataset
    from nasproxy.io import atomic_write_json
    from nasproxy.provenance import provenance
    from nasproxy.proxies.build import proxy_record, write_proxy
    from nasproxy.proxies.random import random_per_class
    from nasproxy.units import shape_globs

    work = Path(args.work or tempfile.mkdtemp(prefix="nasproxy-bench-scale-"))
    work.mkdir(parents=True, exist_ok=True)
    site = work / "site"
    site.mkdir(exist_ok=True)
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    data = load_dataset("digits")
    proxies = []
    for i, name in enumerate(PROXY_NAMES):
        kept = random_per_class(data.y_train.numpy(), args.per_class, seed=i)
        record = proxy_record(data, kept, method="random", per_class=args.per_class)
        proxies.append(f"{name}={write_proxy(record, work / f'{name}.json')}")

    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(site), str(REPO), os.environ.get("PYTHONPATH", "")]),
        "RAY_USAGE_STATS_ENABLED": "0",
        "OMP_NUM_THREADS": "1",
    }
    fractions = [float(f) for f in args.fractions.split(",")]
    on_ray = {float(f) for f in args.ray_fractions.split(",") if f}
    resumed = {float(f) for f in args.resume_fractions.split(",") if f}
    sizes = []
    for f in fractions:
        shapes = round(ALL_SHAPES * f)
        archs = [] if shapes >= ALL_SHAPES else shape_globs("convnet720", shapes, 0)
        whole = shape_globs("convnet720", max(1, round(args.whole_shapes * f)), 0)
        base = {
            "proxies": proxies,
            "archs": archs,
            "whole_archs": whole,
            "whole_top": args.whole_top,
            "seeds": args.seeds,
            "trial_size": args.trial_size,
            "n_boot": args.n_boot,
        }
        size: dict[str, Any] = {"fraction": f, "shapes": shapes, "whole_shapes": len(whole)}
        print(f"== size {f:g}: {shapes} shapes, whole {len(whole)} shapes", flush=True)
        local = _run_driver(work, env, {**base, "runner": "local", "name": f"local-{f:g}"})
        size["local"] = local
        size["units"] = local["units"]
        print(f"   local: {json.dumps(_brief(local))}", flush=True)
        if f in resumed:
            size["resume"] = _resume(work, env, {**base, "runner": "local"}, f, local)
            print(f"   resume: {json.dumps(size['resume'])}", flush=True)
        if f in on_ray:
            ray = _run_driver(
                work, env, {**base, "runner": "ray", "name": f"ray-{f:g}", "report": False}
            )
            size["ray"] = ray
            print(f"   ray: {json.dumps(_brief(ray))}", flush=True)
        sizes.append(size)
        shutil.rmtree(work / "results", ignore_errors=True)

    record = {
        **provenance("cpu"),
        "benchmark": "the sweep machinery with a trainer that returns at once",
        "note": args.note,
        "load_note": (
            "a shared 2-core machine: other jobs ran beside this one; each part carries the "
            "1-minute load average before and after it"
        ),
        "settings": {
            "dataset": "digits",
            "space": "convnet720",
            "proxies": list(PROXY_NAMES),
            "proxy_images": args.per_class * data.num_classes,
            "seeds": args.seeds,
            "whole_shapes_at_full_size": args.whole_shapes,
            "whole_top": args.whole_top,
            "trial_size": args.trial_size,
            "fuse": "on",
            "report_n_boot": args.n_boot,
        },
        "gpu_reference": {
            "source": "Yang et al., Dataset Pruning, ICLR 2023, Table 1 (V100)",
            "proxy_sweep_gpu_min": PAPER_PROXY_SWEEP_MIN,
            "whole_sweep_gpu_min": PAPER_WHOLE_SWEEP_MIN,
            "table1_gpu_min": PAPER_TABLE1_MIN,
        },
        "sizes": [_with_gpu(s) for s in sizes],
        "growth": _growth(sizes),
    }
    atomic_write_json(Path(args.out), record)
    print(json.dumps(record["growth"], indent=2))
    print(json.dumps([s["share"] for s in record["sizes"]], indent=2))


PARTS = ("setup", "plan", "confirm", "dispatch", "store", "consolidate", "finish", "ray_start",
         "other", "report")  # fmt: skip


def _brief(run: dict[str, Any]) -> dict[str, Any]:
    return {"units": run["units"], "total_s": run["total_s"], **run["parts"]}


def _run_driver(work: Path, env: dict[str, str], cfg: dict[str, Any]) -> dict[str, Any]:
    """One uninterrupted sweep (and its report) in a driver process; its timings."""
    cfg = {**cfg, "results_dir": str(work / "results"), "timings": str(work / "timings.json")}
    Path(cfg["timings"]).unlink(missing_ok=True)
    path = work / f"{cfg['name']}.json"
    path.write_text(json.dumps(cfg))
    load = os.getloadavg()[0]
    with open(work / f"{cfg['name']}.log", "w") as log:
        proc = subprocess.run(
            [sys.executable, __file__, "--drive", str(path)], env=env, cwd=work, stderr=log,
            stdout=log, check=False,
        )  # fmt: skip
    if proc.returncode != 0:
        raise SystemExit(f"driver {cfg['name']} failed (rc {proc.returncode}); see its log")
    timings = json.loads(Path(cfg["timings"]).read_text())
    timings["load_avg_1min"] = [round(load, 2), round(os.getloadavg()[0], 2)]
    return timings


def _unit_files(exp_dir: Path) -> list[Path]:
    return sorted((exp_dir / "units").glob("*/s*/*.json"))


def _resume(
    work: Path, env: dict[str, str], base: dict[str, Any], f: float, uninterrupted: dict
) -> dict[str, Any]:
    """Kill the driver (SIGKILL) once half the units are stored, run the sweep again; check
    that nothing is lost and nothing stored before the kill was trained again."""
    name = f"resume-{f:g}"
    exp_dir = work / "results" / name
    train_log = work / f"{name}.trained"
    train_log.unlink(missing_ok=True)
    cfg = {**base, "name": name, "results_dir": str(work / "results"),
           "timings": str(work / f"{name}-timings.json")}  # fmt: skip
    path = work / f"{name}.json"
    path.write_text(json.dumps(cfg))
    env = {**env, "BENCH_SCALE_TRAIN_LOG": str(train_log)}
    half = uninterrupted["units"] // 2
    load = os.getloadavg()[0]
    t0 = time.perf_counter()
    with open(work / f"{name}-1.log", "w") as log:
        proc = subprocess.Popen(
            [sys.executable, __file__, "--drive", str(path)], env=env, cwd=work, stderr=log,
            stdout=log,
        )  # fmt: skip
        while proc.poll() is None and len(_unit_files(exp_dir)) < half:
            time.sleep(0.2)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()  # reaped: the lock's holder is then seen as dead
    killed_after = time.perf_counter() - t0
    before = {p: p.read_bytes() for p in _unit_files(exp_dir)}
    rerun = _run_driver(work, env, {**base, "name": name, "report": False})
    after = _unit_files(exp_dir)
    reference = {p.relative_to(work / "results" / f"local-{f:g}") for p in _unit_files(
        work / "results" / f"local-{f:g}")}  # fmt: skip
    stored = {p.relative_to(exp_dir) for p in after}
    rewritten = sum(p.read_bytes() != blob for p, blob in before.items())
    trained = [line.split()[:3] for line in train_log.read_text().splitlines()]
    counts = defaultdict(int)
    for key in trained:
        counts[tuple(key)] += 1
    return {
        "killed_after_s": round(killed_after, 3),
        "stored_at_kill": len(before),
        "units_expected": len(reference),
        "units_stored_after_rerun": len(stored),
        "lost": len(reference - stored),
        "extra": len(stored - reference),
        "stored_before_kill_written_again": rewritten,
        "trainer_calls": len(trained),
        # trained in the killed run but not yet stored (the rest of a stack): trained again
        "units_trained_twice": sum(c > 1 for c in counts.values()),
        "rerun": _brief(rerun),
        "rerun_load_avg_1min": rerun["load_avg_1min"],
        "load_avg_1min_at_start": round(load, 2),
    }


def _with_gpu(size: dict[str, Any]) -> dict[str, Any]:
    """Add the GPU time the size's sweep would take at the paper's per-unit rates, and the
    machinery's share of it."""
    units = size["local"]["by_set"]
    proxy_units = sum(n for name, n in units.items() if name != "whole")
    gpu_min = (
        proxy_units * PAPER_PROXY_SWEEP_MIN / 720
        + units.get("whole", 0) * PAPER_WHOLE_SWEEP_MIN / 720
    )
    share = {"gpu_min_estimated": round(gpu_min, 1)}
    for runner in ("local", "ray"):
        if runner in size:
            total = size[runner]["total_s"] + size["local"]["parts"]["report"]
            share[f"{runner}_machinery_s"] = round(total, 2)
            share[f"{runner}_share_of_estimate"] = round(total / (gpu_min * 60), 6)
            if size["fraction"] == 1:
                share[f"{runner}_share_of_table1_3142"] = round(total / (PAPER_TABLE1_MIN * 60), 6)
    return {**size, "share": share}


def _fit(n: list[float], t: list[float]) -> dict[str, float]:
    """t = a n^b by least squares on logs; the exponent b and the largest/smallest ratios."""
    if len(n) < 2 or min(t) <= 0:
        return {}
    b, log_a = np.polyfit(np.log(n), np.log(t), 1)
    return {
        "exponent": round(float(b), 3),
        "time_ratio": round(t[-1] / t[0], 2),
        "units_ratio": round(n[-1] / n[0], 2),
        "s_per_1000_units_at_largest": round(1000 * t[-1] / n[-1], 3),
    }


def _growth(sizes: list[dict[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for runner in ("local", "ray"):
        runs = [s for s in sizes if runner in s]
        n = [float(s["units"]) for s in runs]
        fits = {p: _fit(n, [s[runner]["parts"][p] for s in runs]) for p in PARTS}
        fits["total"] = _fit(n, [s[runner]["total_s"] for s in runs])
        out[runner] = {k: v for k, v in fits.items() if v}
    runs = [s for s in sizes if "resume" in s]
    out["resume_rerun"] = _fit(
        [float(s["units"]) for s in runs], [s["resume"]["rerun"]["total_s"] for s in runs]
    )
    return out


# --- one driver run (a process of its own) ------------------------------------------------


def drive(path: Path) -> None:
    """Run one sweep and its report with the product's functions wrapped in timers; write
    the timings to the config's ``timings`` file."""
    from nasproxy import results
    from nasproxy.cli import SearchProgress
    from nasproxy.io import atomic_write_json
    from nasproxy.report import make_report
    from nasproxy.search import SearchConfig, run_search, runner, sweep
    from nasproxy.search.config import parse_seeds
    from nasproxy.train import TrainConfig

    cfg = json.loads(path.read_text())
    calls: dict[str, list[tuple[float, float]]] = defaultdict(list)  # name -> (start, s)

    def timed(owner: Any, attr: str, name: str) -> None:
        original = getattr(owner, attr)

        @functools.wraps(original)
        def wrapper(*a: Any, **k: Any) -> Any:
            t = time.perf_counter()
            try:
                return original(*a, **k)
            finally:
                calls[name].append((t, time.perf_counter() - t))

        setattr(owner, attr, wrapper)

    timed(sweep, "plan_trials", "plan")
    timed(sweep, "_confirm_keys", "confirm")
    timed(sweep, "check_units_fit", "check_store")
    timed(sweep, "finish_manifest", "finish")
    timed(results, "write_unit", "store")
    timed(results, "consolidate", "consolidate")
    timed(runner.LocalRunner, "run", "dispatch")
    if cfg["runner"] == "ray":
        from nasproxy.search import ray_runner

        timed(ray_runner.RayRunner, "run", "dispatch")
        timed(ray_runner, "_start_ray", "ray_start")

    search = SearchConfig(
        name=cfg["name"],
        proxies=tuple(cfg["proxies"]),
        dataset="digits",
        whole=True,
        archs=tuple(cfg["archs"]),
        whole_archs=tuple(cfg["whole_archs"]),
        whole_top=cfg["whole_top"],
        seeds=parse_seeds(str(cfg["seeds"])),
        train=TrainConfig(epochs=1),
        results_dir=cfg["results_dir"],
        trial_size=cfg["trial_size"],
        runner=cfg["runner"],
        fuse="on",
        cpus_per_trial=1.0,
    )
    t0 = time.perf_counter()
    with SearchProgress() as progress:  # one line a unit on stderr (a file), as on a GPU host
        exp_dir = run_search(search, progress)
    total = time.perf_counter() - t0
    t = time.perf_counter()
    if cfg.get("report", True):  # the report reads the store only: once a size is enough
        make_report(exp_dir, top_k=10, n_boot=cfg["n_boot"])
    report = time.perf_counter() - t

    double = sys.modules["sitecustomize"].SECONDS
    table = results.read_trials(exp_dir)
    if set(table["trainer"]) != {"bench double"}:
        raise SystemExit(f"a unit was trained by the real trainer: {set(table['trainer'])}")

    def total_of(name: str, within: str | None = None) -> float:
        """Seconds in ``name``'s calls (only those started inside a ``within`` call)."""
        spans = calls.get(within, []) if within else []
        return sum(
            d for t, d in calls.get(name, [])
            if within is None or any(a <= t <= a + w for a, w in spans)
        )  # fmt: skip

    first_plan = min(t for t, _ in calls["plan"])
    ray_before = sum(d for t, d in calls.get("ray_start", []) if t < first_plan)
    inside = total_of("store", "dispatch") + total_of("consolidate", "dispatch")
    if cfg["runner"] == "local":
        inside += double[0]  # the double ran in this process, inside the runner
    parts = {
        "setup": first_plan - t0 - ray_before,
        "plan": total_of("plan"),
        "confirm": total_of("confirm"),
        "dispatch": total_of("dispatch") - inside,
        "store": total_of("store"),
        "consolidate": total_of("consolidate"),
        "finish": total_of("finish"),
        "ray_start": total_of("ray_start"),
    }
    parts["other"] = total - sum(parts.values()) - (double[0] if cfg["runner"] == "local" else 0)
    parts["report"] = report
    atomic_write_json(
        Path(cfg["timings"]),
        {
            "runner": cfg["runner"],
            "units": len(table),
            "by_set": {k: int(v) for k, v in table["train_set"].value_counts().items()},
            "statuses": {k: int(v) for k, v in table["status"].value_counts().items()},
            "total_s": round(total, 3),
            "parts": {k: round(v, 3) for k, v in parts.items()},
            "calls": {k: len(v) for k, v in calls.items()},
            "check_store_s": round(total_of("check_store"), 3),
            "consolidate_last_s": round(calls["consolidate"][-1][1], 3),
            "trainer_double_s": round(double[0], 3),
            "trainer_double_calls_in_driver": double[1],
        },
    )


if __name__ == "__main__":
    main()
