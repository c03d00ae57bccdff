"""nasproxy.settings: settings declared once, as fields; a `search` flag and a `run --set`
item of every setting give the same value, and a bad one is one line."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest

import nasproxy.pipeline as pipeline_module
import nasproxy.search as search_module
import nasproxy.search.sweep as sweep_module
from nasproxy import settings
from nasproxy.cli import build_parser, main
from nasproxy.errors import NasproxyError
from nasproxy.search import SearchConfig, SearchSettings
from nasproxy.settings import setting

# Fields that are deliberately no setting: a search sets them per unit and per trial.
INTERNAL = {"train.seed", "train.device"}
# Settings of `search` that `run` makes itself: its own --name, and the proxy files it builds.
MADE_BY_RUN = {"name", "proxies"}
SPACE_FILE = str(Path(__file__).resolve().parent.parent / "search_spaces" / "convnet720.yaml")


def _field_paths(cls: type, prefix: str = "") -> list[str]:
    """Every field of ``cls``, nested dataclasses expanded (``train.lr``), by plain
    introspection rather than by ``nasproxy.settings``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if dataclasses.is_dataclass(hints[f.name]):
            out += _field_paths(hints[f.name], f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _subparser(name: str) -> argparse.ArgumentParser:
    sub = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name].complete()  # its flags are added on first use


def _at(obj: object, path: str) -> object:
    return functools.reduce(getattr, path.split("."), obj)


# search flags, the run --set items meaning the same, and the value both must give
SAME = [
    (["--trial-size", "4"], ["trial_size=4"], "trial_size", 4),
    (["--gpus-per-trial", "0"], ["gpus_per_trial=0"], "gpus_per_trial", 0.0),  # local: no GPU
    (["--cpus-per-trial", "2"], ["cpus_per_trial=2"], "cpus_per_trial", 2.0),
    (["--max-failures", "0"], ["max_failures=0"], "max_failures", 0),
    (["--no-reuse-actors"], ["reuse_actors=false"], "reuse_actors", False),
    (["--batch-size", "32"], ["batch_size=32"], "train.batch_size", 32),
    (["--lr", "0.1"], ["lr=0.1"], "train.lr", 0.1),
    (["--momentum", "0.5"], ["momentum=0.5"], "train.momentum", 0.5),
    (["--no-augment"], ["augment=false"], "train.augment", False),
    (["--epochs", "2"], ["epochs=2"], "train.epochs", 2),
    (["--checkpoints", "9,3"], ["checkpoints=3,9"], "train.checkpoints", "3,9,"),
    (["--val-fraction", "0.2"], ["val_fraction=0.2"], "val_fraction", 0.2),
    (["--split-seed", "3"], ["split_seed=3"], "split_seed", 3),
    (["--sample-seed", "5"], ["sample_seed=5"], "sample_seed", 5),
    (["--sample", "3"], ["sample=3"], "sample", 3),
    (["--rebuild-manifest"], ["rebuild_manifest=true"], "rebuild_manifest", True),
    (["--archs", "w32-*", "--archs", "w64-*"], ["archs=w32-*,w64-*"], "archs", ("w32-*", "w64-*")),
    (["--seeds", "3"], ["seeds=3"], "seeds", (0, 1, 2)),
    (["--whole-per-class", "5"], ["whole_per_class=5"], "whole_per_class", 5),
    (["--whole-top", "2"], ["whole_top=2"], "whole_top", 2),
    (["--by", "random"], ["whole_by=random"], "whole_by", "random"),
    (["--whole-archs", "w32-*"], ["whole_archs=w32-*"], "whole_archs", ("w32-*",)),
    (["--whole-sample", "4"], ["whole_sample=4"], "whole_sample", 4),
    (["--grow-whole"], ["grow_whole=true"], "grow_whole", True),
    (
        ["--also", "whole@1", "--also", "random@3"],
        ["epoch_sets=whole@1,random@3"],
        "epoch_sets",
        ("whole@1", "random@3"),
    ),
    (["--equal-compute"], ["equal_compute=true"], "equal_compute", True),
    (["--halving", "2"], ["halving=2"], "halving", 2),
    (["--halving-rungs", "2"], ["halving_rungs=2"], "halving_rungs", 2),
    (["--whole"], ["whole=true"], "whole", True),
    (["--space", SPACE_FILE], [f"space={SPACE_FILE}"], "space", SPACE_FILE),
    (["--weight-decay", "0.001"], ["weight_decay=0.001"], "train.weight_decay", 0.001),
    (["--nesterov"], ["nesterov=true"], "train.nesterov", True),
    (["--runner", "local"], ["runner=local"], "runner", "local"),
    (["--fuse", "off"], ["fuse=off"], "fuse", "off"),
    (["--max-stack", "8"], ["max_stack=8"], "max_stack", 8),
    (["--rng", "shared"], ["rng=shared"], "fast.rng", "shared"),
    (["--bf16"], ["bf16=true"], "fast.bf16", True),
    (["--no-cuda-graphs"], ["cuda_graphs=false"], "fast.cuda_graphs", False),
    (["--channels-last"], ["channels_last=true"], "fast.channels_last", True),
]
# compared elsewhere: run's own flags (the next test); fresh, which run applies itself
# (tests/test_pipeline.py) before a search with fresh=False; and dataset, which run loads
# (another one would be downloaded) before its search
ELSEWHERE = MADE_BY_RUN | {"results_dir", "data_root", "address", "fresh", "dataset"}


