"""The draws of one proxy as one row of Table 1: its interval recomputed here from
trials.csv by the documented resampling (architectures, whole-split seeds, draws, then
the seeds of each drawn draw), wider than the seeds-only one when the draws differ; sets
without draw fields, and groups of one draw, report as before."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nasproxy.report import make_report
from nasproxy.report.draws import group_sets, hierarchical_replicates
from tests.report.experiments import ARCHS, SEEDS, read_table, trials_of, write_experiment

K = 3
DRAWS = {"random-pc10-d0": 0, "random-pc10-d1": 1, "random-pc10-d2": 2}


def draws_experiment(exp: Path, spread: float = 1.0) -> tuple[Path, np.ndarray]:
    """Whole split; three random draws that rank the architectures differently (``spread``
    scales how differently), each with two seeds of small noise; one herding draw; an
    influence set from before draws. Trials in trials.csv only."""
    rng = np.random.default_rng(5)
    quality = rng.random(len(ARCHS))
    whole_val = 0.6 + 0.3 * quality + rng.normal(0, 0.01, (len(SEEDS), len(ARCHS)))
    rows = trials_of("whole", whole_val, whole_val + 0.01, wall=10.0)
    for i, name in enumerate(DRAWS):
        own = rng.random(len(ARCHS))  # what this draw gets wrong
        mix = min(1.0, spread * i / 2)
        val = 0.3 + 0.2 * ((1 - mix) * quality + mix * own)
        val = val + rng.normal(0, 0.005, (len(SEEDS), len(ARCHS)))
        rows += trials_of(name, val, val, wall=1.0 + i)
    rows += trials_of("herding-pc10-d0", 0.3 + 0.1 * quality, 0.3 + 0.1 * quality, wall=2.0)
    rows += trials_of("influence", 0.2 + 0.1 * quality**2, 0.2 + 0.1 * quality**2, wall=3.0)
    names = [*DRAWS, "herding-pc10-d0", "influence", "whole"]
    exp = write_experiment(exp, pd.DataFrame(rows), names)
    manifest = json.loads((exp / "manifest.json").read_text())
    for name, draw in DRAWS.items():
        manifest["train_sets"][name] |= {"method": "random", "per_class": 10, "draw": draw}
    manifest["train_sets"]["herding-pc10-d0"] |= {"method": "herding", "per_class": 10, "draw": 0}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    trials = pd.read_parquet(exp / "trials.parquet")
    (exp / "trials.parquet").unlink()
    trials.to_csv(exp / "trials.csv", index=False)
    return exp, quality


def _spearman_topk(pv: np.ndarray, rv: np.ndarray, archs: np.ndarray) -> float:
    """Spearman over the k best of the distinct drawn archs by proxy accuracy."""
    distinct = np.unique(archs)
    order = distinct[np.argsort(-pv[distinct], kind="stable")][:K]
    return float(stats.spearmanr(pv[order], rv[order]).statistic)


def recomputed_interval(trials: pd.DataFrame, n_boot: int, seed: int, draws: bool = True):
    """The group's 95% intervals of Spearman all and top-k, by the documented contract."""

    def matrix(name: str) -> np.ndarray:
        rows = trials[trials["train_set"] == name]
        table = rows.pivot_table(index="seed", columns="arch", values="val_acc", aggfunc="mean")
        return table.reindex(columns=ARCHS).to_numpy(dtype=float)

    per_draw = [matrix(n) for n in DRAWS]
    whole = matrix("whole")
    rng = np.random.default_rng(seed)
    reps = {"spearman_all": [], "spearman_topk": []}
    for _ in range(n_boot):
        archs = rng.integers(0, len(ARCHS), len(ARCHS))
        w = rng.integers(0, whole.shape[0], whole.shape[0])
        chosen = rng.integers(0, 3, 3) if draws else np.arange(3)
        ref = whole[w].mean(axis=0)
        means = {"spearman_all": [], "spearman_topk": []}
        for d in chosen:
            seeds = rng.integers(0, per_draw[d].shape[0], per_draw[d].shape[0])
            rows = per_draw[d][seeds]
            means["spearman_all"].append(
                np.mean([stats.spearmanr(r[archs], ref[archs]).statistic for r in rows])
            )
            means["spearman_topk"].append(np.mean([_spearman_topk(r, ref, archs) for r in rows]))
        for name, values in means.items():
            reps[name].append(np.mean(values))
    return {name: tuple(np.quantile(v, [0.025, 0.975])) for name, v in reps.items()}


