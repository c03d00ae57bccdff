"""The baselines (EL2N, GraNd, k-center, CCS, entropy), plug-in methods, --from-indices,
the disk cache of the refitted head, and the layout of the proxies package."""

from __future__ import annotations

import ast
import itertools
import json
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import stats
from threadpoolctl import threadpool_limits

from nasproxy.cli import main
from nasproxy.errors import NasproxyError
from nasproxy.influence.head import RefitHead, check_memory, head_cache
from nasproxy.proxies import registry
from nasproxy.proxies.base import ProxyOptions, top_per_class
from nasproxy.proxies.build import build_proxy, load_proxy, read_proxy
from nasproxy.proxies.ccs import ccs_per_class, stratified_sample
from nasproxy.proxies.el2n import el2n_scores
from nasproxy.proxies.entropy import entropy_per_class, sampling_weights, softmax_entropy
from nasproxy.proxies.grand import grand_scores
from nasproxy.proxies.kcenter import k_center_greedy, k_center_per_class
from nasproxy.scoring import DEFAULT_BACKBONE, ScoringConfig, build_backbone, scoring_run

TINY = ScoringConfig(backbone="w8-d3-relu-instancenorm-avgpooling", epochs=2, seed=0)
K = 5
NEW = ("el2n", "grand", "kcenter", "ccs", "entropy")
PROXIES = Path(__file__).resolve().parents[1] / "nasproxy" / "proxies"


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("methods")


@pytest.fixture(scope="module")
def artifact(digits, cache):
    return scoring_run(digits, TINY, cache, device="cpu")


def build(digits, cache, method, per_class=K, seed=0, **options):
    return build_proxy(
        digits, method, per_class, seed, cache, TINY, ProxyOptions(**options), device="cpu"
    )


def _flat(record) -> list[int]:
    return sorted(i for members in record["indices"].values() for i in members)


# --- EL2N and GraNd ---------------------------------------------------------------------


def test_el2n_hand_computed():
    probs = np.array([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1], [1.0, 0.0, 0.0]])
    scores = el2n_scores(probs, np.array([0, 2, 0]))
    expected = [np.sqrt(0.3**2 + 0.2**2 + 0.1**2), np.sqrt(0.7**2 + 0.2**2 + 0.9**2), 0.0]
    np.testing.assert_allclose(scores, expected)


def test_grand_equals_autograd_of_the_last_layer():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(12, 7))
    y = rng.integers(0, 4, size=12)
    layer = torch.nn.Linear(7, 4, dtype=torch.float64)
    probs = torch.softmax(layer(torch.from_numpy(x)), dim=1).detach().numpy()
    expected = []
    for i in range(12):
        layer.zero_grad()
        loss = F.cross_entropy(layer(torch.from_numpy(x[i : i + 1])), torch.tensor([y[i]]))
        loss.backward()
        grads = torch.cat([layer.weight.grad.flatten(), layer.bias.grad])
        expected.append(grads.norm().item())
    np.testing.assert_allclose(grand_scores(probs, x, y), expected, rtol=1e-10)


def test_el2n_and_grand_keep_the_highest_scores(digits, cache, artifact):
    labels = digits.y_train.numpy()
    el2n = build(digits, cache, "el2n")
    scores = el2n_scores(artifact.probs, labels)
    assert _flat(el2n) == top_per_class(scores, labels, K, 0).tolist()
    grand = build(digits, cache, "grand")
    g = grand_scores(artifact.probs, artifact.features, labels)
    kept = np.array(_flat(grand))
    for c in range(digits.num_classes):
        members = np.flatnonzero(labels == c)
        rest = np.setdiff1d(members, kept)
        assert g[kept[labels[kept] == c]].min() >= g[rest].max()


# --- k-center greedy --------------------------------------------------------------------


def _k_center_brute_force(x: np.ndarray, k: int, first: int) -> list[int]:
    """The greedy rule with an explicit distance matrix and loops."""
    dist = np.sqrt(((x[:, None, :] - x[None, :, :]) ** 2).sum(-1))
    chosen = [first]
    while len(chosen) < k:
        best, best_d = -1, -1.0
        for i in range(len(x)):
            if i not in chosen and min(dist[i, j] for j in chosen) > best_d:
                best, best_d = i, min(dist[i, j] for j in chosen)
        chosen.append(best)
    return chosen


