"""Building a proxy (any method), measuring its epsilon and saying where it comes from, and
the build-proxy command; the file itself: test_proxy_file.py, --from-indices:
test_from_indices.py."""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import nasproxy.proxies.build as build_module
from nasproxy.cli import main
from nasproxy.errors import NasproxyError
from nasproxy.influence.estimate import parameter_influence, per_example_gradients, refit_head
from nasproxy.influence.head import RefitHead
from nasproxy.provenance import cpu_model
from nasproxy.proxies.build import build_proxy
from nasproxy.proxies.proxy_file import load_proxy, read_proxy, selection_hash
from nasproxy.scoring import DEFAULT_BACKBONE, artifact_dir, scoring_run
from tests.proxies.common import NEW, TINY, K, build, cli, first_k, flat, no_scoring_run


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


def test_methods_are_class_balanced_and_deterministic(records, digits, cache):
    labels = digits.y_train.numpy()
    for method, record in records.items():
        assert record["method"] == method and record["n_images"] == K * digits.num_classes
        assert sorted(record["indices"]) == sorted(digits.classes)
        for c, name in enumerate(digits.classes):
            members = record["indices"][name]
            assert len(members) == K and members == sorted(members)
            assert np.all(labels[members] == c)
        again = build(digits, cache, method)
        assert again["indices"] == record["indices"], method
        assert again["epsilon"] == pytest.approx(record["epsilon"], rel=1e-12)
    assert records["random"]["indices"] != build(digits, cache, "random", seed=1)["indices"]


def test_records_name_the_scoring_run_they_read(records, artifact):
    for record in records.values():
        assert record["backbone_hash"] == artifact.hash
        assert record["backbone"]["id"] == TINY.backbone


def test_a_proxy_file_records_where_it_and_its_scoring_run_ran(digits, cache, artifact):
    """The build's threads, machine, CPU model and torch, and its scoring run's (one thread,
    whatever the build's count); a cheap proxy without a scoring run records its own."""
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        records = [build(digits, cache, m) for m in ("herding", "random")]
    finally:
        torch.set_num_threads(before)
    here = {
        "device": "cpu",
        "threads": 2,
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "torch": torch.__version__,
    }
    assert [r["platform"] for r in records] == [here, here]
    assert records[0]["backbone"]["platform"] == {**here, "threads": 1}
    assert records[0]["backbone"]["platform"] == artifact.meta["platform"]
    # the selection's hash does not read where it ran
    assert selection_hash(records[0]) == selection_hash({**records[0], "platform": None})


def test_a_scoring_run_cached_by_an_earlier_version_builds_with_no_platform(
    digits, artifact, tmp_path
):
    """meta.json of an earlier version has no platform: the proxy says null, not a guess."""
    path = artifact_dir(tmp_path, digits, TINY)
    path.parent.mkdir(parents=True)
    shutil.copytree(artifact.path, path)
    meta = json.loads((path / "meta.json").read_text())
    del meta["platform"]
    (path / "meta.json").write_text(json.dumps(meta))
    record = build_proxy(digits, "herding", K, 0, tmp_path, TINY, device="cpu")
    assert record["backbone_hash"] == artifact.hash
    assert record["backbone"]["platform"] is None and record["platform"]["threads"] >= 1


def test_epsilon_and_diagnostics_match_a_direct_recomputation(records, digits, cache):
    artifact = scoring_run(digits, TINY, cache, device="cpu")
    labels = digits.y_train.numpy()
    l2 = TINY.backbone_weight_decay
    # an independent refit from zeros reaches the same optimum (J is strongly convex)
    head, info = refit_head(artifact.features, labels, digits.num_classes, l2)
    influence = parameter_influence(artifact.features, labels, head, l2, dtype=np.float64)
    grads = per_example_gradients(artifact.features, labels, head)
    x = torch.from_numpy(artifact.features).double()
    losses = F.cross_entropy(head(x), torch.from_numpy(labels), reduction="none").detach()
    for method, record in records.items():
        kept = np.array(flat(record))
        removed = np.setdiff1d(np.arange(len(labels)), kept)
        expected = np.linalg.norm(influence[removed].sum(axis=0))
        assert record["epsilon"] == pytest.approx(expected, rel=1e-5), method
        diag = record["diagnostics"]
        assert diag["kept"]["loss"] == pytest.approx(losses[kept].mean().item(), rel=1e-6)
        assert diag["all"]["loss"] == pytest.approx(losses.mean().item(), rel=1e-6)
        norms = np.linalg.norm(grads, axis=1)
        assert diag["kept"]["grad_norm"] == pytest.approx(norms[kept].mean(), rel=1e-6)
        assert diag["all"]["grad_norm"] == pytest.approx(norms.mean(), rel=1e-6)
        assert record["params"]["head_l2"] == l2
        assert record["params"]["head_grad_norm"] < 1e-8


