"""The ``nasproxy`` command: parse arguments, call the library, print. No logic lives here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress

from nasproxy.errors import CacheWarning, IncompleteError, NasproxyError
from nasproxy.io import check_output_file
from nasproxy.presets import PRESETS, Preset, parse_seeds

if TYPE_CHECKING:
    from nasproxy.search import Progress as SearchEvent

Handler = Callable[[argparse.Namespace], int]
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--dataset",
        default="digits",
        help="digits (embedded), cifar10, cifar100 or imagefolder:PATH (folder or .tar.gz)",
    )
    p.add_argument(
        "--data-root",
        default=None,
        help="download and cache folder (default $NASPROXY_DATA_ROOT or ~/.cache/nasproxy)",
    )
    p.add_argument("--val-fraction", type=float, default=0.1, help="held out of train per class")
    p.add_argument("--split-seed", type=int, default=0, help="seed of the validation split")


def _load_data(args: argparse.Namespace):
    from nasproxy.data import load_dataset

    return load_dataset(args.dataset, args.data_root, args.val_fraction, args.split_seed)


def cmd_space(args: argparse.Namespace) -> int:
    from nasproxy import spaces

    space = spaces.load(args.space, image_size=args.image_size)
    if args.json:
        for arch in space:
            rec = {"id": arch.id, "index": space.index(arch), **vars(arch)}
            rec["params"] = arch.param_count(args.in_channels, args.num_classes, args.image_size)
            rec["macs"] = arch.macs(args.in_channels, args.num_classes, args.image_size)
            print(json.dumps(rec))
    else:
        for arch in space:
            print(arch.id)
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from nasproxy.spaces import Arch
    from nasproxy.train import TrainConfig, train

    arch = Arch.from_id(args.arch)
    data = _load_data(args)
    cfg = TrainConfig(
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    record = train(arch, data, None, cfg)
    print(json.dumps(record.to_dict(), indent=2))
    if record.status == "failed":
        raise IncompleteError(f"training failed: {record.reason}")
    return 0


def cmd_build_proxy(args: argparse.Namespace) -> int:
    from nasproxy.data import default_data_root
    from nasproxy.proxies.base import ProxyOptions
    from nasproxy.proxies.build import (
        build_proxy,
        default_proxy_path,
        indices_method,
        write_proxy,
    )
    from nasproxy.scoring import ScoringConfig

    if (args.method is None) == (args.from_indices is None):
        raise NasproxyError("give either --method or --from-indices")
    per_class = args.per_class
    if per_class is None and args.epsilon is None and args.from_indices is None:
        per_class = 100  # --from-indices: the file's own count per class
    backbone = {"seed": args.seed if args.backbone_seed is None else args.backbone_seed}
    if args.backbone is not None:
        backbone["backbone"] = args.backbone
    if args.backbone_epochs is not None:
        backbone["epochs"] = args.backbone_epochs
    if args.out is not None:
        check_output_file(args.out, "proxy file")  # before the dataset and the scoring run
    data = _load_data(args)
    method = args.method
    if args.from_indices is not None:
        method, per_class = indices_method(args.from_indices, data, per_class)
    label = "from-indices" if args.from_indices is not None else args.method
    out = args.out or default_proxy_path(args.dataset, label, per_class, args.seed, args.epsilon)
    check_output_file(out, "proxy file")  # before the scoring run, not after it
    record = build_proxy(
        data,
        method,
        per_class,
        args.seed,
        cache_dir=args.data_root or default_data_root(),
        scoring=ScoringConfig(**backbone),
        options=ProxyOptions(
            solver=args.solver,
            objective=args.objective,
            project_dim=args.project_dim,
            epsilon=args.epsilon,
            min_per_class=args.min_per_class,
            head_l2=args.head_l2,
        ),
        device=args.device,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        measure=args.measure_epsilon,
    )
    path = write_proxy(record, out)
    if record["epsilon"] is None:
        epsilon = "epsilon not measured (no scoring run cached; --measure-epsilon makes one)"
    else:
        epsilon = f"epsilon {record['epsilon']:.4g} (from {record['epsilon_from']})"
    print(f"{path}: {record['n_images']} images, {epsilon}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from nasproxy.search import FastChoice, SearchConfig, run_search
    from nasproxy.train import TrainConfig

    seeds = parse_seeds(args.seeds)
    train = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    cfg = SearchConfig(
        name=args.name,
        dataset=args.dataset,
        proxies=tuple(args.proxy),
        whole=args.whole,
        whole_per_class=args.whole_per_class,
        space=args.space,
        archs=tuple(args.archs),
        sample=args.sample,
        sample_seed=args.sample_seed,
        whole_archs=tuple(args.whole_archs),
        whole_sample=args.whole_sample,
        whole_top=args.whole_top,
        whole_by=args.by,
        seeds=seeds,
        train=replace(train, augment=not args.no_augment),
        data_root=args.data_root,
        val_fraction=args.val_fraction,
        split_seed=args.split_seed,
        results_dir=args.results_dir,
        trial_size=args.trial_size,
        gpus_per_trial=args.gpus_per_trial,
        cpus_per_trial=args.cpus_per_trial,
        address=args.address,
        runner=args.runner,
        max_failures=args.max_failures,
        reuse_actors=not args.no_reuse_actors,
        fresh=args.fresh,
        fuse=args.fuse,
        max_stack=args.max_stack,
        fast=FastChoice(
            rng=args.rng,
            bf16=args.bf16,
            channels_last=args.channels_last,
            cuda_graphs=args.cuda_graphs,
        ),
        rebuild_manifest=args.rebuild_manifest,
    )
    with SearchProgress() as progress:
        exp_dir = run_search(cfg, progress=progress)
    print(exp_dir)
    if cfg.whole_top:
        from nasproxy.report import outcome_lines

        for line in outcome_lines(exp_dir):
            print(line)
    _refuse_failed_units(exp_dir)
    return 0


def _refuse_failed_units(exp_dir: Path) -> None:
    """Exit non-zero (``IncompleteError``) when the experiment's table holds failed units."""
    from nasproxy.results import read_trials

    status = read_trials(exp_dir)["status"]
    failed = int((status == "failed").sum())
    if failed:
        raise IncompleteError(
            f"{failed} of {len(status)} work units failed (their reasons are in "
            f"{exp_dir / 'trials.csv'}); run the same command again to retry them"
        )