def _radius(x: np.ndarray, centers) -> float:
    d = np.sqrt(((x[:, None, :] - x[None, list(centers), :]) ** 2).sum(-1))
    return float(d.min(axis=1).max())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_k_center_matches_brute_force_and_is_within_twice_the_optimum(seed):
    x = np.random.default_rng(seed).normal(size=(14, 3)) * [1, 3, 0.5]
    order = k_center_greedy(x, 4, first=seed)
    assert order.tolist() == _k_center_brute_force(x, 4, seed)
    optimum = min(_radius(x, c) for c in itertools.combinations(range(14), 4))
    assert _radius(x, order) <= 2 * optimum + 1e-12


def test_k_center_never_repeats_on_duplicates():
    x = np.zeros((6, 2))
    assert sorted(k_center_greedy(x, 6, first=2).tolist()) == list(range(6))


def test_k_center_per_class_is_seeded():
    rng = np.random.default_rng(0)
    x, labels = rng.normal(size=(60, 3)), np.repeat(np.arange(3), 20)
    a = k_center_per_class(x, labels, 4, seed=1)
    np.testing.assert_array_equal(a, k_center_per_class(x, labels, 4, seed=1))
    assert np.bincount(labels[a]).tolist() == [4, 4, 4]
    assert any(not np.array_equal(a, k_center_per_class(x, labels, 4, seed=s)) for s in range(2, 6))


# --- CCS --------------------------------------------------------------------------------


def test_ccs_hand_computed():
    # one class: eight easy (0), then 5, 10 and one far outlier (100). beta = 1/11 prunes
    # the outlier; two equal-width strata over [0, 10] hold {eight 0s} and {5, 10}. With a
    # budget of 4 the small stratum gives min(2, 4 // 2) = 2, the other the remaining 2.
    scores = np.array([0.0] * 8 + [5.0, 10.0, 100.0])
    labels = np.zeros(11, dtype=np.int64)
    for seed in range(10):
        kept = ccs_per_class(scores, labels, 4, seed, beta=1 / 11, strata=2)
        assert {8, 9} <= set(kept.tolist()) and 10 not in kept
        assert len(kept) == 4 and set(kept.tolist()) - {8, 9} <= set(range(8))


def test_ccs_spreads_the_budget_evenly_over_strata():
    # four strata of sizes 1, 3, 10, 30 and a budget of 12: 1, then min(3, 11 // 3) = 3,
    # then min(10, 8 // 2) = 4, then the remaining 4
    scores = np.concatenate([[0.5], np.full(3, 1.5), np.full(10, 2.5), np.full(30, 3.5)])
    scores = np.concatenate([[0.0], scores, [4.0]])  # the range ends: [0, 4], 4 bins
    picked = stratified_sample(scores[1:-1], 12, 4, np.random.default_rng(0))
    counts = np.bincount(np.floor(scores[1:-1][picked]).astype(int), minlength=4)
    assert counts.tolist() == [1, 3, 4, 4]


@pytest.mark.parametrize("seed", range(5))
def test_ccs_fills_the_budget_exactly_and_drops_the_hardest(seed):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(3), [40, 55, 70])
    scores = rng.exponential(size=len(labels)) ** 2
    kept = ccs_per_class(scores, labels, 17, seed, beta=0.3, strata=7)
    assert np.bincount(labels[kept]).tolist() == [17, 17, 17]
    for c in range(3):
        members = np.flatnonzero(labels == c)
        hardest = members[np.argsort(-scores[members])[: int(0.3 * len(members))]]
        assert not set(hardest.tolist()) & set(kept.tolist())
    np.testing.assert_array_equal(kept, ccs_per_class(scores, labels, 17, seed, 0.3, 7))


def test_ccs_refuses_a_budget_above_what_the_cutoff_leaves():
    with pytest.raises(NasproxyError, match="fewer than the budget"):
        ccs_per_class(np.arange(10.0), np.zeros(10, dtype=int), 8, 0, beta=0.3)


# --- entropy (Na et al.) ----------------------------------------------------------------


