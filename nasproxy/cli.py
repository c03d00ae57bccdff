"""The ``nasproxy`` command: parse arguments, call the library, print. No logic lives here.

Errors become one line and an exit code (``main``); the commands and their exit codes for
users: docs/running.md.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import warnings
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TaskID, TextColumn
from rich.progress import Progress as RichProgress

from nasproxy import settings
from nasproxy.errors import IncompleteError, NasproxyError, NasproxyWarning
from nasproxy.io import check_output_file

if TYPE_CHECKING:
    from nasproxy.data import Dataset
    from nasproxy.search import Progress as SearchEvent
    from nasproxy.search import SearchSettings

Handler = Callable[[argparse.Namespace], int]
EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report a Ctrl-C
# search settings that `run` takes as flags too (the others as --set KEY=VALUE only)
RUN_FLAGS = ("results_dir", "data_root", "address", "fresh")
PER_CLASS = 100  # build-proxy's budget when neither --per-class nor a file's count gives one


DATA_KEYS = ("dataset", "data_root", "val_fraction", "split_seed")  # train's, build-proxy's


def _add_dataset_args(p: argparse.ArgumentParser) -> None:
    """The dataset's flags: the search settings of those names, read and checked as theirs."""
    from nasproxy.search import SearchSettings

    settings.add_flags(p, SearchSettings, DATA_KEYS)


def _data_settings(args: argparse.Namespace) -> SearchSettings:
    """The dataset's settings from its flags (``_add_dataset_args``), checked."""
    from nasproxy.search import SearchSettings

    return settings.from_flags(SearchSettings, args)


def _load_data(cfg: SearchSettings) -> Dataset:
    from nasproxy.data import load_dataset

    return load_dataset(cfg.dataset, cfg.data_root, cfg.val_fraction, cfg.split_seed)


def cmd_space(args: argparse.Namespace) -> int:
    from nasproxy import spaces
    from nasproxy.search.plan import select_archs

    space = spaces.load(args.space, image_size=args.image_size)
    shape = (args.in_channels, args.num_classes, args.image_size)
    if args.describe is not None:
        arch = space.get(str(spaces.parse_arch(args.describe)))
        print(json.dumps(_space_record(space, arch, shape)))
        return 0
    if args.sample is not None and args.sample < 1:
        raise NasproxyError(f"--sample must be at least 1, got {args.sample}")
    archs = select_archs(space, args.archs, args.sample, args.seed)
    for arch in archs:
        if args.json:
            print(json.dumps(_space_record(space, arch, shape)))
        else:
            print(arch.id)
    return 0


def _space_record(space: Any, arch: Any, shape: tuple[int, int, int]) -> dict[str, Any]:
    """One architecture's ``nasproxy space`` record: id, position in the space, fields."""
    from nasproxy import spaces

    return {"id": arch.id, "index": space.index(arch), **spaces.describe(arch, *shape)}


def cmd_train(args: argparse.Namespace) -> int:
    from nasproxy.spaces import parse_arch
    from nasproxy.train import TrainConfig, train

    arch = parse_arch(args.arch)
    data_cfg = _data_settings(args)
    cfg = settings.from_flags(TrainConfig, args, seed=args.seed, device=args.device)
    data = _load_data(data_cfg)
    record = train(arch, data, None, cfg)
    print(json.dumps(record.to_dict(), indent=2))
    if record.status == "failed":
        raise IncompleteError(f"training failed: {record.reason}")
    return 0


