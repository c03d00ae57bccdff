"""nasproxy.pipeline: ``nasproxy run`` end to end on digits, the experiment folders it
refuses to delete, and the settings it hands to the search."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

import nasproxy.pipeline as pipeline_module
from nasproxy.cli import main
from nasproxy.errors import NasproxyError
from nasproxy.presets import PRESETS, parse_overrides


@pytest.mark.slow
def test_run_smoke_end_to_end(tmp_path: Path, cache_root: Path, capsys) -> None:
    results = tmp_path / "results"
    argv = [
        "run",
        "--preset",
        "smoke",
        "--results-dir",
        str(results),
        "--data-root",
        str(cache_root),
    ]
    assert main(argv) == 0
    exp = results / "smoke"
    for name in (
        "table1.md",
        "table1.csv",
        "table1.tex",
        "trials.parquet",
        "manifest.json",
        "proxy_vs_whole.png",
        "correlation.png",
        "acc_vs_time.png",
    ):
        assert (exp / name).is_file(), name
    for method in PRESETS["smoke"].methods:
        assert (exp / "proxies" / f"{method}.json").is_file()
    assert "The report is in" in capsys.readouterr().out

    trials = pd.read_parquet(exp / "trials.parquet")
    table = pd.read_csv(exp / "table1.csv", comment="#").set_index("train_set")
    expected_sets = {*PRESETS["smoke"].methods, "whole"}
    assert set(table.index) == expected_sets
    assert len(trials) == len(expected_sets) * PRESETS["smoke"].sample
    md = (exp / "table1.md").read_text()
    for name in expected_sets:
        assert f"| {name} " in md

    # the CSV recomputes from the trials table
    whole = trials[trials.train_set == "whole"].set_index("arch")
    for name in PRESETS["smoke"].methods:
        rows = trials[trials.train_set == name].set_index("arch").loc[whole.index]
        assert table.loc[name, "train_s"] == pytest.approx(rows.wall_s.sum())
        order = np.argsort(-rows.val_acc.to_numpy(), kind="stable")
        top1 = rows.index[order[0]]
        assert table.loc[name, "top1_test"] == pytest.approx(whole.loc[top1, "test_acc"])
        assert table.loc[name, "regret"] == pytest.approx(
            whole.test_acc.max() - whole.loc[top1, "test_acc"]
        )
        rho = stats.spearmanr(rows.val_acc, whole.val_acc).statistic
        if np.isfinite(rho):
            assert table.loc[name, "spearman_all"] == pytest.approx(rho)
    assert table.loc["whole", "spearman_all"] == pytest.approx(1.0)

    # a second run reuses the proxies and trains nothing new
    before = len(trials)
    assert main(argv) == 0
    assert len(pd.read_parquet(exp / "trials.parquet")) == before

    # --fresh starts over and keeps the proxies it rebuilt
    assert main([*argv, "--fresh"]) == 0
    for method in PRESETS["smoke"].methods:
        assert (exp / "proxies" / f"{method}.json").is_file()
    assert len(pd.read_parquet(exp / "trials.parquet")) == before


def test_run_with_a_path_as_name_touches_nothing_outside_the_results_dir(
    tmp_path: Path, cache_root: Path, capsys
) -> None:
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "manifest.json").write_text('{"protocol": {}, "train_sets": {}}')
    (victim / "notes.txt").write_text("precious")
    results = tmp_path / "results"
    results.mkdir()
    for name in (str(victim), "../victim"):
        argv = ["run", "--preset", "smoke", "--name", name, "--fresh"]
        argv += ["--results-dir", str(results), "--data-root", str(cache_root)]
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "bad experiment name" in err[0]
        assert sorted(p.name for p in victim.iterdir()) == ["manifest.json", "notes.txt"]
        assert list(results.iterdir()) == []


def test_run_fresh_refuses_a_folder_that_is_not_only_its_experiment(
    tmp_path: Path, cache_root: Path, capsys
) -> None:
    exp = tmp_path / "results" / "mine"
    exp.mkdir(parents=True)
    (exp / "manifest.json").write_text('{"protocol": {}, "train_sets": {}}')
    (exp / "thesis.tex").write_text("precious")
    argv = ["run", "--preset", "smoke", "--name", "mine", "--fresh"]
    argv += ["--results-dir", str(tmp_path / "results"), "--data-root", str(cache_root)]
    assert main(argv) == 2
    assert "thesis.tex" in capsys.readouterr().err
    assert sorted(p.name for p in exp.iterdir()) == ["manifest.json", "thesis.tex"]


def test_the_find_fields_of_a_preset_reach_the_search(
    tmp_path: Path, cache_root: Path, monkeypatch
):
    seen = []
    monkeypatch.setattr(pipeline_module, "build_proxies", lambda *args, **kwargs: [])
    monkeypatch.setattr(pipeline_module, "run_search", lambda cfg, progress=None: seen.append(cfg))
    monkeypatch.setattr(pipeline_module, "make_report", lambda exp_dir, top_k, reference: top_k)
    preset = parse_overrides(
        PRESETS["find"], ["whole_archs=w32-d1-*,w32-d2-*", "whole_sample=4", "whole_by=random"]
    )
    assert pipeline_module.run_pipeline(preset, "f", tmp_path, cache_root) == PRESETS["find"].top_k
    (cfg,) = seen
    assert cfg.whole_archs == ("w32-d1-*", "w32-d2-*") and cfg.whole_sample == 4
    assert cfg.whole_top == PRESETS["find"].whole_top and cfg.whole_by == "random"
    with pytest.raises(NasproxyError, match="whole_by 'herding' is not a training set"):
        pipeline_module.run_pipeline(
            parse_overrides(preset, ["whole_by=herding"]), "f", tmp_path, cache_root
        )
    with pytest.raises(NasproxyError, match="matches no architecture"):
        pipeline_module.run_pipeline(
            parse_overrides(preset, ["whole_archs=w9-*"]), "f", tmp_path, cache_root
        )
    assert len(seen) == 1


def test_search_options_of_run_pipeline_still_work_with_a_deprecation_warning(
    tmp_path, cache_root, monkeypatch
):
    seen = []
    monkeypatch.setattr(pipeline_module, "build_proxies", lambda *a, **k: [])
    monkeypatch.setattr(pipeline_module, "run_search", lambda cfg, progress=None: seen.append(cfg))
    monkeypatch.setattr(pipeline_module, "make_report", lambda exp_dir, top_k, reference: None)
    with pytest.warns(DeprecationWarning, match="search_options"):
        pipeline_module.run_pipeline(
            PRESETS["smoke"], "s", tmp_path, cache_root, search_options={"trial_size": 3}
        )
    assert seen[0].trial_size == 3
    with pytest.raises(NasproxyError, match="unknown setting"), pytest.warns(DeprecationWarning):
        pipeline_module.run_pipeline(
            PRESETS["smoke"], "s", tmp_path, cache_root, search_options={"trial": 3}
        )


@pytest.mark.parametrize(
    "argv",
    [
        ["--set", "methods=random,random"],
        ["--set", "whole_per_class=100000"],  # above every class's size
        ["--set", "per_class=100000"],
        ["--set", "budgets=5,100000"],  # one budget of the family above a class's size
        ["--set", "budgets=5,10,5"],
        ["--set", "proxy_seeds=0,1,0"],
        ["--set", "runner=local", "--set", "gpus_per_trial=0.5"],  # on a host without a GPU
        ["--set", "weight_decay=-0.1"],
        ["--set", "momentum=nan"],
        ["--set", "gpus_per_trial=nan"],
        ["--set", "val_fraction=0"],  # the ranking reads the validation split
        ["--set", "seeds=1,1"],
    ],
)
def test_run_refuses_every_setting_before_any_work_or_write(
    tmp_path, cache_root, capsys, monkeypatch, argv
):
    """As ``run_pipeline``'s docstring promises: before the proxies, the lock, any file."""
    from tests.test_settings import _reach, _Reached

    monkeypatch.setattr(pipeline_module, "experiment_lock", _reach)
    monkeypatch.setattr(pipeline_module, "build_proxies", _reach)
    monkeypatch.setattr("torch.cuda.device_count", lambda: 0)
    results = tmp_path / "results"
    command = ["run", "--preset", "smoke", "--results-dir", str(results)]
    try:
        assert main([*command, "--data-root", str(cache_root), *argv]) == 2
    except _Reached:
        raise AssertionError("the work started") from None
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasproxy: error: "), err
    assert not results.exists()