def _config_of(argv: list[str], monkeypatch) -> SearchConfig:
    """The SearchConfig that ``nasproxy ARGV`` hands to ``run_search`` (stubbed)."""
    seen: list[SearchConfig] = []

    def capture(cfg, progress=None):
        seen.append(cfg)
        raise NasproxyError("stopped before training")

    monkeypatch.setattr(search_module, "run_search", capture)
    monkeypatch.setattr(pipeline_module, "run_search", capture)
    monkeypatch.setattr(pipeline_module, "build_proxies", lambda *a, **k: [])
    assert main(argv) == 2
    (cfg,) = seen
    return cfg


def test_search_flags_and_run_set_give_the_same_config(tmp_path, cache_root, monkeypatch):
    """Every setting, by a search flag and by a run --set item: the same value."""
    settings_paths = {p for p in _field_paths(SearchConfig) if p not in INTERNAL}
    assert {case[2] for case in SAME} == settings_paths - ELSEWHERE
    common = ["--results-dir", str(tmp_path), "--data-root", str(cache_root)]
    search = ["search", "--name", "e", "--whole", "--proxy", "random=r.json", *common]
    run = ["run", "--preset", "smoke", *common]
    flags = [flag for case in SAME for flag in case[0]]
    items = [f"--set={item}" for case in SAME for item in case[1]]
    by_search = _config_of([*search, *flags], monkeypatch)
    by_run = _config_of([*run, *items], monkeypatch)
    for _, _, path, want in SAME:
        assert _at(by_search, path) == want, path
        assert _at(by_run, path) == want, path
    assert by_search.dataset == "digits" == by_run.dataset  # untouched: the default