def cmd_build_proxy(args: argparse.Namespace) -> int:
    from nasproxy.data import default_data_root
    from nasproxy.proxies import registry
    from nasproxy.proxies.base import ProxyOptions
    from nasproxy.proxies.build import write_proxy
    from nasproxy.proxies.draws import (
        build_draws,
        check_family,
        one_draw_notice,
        parse_budgets,
        plan_draws,
    )
    from nasproxy.proxies.from_indices import indices_method
    from nasproxy.proxies.proxy_file import default_proxy_path
    from nasproxy.scoring import ScoringConfig
    from nasproxy.search.config import parse_seeds

    if (args.method is None) == (args.from_indices is None):
        raise NasproxyError("give either --method or --from-indices")
    if args.seed is not None and args.seeds is not None:
        raise NasproxyError("give either --seed or --seeds (the draws), not both")
    seeds = parse_seeds(args.seeds) if args.seeds is not None else (args.seed or 0,)
    if args.backbone_seed is not None and len(seeds) > 1:
        raise NasproxyError(
            "--backbone-seed would give every draw one scoring run; with --seeds each draw's "
            "scoring run is seeded by its seed"
        )
    budgets = parse_budgets(args.per_class) if args.per_class is not None else None
    check_family(budgets or (), seeds)  # a repeat, before the dataset loads
    data_cfg = _data_settings(args)
    options = settings.from_flags(ProxyOptions, args)
    own_seed = {} if args.backbone_seed is not None else {"backbone_seed": seeds[0]}
    scoring = settings.from_flags(ScoringConfig, args, **own_seed)  # its seed: the draw's
    if budgets is None and options.epsilon is None and args.from_indices is None:
        budgets = (PER_CLASS,)  # --from-indices: the file's own count per class
    if args.from_indices is not None and budgets is not None and len(budgets) > 1:
        raise NasproxyError("--from-indices keeps one budget (the file's); give one --per-class")
    if args.out is not None:
        check_output_file(args.out, "proxy file")  # before the dataset and the scoring run
    data = _load_data(data_cfg)
    if args.from_indices is not None:
        method, per_class = indices_method(args.from_indices, data, (budgets or (None,))[0])
        budgets = (per_class,)
    else:
        method = registry.resolve(args.method)
    plan = plan_draws([method], budgets or (None,), seeds)
    check_family([b for b in budgets or () if b is not None], seeds, data)
    if args.out is not None and len(plan) > 1:
        raise NasproxyError(
            f"--out names one file, this builds {len(plan)} proxies; leave it out (each "
            "goes to results/proxies/NAME-METHOD-K-sSEED.json)"
        )
    label = "from-indices" if args.from_indices is not None else args.method
    outs = [
        Path(args.out)
        if args.out is not None
        else default_proxy_path(data_cfg.dataset, label, d.per_class, d.seed, options.epsilon)
        for d in plan
    ]
    for out in outs:
        check_output_file(out, "proxy file")  # before the scoring run, not after it
    notice = one_draw_notice(method, seeds)
    if notice is not None:
        print(f"nasproxy: notice: {notice}", file=sys.stderr, flush=True)
    built = build_draws(
        data,
        method,
        budgets or (None,),
        seeds,
        cache_dir=data_cfg.data_root or default_data_root(),
        scoring=scoring,
        options=options,
        device=args.device,
        progress=lambda line: print(line, file=sys.stderr, flush=True),
        measure=args.measure_epsilon,
        seed_scoring=args.backbone_seed is None,  # the scoring run's seed: the draw's
    )
    for out, (_, record) in zip(outs, built, strict=True):
        path = write_proxy(record, out)
        if record["epsilon"] is None:
            why = "no scoring run cached; --measure-epsilon makes one"
            if args.measure_epsilon is False:
                why = "--no-measure-epsilon"
            epsilon = f"epsilon not measured ({why})"
        else:
            epsilon = f"epsilon {record['epsilon']:.4g} (from {record['epsilon_from']})"
        print(f"{path}: {record['n_images']} images, {epsilon}")
    return 0


def cmd_search(args: argparse.Namespace) -> int:
    from nasproxy.results import read_manifest
    from nasproxy.search import SearchConfig, run_search

    cfg = settings.from_flags(SearchConfig, args)
    with SearchProgress() as progress:
        try:
            exp_dir = run_search(cfg, progress=progress)
        except settings.SettingError as exc:
            raise exc.named(settings.flag_names(SearchConfig)) from None
    print(exp_dir)
    if "whole_top" in (read_manifest(exp_dir) or {}):  # also when a resume kept it as recorded
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
    result = make_report(exp_dir, args.top_k, args.n_boot, reference=args.reference)
    print(format_summary(result))
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from nasproxy.pipeline import run_pipeline
    from nasproxy.presets import PRESETS, Preset
    from nasproxy.report import format_summary
    from nasproxy.search import SearchSettings

    overrides = settings.parse_overrides(Preset, args.set)  # each --set item, parsed once
    preset = settings.replace_settings(PRESETS[args.preset], overrides)
    _seeds_notice(args.set, overrides)
    given = settings.given(args, SearchSettings)
    # a refusal names each setting as it was given: a flag, else a --set key
    names = {k: v for k, v in settings.flag_names(SearchSettings).items() if k in given}
    twice = [key for key in given if key in overrides]
    if twice:
        raise NasproxyError(
            f"{', '.join(names[k] for k in twice)} and --set {', '.join(twice)} give the same "
            "setting: give it once"
        )
    try:
        flags = settings.parse_values(SearchSettings, given)
        search = settings.replace_settings(preset.search, flags)
        preset = dataclasses.replace(preset, search=search)
        with SearchProgress() as search_progress:
            result = run_pipeline(
                preset,
                args.name or args.preset,
                device=args.device,
                progress=lambda line: print(f"nasproxy run: {line}", file=sys.stderr, flush=True),
                search_progress=search_progress,
            )
    except settings.SettingError as exc:
        raise exc.named(names) from None
    print(format_summary(result))
    print(f"\nThe report is in {result.paths['md']}")
    _refuse_failed_units(result.exp_dir)
    return 0