@pytest.mark.parametrize(
    "method, per_class, options, message",
    [
        ("random", 126, {}, "exceeds class '8', which has 125"),
        ("random", 0, {}, "at least 1"),
        ("kmeans", 5, {}, "unknown proxy method 'kmeans'"),
        ("no_such_module:pick", 5, {}, "cannot import no_such_module"),
        ("influence", 5, {"solver": "annealing"}, "unknown solver 'annealing'"),
        ("influence", 5, {"objective": "max"}, "unknown objective 'max'"),
        ("influence", None, {"epsilon": 1.0, "solver": "relax"}, "no epsilon form"),
        ("random", None, {"epsilon": 1.0}, "influence method only"),
        ("influence", 5, {"epsilon": 1.0}, "not both"),
        ("random", None, {}, "per-class budget is required"),
    ],
)
def test_bad_requests_are_refused_before_training(
    digits, tmp_path, method, per_class, options, message
):
    with pytest.raises(NasproxyError, match=message):
        build(digits, tmp_path, method, per_class, **options)
    assert not (tmp_path / "scoring").exists()


def test_cli_build_proxy(digits, cache, tmp_path, capsys):
    out = tmp_path / "proxy.json"
    argv = ["build-proxy", "--method", "forgetting", "--per-class", str(K), "--dataset", "digits"]
    argv += ["--data-root", str(cache), "--backbone", TINY.backbone, "--backbone-epochs", "2"]
    argv += ["--device", "cpu", "--out", str(out)]
    assert main(argv) == 0
    assert str(out) in capsys.readouterr().out
    np.testing.assert_array_equal(load_proxy(out, digits), flat(build(digits, cache, "forgetting")))

    assert main([*argv[:4], "500", *argv[5:]]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nasproxy: error: per-class budget 500 exceeds") and "\n" not in err


def test_cheap_proxies_make_no_scoring_run_and_say_where_epsilon_comes_from(
    digits, tmp_path, monkeypatch, capsys
):
    """random and a selection made elsewhere read no scoring run: none is trained for them;
    their epsilon comes from a cached run, or from one made when --measure-epsilon asks."""
    cache = tmp_path / "cache"
    kept = tmp_path / "sel.txt"
    kept.write_text(" ".join(map(str, first_k(digits))))
    with monkeypatch.context() as m:
        m.setattr("nasproxy.proxies.build.scoring_run", no_scoring_run)
        for how in (["--method", "random"], ["--from-indices", str(kept)]):
            assert cli(cache, tmp_path / "p.json", *how) == 0
            record = read_proxy(tmp_path / "p.json")
            assert record["epsilon"] is None and record["epsilon_from"] is None
            assert record["timings"]["scoring_s"] == 0.0
            assert "epsilon not measured" in capsys.readouterr().out
        with pytest.raises(AssertionError, match="a scoring run was made"):
            cli(cache, tmp_path / "p.json", "--method", "herding")  # herding reads it
    assert not (cache / "scoring").exists()

    assert cli(cache, tmp_path / "p.json", "--method", "random", "--measure-epsilon") == 0
    record = read_proxy(tmp_path / "p.json")
    assert record["epsilon_from"] == "a scoring run made to measure it"
    assert "(from a scoring run made to measure it)" in capsys.readouterr().out
    head = RefitHead.load_or_fit(
        scoring_run(digits, TINY, cache, "cpu"), TINY.backbone_weight_decay
    )
    kept_indices = np.array(flat(record))
    assert record["epsilon"] == pytest.approx(head.epsilon(kept_indices))
    assert cli(cache, tmp_path / "q.json", "--from-indices", str(kept)) == 0  # now cached
    record = read_proxy(tmp_path / "q.json")
    assert record["epsilon_from"] == "a cached scoring run"
    assert record["epsilon"] == pytest.approx(head.epsilon(np.array(first_k(digits))))
    assert cli(cache, tmp_path / "r.json", "--method", "random", "--no-measure-epsilon") == 0
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


def test_build_does_not_import_solver_dependencies():
    code = (
        "import sys, nasproxy.proxies.build, nasproxy.proxies.registry\n"
        "print(sorted(m for m in ('pulp', 'cvxpy', 'nasproxy.proxies.influence') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_cli_help_names_the_library_default_backbone(capsys: pytest.CaptureFixture) -> None:
    """build-proxy's help states the scoring network the library actually defaults to."""
    with pytest.raises(SystemExit):
        main(["build-proxy", "--help"])
    assert DEFAULT_BACKBONE in "".join(capsys.readouterr().out.split())  # wrapped at hyphens


def test_build_proxy_refuses_a_missing_solver_library_before_the_scoring_run(
    tmp_path, cache_root, monkeypatch, capsys
):
    def no_scoring(*args, **kwargs):
        raise AssertionError("the scoring run started for a solver that cannot run")

    monkeypatch.setitem(sys.modules, "cvxpy", None)
    monkeypatch.setattr(build_module, "scoring_run", no_scoring)
    argv = ["build-proxy", "--method", "influence", "--solver", "relax", "--per-class", "5"]
    argv += ["--dataset", "digits", "--data-root", str(cache_root)]
    assert main([*argv, "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "nasproxy[solvers]" in err
    assert not (tmp_path / "p.json").exists()
