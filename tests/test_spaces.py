"""nasproxy.spaces: the 720-ConvNet space's ids, closed-form parameter and MAC counts, bad
input, and the space files shipped with the package."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from nasproxy import spaces
from nasproxy.errors import NasproxyError
from nasproxy.models import build_model


def closed_form_params(a: spaces.Arch, cin: int, classes: int, size: int) -> int:
    """Count written out independently of Arch.param_count."""
    total, h = 0, size
    for i in range(a.depth):
        c_in = cin if i == 0 else a.width
        total += 9 * c_in * a.width + a.width  # conv weight + bias
        total += {
            "none": 0,
            "batchnorm": 2 * a.width,
            "instancenorm": 2 * a.width,
            "groupnorm": 2 * a.width,
            "layernorm": 2 * a.width * h * h,
        }[a.norm]
        if a.pool != "none":
            h //= 2
    return total + (a.width * h * h + 1) * classes


def test_convnet720_has_720_distinct_ids() -> None:
    space = spaces.load("convnet720")
    assert len(space) == 720
    assert len(set(space.ids)) == 720
    assert {a.width for a in space} == {32, 64, 128, 256}
    assert {a.depth for a in space} == {1, 2, 3, 4}
    assert {a.norm for a in space} == set(spaces.NORMS)


def test_id_round_trip_and_index() -> None:
    space = spaces.load("convnet720")
    for i in (0, 17, 476, 719):
        arch = space[i]
        assert spaces.Arch.from_id(arch.id) == arch
        assert space.index(arch.id) == i
    assert str(space.get("w128-d3-relu-instancenorm-avgpooling")) == (
        "w128-d3-relu-instancenorm-avgpooling"
    )


@pytest.mark.parametrize("cin,classes,size", [(3, 10, 32), (1, 10, 32), (3, 100, 28)])
def test_param_counts_match_closed_form_and_the_model(cin: int, classes: int, size: int) -> None:
    space = spaces.load("convnet720", image_size=size)
    for arch in space:
        expected = closed_form_params(arch, cin, classes, size)
        assert arch.param_count(cin, classes, size) == expected
    for arch in space[::37]:  # the built model agrees too
        model = build_model(arch, cin, classes, size)
        assert sum(p.numel() for p in model.parameters()) == closed_form_params(
            arch, cin, classes, size
        )


def test_macs_closed_form_for_one_arch() -> None:
    arch = spaces.Arch.from_id("w64-d2-relu-batchnorm-maxpooling")
    # conv1 32x32x64x3x9, conv2 16x16x64x64x9, head 64*8*8*10
    assert arch.macs(3, 10, 32) == 32 * 32 * 64 * 3 * 9 + 16 * 16 * 64 * 64 * 9 + 64 * 8 * 8 * 10


def test_depth_that_pools_below_one_pixel_is_refused_at_load(tmp_path) -> None:
    path = tmp_path / "deep.yaml"
    path.write_text(
        "name: deep\noptions:\n  width: [32]\n  depth: [6]\n  act: [relu]\n"
        "  norm: [none]\n  pool: [maxpooling]\n"
    )
    with pytest.raises(NasproxyError, match="below 1x1"):
        spaces.load(path, image_size=32)
    assert len(spaces.load(path, image_size=64)) == 1


def test_bad_space_input_gives_clear_errors(tmp_path) -> None:
    with pytest.raises(NasproxyError, match="unknown space"):
        spaces.load("no-such-space")
    with pytest.raises(NasproxyError, match="bad architecture id"):
        spaces.Arch.from_id("w12-relu")
    with pytest.raises(NasproxyError, match="unknown activation"):
        spaces.Arch.from_id("w32-d1-tanh-none-none")
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: bad\noptions:\n  width: [32]\n")
    with pytest.raises(NasproxyError, match="options lack"):
        spaces.load(bad)
    with pytest.raises(NasproxyError, match="not in space"):
        spaces.load("convnet720").index("w48-d1-relu-none-none")


REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_a_built_wheel_loads_the_shipped_space_from_another_folder(tmp_path: Path) -> None:
    """A wheel carries search_spaces/: installed outside the checkout, convnet720 loads."""
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 68:
        pytest.skip("building the wheel offline needs setuptools>=68 (.ci/run builds one)")
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    wheels, site = tmp_path / "wheels", tmp_path / "site"
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", wheels, REPO],
        check=True,
        cwd=tmp_path,
    )
    wheel = next(wheels.glob("nasproxy-*.whl"))
    subprocess.run([*pip, "install", "--no-deps", "--target", site, wheel], check=True)
    script = (
        "import sys, nasproxy; from nasproxy.cli import main; "
        "print(nasproxy.__file__, file=sys.stderr); sys.exit(main(['space', 'convnet720']))"
    )
    run = subprocess.run(
        [sys.executable, "-c", script],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(site)},
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert Path(run.stderr.strip()).is_relative_to(site)  # the wheel's copy, not the checkout
    expected = spaces.load(REPO / "search_spaces" / "convnet720.yaml")
    assert run.stdout.split() == expected.ids and len(expected) == 720


def test_the_shipped_spaces_are_the_repository_files() -> None:
    """The lookup by name reads the top-level search_spaces/ folder's files."""
    assert "convnet720" in spaces.available()
    shipped = spaces.resolve_path("convnet720")
    assert shipped.read_bytes() == (REPO / "search_spaces" / "convnet720.yaml").read_bytes()