def test_search_refuses_a_validation_fraction_of_zero(tmp_path, capsys, monkeypatch):
    """With no validation split every accuracy the ranking reads would be NaN."""
    from tests.test_settings import _reach

    monkeypatch.setattr("nasproxy.search.sweep.experiment_lock", _reach)  # no sweep, ever
    argv = ["search", "--name", "e", "--whole", "--results-dir", str(tmp_path / "r")]
    assert main([*argv, "--val-fraction", "0"]) == 2
    err = capsys.readouterr().err
    assert err == "nasproxy: error: --val-fraction must be in (0, 1), got 0.0\n"
    assert not (tmp_path / "r").exists()


def test_a_proxy_file_is_reused_only_for_the_same_scoring_run() -> None:
    """``run`` reuses a proxy file whose scoring run (``backbone`` record, as build-proxy
    writes it) has every setting of the preset's, and rebuilds it when one differs."""
    from types import SimpleNamespace

    from nasproxy.proxies import registry

    preset = PRESETS["smoke"]
    record = {
        "method": "herding",
        "params": {"source": registry.source("herding")},
        "fingerprint": "f",
        "per_class": preset.per_class,
        "seed": 0,
        "backbone": {
            "id": "w32-d3-relu-instancenorm-avgpooling", "epochs": 2, "seed": 0,
            "batch_size": 128, "lr": 0.01, "momentum": 0.9, "weight_decay": 5e-4,
            "augment": True, "device": "cpu", "feature_dim": 512,
        },
    }  # fmt: skip
    data = SimpleNamespace(fingerprint="f")
    assert pipeline_module.proxy_matches(record, data, preset, "herding")
    for item in ["backbone_lr=0.1", "backbone_seed=1", "backbone_augment=false",
                 "backbone_epochs=3", "backbone=w32-d2-relu-instancenorm-avgpooling",
                 "proxy_seed=1"]:  # fmt: skip
        changed = parse_overrides(preset, [item])
        assert not pipeline_module.proxy_matches(record, data, changed, "herding"), item