@pytest.mark.parametrize(
    "key, value",
    [("results_dir", "elsewhere"), ("data_root", "cache"), ("address", "10.0.0.1:6379")],
)
def test_run_flags_are_the_search_settings_of_that_name(tmp_path, monkeypatch, key, value):
    """``run --results-dir D`` is ``run --set results_dir=D`` is ``search --results-dir D``."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sweep_module, "check_address", lambda address: None)  # no cluster
    flag = "--" + key.replace("_", "-")
    by_flag = _config_of(["run", "--preset", "smoke", flag, value], monkeypatch)
    by_set = _config_of(["run", "--preset", "smoke", f"--set={key}={value}"], monkeypatch)
    by_search = _config_of(["search", "--name", "smoke", "--whole", flag, value], monkeypatch)
    assert by_flag == by_set and getattr(by_flag, key) == value == getattr(by_search, key)


@pytest.mark.parametrize(
    "argv",
    [
        ["search", "--name", "e", "--whole", "--trial-size", "x"],
        ["run", "--preset", "smoke", "--set", "trial_size=x"],
        ["run", "--preset", "smoke", "--set", "bf16=perhaps"],
        ["run", "--preset", "smoke", "--set", "trial_size=0"],
    ],
)
def test_a_bad_value_is_one_line_for_both_commands(tmp_path, capsys, argv):
    assert main([*argv, "--results-dir", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and ("trial" in err or "bf16" in err), err
    assert not list(tmp_path.iterdir())


def test_a_new_setting_needs_only_its_field() -> None:
    @dataclass(frozen=True)
    class WithRunner(SearchSettings):
        runner: str = setting("ray", choices=("ray", "local"), help="how trials run")

    parser = argparse.ArgumentParser()
    settings.add_flags(parser, WithRunner)
    assert (
        settings.from_flags(WithRunner, parser.parse_args(["--runner", "local"])).runner == "local"
    )
    assert settings.from_flags(WithRunner, parser.parse_args([])).runner == "ray"
    assert (
        settings.build(WithRunner, settings.parse_overrides(WithRunner, ["runner=local"])).runner
        == "local"
    )
    with pytest.raises(settings.SettingError, match="--runner must be one of ray, local"):
        settings.from_flags(WithRunner, parser.parse_args(["--runner", "slurm"]))


def test_a_key_twice_in_one_tree_is_refused() -> None:
    @dataclass(frozen=True)
    class Twice(SearchSettings):
        lr: float = setting(0.1, help="shadows train.lr")

    with pytest.raises(TypeError, match="'lr' appears twice"):
        settings.leaves(Twice)


def test_train_flags_are_train_config_s_with_the_command_s_own_epochs_default():
    """`nasproxy train` gets one flag per training setting; its default of 10 epochs (not the
    config's 100) shows in --help and applies when --epochs is not given."""
    from nasproxy.train import TrainConfig

    parser = _subparser("train")
    base = ["--arch", "w8-d1-relu-none-none"]
    args = parser.parse_args(base)
    assert settings.from_flags(TrainConfig, args) == TrainConfig(epochs=10)
    flags = ["--epochs", "2", "--lr", "0.1", "--momentum", "0.5", "--weight-decay", "0"]
    args = parser.parse_args([*base, *flags, "--batch-size", "16", "--no-augment"])
    assert settings.from_flags(TrainConfig, args, seed=3) == TrainConfig(
        epochs=2, lr=0.1, momentum=0.5, weight_decay=0.0, batch_size=16, augment=False, seed=3
    )
    assert "training epochs of every architecture (default 10)" in " ".join(
        parser.format_help().split()
    )


def test_build_proxy_options_are_proxy_options_settings():
    """`nasproxy build-proxy`'s influence options are ``ProxyOptions``'s settings: flags
    give the options the method receives; none given, its defaults."""
    from nasproxy.proxies.base import ProxyOptions

    parser = _subparser("build-proxy")
    args = parser.parse_args(["--method", "influence"])
    assert settings.from_flags(ProxyOptions, args) == ProxyOptions()
    flags = ["--solver", "exact", "--objective", "kept-mean", "--project-dim", "8"]
    flags += ["--epsilon", "0.5", "--min-per-class", "2", "--head-l2", "0.01"]
    args = parser.parse_args(["--method", "influence", *flags])
    assert settings.from_flags(ProxyOptions, args) == ProxyOptions(
        solver="exact", objective="kept-mean", project_dim=8, epsilon=0.5, min_per_class=2,
        head_l2=0.01,
    )  # fmt: skip


def test_build_proxy_scoring_flags_are_run_s_scoring_keys(monkeypatch, cache_root, tmp_path):
    """`nasproxy build-proxy`'s scoring-run flags and `run --set` keys of the same names are
    ``ScoringConfig``'s settings: each gives its value to the scoring run; none given, the
    defaults, with build-proxy's ``--seed`` as the scoring seed."""
    import nasproxy.proxies.build as build_module
    from nasproxy.presets import Preset
    from nasproxy.scoring import ScoringConfig

    seen: list[ScoringConfig] = []

    def capture(*args, scoring, **kwargs):
        seen.append(scoring)
        raise NasproxyError("stopped before the scoring run")

    monkeypatch.setattr(build_module, "build_proxy", capture)
    values = {
        "backbone": "resnet18", "backbone_epochs": 3, "backbone_seed": 2,
        "backbone_batch_size": 16, "backbone_lr": 0.1, "backbone_momentum": 0.5,
        "backbone_weight_decay": 0.0,
    }  # fmt: skip
    want = ScoringConfig(**values, backbone_augment=False)
    flags = [a for k, v in values.items() for a in ("--" + k.replace("_", "-"), str(v))]
    build = ["build-proxy", "--method", "herding", "--data-root", str(cache_root)]
    build += ["--out", str(tmp_path / "p.json"), "--seed", "4"]
    assert main([*build, *flags, "--no-backbone-augment"]) == 2
    assert main(build) == 2
    assert seen == [want, ScoringConfig(backbone_seed=4)]
    items = [f"{k}={v}" for k, v in values.items()] + ["backbone_augment=false"]
    assert settings.build(Preset, settings.parse_overrides(Preset, items)).scoring == want


# --- one validation: every setting with bad values, every path argument ------------------

BAD_VALUES = ("-1", "nan", "inf", "abc", "")
# The bad values a setting takes on purpose, each with what it means; any other bad value of
# any setting (a new one included) must be refused in one line before any work or write.
MEANT = {
    **{(k, ""): "none" for k in ("whole_per_class", "sample", "whole_sample", "whole_top")},
    ("whole", ""): "on when whole_archs, whole_sample or whole_top chooses its architectures",
    **{(k, ""): "none" for k in ("gpus_per_trial", "address", "max_stack", "rng", "bf16")},
    **{(k, ""): "none" for k in ("channels_last", "cuda_graphs", "project_dim", "epsilon")},
    ("head_l2", ""): "none",
    ("budgets", ""): "no family: per_class alone",
    ("proxy_seeds", ""): "no draws: proxy_seed alone",
    ("archs", ""): "every architecture",
    ("whole_archs", ""): "the proxies' architectures",
    ("epoch_sets", ""): "no set with its own epochs",
    **{(k, ""): "none" for k in ("halving", "halving_rungs")},
    **{("data_root", v): "a folder of that name, or the default" for v in BAD_VALUES},
    **{("results_dir", v): "a folder of that name" for v in BAD_VALUES[:4]},
    **{("name", v): "an experiment of that name" for v in ("nan", "inf", "abc")},
    **{(k, "abc"): "checked by the influence method" for k in ("solver", "objective")},
    **{(k, v): "checked by the influence method" for k in ("solver", "objective")
       for v in ("-1", "nan", "inf")},
}  # fmt: skip


class _Reached(Exception):
    """Raised where a command would take its lock and start writing or training."""


def _reach(*args, **kwargs):
    raise _Reached


def _outcome(argv: list[str], tmp_path: Path, capsys) -> str:
    """ "refused" (one line, exit code 2, nothing written) or "reached" (the work's start)."""
    try:
        rc = main(argv)
    except _Reached:
        return "reached"
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if not line.startswith("nasproxy: notice:")]
    assert rc == 2 and len(lines) == 1 and lines[0].startswith("nasproxy: error: "), (argv, err)
    assert not list(tmp_path.iterdir()), argv  # the working folder: results go there
    return "refused"