def cmd_reference_import_nats(args: argparse.Namespace) -> int:
    from nasproxy.natsbench import import_nats

    def progress(done: int, total: int) -> None:
        if done % 1000 == 0 or done == total:
            print(f"nasproxy reference: {done}/{total} cells read", file=sys.stderr, flush=True)

    path = import_nats(args.path, args.dataset, args.epochs, args.out, progress)
    print(f"wrote {path}")
    return 0


def cmd_units_pack(args: argparse.Namespace) -> int:
    from nasproxy.units import pack

    n = pack(args.results_dir, args.experiments, args.out)
    print(f"packed {n} unit files into {args.out}")
    return 0


def cmd_units_unpack(args: argparse.Namespace) -> int:
    from nasproxy.units import unpack

    for exp, n in unpack(args.archive, args.results_dir, replace=args.replace).items():
        print(f"{args.results_dir / exp}: {n} unit files, trials table rebuilt")
    return 0


def cmd_units_rates(args: argparse.Namespace) -> int:
    import time

    from nasproxy.units import rates

    print("\n".join(rates(args.results_dir, args.experiments, args.since, time.time())))
    return 0


def cmd_units_check_data(args: argparse.Namespace) -> int:
    from nasproxy.units import check_data

    fingerprint = check_data(args.dataset, args.proxies, args.data_root)
    print(f"{args.dataset}: fingerprint {fingerprint}, as {len(args.proxies)} proxy files")
    return 0


def cmd_units_has_gpu_bench(args: argparse.Namespace) -> int:
    from nasproxy.units import has_gpu_bench

    found = has_gpu_bench(args.folder)
    print(", ".join(map(str, found)) or f"no CUDA sweep benchmark under {args.folder}")
    return 0 if found else 1


def cmd_units_shapes(args: argparse.Namespace) -> int:
    from nasproxy.units import shape_globs

    print("\n".join(shape_globs(args.space, args.n, args.seed, args.within)))
    return 0


def _seeds_notice(items: Sequence[str], overrides: Mapping[str, Any]) -> None:
    """One line where ``--set seeds=N`` (the seeds the run takes: the last such item, as
    ``overrides`` parsed it) is a count, now meaning N seeds as ``search --seeds N`` does."""
    seeds = overrides.get("seeds")
    written = [v for k, _, v in (i.partition("=") for i in items) if k.strip() == "seeds"]
    if seeds is not None and "," not in written[-1]:
        n = len(seeds)
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


class LazyParser(argparse.ArgumentParser):
    """A command's parser whose ``flags`` function adds its arguments on first use: the
    search's flags come from its config, whose import (torch) other commands need not wait for.
    """

    def __init__(
        self, *args, flags: Callable[[argparse.ArgumentParser], None] | None = None, **kwargs
    ) -> None:
        super().__init__(*args, **kwargs)
        self._pending = flags

    def complete(self) -> LazyParser:
        """Add the pending arguments, if any (idempotent)."""
        if self._pending is not None:
            flags, self._pending = self._pending, None
            flags(self)
        return self

    def parse_known_args(self, args=None, namespace=None):  # type: ignore[override]
        self.complete()
        return super().parse_known_args(args, namespace)


def _search_flags(p: argparse.ArgumentParser) -> None:
    """One flag a setting of the sweep (``SearchConfig``'s fields), the experiment's first."""
    from nasproxy.search import SearchConfig

    first = ("name", "proxies")
    settings.add_flags(p, SearchConfig, first)
    settings.add_flags(
        p, SearchConfig, [k for k in settings.leaves(SearchConfig) if k not in first]
    )


def _option_flags(p: argparse.ArgumentParser) -> None:
    """The dataset's flags, one flag a setting of the scoring run (``ScoringConfig``), and
    one an option of the influence method and of its head (``ProxyOptions``)."""
    from nasproxy.proxies.base import ProxyOptions
    from nasproxy.scoring import ScoringConfig

    _add_dataset_args(p)
    settings.add_flags(p, ScoringConfig)
    settings.add_flags(p, ProxyOptions)


