"""The report's figures: PNG images whose size follows the number of panels and rows."""

from __future__ import annotations

import numpy as np
import pandas as pd

from nasproxy import plots

DPI = 120


def _size(png: bytes) -> tuple[int, int]:
    """(width, height) from a PNG's IHDR chunk."""
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


def _table(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    mid = rng.uniform(-0.5, 0.5, (n, 2))
    return pd.DataFrame(
        {
            "train_set": [f"set{i}" for i in range(n)],
            "spearman_all": mid[:, 0],
            "spearman_all_lo": mid[:, 0] - 0.2,
            "spearman_all_hi": mid[:, 0] + 0.2,
            "spearman_topk": mid[:, 1],
            "spearman_topk_lo": np.nan,  # an undefined interval is left out, not drawn
            "spearman_topk_hi": np.nan,
            "train_s": np.arange(1.0, n + 1),
            "perf_topk": rng.random(n),
            "perf_topk_std": np.nan,
        }
    )


def test_nine_panels_are_three_rows_of_three() -> None:
    x = np.linspace(0.5, 0.9, 12)
    panels = [plots.ScatterPanel(f"m{i}", x, x**2, x > 0.8) for i in range(9)]
    assert _size(plots.proxy_vs_whole(panels, 5)) == (round(4.2 * 3 * DPI), round(3.8 * 3 * DPI))
    assert _size(plots.proxy_vs_whole(panels[:2], 5)) == (round(4.2 * 2 * DPI), round(3.8 * DPI))


def test_the_correlation_figure_has_one_slot_per_training_set() -> None:
    assert _size(plots.correlations(_table(10), 5))[0] == round((1.3 * 10 + 2) * DPI)
    assert _size(plots.correlations(_table(1), 5))[0] == round(4.5 * DPI)  # the least width


def test_nothing_to_show_is_a_small_placeholder_image() -> None:
    placeholder = (5 * DPI, 3 * DPI)
    assert _size(plots.proxy_vs_whole([], 5)) == placeholder
    assert _size(plots.correlations(_table(0), 5)) == placeholder
    assert _size(plots.accuracy_vs_time(_table(3).assign(train_s=np.nan), 5)) == placeholder
    assert _size(plots.accuracy_vs_time(_table(3), 5)) == (round(5.5 * DPI), 4 * DPI)