GOOD_OPTIONS = {"width": "[8]", "depth": "[1]", "act": "[relu]", "norm": "[none]", "pool": "[none]"}


def space_file(tmp_path: Path, head: str = "name: s\nfamily: convnet\n", **options: str) -> Path:
    """A space file: ``head`` then an options mapping (GOOD_OPTIONS with ``options`` over it)."""
    merged = {**GOOD_OPTIONS, **options}
    body = "".join(f"  {k}: {v}\n" for k, v in merged.items() if v is not None)
    path = tmp_path / "s.yaml"
    path.write_text(f"{head}options:\n{body}")
    return path


@pytest.mark.parametrize(
    "head, options, message",
    [
        ("name: s\n", {"width": '["32"]'}, "options.width holds '32'; it takes positive integers"),
        ("name: s\n", {"depth": "[1.5]"}, "options.depth holds 1.5; it takes positive integers"),
        ("name: s\n", {"width": "[true]"}, "options.width holds True; it takes positive"),
        ("name: s\n", {"depth": "[0]"}, "options.depth holds 0"),
        ("name: s\n", {"act": "[1]"}, "options.act holds 1; choose from sigmoid"),
        ("name: s\n", {"norm": "[null]"}, "options.norm holds None"),
        ("name: s\n", {"pool": "maxpooling"}, "options.pool must be a non-empty list"),
        ("name: s\n", {"width": "[8, 8]"}, "options.width lists 8 twice"),
        ("name: s\n", {"kernel": "[3]"}, "unknown option kernel; the fields are width"),
        ("name: s\nwidths: [8]\n", {}, "unknown key widths; a space file has name, family"),
        ("name: s\nfamily: resnet\n", {}, "unknown family 'resnet'; choose from convnet, nb201"),
        ("family: convnet\n", {}, "'name' must be a non-empty string, got None"),
        ("name: 720\n", {}, "'name' must be a non-empty string, got 720"),
        ("name: ''\n", {}, "'name' must be a non-empty string"),
    ],
)
def test_every_schema_mistake_is_one_clear_error(
    tmp_path: Path, head: str, options: dict, message: str
) -> None:
    path = space_file(tmp_path, head, **options)
    with pytest.raises(NasproxyError) as caught:
        spaces.load(path)
    assert message in str(caught.value) and str(path) in str(caught.value)
    assert "\n" not in str(caught.value)


def test_a_good_file_loads_with_or_without_a_family(tmp_path: Path) -> None:
    """family is optional (convnet by default); the product is in FIELDS order."""
    path = space_file(tmp_path, "name: two\n", act="[relu, sigmoid]")
    assert spaces.load(path).name == "two"
    assert spaces.load(path).ids == ["w8-d1-relu-none-none", "w8-d1-sigmoid-none-none"]
    assert len(spaces.load(space_file(tmp_path, "name: two\nfamily: convnet\n"))) == 1
    with pytest.raises(NasproxyError, match="must be integers"):
        spaces.Arch(True, 1, "relu", "none", "none")  # type: ignore[arg-type]


