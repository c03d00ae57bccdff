"""The shortlist rule against brute force: the one k-subset whose every member beats every
non-member (a higher score, or the same score and a smaller id)."""

from __future__ import annotations

import itertools
import statistics

import numpy as np
import pandas as pd
import pytest

from nasproxy import shortlist

IDS = [f"a{i}" for i in (3, 10, 1, 7, 2, 5, 8)]  # string order is not list order


def _brute_force(score: dict[str, float], k: int) -> set[str]:
    k = min(k, len(score))
    found = [
        set(s)
        for s in itertools.combinations(score, k)
        if all(
            score[a] > score[b] or (score[a] == score[b] and a < b)
            for a in s
            for b in score
            if b not in s
        )
    ]
    assert len(found) == 1
    return found[0]


@pytest.mark.parametrize("seed", range(20))
def test_top_k_is_the_brute_force_subset_best_first(seed: int) -> None:
    rng = np.random.default_rng(seed)
    score = {a: float(v) for a, v in zip(IDS, rng.choice([0.25, 0.5, 0.75], len(IDS)), strict=True)}
    for k in range(1, len(IDS) + 2):
        top = shortlist.top_k(pd.Series(score), k)
        assert set(top) == _brute_force(score, k)
        assert [score[a] for a in top] == sorted((score[a] for a in top), reverse=True)


def test_scores_average_the_ok_seeds_only() -> None:
    rows = [
        ("random", 0, "a1", 0.5, "ok"),
        ("random", 1, "a1", 0.7, "ok"),
        ("random", 2, "a1", float("nan"), "diverged"),
        ("random", 0, "a2", float("nan"), "failed"),
        ("whole", 0, "a2", 0.9, "ok"),
        ("random", 0, "a3", 0.4, "ok"),
    ]
    trials = pd.DataFrame(rows, columns=["train_set", "seed", "arch", "val_acc", "status"])
    got = shortlist.scores(trials, "random")
    assert got.to_dict() == {"a1": pytest.approx(statistics.mean([0.5, 0.7])), "a3": 0.4}
    assert shortlist.scores(trials, "random", ["a3"]).to_dict() == {"a3": 0.4}
    # a2 has no ok unit on random: it is not ranked, so a shortlist of 3 has 2 members
    assert shortlist.shortlists(trials, {"random": ["a1", "a2", "a3"]}, 3) == {
        "random": ["a1", "a3"]
    }


def test_confirmed_is_one_list_or_the_union_in_first_seen_order() -> None:
    lists = {"random": ["a2", "a1"], "herding": ["a1", "a3"]}
    assert shortlist.confirmed(lists) == ["a2", "a1", "a3"]
    assert shortlist.confirmed(lists, "herding") == ["a1", "a3"]


def test_a_training_set_sweeps_its_own_archs_or_the_experiment_s() -> None:
    manifest = {"archs": ["a1", "a2"], "train_sets": {"whole": {"archs": ["a2"]}, "old": {}}}
    assert shortlist.train_set_archs(manifest, "whole") == ["a2"]
    assert shortlist.train_set_archs(manifest, "old") == ["a1", "a2"]


def test_proxy_sets_leave_out_the_whole_split_and_halvings_rungs() -> None:
    manifest = {
        "train_sets": {
            "random": {},
            "random@3": {"epochs": 3, "halving_rung": 1},
            "random@1": {"epochs": 1},  # asked for in full: a proxy like any
            "whole@2": {"epochs": 2},
            "whole": {},
        }
    }
    assert shortlist.proxy_sets(manifest) == ["random", "random@1", "whole@2"]
    assert shortlist.proxy_sets({}) == []