class SearchProgress:
    """Search progress on stderr: a live bar on a terminal (rich), else a plain line a unit.

    A context manager, so that the bar is closed before the command's last line.
    """

    def __init__(self, console: Console | None = None):
        self.console = console or Console(stderr=True, highlight=False)
        self.bar: RichProgress | None = None
        self.task: TaskID | None = None

    def __enter__(self) -> SearchProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def __call__(self, event: SearchEvent) -> None:
        if not self.console.is_terminal:
            self._plain(event)
            return
        if self.bar is None:
            self.bar = RichProgress(
                TextColumn("[bold]nasproxy search"),
                BarColumn(bar_width=30),
                MofNCompleteColumn(),
                TextColumn("failed {task.fields[failed]} diverged {task.fields[diverged]}"),
                TextColumn("ETA {task.fields[eta]}"),
                console=self.console,
            )
            self.task = self.bar.add_task("", total=event.total, failed=0, diverged=0, eta="")
            self.bar.start()
        assert self.task is not None
        lines = [f"nasproxy search: {event.message}"] if event.message else []
        if event.row is not None and event.row["status"] != "ok":
            lines.append(_unit_line(event))  # failures and divergences stay visible
        for line in lines:  # printed above the bar, verbatim (a reason may hold brackets)
            self.bar.console.print(line, markup=False, highlight=False)
        self.bar.update(
            self.task,
            completed=event.done,
            total=event.total,
            failed=event.failed,
            diverged=event.diverged,
            eta=_eta(event),
        )

    def _plain(self, event: SearchEvent) -> None:
        if event.message:
            print(f"nasproxy search: {event.message}", file=sys.stderr, flush=True)
        if event.row is not None:
            print(_unit_line(event), file=sys.stderr, flush=True)


