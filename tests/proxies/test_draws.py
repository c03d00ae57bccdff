"""Draws and budgets of a proxy: a draw seed fixes the selection, another seed gives another
one (random: another sample; a scoring-run method: another scoring run), a method with no
randomness builds once and says so, and a bad family is refused before any work."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nasproxy.cli import main
from nasproxy.errors import NasproxyError
from nasproxy.proxies import registry
from nasproxy.proxies.draws import (
    ProxyDraw,
    build_draws,
    check_family,
    draw_name,
    parse_budgets,
    plan_draws,
)
from nasproxy.proxies.proxy_file import read_proxy, selection_hash
from nasproxy.proxies.random import random_per_class
from tests.proxies.common import TINY, K, first_k, flat


def draws(digits, cache: Path, method: str, budgets, seeds) -> dict[tuple, dict]:
    """Records of ``build_draws`` by (per_class, draw)."""
    built = build_draws(digits, registry.resolve(method), budgets, seeds, cache, TINY, device="cpu")
    return {(d.per_class, d.draw): record for d, record in built}


def test_a_random_draw_is_its_seed_s_sample(digits, tmp_path):
    """Each draw of random keeps the sample of its seed (recomputed here), the same seed
    twice gives the same selection, and two seeds two different ones; each record says
    its method, budget and draw."""
    first = draws(digits, tmp_path, "random", [K, 2 * K], [0, 1])
    again = draws(digits, tmp_path, "random", [K], [1])
    assert sorted(first) == [(K, 0), (K, 1), (2 * K, 0), (2 * K, 1)]
    labels = digits.y_train.numpy()
    for (per_class, seed), record in first.items():
        assert flat(record) == random_per_class(labels, per_class, seed).tolist()
        assert (record["method"], record["per_class"], record["draw"]) == (
            "random",
            per_class,
            seed,
        )
    assert json.dumps(again[(K, 1)]["indices"]) == json.dumps(first[(K, 1)]["indices"])
    assert selection_hash(again[(K, 1)]) == selection_hash(first[(K, 1)])
    assert flat(first[(K, 0)]) != flat(first[(K, 1)])


def test_a_scoring_run_draw_trains_its_own_scoring_run(digits, cache, tmp_path):
    """Herding has no seed of its own: its draws differ through their scoring runs, each
    seeded by the draw. A draw rebuilt in an empty cache (its scoring run trained again)
    keeps the same images from the same scoring run bytes; another seed, other ones."""
    built = draws(digits, cache, "herding", [K], [0, 1])
    rebuilt = draws(digits, tmp_path, "herding", [K], [1])[(K, 1)]
    zero, one = built[(K, 0)], built[(K, 1)]
    assert (zero["backbone"]["seed"], one["backbone"]["seed"]) == (0, 1)
    assert zero["backbone_hash"] != one["backbone_hash"]
    assert flat(zero) != flat(one)
    assert rebuilt["backbone_hash"] == one["backbone_hash"]
    assert json.dumps(rebuilt["indices"]) == json.dumps(one["indices"])
    assert one["draw"] == 1


def test_a_method_without_randomness_builds_one_draw_and_says_so(
    digits, cache, tmp_path, capsys, monkeypatch
):
    """A selection made elsewhere is the same whatever the seed: --seeds 0,1,2 builds one
    proxy, recorded with draw null, and one line says why."""
    monkeypatch.chdir(tmp_path)
    kept = tmp_path / "sel.txt"
    kept.write_text(" ".join(map(str, first_k(digits))))
    argv = ["build-proxy", "--from-indices", str(kept), "--seeds", "0,1,2", "--dataset", "digits"]
    assert main([*argv, "--data-root", str(cache), "--device", "cpu"]) == 0
    out, err = capsys.readouterr()
    assert "from-indices has no randomness" in err and "one draw built, from seed 0" in err
    files = sorted((tmp_path / "results" / "proxies").iterdir())
    assert [f.name for f in files] == [f"digits-from-indices-{K}-s0.json"]
    record = read_proxy(files[0])
    assert record["draw"] is None and flat(record) == first_k(digits)


def test_a_plug_in_that_declares_no_randomness_is_planned_once(tmp_path, monkeypatch):
    (tmp_path / "fixed_pick.py").write_text(
        "def pick(ctx):\n    return []\n\npick.deterministic = True\n\n"
        "def drawn(ctx):\n    return []\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    fixed, drawn = registry.resolve("fixed_pick:pick"), registry.resolve("fixed_pick:drawn")
    plan = plan_draws([fixed, drawn, registry.resolve("herding")], [5, 10], [3, 4])
    assert plan == [
        ProxyDraw("fixed_pick:pick", 5, 3, None),
        ProxyDraw("fixed_pick:pick", 10, 3, None),
        *(ProxyDraw("fixed_pick:drawn", k, s, s) for k in (5, 10) for s in (3, 4)),
        *(ProxyDraw("herding", k, s, s) for k in (5, 10) for s in (3, 4)),
    ]
    assert [draw_name(d.method, d.per_class, d.draw) for d in plan[:3]] == [
        "fixed_pick:pick-pc5",
        "fixed_pick:pick-pc10",
        "fixed_pick:drawn-pc5-d3",
    ]


def test_a_cli_family_writes_one_file_a_budget_and_draw(digits, cache, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = ["build-proxy", "--method", "random", "--per-class", f"{K},{2 * K}", "--seeds", "4,7"]
    assert main([*argv, "--dataset", "digits", "--data-root", str(cache)]) == 0
    labels = digits.y_train.numpy()
    for per_class in (K, 2 * K):
        for seed in (4, 7):
            record = read_proxy(
                tmp_path / f"results/proxies/digits-random-{per_class}-s{seed}.json"
            )
            assert record["draw"] == seed and record["per_class"] == per_class
            assert flat(record) == random_per_class(labels, per_class, seed).tolist()


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--per-class", "5,10,5"], "--per-class repeats 5"),
        (["--seeds", "0,1,0"], "--seeds repeats 0"),
        (["--per-class", "5,500"], "per-class budget 500 exceeds class"),
        (["--per-class", "5,0"], "per-class budget must be at least 1"),
        (["--per-class", "5,x"], "--per-class: want integers"),
        (["--seeds", "0,-1"], "seeds: want a count N"),
        (["--seeds", "0,4294967296"], "--seeds: a seed must be from 0"),
        (["--seed", "1", "--seeds", "0,1"], "either --seed or --seeds"),
        (["--seeds", "0,1", "--out", "p.json"], "--out names one file, this builds 2"),
        (["--seeds", "0,1", "--backbone-seed", "3"], "--backbone-seed would give every draw"),
    ],
)
def test_a_bad_family_is_refused_in_one_line_before_any_work(
    tmp_path, monkeypatch, capsys, extra, message
):
    monkeypatch.chdir(tmp_path)
    argv = ["build-proxy", "--method", "herding", "--dataset", "digits", "--device", "cpu"]
    assert main([*argv, "--data-root", str(tmp_path / "cache"), *extra]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nasproxy: error: ") and message in err and err.count("\n") == 1
    assert not (tmp_path / "results").exists() and not (tmp_path / "p.json").exists()
    assert not (tmp_path / "cache" / "scoring").exists()


def test_check_family_and_parse_budgets() -> None:
    assert parse_budgets("10, 50,100,500") == (10, 50, 100, 500)
    assert parse_budgets("100") == (100,)
    with pytest.raises(NasproxyError, match="budgets repeats 50"):
        check_family([10, 50, 50], [0], budget_name="budgets")
    check_family([10, 50], [0, 1, 2])  # distinct: nothing to refuse


def test_a_draw_s_scoring_run_is_not_shared_with_an_explicit_backbone_seed(digits, cache):
    """Without seed_scoring every draw reads the given scoring run (the draws then differ
    only where the method uses its own seed: here, k-center's first centre)."""
    built = build_draws(
        digits,
        registry.resolve("kcenter"),
        [K],
        [0, 1],
        cache,
        replace(TINY, backbone_seed=0),
        device="cpu",
        seed_scoring=False,
    )
    records = [record for _, record in built]
    assert {r["backbone"]["seed"] for r in records} == {0}
    assert len({r["backbone_hash"] for r in records}) == 1
    assert np.any(np.array(flat(records[0])) != np.array(flat(records[1])))