def _walk(command: list[str], cls: type, keys, as_flag: bool, tmp_path, capsys) -> set:
    """The (key, bad value) pairs that ``command`` accepts, by flag or by --set item, less
    those ``MEANT`` to be: what is left is what the command wrongly accepts."""
    accepted = set()
    for key in keys:
        leaf = settings.leaves(cls)[key]
        if as_flag and leaf.hint in (bool, bool | None):
            continue  # a flag without a value
        for value in BAD_VALUES:
            if (key, value) in MEANT:
                continue
            item = [leaf.flag, value] if as_flag else ["--set", f"{key}={value}"]
            if _outcome([*command, *item], tmp_path, capsys) == "reached":
                accepted.add((key, value))
    return accepted


def test_what_the_walk_lets_through_is_meant(stop_at_work, tmp_path, capsys):
    """The values ``MEANT`` are taken (so the walk below skips nothing it should try)."""
    run = ["run", "--preset", "smoke"]
    for key, value in [("whole_top", ""), ("archs", ""), ("data_root", "abc"), ("rng", "")]:
        assert _outcome([*run, "--set", f"{key}={value}"], tmp_path, capsys) == "reached"


@pytest.fixture
def stop_at_work(monkeypatch, cache_root, tmp_path):
    """Every command stops where its work would start (its lock, its training, its build)."""
    import nasproxy.proxies.build as build_module
    import nasproxy.search.sweep as sweep_module
    import nasproxy.train as train_module

    monkeypatch.setattr(sweep_module, "experiment_lock", _reach)
    monkeypatch.setattr(pipeline_module, "experiment_lock", _reach)
    monkeypatch.setattr(train_module, "train", _reach)
    monkeypatch.setattr(build_module, "build_proxy", _reach)
    monkeypatch.setenv("NASPROXY_DATA_ROOT", str(cache_root))
    monkeypatch.chdir(tmp_path)