def test_softmax_entropy_matches_scipy():
    probs = np.random.default_rng(0).dirichlet(np.ones(5), size=20)
    probs[0] = [1, 0, 0, 0, 0]
    np.testing.assert_allclose(softmax_entropy(probs), stats.entropy(probs, axis=1))


def test_entropy_weights_hand_computed():
    # log10 bins of width 0.5: six examples in [-1, -0.5), two in [-3, -2.5), one in
    # [0, 0.5). Bin weights max - count + 1 = 1, 5, 6; per example 1/6, 5/2, 6; total 12.
    entropy = np.array([0.2] * 6 + [0.002] * 2 + [2.0])
    expected = np.array([1 / 72] * 6 + [5 / 24] * 2 + [1 / 2])
    np.testing.assert_allclose(sampling_weights(entropy), expected)


def test_entropy_sampling_follows_the_weights():
    probs = np.array([[0.9, 0.1]] * 6 + [[0.999, 0.001]] * 2 + [[0.5, 0.5]])
    labels = np.zeros(9, dtype=np.int64)
    draws = np.array([entropy_per_class(probs, labels, 1, s)[0] for s in range(3000)])
    observed = np.bincount(draws, minlength=9)
    expected = sampling_weights(softmax_entropy(probs)) * 3000
    assert stats.chisquare(observed, expected).pvalue > 1e-3
    a = entropy_per_class(probs, labels, 4, seed=7)
    np.testing.assert_array_equal(a, entropy_per_class(probs, labels, 4, seed=7))


# --- every new method end to end on digits ----------------------------------------------


@pytest.mark.parametrize("method", NEW)
def test_new_methods_build_valid_deterministic_proxies(digits, cache, method):
    record = build(digits, cache, method)
    labels = digits.y_train.numpy()
    assert record["method"] == method and record["n_images"] == K * digits.num_classes
    for c, name in enumerate(digits.classes):
        assert len(record["indices"][name]) == K
        assert np.all(labels[record["indices"][name]] == c)
    assert record["epsilon"] > 0 and "source" not in record["params"]
    assert build(digits, cache, method)["indices"] == record["indices"]


# --- plug-in methods and --from-indices -------------------------------------------------

PLUGIN = '''
import numpy as np

def first(ctx):
    """The first K of each class (a valid selection)."""
    labels = ctx.labels
    return np.concatenate([np.flatnonzero(labels == c)[: ctx.budget()] for c in range(10)])

def boom(ctx):
    raise ValueError("no GPU here\\nsecond line")

def short(ctx):
    return first(ctx)[1:]

def outside(ctx):
    return np.append(first(ctx)[:-1], 10**6)

def twice(ctx):
    kept = first(ctx)
    return np.append(kept[:-1], kept[0])

def floats(ctx):
    return first(ctx).astype(float)

NOT_A_FUNCTION = 3
'''


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    (tmp_path / "my_selector.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_selector", None)


def _cli(cache, out, *extra):
    argv = ["build-proxy", "--per-class", str(K), "--dataset", "digits", "--device", "cpu"]
    argv += ["--data-root", str(cache), "--backbone", TINY.backbone, "--backbone-epochs", "2"]
    return main([*argv, "--out", str(out), *extra])


def _first_k(digits) -> list[int]:
    labels = digits.y_train.numpy()
    return sorted(int(i) for c in range(10) for i in np.flatnonzero(labels == c)[:K])