def test_a_bad_space_file_stops_the_search_before_anything_is_written(
    tmp_path: Path, cache_root: Path, capsys
) -> None:
    """`width: [true]` used to pass the load and fail after the manifest was written."""
    from nasproxy.cli import main

    path = space_file(tmp_path, width="[true]")
    results = tmp_path / "results"
    argv = ["search", "--dataset", "digits", "--whole", "--name", "e", "--space", str(path)]
    argv += ["--runner", "local", "--results-dir", str(results), "--data-root", str(cache_root)]
    assert main(argv) == 2
    assert not (results / "e").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "options.width holds True" in err[0], err


# --- the nb201 family ---------------------------------------------------------------------


def test_nb201_lists_every_cell_in_the_benchmarks_index_order() -> None:
    space = spaces.load("nb201")
    assert len(space) == 15625
    assert [c.index for c in space] == list(range(15625))
    assert all(space.index(c.benchmark) == space.index(c.id) == c.index for c in space[:50])
    shipped = spaces.resolve_path("nb201")
    assert shipped.read_bytes() == (REPO / "search_spaces" / "nb201.yaml").read_bytes()


def test_an_nb201_file_with_fewer_ops_keeps_the_cells_of_only_those(tmp_path: Path) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("name: s\nfamily: nb201\noptions:\n  ops: [none, nor_conv_3x3]\n")
    space = spaces.load(path)
    assert len(space) == 2**6
    assert all(set(c.ops) <= {"none", "nor_conv_3x3"} for c in space)
    assert [c.index for c in space] == sorted(c.index for c in space)  # the benchmark's order
    for text, message in [
        ("  ops: [none, conv_5x5]\n", "options.ops holds 'conv_5x5'; choose from none"),
        ("  width: [8]\n", "unknown option width; the fields are ops"),
    ]:
        path.write_text(f"name: s\nfamily: nb201\noptions:\n{text}")
        with pytest.raises(NasproxyError, match=None) as caught:
            spaces.load(path)
        assert message in str(caught.value)


@pytest.mark.parametrize(
    ("text", "kind", "canonical"),
    [
        ("w32-d3-relu-instancenorm-avgpooling", spaces.Arch, "w32-d3-relu-instancenorm-avgpooling"),
        ("c3-no.c3-sk.c3.ap", spaces.Cell, "c3-no.c3-sk.c3.ap"),
        (
            "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_3x3~1|avg_pool_3x3~2|",
            spaces.Cell,
            "c3-no.c3-sk.c3.ap",
        ),
    ],
)
def test_parse_arch_reads_an_id_of_any_family(text: str, kind: type, canonical: str) -> None:
    arch = spaces.parse_arch(text)
    assert isinstance(arch, kind) and arch.id == str(arch) == canonical
    assert spaces.parse_arch(arch.id) == arch


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("resnet", "expected a ConvNet id"),
        ("w32-d3-relu", "expected e.g. w128-d3"),
        ("c3-no.c3-sk.c3", "node 3 has 2 edge(s)"),
        ("|nor_conv_3x3~0|+|none~0|", "2 node(s)"),
    ],
)
def test_parse_arch_refuses_a_bad_id_in_one_line(text: str, message: str) -> None:
    with pytest.raises(NasproxyError) as caught:
        spaces.parse_arch(text)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_describe_gives_ids_fields_and_counts() -> None:
    cell = spaces.parse_arch("c3-no.c3-sk.c3.ap")
    record = spaces.describe(cell, 3, 10, 32)
    assert record["id"] == "c3-no.c3-sk.c3.ap" and record["benchmark"] == cell.benchmark
    assert record["benchmark_index"] == cell.index
    assert record["edges"]["3<-0"] == "skip_connect"
    assert record["params"] == cell.param_count(3, 10, 32)
    conv = spaces.describe(spaces.parse_arch("w32-d1-relu-none-none"), 3, 10, 32)
    assert conv == {
        "id": "w32-d1-relu-none-none",
        **dict(zip(spaces.FIELDS, (32, 1, "relu", "none", "none"), strict=True)),
        "params": closed_form_params(spaces.Arch(32, 1, "relu", "none", "none"), 3, 10, 32),
        "macs": spaces.Arch(32, 1, "relu", "none", "none").macs(3, 10, 32),
    }