def test_every_run_set_key_refuses_its_bad_values_before_any_work(stop_at_work, tmp_path, capsys):
    """``run --set KEY=V`` for every key and a bad V of every kind (negative, NaN, inf, the
    wrong type, empty): refused in one line unless V means something (``MEANT``)."""
    from nasproxy.presets import Preset

    keys = settings.leaves(Preset)
    assert _walk(["run", "--preset", "smoke"], Preset, keys, False, tmp_path, capsys) == set()


def test_every_search_flag_refuses_its_bad_values_before_any_work(stop_at_work, tmp_path, capsys):
    keys = settings.leaves(SearchConfig)
    command = ["search", "--name", "e", "--whole"]
    accepted = _walk(
        command, SearchConfig, [k for k in keys if k != "name"], True, tmp_path, capsys
    )
    accepted |= _walk(["search", "--whole"], SearchConfig, ["name"], True, tmp_path, capsys)
    assert accepted == set()


def test_every_train_and_build_proxy_flag_refuses_its_bad_values(stop_at_work, tmp_path, capsys):
    from nasproxy.proxies.base import ProxyOptions
    from nasproxy.scoring import ScoringConfig
    from nasproxy.train import TrainConfig

    train = ["train", "--arch", "w8-d1-relu-none-none", "--dataset", "digits"]
    accepted = _walk(train, TrainConfig, settings.leaves(TrainConfig), True, tmp_path, capsys)
    build = ["build-proxy", "--method", "influence", "--dataset", "digits"]
    build += ["--out", str(tmp_path / "results" / "p.json")]
    keys = settings.leaves(ProxyOptions)
    accepted |= _walk(build, ProxyOptions, keys, True, tmp_path, capsys)
    keys = settings.leaves(ScoringConfig)
    accepted |= _walk(build, ScoringConfig, keys, True, tmp_path, capsys)
    data = ["dataset", "data_root", "val_fraction", "split_seed"]  # as the search's
    for command in (train, build):
        accepted |= _walk(command[:-2], SearchSettings, data, True, tmp_path, capsys)
        for flag in ("--seed", "--backbone-seed")[: 1 + (command is build)]:
            assert _outcome([*command, flag, "-1"], tmp_path, capsys) == "refused"
    assert accepted == set()