@pytest.mark.parametrize(
    "items",
    [
        [("whole_per_class", "100000")],  # above every class's size
        [("whole_top", "2"), ("whole_by", "nope")],  # not one of the proxies
        [("whole_archs", "w9-*")],  # matches no architecture
    ],
)
def test_run_refuses_as_search_does(tmp_path, cache_root, capsys, monkeypatch, items):
    """``run`` checks its sweep with the search's own check, before its proxies: the same
    refusal as ``search`` gives, each setting named as it was written."""
    import nasproxy.search.sweep as sweep_module
    from nasproxy import settings
    from nasproxy.search import SearchConfig
    from tests.test_settings import _reach

    monkeypatch.setattr(pipeline_module, "experiment_lock", _reach)
    monkeypatch.setattr(sweep_module, "experiment_lock", _reach)
    common = ["--results-dir", str(tmp_path / "results"), "--data-root", str(cache_root)]
    proxy = tmp_path / "random.json"
    argv = ["build-proxy", "--method", "random", "--per-class", "5", "--out", str(proxy)]
    assert main([*argv, "--data-root", str(cache_root)]) == 0
    flags = settings.flag_names(SearchConfig)
    search = ["search", "--name", "e", "--whole", "--proxy", str(proxy), *common]
    capsys.readouterr()
    assert main([*search, *(a for k, v in items for a in (flags[k], v))]) == 2
    by_search = capsys.readouterr().err
    run = ["run", "--preset", "smoke", "--set", "methods=random", *common]
    assert main([*run, *(a for k, v in items for a in ("--set", f"{k}={v}"))]) == 2
    by_run = capsys.readouterr().err
    for key, _ in items:
        by_search = by_search.replace(flags[key], key)
    assert by_run == by_search and by_run.count("\n") == 1, (by_run, by_search)
    assert not (tmp_path / "results").exists()


