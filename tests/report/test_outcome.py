"""The search outcome against a recomputation by hand: each proxy's shortlist confirmed on
the whole split, its pick, rank, regret and cost, measured or estimated."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasproxy.errors import NasproxyError
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
SHAPE = {"in_channels": 3, "num_classes": 10, "image_size": 32}


def _experiment(tmp_path: Path, whole_archs: list[int], **more) -> Path:
    rows = trials_of("influence", INFLUENCE + SHIFT, 0.5, wall=1.0)
    rows += trials_of("random", RANDOM + SHIFT, 0.5, wall=2.0)
    whole = pd.DataFrame(trials_of("whole", WHOLE_VAL + SHIFT, WHOLE_TEST, wall=10.0))
    whole = whole[whole["arch"].isin([ARCHS[i] for i in whole_archs])]
    trials = pd.concat([pd.DataFrame(rows), whole], ignore_index=True)
    exp = write_experiment(
        tmp_path / "exp",
        trials,
        ["influence", "random", "whole"],
        whole_top={"k": K},
        **({"data_shape": SHAPE} | more),
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


def _macs(arch: str) -> int:
    """MACs of one forward pass of a fixture architecture on SHAPE, in closed form: each
    block a 3x3 convolution at its input's size (average pooling halves it), then the head."""
    width, depth = int(arch.split("-")[0][1:]), int(arch.split("-")[1][1:])
    size, cin, total = SHAPE["image_size"], SHAPE["in_channels"], 0
    for _ in range(depth):
        total += size * size * width * cin * 9
        size, cin = size // 2, width
    return total + width * size * size * SHAPE["num_classes"]


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
        assert row["whole_top"] == K and row["confirmed"] == K and row["pick_seeds"] == len(SEEDS)
        assert np.isnan(row["regret"])  # not every architecture has a whole-split result
        assert row["exhaustive_estimated"]
        assert row["cost_ratio"] == pytest.approx(
            (row["proxy_s"] + row["confirm_s"]) / row["exhaustive_s"]
        )


def _costed_experiment(tmp_path: Path, wall: dict[str, float], failed: set = frozenset()) -> Path:
    """Every proxy unit, and whole-split units of the archs of ``wall`` (arch -> wall_s,
    both seeds); the (arch, seed) pairs of ``failed`` failed after 0.05 s."""
    rows = trials_of("influence", INFLUENCE + SHIFT, 0.5, wall=1.0)
    rows += trials_of("random", RANDOM + SHIFT, 0.5, wall=2.0)
    whole = pd.DataFrame(trials_of("whole", WHOLE_VAL + SHIFT, WHOLE_TEST, wall=0.0))
    whole = whole[whole["arch"].isin(wall)].reset_index(drop=True)
    whole["wall_s"] = whole["arch"].map(wall)
    bad = [(a, s) in failed for a, s in zip(whole["arch"], whole["seed"], strict=True)]
    whole.loc[bad, ["status", "wall_s", "val_acc", "test_acc"]] = ["failed", 0.05, np.nan, np.nan]
    trials = pd.concat([pd.DataFrame(rows), whole], ignore_index=True)
    names = ["influence", "random", "whole"]
    return write_experiment(tmp_path / "exp", trials, names, whole_top={"k": K}, data_shape=SHAPE)


def test_the_estimated_exhaustive_cost_is_macs_times_images_per_architecture(
    tmp_path: Path,
) -> None:
    """Units whose time is proportional to MACs x images give back the exact cost of the
    whole split on every architecture; the old per-image rate of the confirmed (here the
    cheapest) units does not. Then with noise: a recomputation by hand."""
    cheap = sorted(ARCHS, key=_macs)[:4]  # confirmed: the 4 cheapest of 12, ~30x apart
    n = 1000  # images of the whole split (trials_of)
    per_mac = 2e-9
    wall = {a: per_mac * _macs(a) * n for a in cheap}
    row = make_report(_costed_experiment(tmp_path / "a", wall), n_boot=5).outcome.iloc[0]
    truth = sum(per_mac * _macs(a) * n for a in ARCHS) * len(SEEDS)
    assert row["exhaustive_estimated"] and row["exhaustive_s"] == pytest.approx(truth)

    rng = np.random.default_rng(5)
    noisy = {a: per_mac * _macs(a) * n * rng.uniform(0.5, 2.0) for a in cheap}
    row = make_report(_costed_experiment(tmp_path / "b", noisy), n_boot=5).outcome.iloc[0]
    ran = sum(noisy.values()) * len(SEEDS)
    rate = ran / (sum(_macs(a) * n for a in cheap) * len(SEEDS))
    expected = ran + rate * sum(_macs(a) * n for a in ARCHS if a not in cheap) * len(SEEDS)
    assert row["exhaustive_estimated"] and row["exhaustive_s"] == pytest.approx(expected)


def test_a_failed_whole_unit_leaves_the_exhaustive_cost_estimated(tmp_path: Path) -> None:
    """Every (arch, seed) of the whole split is stored but one failed after 0.05 s: the
    exhaustive cost is not "measured"; that unit is estimated from its architecture."""
    wall = {a: 1e-9 * _macs(a) * 1000 for a in ARCHS}
    exp = _costed_experiment(tmp_path, wall, failed={(ARCHS[-1], 1)})
    row = make_report(exp, n_boot=5).outcome.iloc[0]
    assert row["exhaustive_estimated"]
    assert row["exhaustive_s"] == pytest.approx(sum(wall.values()) * len(SEEDS))
    assert "(estimated)" in outcome_lines(exp)[0]


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


