"""nasproxy.shortlist: scores over the "ok" seeds, each proxy's top K by the stated tie rule
(against brute force), and what is confirmed on the whole split. A sweep that trains the
shortlists is checked in tests/search/test_sweep.py."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest

from nasproxy import shortlist


def _brute_force_top(score: dict[str, float], k: int) -> set[str]:
    """The one k-subset whose every member beats every non-member: a higher score, or the
    same score and a smaller id."""
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


@pytest.mark.parametrize("seed", range(4))
def test_top_k_is_the_brute_force_top_with_ties_to_the_smaller_id(seed: int) -> None:
    rng = np.random.default_rng(seed)
    archs = [f"w{i}-arch" for i in rng.permutation(9)]
    score = pd.Series(rng.choice([0.25, 0.5, 0.75], 9), index=archs)  # ties are common
    for k in range(11):
        got = shortlist.top_k(score, k)
        assert set(got) == _brute_force_top(score.to_dict(), k), k
        assert got == sorted(got, key=lambda a: (-score[a], a))  # best first


def test_scores_average_the_ok_seeds_and_confirmed_is_the_union_in_order() -> None:
    rows = [
        ("p", "a", 0, "ok", 0.5),
        ("p", "a", 1, "ok", 0.7),
        ("p", "a", 2, "failed", math.nan),
        ("p", "b", 0, "diverged", math.nan),  # no "ok" unit: not ranked
        ("p", "c", 0, "ok", 0.2),
        ("q", "a", 0, "ok", 0.1),
        ("q", "c", 0, "ok", 0.9),
    ]
    trials = pd.DataFrame(rows, columns=["train_set", "arch", "seed", "status", "val_acc"])
    assert shortlist.scores(trials, "p").to_dict() == pytest.approx({"a": 0.6, "c": 0.2})
    assert shortlist.scores(trials, "p", ["c", "b"]).to_dict() == {"c": 0.2}
    lists = shortlist.shortlists(trials, {"p": ["a", "b", "c"], "q": ["a", "c"]}, 5)
    assert lists == {"p": ["a", "c"], "q": ["c", "a"]}
    assert shortlist.confirmed(lists) == ["a", "c"]
    assert shortlist.confirmed({"p": ["b", "a"], "q": ["a", "c"]}) == ["b", "a", "c"]
    assert shortlist.confirmed(lists, by="q") == ["c", "a"]


def test_a_training_set_sweeps_its_own_list_or_the_experiments() -> None:
    manifest = {"archs": ["x", "y"], "train_sets": {"p": {"archs": ["y"]}, "whole": {}}}
    assert shortlist.train_set_archs(manifest, "p") == ["y"]
    assert shortlist.train_set_archs(manifest, "whole") == ["x", "y"]  # an older manifest
    assert shortlist.train_set_archs(manifest, "absent") == ["x", "y"]
