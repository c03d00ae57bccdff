"""nasproxy.cells: both names of every NAS-Bench-201 cell, the benchmark's index order, and
the closed-form parameter and MAC counts, against figures published with the benchmark."""

from __future__ import annotations

import pytest

from nasproxy.cells import BENCHMARK_SIZE, OPS, Cell, all_cells
from nasproxy.errors import NasproxyError

# The benchmark's own checks of its index order: D-X-Y/AutoDL-Projects,
# exps/NATS-Bench/tss-collect.py, traverse_net() asserts the 0th, 9th and 123rd cell.
OFFICIAL_INDEX = {
    0: "|avg_pool_3x3~0|+|nor_conv_1x1~0|skip_connect~1|"
    "+|nor_conv_1x1~0|skip_connect~1|skip_connect~2|",
    9: "|avg_pool_3x3~0|+|none~0|none~1|+|skip_connect~0|none~1|nor_conv_3x3~2|",
    123: "|avg_pool_3x3~0|+|avg_pool_3x3~0|nor_conv_1x1~1|+|none~0|avg_pool_3x3~1|nor_conv_3x3~2|",
}

# Published CIFAR-10 costs (10 classes, 32x32x3): params in millions and FLOPs in millions
# (the benchmark's FLOPs count convolutions and the head, as ``macs`` does, plus the head's
# 10 biases, below the figures' last digit). D-X-Y/NATS-Bench ships three cells of the
# topology benchmark as test fixtures, fake_torch_dir/NATS-tss-v1_0-3ffb9-simple/
# 000000.pickle.pbz2, 000011.pickle.pbz2 and 000284.pickle.pbz2; their cifar10-valid
# results (hp 12, seed 777) record arch_str, params and flop:
PUBLISHED = [
    (0, OFFICIAL_INDEX[0], 0.129306, 15.64737),
    (
        11,
        "|nor_conv_3x3~0|+|nor_conv_3x3~0|avg_pool_3x3~1|+|none~0|nor_conv_3x3~1|avg_pool_3x3~2|",
        0.802426,
        113.95137,
    ),
    (
        284,
        "|skip_connect~0|+|skip_connect~0|skip_connect~1|+|none~0|nor_conv_1x1~1|none~2|",
        0.101306,
        11.71521,
    ),
]
# D-X-Y/NATS-Bench issue #36 quotes get_cost_info(..., 'cifar10', hp="12") of this cell:
# {'flops': 113.95137, 'params': 0.802426, ...} (its hp="200" figure is the legacy error
# that issue reports, fixed in nats_bench v1.6).
ISSUE_36 = (
    "|skip_connect~0|+|none~0|nor_conv_3x3~1|+|avg_pool_3x3~0|nor_conv_3x3~1|nor_conv_3x3~2|",
    0.802426,
    113.95137,
)


def test_every_cell_prints_back_from_both_forms() -> None:
    cells = all_cells()
    assert len(cells) == BENCHMARK_SIZE == 5**6
    for cell in cells:
        assert Cell.from_id(cell.id) == cell
        assert Cell.from_id(cell.benchmark) == cell
        assert set(cell.id) <= set("abcdefghijklmnopqrstuvwxyz0123456789.-")  # file-name safe
    assert len({c.id for c in cells}) == len({c.benchmark for c in cells}) == BENCHMARK_SIZE


def test_the_index_map_is_a_bijection_over_all_cells() -> None:
    seen = set()
    for index in range(BENCHMARK_SIZE):
        cell = Cell.from_index(index)
        assert cell.index == index
        seen.add(cell.ops)
    assert len(seen) == BENCHMARK_SIZE  # every 6-tuple of operations, once
    assert [c.index for c in all_cells()] == list(range(BENCHMARK_SIZE))


@pytest.mark.parametrize(("index", "text"), sorted(OFFICIAL_INDEX.items()))
def test_the_index_is_the_benchmarks(index: int, text: str) -> None:
    assert Cell.from_index(index).benchmark == text
    assert Cell.from_id(text).index == index


@pytest.mark.parametrize(("index", "text", "params_m", "flops_m"), PUBLISHED)
def test_counts_match_the_benchmarks_published_figures(
    index: int, text: str, params_m: float, flops_m: float
) -> None:
    cell = Cell.from_id(text)
    assert cell.index == index
    assert cell.param_count(3, 10, 32) == round(params_m * 1e6)
    assert abs(cell.macs(3, 10, 32) / 1e6 - flops_m) < 2e-5


def test_counts_match_the_figures_quoted_in_an_issue() -> None:
    text, params_m, flops_m = ISSUE_36
    cell = Cell.from_id(text)
    assert cell.param_count(3, 10, 32) == round(params_m * 1e6)
    assert abs(cell.macs(3, 10, 32) / 1e6 - flops_m) < 2e-5


def test_the_short_form_reads_node_by_node() -> None:
    cell = Cell.from_id("c3-no.c3-sk.c1.ap")
    assert cell.ops == (
        "nor_conv_3x3", "none", "nor_conv_3x3", "skip_connect", "nor_conv_1x1", "avg_pool_3x3"
    )  # fmt: skip
    assert cell.benchmark == (
        "|nor_conv_3x3~0|+|none~0|nor_conv_3x3~1|+|skip_connect~0|nor_conv_1x1~1|avg_pool_3x3~2|"
    )
    assert cell.op_counts() == dict(zip(OPS, (1, 1, 1, 2, 1), strict=True))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("|conv_5x5~0|+|none~0|none~1|+|none~0|none~1|none~2|", "unknown operation 'conv_5x5'"),
        ("|none~0|+|none~0|none~1|+|none~0|none~1|", "node 3 has 2 edge(s), it takes 3"),
        ("|none~0|+|none~0|none~1|", "2 node(s), a cell has 3"),
        ("|none~0|+|none~0|none~2|+|none~0|none~1|none~2|", "reads node '2', expected 1"),
        ("|none~1|+|none~0|none~1|+|none~0|none~1|none~2|", "reads node '1', expected 0"),
        ("|none|+|none~0|none~1|+|none~0|none~1|none~2|", "is not op~node"),
        ("c3-no.c9-sk.c3.ap", "unknown operation code 'c9'"),
        ("c3-no-sk.c3.ap", "node 2 has 1 edge(s), it takes 2"),
        ("c3-no.c3-sk.c3.ap-no", "4 node(s), a cell has 3"),
    ],
)
def test_a_bad_cell_is_one_line(text: str, message: str) -> None:
    with pytest.raises(NasproxyError, match=None) as info:
        Cell.from_id(text)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_an_image_the_reductions_cannot_halve_is_refused() -> None:
    cell = Cell.from_index(0)
    cell.check_input(8)
    with pytest.raises(NasproxyError, match="multiple of 4"):
        cell.check_input(30)