def test_plugin_method_gives_a_valid_proxy_file(digits, cache, plugin, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert _cli(cache, out, "--method", "my_selector:first") == 0
    record = read_proxy(out)
    assert load_proxy(out, digits).tolist() == _first_k(digits)
    assert record["method"] == "my_selector:first"
    assert record["params"]["source"] == "my_selector:first"
    head = RefitHead.load_or_fit(scoring_run(digits, TINY, cache, "cpu"), TINY.weight_decay)
    assert record["epsilon"] == pytest.approx(head.epsilon(np.array(_first_k(digits))))
    assert record["diagnostics"]["kept"] == head.diagnostics(np.array(_first_k(digits)))
    # the FILE.py:FUNCTION form imports the same function
    out2 = tmp_path / "p2.json"
    assert _cli(cache, out2, "--method", f"{plugin / 'my_selector.py'}:first") == 0
    assert load_proxy(out2, digits).tolist() == _first_k(digits)


@pytest.mark.parametrize(
    "function, message",
    [
        ("boom", "method 'my_selector:boom' failed (ValueError: no GPU here)"),
        ("short", "method 'my_selector:short' gave 4 images of class '0', expected 5"),
        ("outside", "method 'my_selector:outside' gave index 1000000, outside the train split"),
        ("twice", "method 'my_selector:twice' gave index 0 more than once"),
        ("floats", "method 'my_selector:floats' gave an array of shape (50,) and dtype float64"),
        ("NOT_A_FUNCTION", "method 'my_selector:NOT_A_FUNCTION' is not a function"),
        ("missing", "method 'my_selector:missing': my_selector has no 'missing'"),
    ],
)
def test_bad_plugin_is_one_line_and_writes_nothing(
    digits, cache, plugin, tmp_path, capsys, function, message
):
    out = tmp_path / "bad.json"
    assert _cli(cache, out, "--method", f"my_selector:{function}") == 2
    err = capsys.readouterr().err.strip().splitlines()  # progress lines, then the error
    assert err[-1].startswith(f"nasproxy: error: {message}"), err
    assert not any("Traceback" in line or "nasproxy: error" in line for line in err[:-1])
    assert not out.exists() and not list(tmp_path.glob(".bad.json*"))


def test_entry_point_plugin(digits, cache, plugin, tmp_path, monkeypatch):
    dist = plugin / "my_selector-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-selector\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[nasproxy.methods]\nfirstk = my_selector:first\nrandom = my_selector:boom\n"
    )
    assert "firstk" in registry.method_names()
    assert registry.resolve("random").builtin  # a built-in name wins over a plug-in's
    record = build(digits, cache, "firstk")
    assert record["method"] == "firstk"
    assert record["params"]["source"] == "my_selector:first (my-selector 1.0)"
    assert _flat(record) == _first_k(digits)


EXITS = """
import sys

def leave(ctx):
    sys.exit(0)

def ctrl_c(ctx):
    raise KeyboardInterrupt
"""


@pytest.mark.parametrize(
    "spec, message",
    [
        ("exits:leave", "method 'exits:leave' failed (it called sys.exit(0))"),
        ("exits:ctrl_c", "method 'exits:ctrl_c' failed (KeyboardInterrupt)"),
        ("exit_on_import:f", "method 'exit_on_import:f': cannot import exit_on_import (it "
         "called sys.exit(3))"),
        ("ctrl_c_on_import:f", "method 'ctrl_c_on_import:f': cannot import ctrl_c_on_import "
         "(KeyboardInterrupt)"),
        ("exitpoint", "method 'exitpoint': cannot load exit_on_import:f (my-selector 1.0) (it "
         "called sys.exit(3))"),
    ],
)  # fmt: skip
def test_a_plugin_that_exits_or_raises_ctrl_c_is_one_line(
    digits, cache, plugin, tmp_path, capsys, spec, message
):
    """sys.exit() or KeyboardInterrupt in a plug-in, on import or call: exit 2, one line
    naming it, nothing written (not a silent exit, not a Ctrl-C's 130)."""
    (plugin / "exits.py").write_text(EXITS)
    (plugin / "exit_on_import.py").write_text("import sys\nsys.exit(3)\n")
    (plugin / "ctrl_c_on_import.py").write_text("raise KeyboardInterrupt\n")
    dist = plugin / "my_selector-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-selector\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nasproxy.methods]\nexitpoint = exit_on_import:f\n")
    out = tmp_path / "p.json"
    for module in ("exits", "exit_on_import", "ctrl_c_on_import"):
        sys.modules.pop(module, None)
    assert _cli(cache, out, "--method", spec) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == f"nasproxy: error: {message}", err
    assert not out.exists() and not list(tmp_path.glob(".p.json*"))


