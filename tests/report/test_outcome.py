"""The search outcome against a recomputation by hand: each proxy's shortlist confirmed on
the whole split, its pick, rank, regret and cost, measured or estimated."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasproxy.report import make_report, outcome_lines
from tests.report.experiments import ARCHS, SEEDS, trials_of, write_experiment

K = 3
RNG = np.random.default_rng(7)
# proxy validation accuracy, seed-averaged by construction: the shift is +-0.01
INFLUENCE = np.linspace(0.2, 0.8, len(ARCHS))
RANDOM = RNG.permutation(INFLUENCE)
WHOLE_VAL = RNG.random(len(ARCHS))
WHOLE_TEST = RNG.random((len(SEEDS), len(ARCHS)))
SHIFT = np.array([[-0.01], [0.01]])


def _experiment(tmp_path: Path, whole_archs: list[int]) -> Path:
    rows = trials_of("influence", INFLUENCE + SHIFT, 0.5, wall=1.0)
    rows += trials_of("random", RANDOM + SHIFT, 0.5, wall=2.0)
    whole = pd.DataFrame(trials_of("whole", WHOLE_VAL + SHIFT, WHOLE_TEST, wall=10.0))
    whole = whole[whole["arch"].isin([ARCHS[i] for i in whole_archs])]
    trials = pd.concat([pd.DataFrame(rows), whole], ignore_index=True)
    exp = write_experiment(
        tmp_path / "exp", trials, ["influence", "random", "whole"], whole_top={"k": K}
    )
    return exp


def _top(values: np.ndarray, k: int) -> list[int]:
    """Positions of the k largest values (the values are distinct)."""
    return [int(i) for i in np.argsort(-values)[:k]]


def _expected(name: str, proxy: np.ndarray, confirmed_all: list[int]) -> dict:
    test_mean = WHOLE_TEST.mean(axis=0)
    mine = _top(proxy, K)
    pick = max(mine, key=lambda i: WHOLE_VAL[i])
    return {
        "pick": ARCHS[pick],
        "pick_val": WHOLE_VAL[pick],
        "pick_test": test_mean[pick],
        "pick_test_std": WHOLE_TEST[:, pick].std(ddof=1),
        "rank": 1 + sum(test_mean[i] > test_mean[pick] for i in confirmed_all),
        "n_confirmed": len(confirmed_all),
        "proxy_s": (1.0 if name == "influence" else 2.0) * len(ARCHS) * len(SEEDS),
        "confirm_s": 10.0 * K * len(SEEDS),
    }


def test_the_outcome_of_confirmed_shortlists_with_an_estimated_cost(tmp_path: Path) -> None:
    lists = {"influence": _top(INFLUENCE, K), "random": _top(RANDOM, K)}
    confirmed = sorted(set(lists["influence"]) | set(lists["random"]))
    res = make_report(_experiment(tmp_path, confirmed), top_k=10, n_boot=5)
    got = pd.read_csv(res.paths["outcome_csv"], comment="#").set_index("train_set")
    assert list(got.index) == ["influence", "random"]
    for name, proxy in (("influence", INFLUENCE), ("random", RANDOM)):
        row = got.loc[name]
        for column, value in _expected(name, proxy, confirmed).items():
            assert row[column] == pytest.approx(value), (name, column)
        assert row["k"] == K and row["confirmed"] == K and row["pick_seeds"] == len(SEEDS)
        assert np.isnan(row["regret"])  # not every architecture has a whole-split result
        # seconds per image of the confirmed units x images of one unit x every unit
        per_image = 10.0 / 200
        exhaustive = per_image * 200 * len(ARCHS) * len(SEEDS)
        assert row["exhaustive_estimated"] and row["exhaustive_s"] == pytest.approx(exhaustive)
        assert row["cost_ratio"] == pytest.approx((row["proxy_s"] + row["confirm_s"]) / exhaustive)


def test_with_every_whole_unit_the_cost_is_measured_and_the_regret_known(tmp_path: Path) -> None:
    every = list(range(len(ARCHS)))
    res = make_report(_experiment(tmp_path, every), top_k=10, n_boot=5)
    got = res.outcome.set_index("train_set")
    test_mean = WHOLE_TEST.mean(axis=0)
    lists = {"influence": _top(INFLUENCE, K), "random": _top(RANDOM, K)}
    confirmed = sorted(set(lists["influence"]) | set(lists["random"]))
    for name, proxy in (("influence", INFLUENCE), ("random", RANDOM)):
        row = got.loc[name]
        expected = _expected(name, proxy, confirmed)
        assert row["pick"] == expected["pick"] and row["rank"] == expected["rank"]
        pick = ARCHS.index(row["pick"])
        assert row["regret"] == pytest.approx(test_mean.max() - test_mean[pick])
        assert row["best_arch"] == ARCHS[int(np.argmax(test_mean))]
        assert not row["exhaustive_estimated"]
        assert row["exhaustive_s"] == pytest.approx(10.0 * len(ARCHS) * len(SEEDS))


def test_a_proxy_with_no_ok_unit_is_told_it_has_no_shortlist(tmp_path: Path) -> None:
    """A proxy whose every unit failed has an empty top K: its line says so, rather than
    that its top K awaits the whole split; the other proxy's outcome is unchanged."""
    rows = pd.DataFrame(trials_of("influence", INFLUENCE + SHIFT, 0.5, wall=1.0))
    rows["status"], rows["val_acc"] = "failed", np.nan
    ok = pd.DataFrame(trials_of("random", RANDOM + SHIFT, 0.5, wall=2.0))
    whole = pd.DataFrame(trials_of("whole", WHOLE_VAL + SHIFT, WHOLE_TEST, wall=10.0))
    trials = pd.concat([rows, ok, whole], ignore_index=True)
    exp = write_experiment(
        tmp_path / "exp", trials, ["influence", "random", "whole"], whole_top={"k": K}
    )
    got = make_report(exp, top_k=10, n_boot=5).outcome.set_index("train_set")
    assert got.loc["influence", "shortlisted"] == 0 and got.loc["random", "shortlisted"] == K
    lines = outcome_lines(exp)
    assert lines[0] == (
        "search outcome: influence: no architecture finished ok on it, so it has no top K yet"
    )
    assert lines[1].startswith(f"search outcome: random picks {got.loc['random', 'pick']}:")