def test_the_grouped_row_s_interval_is_the_documented_resampling(tmp_path):
    exp, _ = draws_experiment(tmp_path / "exp")
    res = make_report(exp, top_k=K, n_boot=60, seed=7)
    table = read_table(exp / "table1.csv")
    assert list(table.index) == ["random-pc10 (3 draws)", "herding-pc10-d0", "influence", "whole"]
    row = table.loc["random-pc10 (3 draws)"]
    want = recomputed_interval(pd.read_csv(exp / "trials.csv"), n_boot=60, seed=7)
    for name, (lo, hi) in want.items():
        assert row[f"{name}_lo"] == pytest.approx(lo, abs=1e-9)
        assert row[f"{name}_hi"] == pytest.approx(hi, abs=1e-9)
    seed_rows = res.per_seed[res.per_seed["train_set"].isin(list(DRAWS))]
    per_draw = seed_rows.groupby("train_set")["spearman_all"].mean()
    assert row["spearman_all"] == pytest.approx(per_draw.mean())
    assert row["spearman_all_std"] == pytest.approx(seed_rows["spearman_all"].std(ddof=1))
    assert row["n_seeds"] == 6 and row["trials_present"] == 3 * len(SEEDS) * len(ARCHS)
    assert row["train_s"] == pytest.approx(sum((1 + i) * len(SEEDS) * len(ARCHS) for i in range(3)))
    assert any(n.startswith("random-pc10 (3 draws): draws random-pc10-d0,") for n in res.notes)


def test_the_interval_with_draws_is_wider_than_the_seeds_only_one_when_draws_differ(tmp_path):
    exp, _ = draws_experiment(tmp_path / "exp")
    trials = pd.read_csv(exp / "trials.csv")
    with_draws = recomputed_interval(trials, n_boot=200, seed=1)["spearman_all"]
    seeds_only = recomputed_interval(trials, n_boot=200, seed=1, draws=False)["spearman_all"]
    assert with_draws[1] - with_draws[0] > 1.5 * (seeds_only[1] - seeds_only[0])

    def vals(name):
        rows = trials[trials["train_set"] == name].sort_values(["seed", "arch"])
        return rows.pivot(index="seed", columns="arch", values="val_acc")[ARCHS].to_numpy()

    draws = [vals(n) for n in DRAWS]
    hier = hierarchical_replicates(draws, vals("whole"), K, 200, 1)["spearman_all"]
    fixed = hierarchical_replicates(draws, vals("whole"), K, 200, 1, resample_draws=False)
    assert np.ptp(np.quantile(hier, [0.025, 0.975])) == pytest.approx(np.ptp(with_draws))
    assert np.ptp(np.quantile(fixed["spearman_all"], [0.025, 0.975])) == pytest.approx(
        np.ptp(seeds_only)
    )


def test_draws_that_agree_add_little_width(tmp_path):
    """With identical rankings across draws the draws add nothing to resample: the
    interval is within a little of the seeds-only one."""
    exp, _ = draws_experiment(tmp_path / "exp", spread=0.0)
    trials = pd.read_csv(exp / "trials.csv")
    with_draws = recomputed_interval(trials, n_boot=200, seed=1)["spearman_all"]
    seeds_only = recomputed_interval(trials, n_boot=200, seed=1, draws=False)["spearman_all"]
    assert np.ptp(with_draws) < 1.5 * np.ptp(seeds_only)


def test_a_group_of_one_draw_reports_as_a_set_without_fields(tmp_path):
    """Draw fields on single draws change nothing in Table 1: the same rows and values as
    the same experiment whose manifest has none."""
    exp, _ = draws_experiment(tmp_path / "a")
    manifest = json.loads((exp / "manifest.json").read_text())
    for i, name in enumerate(DRAWS):  # three methods, one draw each
        manifest["train_sets"][name]["method"] = f"m{i}"
    (exp / "manifest.json").write_text(json.dumps(manifest))
    plain, _ = draws_experiment(tmp_path / "b")
    bare = json.loads((plain / "manifest.json").read_text())
    for entry in bare["train_sets"].values():
        for key in ("method", "per_class", "draw"):
            entry.pop(key, None)
    (plain / "manifest.json").write_text(json.dumps(bare))
    make_report(exp, top_k=K, n_boot=30, seed=0)
    make_report(plain, top_k=K, n_boot=30, seed=0)
    pd.testing.assert_frame_equal(read_table(exp / "table1.csv"), read_table(plain / "table1.csv"))
    assert not (plain / "frontier.csv").exists() and (exp / "frontier.csv").exists()


def test_groups_are_method_budget_and_own_epochs():
    def entry(method, per_class, draw, **more):
        return {"method": method, "per_class": per_class, "draw": draw, **more}

    manifest = {
        "train_sets": {
            "a": entry("random", 10, 0),
            "b": entry("random", 50, 0),
            "c": entry("random", 10, 1),
            "d": entry("random", 10, 0, epochs=5),
            "e": entry("random", 10, 1, epochs=5),
            "old": {"n_images": 5},
            "f": entry("from-indices", 10, None),
        }
    }
    groups = group_sets(manifest, list(manifest["train_sets"]))
    assert [(g.label, g.members) for g in groups] == [
        ("random-pc10 (2 draws)", ("a", "c")),
        ("b", ("b",)),
        ("random-pc10@5 (2 draws)", ("d", "e")),
        ("old", ("old",)),
        ("f", ("f",)),
    ]
    assert groups[2].epochs == 5 and groups[3].method is None
