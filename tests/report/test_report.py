"""``make_report`` and ``outcome_lines`` end to end: what they write, from which inputs, and
the one-line errors for inputs that are not an experiment."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from nasproxy.errors import NasproxyError
from nasproxy.report import format_summary, make_report, outcome_lines
from tests.report.experiments import read_table, write_experiment


def test_the_files_hold_what_the_result_says(controlled) -> None:
    """Every file make_report names lies in the experiment and holds what it returned: the
    tables read back equal the result's frames, the figures are PNG images."""
    exp, _, res = controlled
    assert {kind: p.name for kind, p in res.paths.items()} == {
        "md": "table1.md",
        "csv": "table1.csv",
        "seeds_csv": "table1_seeds.csv",
        "tex": "table1.tex",
        "outcome_csv": "search_outcome.csv",
        "plot_proxy_vs_whole": "proxy_vs_whole.png",
        "plot_correlation": "correlation.png",
        "plot_acc_vs_time": "acc_vs_time.png",
    }
    assert all(p.parent == exp for p in res.paths.values())
    for kind, frame in (
        ("csv", res.table),
        ("seeds_csv", res.per_seed),
        ("outcome_csv", res.outcome),
    ):
        back = pd.read_csv(res.paths[kind], comment="#")
        pd.testing.assert_frame_equal(back, frame.reset_index(drop=True), check_dtype=False)
    for kind in ("plot_proxy_vs_whole", "plot_correlation", "plot_acc_vs_time"):
        assert res.paths[kind].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_outcome_lines_are_the_summary_s_outcome(controlled) -> None:
    exp, _, res = controlled
    lines = outcome_lines(exp, top_k=10)
    assert len(lines) == 3 and lines == [
        ln for ln in format_summary(res).splitlines() if ln.startswith("search outcome: ")
    ]


def test_report_is_deterministic(partial, tmp_path: Path) -> None:
    exp, trials, _ = partial
    again = write_experiment(tmp_path / "exp", trials, ["random", "influence", "whole"])
    make_report(again, top_k=5, n_boot=100, seed=3)
    strip = [ln for ln in (exp / "table1.csv").read_text().splitlines() if "experiment:" not in ln]
    strip2 = [
        ln for ln in (again / "table1.csv").read_text().splitlines() if "experiment:" not in ln
    ]
    assert strip == strip2


def test_trials_csv_is_read_when_parquet_is_absent(partial, tmp_path: Path) -> None:
    exp, trials, _ = partial
    other = write_experiment(tmp_path / "exp", trials, ["random", "influence", "whole"])
    (other / "trials.parquet").unlink()
    trials.to_csv(other / "trials.csv", index=False)
    res = make_report(other, top_k=5, n_boot=100, seed=3)
    expect = read_table(exp / "table1.csv")
    got = res.table.set_index("train_set")
    assert got["perf_topk"].to_numpy() == pytest.approx(expect["perf_topk"].to_numpy(), nan_ok=True)
    assert got["trials_missing"].tolist() == expect["trials_missing"].tolist()


# ------------------------------------------------ user mistakes


def test_missing_or_malformed_inputs_raise(tmp_path: Path, partial) -> None:
    _, trials, _ = partial
    with pytest.raises(NasproxyError, match="does not exist"):
        make_report(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(NasproxyError, match="manifest.json"):
        make_report(empty)

    exp = write_experiment(tmp_path / "a", trials, ["random", "influence", "whole"])
    (exp / "trials.parquet").unlink()
    with pytest.raises(NasproxyError, match="trials.parquet"):
        make_report(exp)

    exp = write_experiment(tmp_path / "b", trials.drop(columns=["val_acc"]), ["whole"])
    with pytest.raises(NasproxyError, match="val_acc"):
        make_report(exp)

    exp = write_experiment(tmp_path / "c", trials, ["whole"])
    (exp / "trials.parquet").write_bytes(b"not a parquet file")
    with pytest.raises(NasproxyError, match="cannot read"):
        make_report(exp)

    exp = write_experiment(tmp_path / "d", trials, ["whole"])
    man = json.loads((exp / "manifest.json").read_text())
    del man["archs"]
    (exp / "manifest.json").write_text(json.dumps(man))
    with pytest.raises(NasproxyError, match="archs"):
        make_report(exp)

    (exp / "manifest.json").write_text("{not json")
    with pytest.raises(NasproxyError, match="cannot read"):
        make_report(exp)

    exp = write_experiment(tmp_path / "e", trials, ["whole"])
    with pytest.raises(NasproxyError, match="top_k"):
        make_report(exp, top_k=0)


# ------------------------------------------------ any number of proxy rows


def test_report_of_a_path_outside_the_results_dir_writes_nothing(partial, tmp_path) -> None:
    from nasproxy.cli import main

    exp = tmp_path / "elsewhere"
    shutil.copytree(partial[0], exp)
    for written in exp.glob("table1*"):
        written.unlink()
    before = sorted(p.name for p in exp.iterdir())
    results_dir = tmp_path / "results"
    for name in (str(exp), f"../{exp.name}"):
        assert main(["report", name, "--results-dir", str(results_dir), "--n-boot", "5"]) == 2
        assert sorted(p.name for p in exp.iterdir()) == before
    # the same experiment inside the results directory is reported
    shutil.copytree(exp, results_dir / "exp")
    assert main(["report", "exp", "--results-dir", str(results_dir), "--n-boot", "5"]) == 0
    assert (results_dir / "exp" / "table1.md").is_file()