@pytest.mark.parametrize("name", ["../evil", "a/b", "x y"])
def test_a_plugin_name_that_is_a_path_is_refused_before_any_work(
    plugin, tmp_path, monkeypatch, name
):
    from nasproxy.pipeline import run_pipeline
    from nasproxy.presets import Preset

    dist = plugin / "my_selector-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-selector\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(f"[nasproxy.methods]\n{name} = my_selector:first\n")
    assert name in registry.method_names()
    monkeypatch.setattr("nasproxy.pipeline.load_dataset", _no_scoring_run)  # no work at all
    results_dir = tmp_path / "results"
    with pytest.raises(NasproxyError, match=f"method name {re.escape(repr(name))} cannot"):
        run_pipeline(Preset(methods=(name,)), "exp", results_dir=results_dir)
    assert not results_dir.exists() and sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["my_selector.py", "my_selector-1.0.dist-info"]
    )


def test_an_upgraded_plugin_does_not_reuse_its_old_proxy_file(digits, cache, plugin, tmp_path):
    from nasproxy.pipeline import build_proxies
    from nasproxy.presets import Preset

    dist = plugin / "my_selector-1.0.dist-info"
    dist.mkdir()
    (dist / "entry_points.txt").write_text("[nasproxy.methods]\nfirstk = my_selector:first\n")
    preset = Preset(methods=("firstk",), per_class=K, backbone=TINY.backbone, backbone_epochs=2)
    lines: list[str] = []
    for version in ("1.0", "1.0", "2.0"):
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: my-selector\nVersion: {version}\n"
        )
        (path,) = build_proxies(preset, digits, tmp_path / "proxies", cache, "cpu", lines.append)
        assert read_proxy(path)["params"]["source"] == f"my_selector:first (my-selector {version})"
    said = [line.split(":")[1].strip() for line in lines if line.startswith("proxy firstk")]
    assert said == ["building 5 per class", f"reusing {path}", "building 5 per class"]


@pytest.mark.parametrize("suffix", [".txt", ".json", ".npy"])
def test_from_indices(digits, cache, tmp_path, suffix):
    kept = _first_k(digits)[::-1]  # any order
    path = tmp_path / f"sel{suffix}"
    if suffix == ".npy":
        np.save(path, np.array(kept, dtype=np.int32))
    elif suffix == ".json":
        path.write_text(json.dumps(kept))
    else:
        path.write_text(", ".join(map(str, kept[:10])) + "\n" + " ".join(map(str, kept[10:])))
    out = tmp_path / "p.json"
    assert _cli(cache, out, "--from-indices", str(path), "--measure-epsilon") == 0
    record = read_proxy(out)
    assert record["method"] == "from-indices" and str(path) in record["params"]["source"]
    assert load_proxy(out, digits).tolist() == sorted(kept)
    head = RefitHead.load_or_fit(scoring_run(digits, TINY, cache, "cpu"), TINY.weight_decay)
    assert record["epsilon"] == pytest.approx(head.epsilon(np.array(kept)))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.txt", "1 2 x", "'x' is not an integer"),
        ("a.json", '{"indices": [1]}', "not a JSON list of integers"),
        ("a.json", "[1, 2", "not valid JSON"),
        ("a.txt", "1 2 3", "images of class"),
        ("a.txt", "-1", "gave index -1, outside the train split"),
        ("obj.npy", None, "not a plain .npy"),
    ],
)
def test_bad_indices_file_is_one_line(digits, cache, tmp_path, capsys, name, content, message):
    path = tmp_path / name
    if content is None:
        np.save(path, np.array([1, "a"], dtype=object), allow_pickle=True)
    else:
        path.write_text(content)
    out = tmp_path / "p.json"
    assert _cli(cache, out, "--from-indices", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and not out.exists()  # refused before training


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("a.txt", "1 --3", "'--3' is not an integer"),
        ("a.txt", "1 \u00b2", "'\u00b2' is not an integer"),
        ("a.txt", "1 2.0", "'2.0' is not an integer"),
        ("a.npz", "npz2", "holds 2 arrays, not one"),
        ("a.npz", "garbage", "not a plain .npz"),
        ("a.pt", "binary", "is not text"),
        ("a.NPY", "pickle", "not a plain .npy"),
        ("a.json", "binary", "not valid JSON"),
    ],
)
def test_odd_indices_files_are_one_line(digits, cache, tmp_path, capsys, name, content, message):
    """Tokens int() or str.isdigit() take differently, and binary files under any name."""
    path = tmp_path / name
    kept = np.array(_first_k(digits))
    if content == "npz2":
        np.savez(path, a=kept, b=kept)
    elif content == "pickle":
        np.save(tmp_path / "x.npy", np.array([1, "a"], dtype=object), allow_pickle=True)
        (tmp_path / "x.npy").rename(path)
    elif content in ("binary", "garbage"):
        path.write_bytes(b"\x80\x04\x95" + bytes(range(256)))
    else:
        path.write_text(content, encoding="utf-8")
    out = tmp_path / "p.json"
    assert _cli(cache, out, "--from-indices", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".npz", ".NPY", ".TXT"])
