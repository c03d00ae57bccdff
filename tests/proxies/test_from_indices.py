"""``build-proxy --from-indices``: a selection made elsewhere read from .npy, .npz, JSON or
text, its budget inferred, and every odd or bad file refused in one line before training."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasproxy.cli import main
from nasproxy.influence.head import RefitHead
from nasproxy.proxies.proxy_file import load_proxy, read_proxy
from nasproxy.scoring import scoring_run
from tests.proxies.common import TINY, K, cli, first_k, no_scoring_run


@pytest.mark.parametrize("suffix", [".txt", ".json", ".npy"])
def test_from_indices(digits, cache, tmp_path, suffix):
    kept = first_k(digits)[::-1]  # any order
    path = tmp_path / f"sel{suffix}"
    if suffix == ".npy":
        np.save(path, np.array(kept, dtype=np.int32))
    elif suffix == ".json":
        path.write_text(json.dumps(kept))
    else:
        path.write_text(", ".join(map(str, kept[:10])) + "\n" + " ".join(map(str, kept[10:])))
    out = tmp_path / "p.json"
    assert cli(cache, out, "--from-indices", str(path), "--measure-epsilon") == 0
    record = read_proxy(out)
    assert record["method"] == "from-indices" and str(path) in record["params"]["source"]
    assert load_proxy(out, digits).tolist() == sorted(kept)
    head = RefitHead.load_or_fit(
        scoring_run(digits, TINY, cache, "cpu"), TINY.backbone_weight_decay
    )
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
    assert cli(cache, out, "--from-indices", str(path)) == 2
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
    kept = np.array(first_k(digits))
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
    assert cli(cache, out, "--from-indices", str(path)) == 2
    err = capsys.readouterr().err.strip()
    assert message in err and "\n" not in err and "Traceback" not in err, err
    assert not out.exists()


@pytest.mark.parametrize("suffix", [".npz", ".NPY", ".TXT"])
def test_from_indices_reads_npz_and_any_case_and_infers_the_budget(
    digits, cache, tmp_path, suffix, monkeypatch
):
    """No --per-class: the file keeps K of every class, so the proxy does; nothing trains."""
    kept = np.array(first_k(digits), dtype=np.int64)
    path = tmp_path / f"sel{suffix}"
    if suffix == ".npz":
        np.savez(path, kept=kept)
    elif suffix == ".NPY":
        np.save(tmp_path / "x.npy", kept)
        (tmp_path / "x.npy").rename(path)
    else:
        path.write_text(" ".join(map(str, kept)))
    monkeypatch.setattr("nasproxy.proxies.build.scoring_run", no_scoring_run)
    out = tmp_path / "p.json"
    argv = ["build-proxy", "--dataset", "digits", "--data-root", str(tmp_path / "empty")]
    assert main([*argv, "--from-indices", str(path), "--out", str(out)]) == 0
    record = read_proxy(out)
    assert record["per_class"] == K and load_proxy(out, digits).tolist() == kept.tolist()
    assert record["epsilon"] is None and record["backbone"] is None


def test_from_indices_without_a_budget_refuses_unequal_classes(digits, cache, tmp_path, capsys):
    kept = first_k(digits)[1:]  # one image fewer of class '0'
    path = tmp_path / "sel.txt"
    path.write_text(" ".join(map(str, kept)))
    argv = ["build-proxy", "--dataset", "digits", "--data-root", str(cache)]
    assert main([*argv, "--from-indices", str(path), "--out", str(tmp_path / "p.json")]) == 2
    err = capsys.readouterr().err.strip()
    assert f"keeps {K - 1} images of class '0' but {K} of" in err and "\n" not in err


def test_method_and_from_indices_are_exclusive(cache, tmp_path, capsys):
    assert cli(cache, tmp_path / "p.json") == 2
    assert "give either --method or --from-indices" in capsys.readouterr().err