def _unit_line(event: SearchEvent) -> str:
    """One finished work unit and the counts so far, as one line."""
    row = event.row
    assert row is not None
    acc = f"val {row['val_acc']:.3f}" if row["status"] == "ok" else row["reason"][:60]
    width = len(str(event.total))
    return (
        f"[{event.done:>{width}}/{event.total}] {row['status']:<8} {row['arch']} "
        f"{row['train_set']} s{row['seed']} {acc} | failed {event.failed} "
        f"diverged {event.diverged} | ETA {_eta(event)}"
    )


def _eta(event: SearchEvent) -> str:
    return "--:--:--" if event.eta_s is None else _hms(event.eta_s)


def cmd_report(args: argparse.Namespace) -> int:
    from nasproxy.report import format_summary, make_report
    from nasproxy.results import experiment_dir

    exp_dir = experiment_dir(args.results_dir, args.experiment)  # never a folder outside DIR
    result = make_report(exp_dir, args.top_k, args.n_boot)
    print(format_summary(result))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from nasproxy.pipeline import run_pipeline
    from nasproxy.presets import parse_overrides
    from nasproxy.report import format_summary

    preset = parse_overrides(PRESETS[args.preset], args.set)
    _seeds_notice(args.set)
    with SearchProgress() as search_progress:
        result = run_pipeline(
            preset,
            args.name or args.preset,
            results_dir=args.results_dir,
            data_root=args.data_root,
            device=args.device,
            fresh=args.fresh,
            search_options={"address": args.address},
            progress=lambda line: print(f"nasproxy run: {line}", file=sys.stderr, flush=True),
            search_progress=search_progress,
        )
    print(format_summary(result))
    print(f"\nThe report is in {result.paths['md']}")
    _refuse_failed_units(result.exp_dir)
    return 0


def _seeds_notice(overrides: Sequence[str]) -> None:
    """One line where ``--set seeds=N`` now means N seeds, as ``search --seeds N`` does."""
    for item in overrides:
        key, _, value = item.partition("=")
        if key.strip() == "seeds" and "," not in value:
            n = int(value)
            print(
                f"nasproxy: notice: seeds={n} now means seeds 0..{n - 1} (a count, as search "
                f"--seeds); write seeds={n}, for seed {n} alone",
                file=sys.stderr,
            )


def _positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (else a usage error, exit code 2)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"want a positive integer, got {text!r}")
    return value