def test_from_indices_reads_npz_and_any_case_and_infers_the_budget(
    digits, cache, tmp_path, suffix, monkeypatch
):
    """No --per-class: the file keeps K of every class, so the proxy does; nothing trains."""
    kept = np.array(_first_k(digits), dtype=np.int64)
    path = tmp_path / f"sel{suffix}"
    if suffix == ".npz":
        np.savez(path, kept=kept)
    elif suffix == ".NPY":
        np.save(tmp_path / "x.npy", kept)
        (tmp_path / "x.npy").rename(path)
    else:
        path.write_text(" ".join(map(str, kept)))
    monkeypatch.setattr("nasproxy.proxies.build.scoring_run", _no_scoring_run)
    out = tmp_path / "p.json"
    argv = ["build-proxy", "--dataset", "digits", "--data-root", str(tmp_path / "empty")]
    assert main([*argv, "--from-indices", str(path), "--out", str(out)]) == 0
    record = read_proxy(out)
    assert record["per_class"] == K and load_proxy(out, digits).tolist() == kept.tolist()
    assert record["epsilon"] is None and record["backbone"] is None


def test_from_indices_without_a_budget_refuses_unequal_classes(digits, cache, tmp_path, capsys):
    kept = _first_k(digits)[1:]  # one image fewer of class '0'
    path = tmp_path / "sel.txt"
    path.write_text(" ".join(map(str, kept)))
    argv = ["build-proxy", "--dataset", "digits", "--data-root", str(cache)]
    assert main([*argv, "--from-indices", str(path), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"keeps {K - 1} images of class '0' but {K} of" in err and "\n" not in err


def _no_scoring_run(*args, **kwargs):
    raise AssertionError("a scoring run was made")


def test_cheap_proxies_make_no_scoring_run_and_say_where_epsilon_comes_from(
    digits, tmp_path, monkeypatch, capsys
):
    """random and a selection made elsewhere read no scoring run: none is trained for them;
    their epsilon comes from a cached run, or from one made when --measure-epsilon asks."""
    cache = tmp_path / "cache"
    kept = tmp_path / "sel.txt"
    kept.write_text(" ".join(map(str, _first_k(digits))))
    with monkeypatch.context() as m:
        m.setattr("nasproxy.proxies.build.scoring_run", _no_scoring_run)
        for how in (["--method", "random"], ["--from-indices", str(kept)]):
            assert _cli(cache, tmp_path / "p.json", *how) == 0
            record = read_proxy(tmp_path / "p.json")
            assert record["epsilon"] is None and record["epsilon_from"] is None
            assert record["timings"]["scoring_s"] == 0.0
            assert "epsilon not measured" in capsys.readouterr().out
        with pytest.raises(AssertionError, match="a scoring run was made"):
            _cli(cache, tmp_path / "p.json", "--method", "herding")  # herding reads it
    assert not (cache / "scoring").exists()

    assert _cli(cache, tmp_path / "p.json", "--method", "random", "--measure-epsilon") == 0
    record = read_proxy(tmp_path / "p.json")
    assert record["epsilon_from"] == "a scoring run made to measure it"
    assert "(from a scoring run made to measure it)" in capsys.readouterr().out
    head = RefitHead.load_or_fit(scoring_run(digits, TINY, cache, "cpu"), TINY.weight_decay)
    kept_indices = np.array(_flat(record))
    assert record["epsilon"] == pytest.approx(head.epsilon(kept_indices))
    assert _cli(cache, tmp_path / "q.json", "--from-indices", str(kept)) == 0  # now cached
    record = read_proxy(tmp_path / "q.json")
    assert record["epsilon_from"] == "a cached scoring run"
    assert record["epsilon"] == pytest.approx(head.epsilon(np.array(_first_k(digits))))
    assert _cli(cache, tmp_path / "r.json", "--method", "random", "--no-measure-epsilon") == 0
    assert read_proxy(tmp_path / "r.json")["epsilon"] is None


def test_epsilon_that_does_not_fit_memory_says_epsilon_is_why(digits, cache, monkeypatch):
    """random needs no S; only measuring its epsilon does, and the message says so."""
    scoring_run(digits, TINY, cache, "cpu")  # cached: random's epsilon is measured
    monkeypatch.setattr("nasproxy.influence.head._MEMORY_SHARE", 1e-12)
    with pytest.raises(NasproxyError, match=r"measuring the proxy's epsilon \(which needs"):
        build(digits, cache, "random")
    with pytest.raises(NasproxyError, match=r"^influence on a"):  # influence: S is the method
        build(digits, cache, "influence")
    record = build_proxy(digits, "random", K, 0, cache, TINY, device="cpu", measure=False)
    assert record["epsilon"] is None


def test_method_and_from_indices_are_exclusive(cache, tmp_path, capsys):
    assert _cli(cache, tmp_path / "p.json") == 2
    assert "give either --method or --from-indices" in capsys.readouterr().err


# --- the disk cache of the head, the factor and S ---------------------------------------


def _forbid_recomputation(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("recomputed although cached")

    for name in ("refit_head", "head_hessian", "parameter_influence"):
        monkeypatch.setattr(f"nasproxy.influence.head.{name}", refuse)


def test_second_build_reuses_head_factor_and_s(digits, tmp_path, monkeypatch):
    first = {m: build(digits, tmp_path, m) for m in ("influence", "random")}  # random: cached
    with monkeypatch.context() as m:
        _forbid_recomputation(m)
        again = {m_: build(digits, tmp_path, m_) for m_ in ("random", "influence", "ccs")}
    for method in ("random", "influence"):
        assert again[method]["indices"] == first[method]["indices"]
        assert again[method]["epsilon"] == pytest.approx(first[method]["epsilon"], rel=1e-9)


def test_damaged_cache_is_rebuilt(digits, tmp_path, monkeypatch):
    reference = build(digits, tmp_path, "influence")
    artifact = scoring_run(digits, TINY, tmp_path, device="cpu")
    folder = head_cache(artifact, TINY.weight_decay).folder
    files = sorted(folder.iterdir())
    assert {f.name for f in files} >= {"head.npz", "head.json", "influence.npz"}
    # flip bytes in the middle of S, truncate the head's data, break a JSON
    blob = bytearray((folder / "influence.npz").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (folder / "influence.npz").write_bytes(bytes(blob))
    (folder / "head.npz").write_bytes((folder / "head.npz").read_bytes()[:100])
    lines: list[str] = []
    record = build_proxy(
        digits, "influence", K, 0, tmp_path, TINY, device="cpu", progress=lines.append
    )
    assert record["indices"] == reference["indices"]
    assert record["epsilon"] == pytest.approx(reference["epsilon"], rel=1e-6)
    assert sum("is unusable" in line for line in lines) == 2
    (folder / "head.json").write_text("{not json")
    again = build(digits, tmp_path, "influence")
    assert again["indices"] == reference["indices"]
    # and the rebuilt entries verify again: nothing is recomputed now
    with monkeypatch.context() as m:
        _forbid_recomputation(m)
        assert build(digits, tmp_path, "influence")["indices"] == reference["indices"]


def test_cache_of_another_scoring_run_is_not_used(digits, tmp_path):
    build(digits, tmp_path, "herding")  # a method that makes the scoring run and the head
    artifact = scoring_run(digits, TINY, tmp_path, device="cpu")
    cache = head_cache(artifact, TINY.weight_decay)
    meta = json.loads((cache.folder / "head.json").read_text())
    meta["key"]["scoring_hash"] = "0" * 64
    (cache.folder / "head.json").write_text(json.dumps(meta))
    assert cache.load("head") is None and not (cache.folder / "head.npz").exists()


# --- defaults and layout ----------------------------------------------------------------


def test_cli_default_backbone_fits_influence_on_cifar10(monkeypatch):
    features = {}
    for backbone in (DEFAULT_BACKBONE, "w128-d3-relu-instancenorm-avgpooling"):
        model = _backbone(backbone)
        with torch.no_grad():
            features[backbone] = model.embed(torch.zeros(1, 3, 32, 32)).shape[1]
    assert features[DEFAULT_BACKBONE] == 512
    # on an 8 GiB host, CIFAR-10's 45,000-image train split: the default passes the memory
    # guard with S, the depth-3 net (2,048-d) is refused
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 8 * 2**30 // 4096}
    monkeypatch.setattr("os.sysconf", lambda name: pages[name])
    cpu = torch.device("cpu")
    check_memory(10 * (features[DEFAULT_BACKBONE] + 1), 45_000, cpu, with_influence=True)
    with pytest.raises(NasproxyError, match="needs about"):
        check_memory(10 * (features["w128-d3-relu-instancenorm-avgpooling"] + 1), 45_000, cpu, True)


def _backbone(backbone: str) -> torch.nn.Module:
    class Shape:
        in_channels, num_classes, image_size = 3, 10, 32

    return build_backbone(backbone, Shape())  # type: ignore[arg-type]


def test_build_does_not_import_solver_dependencies():
    code = (
        "import sys, nasproxy.proxies.build, nasproxy.proxies.registry\n"
        "print(sorted(m for m in ('pulp', 'cvxpy', 'nasproxy.proxies.influence') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_proxies_import_graph_runs_one_way():
    modules = {
        f"nasproxy.{path.parent.name}.{path.stem}".removesuffix(".__init__"): path
        for folder in (PROXIES, PROXIES.parent / "influence")
        for path in folder.glob("*.py")
    }
    graph = {}
    for module, path in modules.items():
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module:
                deps |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[module] = deps & set(modules)
    graph.pop("nasproxy.proxies", None)

    def reaches(start: str, target: str, seen: set[str]) -> bool:
        for dep in graph.get(start, ()):
            if dep == target or (dep not in seen and reaches(dep, target, seen | {dep})):
                return True
        return False

    cycles = [m for m in graph if reaches(m, m, {m})]
    assert cycles == []
    assert "nasproxy.influence.head" in graph["nasproxy.proxies.base"]
    # the machinery never reads the methods
    machinery = {m: d for m, d in graph.items() if m.startswith("nasproxy.influence")}
    assert not any(dep.startswith("nasproxy.proxies") for d in machinery.values() for dep in d)


def test_run_builds_every_registered_method(digits, cache, tmp_path, plugin):
    from nasproxy.pipeline import build_proxies
    from nasproxy.presets import PRESETS

    dist = plugin / "my_selector-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-selector\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[nasproxy.methods]\nfirstk = my_selector:first\n")
    preset = replace(
        PRESETS["smoke"],
        methods=(*NEW, "random", "firstk"),
        per_class=K,
        backbone=TINY.backbone,
        backbone_epochs=TINY.epochs,
    )
    paths = build_proxies(preset, digits, tmp_path / "proxies", cache, device="cpu")
    assert [p.stem for p in paths] == [*NEW, "random", "firstk"]
    for path, method in zip(paths, preset.methods, strict=True):
        assert read_proxy(path)["method"] == method
        assert len(load_proxy(path, digits)) == K * digits.num_classes
    with pytest.raises(NasproxyError, match="unknown method.*nope.*choose from influence"):
        build_proxies(replace(preset, methods=("nope",)), digits, tmp_path, cache)


def test_cli_help_names_the_library_default_backbone(capsys: pytest.CaptureFixture) -> None:
    """build-proxy's help states the scoring network the library actually defaults to."""
    with pytest.raises(SystemExit):
        main(["build-proxy", "--help"])
    assert DEFAULT_BACKBONE in "".join(capsys.readouterr().out.split())  # wrapped at hyphens