def _train_flags(p: argparse.ArgumentParser) -> None:
    """The architecture, the dataset, and one flag a training setting (``TrainConfig``)."""
    from nasproxy.train import TrainConfig

    p.add_argument(
        "--arch",
        required=True,
        help="an id, e.g. w32-d3-relu-instancenorm-avgpooling or c3-no.c3-sk.c3.ap",
    )
    _add_dataset_args(p)
    settings.add_flags(p, TrainConfig, defaults={"epochs": 10})
    p.add_argument("--seed", type=int, default=0, help="training seed (default %(default)s)")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def _run_flags(p: argparse.ArgumentParser) -> None:
    """The preset, its ``--set`` keys (every setting of ``Preset``), and the search's settings
    of where and how to run, as flags too."""
    from nasproxy.presets import PRESETS, Preset
    from nasproxy.search import SearchSettings

    p.add_argument("--preset", choices=sorted(PRESETS), default="demo")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset setting (repeatable; as the search or build-proxy flag "
        "of that name, e.g. trial_size=4 is --trial-size 4): " + ", ".join(settings.leaves(Preset)),
    )
    p.add_argument("--name", default=None, help="experiment name (default: the preset's)")
    settings.add_flags(p, SearchSettings, RUN_FLAGS)
    p.add_argument("--device", default="auto", help="auto, cpu, cuda, cuda:1, ...")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nasproxy",
        description="How much of a dataset can a neural-architecture search throw away?",
    )
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=LazyParser
    )

    p = sub.add_parser("space", help="list the architectures of a search space")
    p.add_argument("space", help="a space name (e.g. convnet720) or a .yaml path")
    p.add_argument("--json", action="store_true", help="one JSON record per architecture")
    p.add_argument(
        "--archs",
        action="append",
        default=[],
        metavar="PATTERN",
        help="only the architectures matching a glob (or re:REGEX) on any of their names",
    )
    p.add_argument("--sample", type=int, default=None, metavar="N", help="a stratified sample")
    p.add_argument("--seed", type=int, default=0, help="the sample's seed")
    p.add_argument(
        "--describe", default=None, metavar="ID", help="one architecture's record (either form)"
    )
    p.add_argument("--image-size", type=_positive_int, default=32)
    p.add_argument("--in-channels", type=_positive_int, default=3)
    p.add_argument("--num-classes", type=_positive_int, default=10)
    p.set_defaults(handler=cmd_space)

    p = sub.add_parser(
        "train", help="train one architecture and print its record", flags=_train_flags
    )
    p.set_defaults(handler=cmd_train)

    p = sub.add_parser(
        "build-proxy", help="select a class-balanced proxy training set", flags=_option_flags
    )
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
        default=None,
        metavar="K[,K...]",
        help=f"images kept per class, or a family of budgets: 10,50,100,500 (default "
        f"{PER_CLASS}; with --from-indices, the file's)",
    )
    p.add_argument(
        "--seed", type=int, default=None, help="selection seed (and backbone seed; default 0)"
    )
    p.add_argument(
        "--seeds",
        default=None,
        metavar="S[,S...]",
        help="draws of the proxy, as search --seeds: a count N (seeds 0..N-1) or a list "
        "(0,3,7; one seed: 5,); one build per seed, each with its own scoring run (a method "
        "with no randomness builds one)",
    )
    p.add_argument("--out", default=None, help="default results/proxies/NAME-METHOD-K-sSEED.json")
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
        flags=_search_flags,
    )
    p.set_defaults(handler=cmd_search)

    p = sub.add_parser("report", help="Table 1 (md, csv, tex) and plots from a finished search")
    p.add_argument("experiment", metavar="EXP", help="experiment name (a folder in DIR)")
    p.add_argument("--results-dir", default="results", metavar="DIR")
    p.add_argument(
        "--top-k", type=int, default=10, help="Table 1's top-k by proxy (default %(default)s)"
    )
    p.add_argument("--n-boot", type=int, default=1000, help="bootstrap resamples for the CIs")
    p.add_argument(
        "--reference",
        default=None,
        metavar="FILE",
        help="a published whole-set reference (nasproxy reference) that stands in for the "
        "whole split, labelled as external",
    )
    p.set_defaults(handler=cmd_report)

    p = sub.add_parser(
        "run",
        help="build every proxy, search, report: the whole experiment in one command",
        description="Runs a preset (docs/search.md lists them and their fields); override any "
        "field with --set KEY=VALUE (lists comma-separated, 'none' for none).",
        flags=_run_flags,
    )
    p.set_defaults(handler=cmd_run)

    p = sub.add_parser(
        "reference",
        help="published whole-set references for `report --reference`",
        description="Write a whole-set reference file (architecture -> published accuracy, "
        "with its protocol) for `nasproxy report --reference` (docs/search.md).",
    )
    _add_reference_commands(p)

    p = sub.add_parser(
        "units",
        help="a sweep's unit files as one archive, its rates, checks before a GPU run",
        description="Unit files of sweeps on a GPU host: pack them into one tar.gz, unpack "
        "it (trials rebuilt), measure the rates of a running sweep, and check a run before "
        "it starts (docs/search.md).",
    )
    _add_units_commands(p)
    return parser