def test_a_family_preset_plans_every_method_budget_and_draw() -> None:
    """``budgets`` and ``proxy_seeds`` make one proxy a (method, budget, draw), named
    METHOD-pcK-dSEED, each draw's scoring run seeded by its draw; without them the preset
    plans one proxy a method, named by the method, with its own scoring run (as before)."""
    smoke = PRESETS["smoke"]
    family = parse_overrides(smoke, ["methods=random,herding", "budgets=5,10", "proxy_seeds=0,2"])
    planned = pipeline_module.plan_proxies(family)
    assert [p.name for p in planned] == [
        f"{m}-pc{k}-d{s}" for m in ("random", "herding") for k in (5, 10) for s in (0, 2)
    ]
    assert [p.scoring.backbone_seed for p in planned] == [0, 2] * 4
    assert all(p.scoring.backbone == smoke.scoring.backbone for p in planned)
    counted = pipeline_module.plan_proxies(parse_overrides(smoke, ["proxy_seeds=2"]))
    assert [p.name for p in counted][:2] == ["influence-pc10-d0", "influence-pc10-d1"]
    budgets_only = pipeline_module.plan_proxies(parse_overrides(smoke, ["budgets=5,10"]))
    assert [p.name for p in budgets_only][:2] == ["influence-pc5-d0", "influence-pc10-d0"]
    assert all(p.scoring == smoke.scoring for p in budgets_only)
    plain = pipeline_module.plan_proxies(smoke)
    assert [p.name for p in plain] == list(smoke.methods)
    assert all(p.scoring == smoke.scoring and p.draw.per_class == 10 for p in plain)


@pytest.mark.slow
def test_run_a_family_of_draws_and_budgets_end_to_end(tmp_path: Path, cache_root: Path) -> None:
    """``run`` with ``budgets`` and ``proxy_seeds`` builds and sweeps every draw, reports
    each method and budget as one row of Table 1 and of the frontier, and a second run
    reuses every proxy file."""
    results = tmp_path / "results"
    argv = ["run", "--preset", "smoke", "--results-dir", str(results), "--data-root"]
    argv += [str(cache_root), "--set", "methods=random", "--set", "budgets=5,10"]
    argv += ["--set", "proxy_seeds=0,1", "--device", "cpu"]
    assert main(argv) == 0
    exp = results / "smoke"
    names = [f"random-pc{k}-d{s}" for k in (5, 10) for s in (0, 1)]
    assert sorted(p.stem for p in (exp / "proxies").iterdir()) == sorted(names)
    manifest = json.loads((exp / "manifest.json").read_text())
    assert manifest["train_sets"]["random-pc10-d1"]["draw"] == 1
    table = pd.read_csv(exp / "table1.csv", comment="#")
    assert sorted(table["train_set"]) == ["random-pc10 (2 draws)", "random-pc5 (2 draws)", "whole"]
    frontier = pd.read_csv(exp / "frontier.csv", comment="#")
    budget = frontier[frontier["axis"] == "budget"]
    assert list(budget["per_class"]) == [5, 10] and list(budget["n_draws"]) == [2, 2]
    before = {p.name: p.stat().st_mtime_ns for p in (exp / "proxies").iterdir()}
    assert main(argv) == 0
    assert {p.name: p.stat().st_mtime_ns for p in (exp / "proxies").iterdir()} == before


def test_nats_directory_stands_in_only_for_a_space_of_cells(monkeypatch, tmp_path) -> None:
    """$NASPROXY_NATS names the benchmark for the nb201 preset; other spaces ignore it."""
    monkeypatch.delenv(pipeline_module.NATS_ENV, raising=False)
    assert pipeline_module.nats_directory(PRESETS["nb201"]) is None
    monkeypatch.setenv(pipeline_module.NATS_ENV, str(tmp_path))
    assert pipeline_module.nats_directory(PRESETS["nb201"]) == tmp_path
    assert pipeline_module.nats_directory(PRESETS["demo"]) is None


def test_the_nb201_reference_is_the_benchmarks_accuracies(tmp_path) -> None:
    """The experiment's reference.csv holds the accuracies written into a benchmark
    directory in NATS-Bench's own format, at the preset's 200 epochs, ids canonical."""
    pytest.importorskip("nats_bench")
    from nasproxy import spaces
    from nasproxy.reference import read_reference
    from tests.test_natsbench import CELLS, mean_pct, write_benchmark

    bench = write_benchmark(tmp_path / "NATS-tss-v1_0-3ffb9-simple")
    exp_dir = tmp_path / "exp"
    exp_dir.mkdir()
    path = pipeline_module.import_reference(bench, PRESETS["nb201"], exp_dir)
    assert path == exp_dir / pipeline_module.REFERENCE_FILE
    ref = read_reference(path, spaces.canonical_id)
    ids = [spaces.canonical_id(c) for c in CELLS]
    val, test = ref.accuracies(ids)
    for i in range(len(CELLS)):
        assert val[i] == pytest.approx(mean_pct(i, "200", "cifar10-valid", "x-valid"))
        assert test[i] == pytest.approx(mean_pct(i, "200", "cifar10", "ori-test"))