def test_without_the_image_shape_the_estimate_is_n_a_and_says_why(tmp_path: Path) -> None:
    """A manifest from before the image shape was recorded: no estimate, and the line says
    how to get one."""
    exp = _experiment(tmp_path, _top(INFLUENCE, K), data_shape=None)
    row = make_report(exp, n_boot=5).outcome.iloc[0]
    assert np.isnan(row["exhaustive_s"]) and np.isnan(row["cost_ratio"])
    assert outcome_lines(exp)[0].endswith(
        "cost n/a (the manifest does not record the image"
        " shape the estimate needs: a rerun of the search"
        " records it)"
    )


def test_table1_and_the_outcome_measure_regret_against_the_proxy_s_own_archs(
    tmp_path: Path,
) -> None:
    """One regret for both: against the best of the proxy's own architectures, n/a until
    every one of them has a whole-split result. With only the confirmed union on the whole
    split both say n/a (Table 1 used to take the union's best, which other proxies' lists
    decide); with influence sweeping 6 of the 12 and the whole split on all 12, both
    measure influence against its 6."""
    confirmed = sorted(set(_top(INFLUENCE, K)) | set(_top(RANDOM, K)))
    res = make_report(_experiment(tmp_path / "union", confirmed), top_k=K, n_boot=5)
    assert (
        res.table.set_index("train_set")[["regret"]].loc[["influence", "random"]].isna().all().all()
    )
    assert res.outcome["regret"].isna().all()

    mine = ARCHS[:6]
    rows = [r for r in trials_of("influence", INFLUENCE + SHIFT, 0.5, 1.0) if r["arch"] in mine]
    rows += trials_of("random", RANDOM + SHIFT, 0.5, wall=2.0)
    rows += trials_of("whole", WHOLE_VAL + SHIFT, WHOLE_TEST, wall=10.0)
    exp = write_experiment(
        tmp_path / "own", pd.DataFrame(rows), ["influence", "random", "whole"],
        whole_top={"k": K}, data_shape=SHAPE,
    )  # fmt: skip
    manifest = json.loads((exp / "manifest.json").read_text())
    manifest["train_sets"]["influence"]["archs"] = mine
    (exp / "manifest.json").write_text(json.dumps(manifest))
    res = make_report(exp, top_k=K, n_boot=5)
    table, outcome = res.table.set_index("train_set"), res.outcome.set_index("train_set")
    test_mean = WHOLE_TEST.mean(axis=0)
    assert test_mean[:6].max() < test_mean.max()  # the best of all 12 is not influence's
    for name, proxy, own in (("influence", INFLUENCE[:6], 6), ("random", RANDOM, 12)):
        best = test_mean[:own].max()
        top1 = int(np.argmax(proxy))  # every seed ranks alike (SHIFT is per seed)
        assert table.loc[name, "regret"] == pytest.approx(best - test_mean[top1]), name
        pick = ARCHS.index(outcome.loc[name, "pick"])
        assert outcome.loc[name, "regret"] == pytest.approx(best - test_mean[pick]), name


def _with_record(tmp_path: Path, whole_top: dict | None) -> Path:
    """Every proxy and whole-split unit, and ``whole_top`` as the manifest's record."""
    rows = trials_of("influence", INFLUENCE + SHIFT, 0.5, wall=1.0)
    rows += trials_of("random", RANDOM + SHIFT, 0.5, wall=2.0)
    rows += trials_of("whole", WHOLE_VAL + SHIFT, WHOLE_TEST, wall=10.0)
    more = {} if whole_top is None else {"whole_top": whole_top}
    names = ["influence", "random", "whole"]
    return write_experiment(tmp_path / "exp", pd.DataFrame(rows), names, **more, data_shape=SHAPE)


def test_the_outcome_reads_k_and_the_lists_the_search_recorded(tmp_path: Path) -> None:
    """K and the lists come from the manifest's record (named as the search writes them),
    not recomputed from the trials nor taken from Table 1's top-k: here each proxy's
    recorded list is its two *worst* architectures, and its pick the better of them."""
    worst = {n: _top(-p, 2) for n, p in (("influence", INFLUENCE), ("random", RANDOM))}
    lists = {n: [ARCHS[i] for i in w] for n, w in worst.items()}
    record = {"whole_top": 2, "whole_by": "all", "shortlists": lists}
    got = make_report(_with_record(tmp_path, record), top_k=5, n_boot=5).outcome
    for name, row in got.set_index("train_set").iterrows():
        assert row["whole_top"] == 2 and row["shortlisted"] == 2 and row["confirmed"] == 2
        assert row["pick"] == ARCHS[max(worst[name], key=lambda i: WHOLE_VAL[i])]


def test_a_record_without_k_is_refused_and_no_record_is_said(tmp_path: Path) -> None:
    """K never falls back silently to Table 1's top-k: a record without K is refused; a
    search that recorded none (no --whole-top) gets top-k as K, and a note says so."""
    with pytest.raises(NasproxyError, match="'whole_top' record is damaged"):
        make_report(_with_record(tmp_path / "a", {"shortlists": {}}), top_k=5, n_boot=5)
    res = make_report(_with_record(tmp_path / "b", None), top_k=4, n_boot=5)
    assert set(res.outcome["whole_top"]) == {4}
    assert [n for n in res.notes if "no --whole-top" in n and "top-4" in n]
    assert "no --whole-top" in res.paths["md"].read_text()