def _add_reference_commands(parent: argparse.ArgumentParser) -> None:
    """The subcommands of ``nasproxy reference`` (the library: ``nasproxy.reference``)."""
    sub = parent.add_subparsers(dest="reference_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser(
        "import-nats",
        help="a NATS-Bench topology benchmark directory -> a reference file",
        description="Reads a downloaded NATS-Bench topology benchmark directory through its "
        "official package (pip install 'nasproxy[nats]'; the benchmark's files are pickles, "
        "read only here, on this request) and writes its accuracies as a reference file.",
    )
    p.add_argument("path", type=Path, metavar="PATH", help="e.g. NATS-tss-v1_0-3ffb9-simple")
    p.add_argument("--dataset", required=True, choices=("cifar10", "cifar100"))
    p.add_argument(
        "--epochs", type=_positive_int, required=True, help="the benchmark's schedule: 12 or 200"
    )
    p.add_argument(
        "-o",
        "--out",
        type=Path,
        default=None,
        metavar="FILE",
        help="default nats-tss-DATASET-EPOCHSep.csv in the current folder",
    )
    p.set_defaults(handler=cmd_reference_import_nats)


def _add_units_commands(parent: argparse.ArgumentParser) -> None:
    """The subcommands of ``nasproxy units`` (the library is ``nasproxy.units``)."""
    sub = parent.add_subparsers(dest="units_command", required=True, metavar="SUBCOMMAND")
    p = sub.add_parser("pack", help="experiments' manifests and unit files -> one tar.gz")
    p.add_argument("experiments", nargs="+", metavar="EXP")
    p.add_argument("--results-dir", type=Path, default=Path("results"), metavar="DIR")
    p.add_argument("--out", type=Path, required=True, metavar="ARCHIVE")
    p.set_defaults(handler=cmd_units_pack)
    p = sub.add_parser("unpack", help="a packed tar.gz -> DIR/EXP/..., trials rebuilt")
    p.add_argument("archive", type=Path)
    p.add_argument("--results-dir", type=Path, default=Path("results"), metavar="DIR")
    p.add_argument(
        "--replace",
        action="store_true",
        help="take the archive's unit where a stored one differs (default: refuse, naming it)",
    )
    p.set_defaults(handler=cmd_units_unpack)
    p = sub.add_parser("rates", help="measured rates of the units finished since a time")
    p.add_argument("experiments", nargs="+", metavar="EXP")
    p.add_argument("--results-dir", type=Path, default=Path("results"), metavar="DIR")
    p.add_argument("--since", type=float, required=True, help="seconds since the epoch")
    p.set_defaults(handler=cmd_units_rates)
    p = sub.add_parser("check-data", help="the dataset's fingerprint against proxy files")
    p.add_argument("proxies", nargs="*", type=Path)
    p.add_argument("--dataset", required=True)
    p.add_argument("--data-root", default=None)
    p.set_defaults(handler=cmd_units_check_data)
    p = sub.add_parser("has-gpu-bench", help="exit 0 when a CUDA sweep benchmark exists")
    p.add_argument("folder", type=Path)
    p.set_defaults(handler=cmd_units_has_gpu_bench)
    p = sub.add_parser("shapes", help="--archs globs of N stratified shapes, all activations")
    p.add_argument("n", type=int)
    p.add_argument("--space", default="convnet720")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--within", action="append", default=[], help="--archs patterns to keep")
    p.set_defaults(handler=cmd_units_shapes)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``nasproxy`` console script; returns the exit code (docs/running.md)."""
    args = build_parser().parse_args(argv)
    handler: Handler = args.handler
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", NasproxyWarning)
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
    if issubclass(category, NasproxyWarning):
        print(f"nasproxy: warning: {message}", file=sys.stderr, flush=True)
    else:
        sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


if __name__ == "__main__":
    sys.exit(main())
