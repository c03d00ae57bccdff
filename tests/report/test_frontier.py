"""The frontier: its values against a brute-force recomputation on a small synthetic
trials table (draws grouped, a whole@N set, checkpoints), and the files it writes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from nasproxy import results
from nasproxy.report import make_report
from nasproxy.report.frontier import FRONTIER_COLUMNS, frontier_table
from nasproxy.report.table1 import compute_table
from nasproxy.results import checkpoint_accs
from tests.report.experiments import ARCHS, SEEDS, trials_of
from tests.report.test_draws import DRAWS, K, draws_experiment


def frontier_experiment(tmp_path):
    """The draws experiment with a whole@1 set (1000 images, its own single epoch) and a
    checkpoint at epoch 1 of every unit; returns (folder, trials, manifest)."""
    exp, quality = draws_experiment(tmp_path / "exp")
    trials = pd.read_csv(exp / "trials.csv")
    rng = np.random.default_rng(3)
    short = trials_of("whole@1", 0.4 + 0.1 * quality + rng.normal(0, 0.02, len(ARCHS)), 0.5, 4.0)
    trials = pd.concat([trials, pd.DataFrame(short)], ignore_index=True)
    trials.loc[trials["train_set"] == "whole@1", "epochs"] = 1
    early = trials["val_acc"] * 0.8 + rng.normal(0, 0.03, len(trials))
    trials["val_checkpoints"] = [
        json.dumps({"1": float(e), "2": float(v)}) if n != "whole@1" else json.dumps({"1": v})
        for n, e, v in zip(trials["train_set"], early, trials["val_acc"], strict=True)
    ]
    manifest = json.loads((exp / "manifest.json").read_text())
    manifest["train_sets"]["whole@1"] = {"n_images": 1000, "epochs": 1, "proxy_path": None}
    (exp / "manifest.json").write_text(json.dumps(manifest))
    trials.drop(columns="val_checkpoints").to_csv(exp / "trials.csv", index=False)
    return exp, trials, manifest


def brute_force(trials: pd.DataFrame, sets: list[str], column: str = "val_acc") -> dict:
    """Mean over ``sets`` (draws) of the mean over seeds of each statistic, by hand."""
    whole = trials[trials["train_set"] == "whole"]
    ref_val = whole.groupby("arch")["val_acc"].mean().reindex(ARCHS).to_numpy()
    ref_test = whole.groupby("arch")["test_acc"].mean().reindex(ARCHS).to_numpy()
    per_set = []
    for name in sets:
        rows = trials[trials["train_set"] == name]
        seeds = []
        for _, by_seed in rows.groupby("seed"):
            pv = by_seed.set_index("arch")[column].reindex(ARCHS).to_numpy(dtype=float)
            top = np.argsort(-pv, kind="stable")[:K]
            seeds.append(
                {
                    "spearman_all": stats.spearmanr(pv, ref_val).statistic,
                    "spearman_topk": stats.spearmanr(pv[top], ref_val[top]).statistic,
                    "perf_topk": ref_test[top].mean(),
                    "top1_test": ref_test[top[0]],
                    "regret": ref_test.max() - ref_test[top[0]],
                }
            )
        per_set.append(pd.DataFrame(seeds).mean())
    return pd.DataFrame(per_set).mean().to_dict()


def test_the_frontier_is_a_brute_force_recomputation(tmp_path):
    exp, trials, manifest = frontier_experiment(tmp_path)
    t1 = compute_table(trials, manifest, top_k=K, n_boot=20, seed=0)
    table = frontier_table(t1, trials, manifest, K)
    assert list(table.columns) == list(FRONTIER_COLUMNS)
    budget = table[table["axis"] == "budget"].set_index("row")
    assert list(budget.index) == [
        "herding-pc10-d0",
        "influence",
        "random-pc10 (3 draws)",
        "whole@1",
    ]
    assert list(budget["line"]) == ["herding", "influence", "random", "whole@N"]
    cases = {"random-pc10 (3 draws)": list(DRAWS), "herding-pc10-d0": ["herding-pc10-d0"]}
    cases |= {"influence": ["influence"], "whole@1": ["whole@1"]}
    for row, sets in cases.items():
        want = brute_force(trials, sets)
        for stat, value in want.items():
            assert budget.loc[row, stat] == pytest.approx(value, abs=1e-12), (row, stat)
        walls = trials[trials["train_set"].isin(sets)]["wall_s"].sum()
        assert budget.loc[row, "train_s"] == pytest.approx(walls / len(sets))
        assert budget.loc[row, "n_draws"] == len(sets)
    assert budget.loc["random-pc10 (3 draws)", "image_epochs"] == 100 * 2
    assert budget.loc["whole@1", "image_epochs"] == 1000 * 1
    assert budget.loc["whole@1", "epochs"] == 1
    # the budget rows are Table 1's rows
    t1_rows = t1.table.set_index("train_set")
    assert budget.loc["influence", "spearman_all_lo"] == t1_rows.loc["influence", "spearman_all_lo"]

    epoch = table[table["axis"] == "epoch"]
    assert set(epoch["row"]) == {*DRAWS, "herding-pc10-d0", "influence", "whole", "whole@1"}
    at = epoch.set_index(["row", "epochs"])
    early = trials.assign(early=[checkpoint_accs(v)[1] for v in trials["val_checkpoints"]])
    for name in ("influence", "random-pc10-d1", "whole"):
        want = brute_force(early, [name], column="early")
        for stat, value in want.items():
            assert at.loc[(name, 1), stat] == pytest.approx(value, abs=1e-12), (name, stat)
        final = brute_force(trials, [name])["spearman_all"]
        assert at.loc[(name, 2), "spearman_all"] == pytest.approx(final, abs=1e-12)
    assert at.loc[("influence", 1), "image_epochs"] == 100
    assert np.isnan(at.loc[("influence", 1), "train_s"])
    assert at.loc[("influence", 1), "n_rankings"] == len(SEEDS)


def test_the_report_writes_the_frontier_files(tmp_path):
    exp, _, _ = frontier_experiment(tmp_path)
    res = make_report(exp, top_k=K, n_boot=20, seed=0)
    assert {k: p.name for k, p in res.paths.items() if "frontier" in k} == {
        "frontier_md": "frontier.md",
        "frontier_csv": "frontier.csv",
        "plot_frontier": "frontier.png",
    }
    assert {"frontier.md", "frontier.csv", "frontier.png"} <= results.OWN_ENTRIES
    back = pd.read_csv(res.paths["frontier_csv"], comment="#")
    assert list(back.columns) == list(FRONTIER_COLUMNS)
    assert "random-pc10 (3 draws)" in set(back["row"]) and "whole@N" in set(back["line"])
    md = res.paths["frontier_md"].read_text()
    assert "not the same as a shorter run" in md and "| whole@N | whole@1 |" in md
    assert res.paths["plot_frontier"].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_an_old_experiment_writes_no_frontier(controlled):
    exp, _, res = controlled
    assert not any("frontier" in k for k in res.paths)
    assert not (exp / "frontier.csv").exists()


def test_checkpoint_cells():
    assert checkpoint_accs("") == {} and checkpoint_accs(None) == {}
    assert checkpoint_accs('{"3": 0.41, "9": 0.55, "27": 0.6}') == {3: 0.41, 9: 0.55, 27: 0.6}
