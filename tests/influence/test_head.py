"""The refitted head: S, epsilon, the memory guard, and its reuse from the disk cache."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_limits

from nasproxy.errors import NasproxyError
from nasproxy.influence.head import RefitHead, check_memory, head_cache
from nasproxy.proxies.build import build_proxy
from nasproxy.proxies.herding import herding_per_class
from nasproxy.proxies.proxy_file import read_proxy
from nasproxy.proxies.random import random_per_class
from nasproxy.scoring import DEFAULT_BACKBONE, build_backbone, scoring_run
from tests.proxies.common import TINY, K, build, cli, flat


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    return tmp_path_factory.mktemp("head")


def test_epsilon_from_s_equals_the_one_solve_path(digits, cache):
    artifact = scoring_run(digits, TINY, cache, device="cpu")
    kept = random_per_class(artifact.labels, 20, seed=3)
    solve = RefitHead.load_or_fit(artifact, TINY.backbone_weight_decay).removed_sum(kept)
    with_s = RefitHead.load_or_fit(artifact, TINY.backbone_weight_decay)
    with_s.influence()
    np.testing.assert_allclose(with_s.removed_sum(kept), solve, rtol=1e-4, atol=1e-9)


def test_influence_too_large_for_memory_is_refused(digits, cache, monkeypatch):
    artifact = scoring_run(digits, TINY, cache, device="cpu")
    head = RefitHead.load_or_fit(artifact, TINY.backbone_weight_decay)
    pages = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 1000}  # a 4 MB machine
    monkeypatch.setattr("os.sysconf", lambda name: pages[name])
    with pytest.raises(NasproxyError, match="1290-parameter head needs .* --backbone resnet18"):
        head.influence()
    with pytest.raises(NasproxyError, match="1290-parameter head"):
        head.epsilon(np.arange(10))


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
    folder = head_cache(artifact, TINY.backbone_weight_decay).folder
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


def test_herding_on_a_head_too_large_says_epsilon_needs_it_and_skips_it(
    digits, cache, tmp_path, monkeypatch, capsys
):
    """herding reads the scoring run's features, never the head: only measuring epsilon
    needs the head's memory, the message says so, and --no-measure-epsilon builds it."""
    artifact = scoring_run(digits, TINY, cache, device="cpu")
    monkeypatch.setattr("nasproxy.influence.head._MEMORY_SHARE", 1e-12)  # nothing fits
    assert cli(cache, tmp_path / "h.json", "--method", "herding") == 2
    err = capsys.readouterr().err  # progress lines, then one error line
    (line,) = [line for line in err.splitlines() if line.startswith("nasproxy: error:")]
    assert err.rstrip().endswith(line) and "Traceback" not in err
    assert line.startswith("nasproxy: error: measuring the proxy's epsilon (which needs the ")
    assert "herding itself does not" in line and "--no-measure-epsilon" in line
    assert not (tmp_path / "h.json").exists()
    assert cli(cache, tmp_path / "h.json", "--method", "herding", "--no-measure-epsilon") == 0
    assert "epsilon not measured (--no-measure-epsilon)" in capsys.readouterr().out
    record = read_proxy(tmp_path / "h.json")
    assert record["epsilon"] is None and record["epsilon_from"] is None
    expected = herding_per_class(artifact.features, artifact.labels, K)
    assert flat(record) == sorted(expected.tolist())
    assert record["backbone_hash"] == artifact.hash