def _hms(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasproxy",
        description="How much of a dataset can a neural-architecture search throw away?",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("space", help="list the architectures of a search space")
    p.add_argument("space", help="a space name (e.g. convnet720) or a .yaml path")
    p.add_argument("--json", action="store_true", help="one JSON record per architecture")
    p.add_argument("--image-size", type=_positive_int, default=32)
    p.add_argument("--in-channels", type=_positive_int, default=3)
    p.add_argument("--num-classes", type=_positive_int, default=10)
    p.set_defaults(handler=cmd_space)

    p = sub.add_parser("train", help="train one architecture and print its record")
    p.add_argument("--arch", required=True, help="an id, e.g. w32-d3-relu-instancenorm-avgpooling")
    _add_dataset_args(p)
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser("build-proxy", help="select a class-balanced proxy training set")
    p.add_argument(
        "--method",
        default=None,
        help="influence, random, herding, forgetting, el2n, grand, kcenter, ccs, entropy, "
        "an installed plug-in (entry-point group nasproxy.methods), or MODULE:FUNCTION "
        "(or FILE.py:FUNCTION) taking the selection context and returning train indices",
    )
    p.add_argument(
        "--from-indices",
        default=None,
        metavar="FILE",
        help="instead of --method: wrap train-split indices chosen by any other tool "
        "(.npy, .npz, .json list, or text; --per-class defaults to the file's count per "
        "class) into a proxy file",
    )
    p.add_argument(
        "--per-class",
        type=int,
        default=None,
        help="images kept per class (default 100; with --from-indices, the file's)",
    )
    _add_dataset_args(p)
    p.add_argument("--seed", type=int, default=0, help="selection seed (and backbone seed)")
    p.add_argument("--out", default=None, help="default results/proxies/NAME-METHOD-K-sSEED.json")
    p.add_argument(
        "--backbone",
        default=None,
        help="scoring network: a ConvNet id (default w128-d4-relu-instancenorm-avgpooling, "
        "512-d features on 32x32 images) or resnet18 (CIFAR ResNet-18)",
    )
    p.add_argument("--backbone-epochs", type=int, default=None, help="scoring run (default 50)")
    p.add_argument("--backbone-seed", type=int, default=None, help="default: --seed")
    p.add_argument(
        "--solver",
        default="greedy",
        help="influence: greedy (default), relax, exact, exact-l1, exact-linf",
    )
    p.add_argument("--objective", default="removed-sum", help="influence: removed-sum, kept-mean")
    p.add_argument("--project-dim", type=int, default=None, help="influence: project S to k dims")
    p.add_argument(
        "--epsilon",
        type=float,
        default=None,
        help="influence: remove as many as ||sum of removed S_i|| <= E allows, instead of "
        "--per-class (classes are then unbalanced)",
    )
    p.add_argument(
        "--min-per-class", type=int, default=0, help="with --epsilon: keep at least this many"
    )
    p.add_argument("--head-l2", type=float, default=None, help="default: backbone weight decay")
    p.add_argument(
        "--measure-epsilon",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="measure epsilon even when the method needs no scoring run (trains one unless "
        "cached); default: measure it when the method made or a cache holds one",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.set_defaults(handler=cmd_build_proxy)

    p = sub.add_parser(
        "search",
        help="train every architecture of a space on proxy sets and the whole train split",
    )
    p.add_argument("--space", default="convnet720", help="a space name or a .yaml path")
    _add_dataset_args(p)
    p.add_argument(
        "--proxy",
        action="append",
        default=[],
        metavar="[NAME=]PATH",
        help="a proxy file (repeatable); its train_set name is its method, or NAME",
    )
    p.add_argument("--whole", action="store_true", help="also train on the whole train split")
    p.add_argument(
        "--whole-per-class",
        type=int,
        default=None,
        metavar="N",
        help="with --whole: use a seeded class-balanced subset of N per class as the reference",
    )
    p.add_argument("--name", required=True, help="experiment name: results go to DIR/NAME")
    p.add_argument("--results-dir", default="results", metavar="DIR")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument(
        "--seeds", default="1", help="a count N (seeds 0..N-1) or a list: 0,3,7 (one seed: 5,)"
    )
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--no-augment", action="store_true", help="no random crop and flip")
    p.add_argument(
        "--archs",
        action="append",
        default=[],
        metavar="PATTERN",
        help="architectures whose id matches a glob (w32-*-relu-*), or a regex with a re: "
        "prefix (repeatable; default all)",
    )
    p.add_argument("--sample", type=int, default=None, help="a stratified sample of N archs")
    p.add_argument("--sample-seed", type=int, default=0)
    p.add_argument(
        "--whole-archs",
        action="append",
        default=[],
        metavar="PATTERN",
        help="the whole split's own architectures, as --archs (default: the proxies')",
    )
    p.add_argument(
        "--whole-sample",
        type=int,
        default=None,
        metavar="N",
        help="a stratified sample of N of the whole split's architectures, as --sample",
    )
    p.add_argument(
        "--whole-top",
        type=int,
        default=None,
        metavar="K",
        help="after the proxy units, train the K best by mean proxy validation accuracy on "
        "the whole split too (a tie at the cut goes to the smaller id)",
    )
    p.add_argument(
        "--by",
        default="all",
        metavar="PROXY",
        help="with --whole-top: the proxy (training-set name) whose top K are confirmed, or "
        "all (default): the union of every proxy's top K",
    )
    p.add_argument(
        "--trial-size",
        type=int,
        default=16,
        help="work units (arch x set x seed) per Tune trial (default 16)",
    )
    p.add_argument(
        "--gpus-per-trial",
        type=float,
        default=None,
        help="GPU share of a trial, e.g. 0.25 (default 0.25 with GPUs, else 0)",
    )
    p.add_argument("--cpus-per-trial", type=float, default=1.0)
    p.add_argument(
        "--address", default=None, help="join a Ray cluster (auto or host:port); default local"
    )
    p.add_argument(
        "--runner",
        choices=("ray", "local"),
        default="ray",
        help="run trials on Ray Tune (default) or one after another in this process (no Ray)",
    )
    p.add_argument("--max-failures", type=int, default=2, help="retries of a crashed trial")
    p.add_argument(
        "--no-reuse-actors",
        action="store_true",
        help="start a fresh worker for every trial (default: reuse finished ones)",
    )
    p.add_argument("--fresh", action="store_true", help="delete this experiment and start over")
    _add_fuse_flags(p)
    p.add_argument(
        "--rebuild-manifest",
        action="store_true",
        help="write a damaged or missing manifest.json anew from this command (the one that "
        "made the experiment), keeping and checking the stored unit files",
    )
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser("report", help="Table 1 (md, csv, tex) and plots from a finished search")
    p.add_argument("experiment", metavar="EXP", help="experiment name (a folder in DIR)")
    p.add_argument("--results-dir", default="results", metavar="DIR")
    p.add_argument("--top-k", type=int, default=10, help="Table 1's top-k by proxy (default 10)")
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "run",
        help="build every proxy, search, report: the whole experiment in one command",
        description="Runs a preset (docs/search.md lists them and their fields); override any "
        "field with --set KEY=VALUE (lists comma-separated, 'none' for none).",
    )
    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset field (repeatable): "
        + ", ".join(f.name for f in dataclasses.fields(Preset)),
    )
    p.add_argument("--name", default=None, help="experiment name (default: the preset's)")
    p.add_argument("--results-dir", default="results", metavar="DIR")
    p.add_argument(
        "--data-root",
        default=None,
        help="download and cache folder (default $NASPROXY_DATA_ROOT or ~/.cache/nasproxy)",
    )
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")
    p.add_argument(
        "--address", default=None, help="search on a Ray cluster (auto or host:port); default local"
    )
    p.add_argument("--fresh", action="store_true", help="delete this experiment and start over")
    p.set_defaults(handler=cmd_run)
    return parser


