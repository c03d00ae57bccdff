"""Settings declared once: `search` flags, `run --set` keys and presets from the fields."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import typing
from dataclasses import dataclass

import pytest

import nasproxy.pipeline as pipeline_module
import nasproxy.search as search_module
from nasproxy import settings
from nasproxy.cli import build_parser, main
from nasproxy.errors import NasproxyError
from nasproxy.presets import PRESETS, Preset, parse_overrides
from nasproxy.search import SearchConfig, SearchSettings
from nasproxy.settings import setting

# Fields that are deliberately no setting: a search sets them per unit and per trial.
INTERNAL = {"train.seed", "train.device"}
# Settings of `search` that `run` makes itself: its own --name, and the proxy files it builds.
MADE_BY_RUN = {"name", "proxies"}


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


def test_every_search_setting_has_a_search_flag_and_a_run_set_key() -> None:
    paths = [p for p in _field_paths(SearchConfig) if p not in INTERNAL]
    assert "train.lr" in paths and "fast.bf16" in paths and "trial_size" in paths
    dests = {a.dest for a in _subparser("search")._actions if a.option_strings}
    assert {p.split(".")[-1] for p in paths} <= dests
    for path in paths:
        if path in MADE_BY_RUN:
            continue
        key = path.split(".")[-1]
        try:
            parse_overrides(PRESETS["smoke"], [f"{key}=none"])
        except NasproxyError as exc:  # a bad value is fine here, an unknown key is not
            assert not str(exc).startswith("bad override"), key


# search flags, the run --set items meaning the same, and the value both must give
SAME = [
    (["--trial-size", "4"], ["trial_size=4"], "trial_size", 4),
    (["--gpus-per-trial", "0.5"], ["gpus_per_trial=0.5"], "gpus_per_trial", 0.5),
    (["--cpus-per-trial", "2"], ["cpus_per_trial=2"], "cpus_per_trial", 2.0),
    (["--max-failures", "0"], ["max_failures=0"], "max_failures", 0),
    (["--no-reuse-actors"], ["reuse_actors=false"], "reuse_actors", False),
    (["--batch-size", "32"], ["batch_size=32"], "train.batch_size", 32),
    (["--lr", "0.1"], ["lr=0.1"], "train.lr", 0.1),
    (["--momentum", "0.5"], ["momentum=0.5"], "train.momentum", 0.5),
    (["--no-augment"], ["augment=false"], "train.augment", False),
    (["--epochs", "2"], ["epochs=2"], "train.epochs", 2),
    (["--val-fraction", "0.2"], ["val_fraction=0.2"], "val_fraction", 0.2),
    (["--split-seed", "3"], ["split_seed=3"], "split_seed", 3),
    (["--sample-seed", "5"], ["sample_seed=5"], "sample_seed", 5),
    (["--sample", "3"], ["sample=3"], "sample", 3),
    (["--rebuild-manifest"], ["rebuild_manifest=true"], "rebuild_manifest", True),
    (["--archs", "w32-*", "--archs", "w64-*"], ["archs=w32-*,w64-*"], "archs", ("w32-*", "w64-*")),
    (["--seeds", "3"], ["seeds=3"], "seeds", (0, 1, 2)),
    (["--whole-per-class", "5"], ["whole_per_class=5"], "whole_per_class", 5),
    (
        ["--whole-top", "2", "--by", "random"],
        ["whole_top=2", "whole_by=random"],
        "whole_by",
        "random",
    ),
    (["--fuse", "off"], ["fuse=off"], "fuse", "off"),
    (["--max-stack", "8"], ["max_stack=8"], "max_stack", 8),
    (["--rng", "shared"], ["rng=shared"], "fast.rng", "shared"),
    (["--bf16"], ["bf16=true"], "fast.bf16", True),
    (["--no-cuda-graphs"], ["cuda_graphs=false"], "fast.cuda_graphs", False),
]


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
    # untouched settings keep their defaults; the preset's own values stay the preset's
    assert by_search.dataset == "digits" and by_search.train.weight_decay == 5e-4
    assert by_run.train.weight_decay == 5e-4 and by_run.whole is True


def test_run_flags_are_the_search_settings_of_that_name(tmp_path, cache_root, monkeypatch):
    common = ["--data-root", str(cache_root)]
    by_flag = _config_of(
        ["run", "--preset", "smoke", "--results-dir", str(tmp_path), *common], monkeypatch
    )
    by_set = _config_of(
        ["run", "--preset", "smoke", f"--set=results_dir={tmp_path}", *common], monkeypatch
    )
    assert by_flag == by_set and by_flag.results_dir == str(tmp_path)


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


def _as_text(value: object) -> str:
    """A value as a ``--set`` item writes it (independently of the library's parsers)."""
    if value is None:
        return "none"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, tuple):
        return ",".join(map(str, value)) + ("," if len(value) == 1 else "")
    return str(value)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_a_preset_is_an_instance_whose_values_survive_a_round_trip(name: str) -> None:
    preset = PRESETS[name]
    assert isinstance(preset, Preset) and isinstance(preset.search, SearchSettings)
    own = [f.name for f in dataclasses.fields(Preset) if f.name != "search"]
    items = [f"{key}={_as_text(getattr(preset, key))}" for key in own]
    items += [
        f"{p.split('.')[-1]}={_as_text(_at(preset.search, p))}"
        for p in _field_paths(SearchSettings)
        if f"train.{p.split('.')[-1]}" not in INTERNAL
    ]
    assert parse_overrides(Preset(), items) == preset
    # the old flat names read through (preset.epochs is its search's train.epochs)
    assert preset.epochs == preset.search.train.epochs and preset.rng == preset.search.fast.rng


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
    with pytest.raises(SystemExit):
        parser.parse_args(["--runner", "slurm"])


def test_a_key_twice_in_one_tree_is_refused() -> None:
    @dataclass(frozen=True)
    class Twice(SearchSettings):
        lr: float = setting(0.1, help="shadows train.lr")

    with pytest.raises(TypeError, match="'lr' appears twice"):
        settings.leaves(Twice)


def test_search_options_of_run_pipeline_still_work_with_a_deprecation_warning(
    tmp_path, cache_root, monkeypatch
):
    seen = []
    monkeypatch.setattr(pipeline_module, "build_proxies", lambda *a, **k: [])
    monkeypatch.setattr(pipeline_module, "run_search", lambda cfg, progress=None: seen.append(cfg))
    monkeypatch.setattr(pipeline_module, "make_report", lambda exp_dir, top_k: None)
    with pytest.warns(DeprecationWarning, match="search_options"):
        pipeline_module.run_pipeline(
            PRESETS["smoke"], "s", tmp_path, cache_root, search_options={"trial_size": 3}
        )
    assert seen[0].trial_size == 3
    with pytest.raises(NasproxyError, match="unknown setting"), pytest.warns(DeprecationWarning):
        pipeline_module.run_pipeline(
            PRESETS["smoke"], "s", tmp_path, cache_root, search_options={"trial": 3}
        )
