"""Where a method comes from: built-in names, plug-ins (MODULE:FUNCTION, FILE.py, entry
points) and the pipeline building every registered method."""

from __future__ import annotations

import re
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from nasproxy.errors import NasproxyError
from nasproxy.influence.head import RefitHead
from nasproxy.proxies import METHODS, registry
from nasproxy.proxies.proxy_file import load_proxy, read_proxy
from nasproxy.scoring import scoring_run
from tests.proxies.common import NEW, TINY, K, build, cli, first_k, flat

PROXIES = Path(__file__).resolve().parents[2] / "nasproxy" / "proxies"


def test_every_builtin_method_is_the_module_of_its_name():
    """The catalogue of docs/methods.md; each name resolves, on use, to ``select`` of
    nasproxy/proxies/<name>.py, and every other module there is shared by all methods."""
    assert set(METHODS) == {
        *("influence", "random", "herding", "forgetting"),
        *("el2n", "grand", "kcenter", "ccs", "entropy"),
    }
    for name in METHODS:
        method = registry.resolve(name)
        assert method.builtin and method.select.__module__ == f"nasproxy.proxies.{name}"
    shared = {"__init__", "base", "build", "draws", "from_indices", "proxy_file", "registry"}
    assert {p.stem for p in PROXIES.glob("*.py")} - shared == set(METHODS)


def test_plugin_method_gives_a_valid_proxy_file(digits, cache, plugin, tmp_path, capsys):
    out = tmp_path / "p.json"
    assert cli(cache, out, "--method", "my_selector:first") == 0
    record = read_proxy(out)
    assert load_proxy(out, digits).tolist() == first_k(digits)
    assert record["method"] == "my_selector:first"
    assert record["params"]["source"] == "my_selector:first"
    head = RefitHead.load_or_fit(
        scoring_run(digits, TINY, cache, "cpu"), TINY.backbone_weight_decay
    )
    assert record["epsilon"] == pytest.approx(head.epsilon(np.array(first_k(digits))))
    assert record["diagnostics"]["kept"] == head.diagnostics(np.array(first_k(digits)))
    # the FILE.py:FUNCTION form imports the same function
    out2 = tmp_path / "p2.json"
    assert cli(cache, out2, "--method", f"{plugin / 'my_selector.py'}:first") == 0
    assert load_proxy(out2, digits).tolist() == first_k(digits)


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
    assert cli(cache, out, "--method", f"my_selector:{function}") == 2
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
    assert flat(record) == first_k(digits)


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
    assert cli(cache, out, "--method", spec) == 2
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
    monkeypatch.setattr("nasproxy.search.sweep.load_dataset", _no_scoring_run)  # no work at all
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
    preset = Preset(methods=("firstk",), per_class=K, scoring=TINY)
    lines: list[str] = []
    for version in ("1.0", "1.0", "2.0"):
        (dist / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: my-selector\nVersion: {version}\n"
        )
        (path,) = build_proxies(preset, digits, tmp_path / "proxies", cache, "cpu", lines.append)
        assert read_proxy(path)["params"]["source"] == f"my_selector:first (my-selector {version})"
    said = [line.split(":")[1].strip() for line in lines if line.startswith("proxy firstk")]
    assert said == ["building 5 per class", f"reusing {path}", "building 5 per class"]


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
        scoring=TINY,
    )
    paths = build_proxies(preset, digits, tmp_path / "proxies", cache, device="cpu")
    assert [p.stem for p in paths] == [*NEW, "random", "firstk"]
    for path, method in zip(paths, preset.methods, strict=True):
        assert read_proxy(path)["method"] == method
        assert len(load_proxy(path, digits)) == K * digits.num_classes
    with pytest.raises(NasproxyError, match="unknown method.*nope.*choose from influence"):
        build_proxies(replace(preset, methods=("nope",)), digits, tmp_path, cache)


def _no_scoring_run(*args, **kwargs):
    raise AssertionError("a scoring run was made")


@pytest.mark.parametrize(
    "body, described",
    [("return None", "NoneType"), ("return (i for i in range(50))", "generator")],
)
def test_a_plugin_result_that_is_no_sequence_is_described_by_its_type(
    cache, tmp_path, capsys, body, described
):
    module = tmp_path / "odd_selector.py"
    module.write_text(f"def select(ctx):\n    {body}\n")
    out = tmp_path / "p.json"
    assert cli(cache, out, "--method", f"{module}:select") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert (
        err == f"nasproxy: error: method '{module}:select' gave {described}, not a list of indices"
    )
    assert not out.exists()