def _add_fuse_flags(p: argparse.ArgumentParser) -> None:
    """The search's stacked-training flags (docs/search.md, "Fused training")."""
    p.add_argument(
        "--fuse",
        choices=("auto", "on", "off"),
        default="auto",
        help="train the units of one architecture and training-set size together as one "
        "stacked network (auto: when the trials have a GPU)",
    )
    p.add_argument(
        "--max-stack",
        type=int,
        default=None,
        metavar="N",
        help="at most N units a stack (default 64; a GPU trial also caps it by its memory)",
    )
    p.add_argument(
        "--rng",
        choices=("exact", "shared"),
        default=None,
        help="stacked random streams: exact (each unit's own, as unfused; default) or shared",
    )
    for flag, what in (
        ("--bf16", "bfloat16 autocast in stacks (default off)"),
        ("--channels-last", "NHWC activations in stacks (default off)"),
        ("--cuda-graphs", "replay each stacked step as a CUDA graph (default on CUDA)"),
    ):
        p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=what)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasproxy`` console script; returns the exit code (docs/running.md)."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", CacheWarning)
            warnings.showwarning = _one_line_warning
            return handler(args)
    except NasproxyError as exc:
        print(f"nasproxy: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("nasproxy: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


def _one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Our own warnings as one line, anyone else's as Python prints them."""
    if issubclass(category, CacheWarning):
        print(f"nasproxy: warning: {message}", file=sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())
