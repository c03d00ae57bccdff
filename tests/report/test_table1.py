"""Table 1's numbers: known answers, and a recomputation from the trials with pandas and
scipy on a sweep with missing and diverged trials."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from tests.report.experiments import ARCHS, read_table


def test_known_answers(controlled) -> None:
    exp, base, _ = controlled
    t = read_table(exp / "table1.csv")
    whole_test = base + 0.02 + 0.005  # mean over the two seed offsets 0 and 0.01
    top10 = np.sort(whole_test)[-10:].mean()
    inf, rnd, whole = t.loc["influence"], t.loc["random"], t.loc["whole"]
    for col in ("spearman_topk", "spearman_all", "kendall_all"):
        assert inf[col] == pytest.approx(1.0)
        assert rnd[col] == pytest.approx(-1.0)
        assert whole[col] == pytest.approx(1.0)  # the reference against itself
    assert inf["regret"] == pytest.approx(0.0)
    assert inf["perf_topk"] == pytest.approx(top10)
    assert whole["perf_topk"] == pytest.approx(top10)
    assert rnd["regret"] == pytest.approx(whole_test.max() - whole_test.min())
    assert rnd["perf_topk"] == pytest.approx(np.sort(whole_test)[:10].mean())
    assert inf["perf_topk_std"] == pytest.approx(0.0)  # both seeds rank alike
    assert inf["n_seeds"] == 2 and whole["n_seeds"] == 2 and inf["n_archs"] == 12
    assert inf["epsilon"] == pytest.approx(0.75) and np.isnan(whole["epsilon"])
    assert inf["n_images"] == 100 and whole["bytes"] == 64_000
    assert inf["train_s"] == pytest.approx(24.0) and whole["train_s"] == pytest.approx(240.0)
    assert whole["sweep_wall_s"] == 99.0 and np.isnan(inf["sweep_wall_s"])
    assert (t["trials_expected"] == 24).all() and (t["trials_missing"] == 0).all()


def test_constant_proxy_reports_nan(controlled) -> None:
    exp, _, _ = controlled
    t = read_table(exp / "table1.csv")
    assert np.isnan(t.loc["herding", "spearman_all"])
    assert np.isnan(t.loc["herding", "kendall_all"])
    row = next(
        ln for ln in (exp / "table1.md").read_text().splitlines() if ln.startswith("| herding |")
    )
    assert "n/a" in row


def _independent_table(trials: pd.DataFrame, k: int) -> dict[str, dict[str, float]]:
    """Table 1 recomputed straight from the trials with pandas and scipy."""
    ok = trials[trials["status"] == "ok"]
    ref = (
        ok[ok["train_set"] == "whole"]
        .groupby("arch")[["val_acc", "test_acc"]]
        .mean()
        .rename(columns={"val_acc": "ref_val", "test_acc": "ref_test"})
        .dropna()
    )
    own, nan = ref["ref_test"].reindex(ARCHS), float("nan")
    out = {}
    for name, g in ok[ok["train_set"] != "whole"].groupby("train_set"):
        per_seed = []
        for _, gs in g.groupby("seed"):
            m = gs.set_index("arch")[["val_acc"]].join(ref, how="inner").dropna()
            m = m.sort_values("val_acc", ascending=False)
            top = m.head(k)
            per_seed.append(
                {
                    "perf_topk": top["ref_test"].mean(),
                    "top1_test": top["ref_test"].iloc[0],
                    # against every one of the proxy's archs (here all): n/a if one lacks it
                    "regret": own.max() - top["ref_test"].iloc[0] if own.notna().all() else nan,
                    "spearman_topk": stats.spearmanr(top["val_acc"], top["ref_val"]).statistic,
                    "spearman_all": stats.spearmanr(m["val_acc"], m["ref_val"]).statistic,
                    "kendall_all": stats.kendalltau(m["val_acc"], m["ref_val"]).statistic,
                    "n": len(m),
                }
            )
        df = pd.DataFrame(per_seed)
        out[name] = {c: df[c].mean() for c in df.columns} | {
            f"{c}_std": df[c].std(ddof=1) for c in df.columns
        }
    return out


def test_numbers_recompute_fromtrials_of(partial) -> None:
    exp, trials, _ = partial
    t = read_table(exp / "table1.csv")
    ref = _independent_table(pd.read_parquet(exp / "trials.parquet"), k=5)
    assert set(ref) == {"random", "influence"}
    for name, expect in ref.items():
        for col in (
            "perf_topk",
            "top1_test",
            "regret",
            "spearman_topk",
            "spearman_all",
            "kendall_all",
        ):
            want, want_std = expect[col], expect[f"{col}_std"]
            assert t.loc[name, col] == pytest.approx(want, abs=1e-12, nan_ok=True), (name, col)
            assert t.loc[name, f"{col}_std"] == pytest.approx(want_std, abs=1e-12, nan_ok=True)
        for col in ("spearman_topk", "spearman_all", "kendall_all"):
            assert t.loc[name, f"{col}_lo"] <= t.loc[name, f"{col}_hi"]
    assert t.loc["whole", "spearman_all"] == pytest.approx(1.0)
    assert t.loc["influence", "n_archs"] == 11 and t.loc["random", "n_archs"] == 11
    # training time counts every trial, failed ones included
    assert t.loc["influence", "train_s"] == pytest.approx(1.5 * 24)


def test_per_seed_file_recomputes(partial) -> None:
    exp, trials, _ = partial
    seeds = pd.read_csv(exp / "table1_seeds.csv", comment="#")
    assert sorted(zip(seeds["train_set"], seeds["seed"], strict=True)) == [
        ("influence", 0),
        ("influence", 1),
        ("random", 0),
        ("random", 1),
    ]
    row = seeds[(seeds["train_set"] == "random") & (seeds["seed"] == 1)].iloc[0]
    assert row["n_archs"] == 8  # 12 archs, minus 3 missing proxy trials, minus 1 without whole
    g = trials[
        (trials["train_set"] == "random") & (trials["seed"] == 1) & (trials["arch"] != ARCHS[0])
    ]
    assert row["top1_arch"] == g.sort_values("val_acc", ascending=False)["arch"].iloc[0]


def test_partial_sweep_is_reported(partial) -> None:
    exp, _, res = partial
    t = read_table(exp / "table1.csv")
    assert t.loc["whole", "trials_missing"] == 2 and t.loc["whole", "trials_present"] == 22
    assert t.loc["random", "trials_missing"] == 3 and t.loc["random", "trials_present"] == 21
    assert t.loc["influence", "trials_missing"] == 0 and t.loc["influence", "trials_not_ok"] == 2
    md = (exp / "table1.md").read_text()
    assert "random: 21/24 trials; 3 missing" in md
    assert "whole: 22/24 trials; 2 missing" in md
    assert "influence: 24/24 trials; 2 not ok" in md
    rows = {ln.split("|")[1].strip(): ln for ln in md.splitlines() if ln.startswith("| ")}
    assert "| 21/24 (3 missing) |" in rows["random"]
    assert "| 24/24 (2 not ok) |" in rows["influence"]
    assert any("3 missing" in n for n in res.notes)
