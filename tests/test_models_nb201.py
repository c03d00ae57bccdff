"""nasproxy.models_nb201: the benchmark's network of a cell: its parameters, a cell's
operations summed node by node, and ``none`` edges as zeros."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from nasproxy.cells import Cell, all_cells
from nasproxy.models import build_model
from nasproxy.models_nb201 import CellBlock, CellNetwork


@pytest.mark.parametrize("index", [0, 11, 284, 9656, 15624])
@pytest.mark.parametrize(("cin", "classes", "size"), [(3, 10, 32), (1, 100, 8)])
def test_the_closed_form_counts_the_models_parameters(
    index: int, cin: int, classes: int, size: int
) -> None:
    cell = Cell.from_index(index)
    model = build_model(cell, cin, classes, size)
    assert isinstance(model, CellNetwork)
    assert sum(p.numel() for p in model.parameters()) == cell.param_count(cin, classes, size)


def test_the_all_conv3x3_cell_is_the_largest_and_the_all_none_cell_the_smallest() -> None:
    counts = {c.param_count(3, 10, 32) for c in all_cells()}
    all_conv3 = Cell(("nor_conv_3x3",) * 6)
    assert max(counts) == all_conv3.param_count(3, 10, 32)
    assert sum(p.numel() for p in build_model(all_conv3, 3, 10, 32).parameters()) == max(counts)
    assert min(counts) == Cell(("none",) * 6).param_count(3, 10, 32)


def test_a_parameter_free_cell_sums_its_edges_node_by_node() -> None:
    """sk-ap.sk-no.ap.sk: n1 = x, n2 = pool(x) + n1, n3 = 0 + pool(n1) + n2."""
    cell = Cell.from_id("sk-ap.sk-no.ap.sk")
    block = CellBlock(cell, 4)
    x = torch.randn(2, 4, 6, 6)

    def pool(t: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(t, 3, stride=1, padding=1, count_include_pad=False)

    expected = pool(x) + (pool(x) + x)
    torch.testing.assert_close(block(x), expected)


def test_a_cell_cut_off_from_its_input_outputs_zeros() -> None:
    cell = Cell.from_id("c3-c3.c3-no.no.no")  # every edge into the output node is none
    block = CellBlock(cell, 4)
    out = block(torch.randn(3, 4, 5, 5))
    assert out.shape == (3, 4, 5, 5) and not out.any()
    model = CellNetwork(cell, 3, 10, 16).eval()
    logits = model(torch.randn(2, 3, 16, 16))
    # the network's features are zeros, so every image gets the head's bias
    torch.testing.assert_close(logits, model.classifier.bias.expand(2, 10))


def test_features_are_the_last_stages_channels() -> None:
    model = build_model(Cell.from_index(3), 3, 10, 32)
    assert model.embed(torch.randn(2, 3, 32, 32)).shape == (2, 64)
