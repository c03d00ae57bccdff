"""Table 1 as Markdown, CSV, LaTeX and terminal text: the conditions, one row per training
set in manifest order, and the cells of the named columns."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasproxy.report import TABLE_COLUMNS, format_summary, formats, make_report
from tests.report.experiments import ARCHS, SEEDS, read_table, trials_of, write_experiment


def test_markdown_has_protocol_and_one_row_per_train_set(controlled) -> None:
    exp, _, res = controlled
    md = (exp / "table1.md").read_text()
    rows = [ln.split("|")[1].strip() for ln in md.splitlines() if ln.startswith("| ")]
    assert rows == ["Train set", "random", "herding", "influence", "whole"]
    for needle in (
        "fp_1234abcd",
        "convnet720: 12 architectures swept of 720",
        "test-cpu",
        "abc1234",
        "seeds**: 0, 1",
        "epochs**: 2",
    ):
        assert needle in md
    assert list(res.table.columns) == list(TABLE_COLUMNS)


def test_csv_header_and_tex_caption_carry_the_conditions(controlled) -> None:
    exp, _, _ = controlled
    head = [ln for ln in (exp / "table1.csv").read_text().splitlines() if ln.startswith("#")]
    assert any("fp_1234abcd" in ln for ln in head)
    assert any("abc1234" in ln for ln in head)
    tex = (exp / "table1.tex").read_text()
    caption = next(ln for ln in tex.splitlines() if ln.startswith("\\caption{"))
    assert "fp\\_1234abcd" in caption and "test-cpu" in caption
    for name in ("random", "herding", "influence", "whole"):
        assert f"\n{name} & " in tex


def test_the_terminal_summary_shows_the_named_columns_of_each_row(controlled) -> None:
    """The summary's table has the terminal columns by name, each cell the value of that
    column of its row in table1.csv, formatted as documented (%, ±, s)."""
    exp, _, res = controlled
    text = format_summary(res)
    assert str(exp) in text and "table1.md" in text and "table1.csv" in text
    lines = text.splitlines()
    head = next(i for i, ln in enumerate(lines) if ln.startswith("Train set"))
    headers = [h for h in lines[head].split("  ") if h]
    assert [h.strip() for h in headers] == [
        "Train set",
        "Trials",
        "Perf. top-10 (%)",
        "Top-1 (%)",
        "Regret (pp)",
        "Spearman top-10 [95% CI]",
        "Spearman all [95% CI]",
        "Train time",
    ]
    t = read_table(exp / "table1.csv")
    for line in lines[head + 2 : head + 2 + len(t)]:
        cells = [c.strip() for c in line.split("  ") if c.strip()]
        r = t.loc[cells[0]]
        assert cells[1] == f"{r['trials_present']}/{r['trials_expected']}"
        assert cells[2] == (
            f"{100 * r['perf_topk']:.2f}"
            + (f" ± {100 * r['perf_topk_std']:.2f}" if cells[0] != "whole" else "")
        )
        s = r["train_s"]
        assert cells[-1] == (f"{s:.1f} s" if s < 120 else f"{s / 60:.1f} min")
    assert [ln.split()[0] for ln in lines[head + 2 : head + 2 + len(t)]] == list(t.index)


def test_text_shows_only_the_columns_asked_for(partial) -> None:
    _, _, res = partial
    text = formats.text(res.table, res.top_k, ("train_set", "trials")).splitlines()
    assert text[0].split() == ["Train", "set", "Trials"]
    rows = {ln.split()[0]: ln.split(maxsplit=1)[1] for ln in text[2:]}
    assert rows == {
        "random": "21/24 (3 missing)",
        "influence": "24/24 (2 not ok)",
        "whole": "22/24 (2 missing)",
    }


def test_report_with_nine_methods(tmp_path: Path) -> None:
    """Nine proxy rows and the whole set: every table has them all, in manifest order, with
    the ranking each was built to have."""
    base = np.linspace(0.5, 0.9, len(ARCHS))[[3, 0, 7, 1, 11, 5, 2, 9, 4, 10, 6, 8]]
    methods = ["influence", "random", "herding", "forgetting", "el2n", "grand", "kcenter"]
    methods += ["ccs", "entropy"]
    rows = trials_of("whole", base, base + 0.02, wall=10.0)
    for i, name in enumerate(methods):
        # even rows rank like the whole set, odd rows in reverse
        val = base**2 if i % 2 == 0 else 1.0 - base
        rows += trials_of(name, val, val, wall=1.0 + i)
    exp = write_experiment(tmp_path / "exp", pd.DataFrame(rows), [*methods, "whole"])
    res = make_report(exp, top_k=5, n_boot=20, seed=0)
    t = read_table(exp / "table1.csv")
    assert list(t.index) == [*methods, "whole"]
    for i, name in enumerate(methods):
        assert t.loc[name, "spearman_all"] == pytest.approx(1.0 if i % 2 == 0 else -1.0)
        assert t.loc[name, "epsilon"] == pytest.approx(0.25 * (i + 1))
        assert t.loc[name, "train_s"] == pytest.approx((1.0 + i) * len(ARCHS) * len(SEEDS))
    md = (exp / "table1.md").read_text().splitlines()
    md_rows = [ln.split("|")[1].strip() for ln in md if ln.startswith("| ")]
    assert [r for r in md_rows if r in (*methods, "whole")] == [*methods, "whole"]
    tex = (exp / "table1.tex").read_text()
    assert all(f"\n{name} & " in tex for name in methods)
    text = format_summary(res)
    assert all(f"\n{name} " in text for name in methods)
