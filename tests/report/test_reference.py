"""``nasproxy report --reference``: an external whole-set reference gives Table 1 and the
search outcome that the same numbers give as trained whole-split units, labelled as
external everywhere; a reference that cannot stand in is refused in one line."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from nasproxy import cli, metrics
from nasproxy.reference import ROW, write_reference
from nasproxy.report import format_summary, make_report
from nasproxy.report.outcome import OUTCOME_COLUMNS
from nasproxy.report.table1 import TABLE_COLUMNS
from tests.report.experiments import ARCHS, SEEDS, trials_of, write_experiment

TOP_K, N_BOOT = 3, 40
# the whole-set accuracies: distinct, not monotone in the arch order; arch 4 has none
rng = np.random.default_rng(5)
WHOLE_VAL = 0.6 + 0.3 * rng.permutation(len(ARCHS)) / len(ARCHS)
WHOLE_TEST = WHOLE_VAL + rng.normal(0, 0.02, len(ARCHS))
MISSING = ARCHS[4]
# what the outcome and Table 1 compute from the whole split, the same both ways
OUTCOME_ACCURACY = [c for c in OUTCOME_COLUMNS if c not in ("pick_seeds", "proxy_s")]
OUTCOME_ACCURACY = [c for c in OUTCOME_ACCURACY if not c.startswith(("confirm_", "exhaus", "cost"))]
METRICS = [c for c in TABLE_COLUMNS if c.startswith(("perf_", "top1_", "regret", "spearman_"))]
METRICS += [c for c in TABLE_COLUMNS if c.startswith("kendall_")] + ["n_archs"]


def proxy_rows() -> list[dict]:
    """Two noisy proxies over both seeds."""
    rows = []
    for name, noise in (("random", 0.15), ("influence", 0.03)):
        val = 0.3 + 0.2 * WHOLE_VAL + rng.normal(0, noise, (len(SEEDS), len(ARCHS)))
        rows += trials_of(name, val, val, wall=2.0)
    return rows


PROXIES = proxy_rows()


def trained(exp: Path) -> Path:
    """The whole split as trained units: one seed, the reference's numbers."""
    whole = [r for r in trials_of("whole", WHOLE_VAL, WHOLE_TEST, 10.0) if r["seed"] == SEEDS[0]]
    whole = [r for r in whole if r["arch"] != MISSING]
    return write_experiment(exp, pd.DataFrame(PROXIES + whole), ["random", "influence", "whole"])


def external(exp: Path, ids: dict[str, str] | None = None, dataset: str = "digits") -> Path:
    """The proxies alone and a reference file of the same numbers (ids renamed by ``ids``)."""
    write_experiment(exp, pd.DataFrame(PROXIES), ["random", "influence"])
    rows = [
        {"arch": (ids or {}).get(a, a), "val_acc": v, "test_acc": t}
        for a, v, t in zip(ARCHS, WHOLE_VAL, WHOLE_TEST, strict=True)
        if a != MISSING
    ]
    rows.append({"arch": "not-an-arch", "val_acc": 0.5, "test_acc": 0.5})
    protocol = {"dataset": dataset, "epochs": 200, "source": "a made-up benchmark"}
    return write_reference(exp.parent / f"ref-{exp.name}.csv", protocol, rows)


def canonical(text: str) -> str:
    """Ids as the reference writes them (upper case) -> the experiment's (lower case)."""
    if text not in {a.upper() for a in ARCHS}:
        raise ValueError(f"{text} is not an architecture")
    return text.lower()


@pytest.fixture(scope="module")
def both(tmp_path_factory: pytest.TempPathFactory):
    """(trained ReportResult, external ReportResult) of the same numbers."""
    root = tmp_path_factory.mktemp("ref")
    got = make_report(trained(root / "trained"), TOP_K, N_BOOT, seed=1)
    ref = external(root / "external", {a: a.upper() for a in ARCHS})
    ext = make_report(root / "external", TOP_K, N_BOOT, seed=1, reference=ref, canonical=canonical)
    return got, ext


def test_table1_equals_the_one_of_trained_whole_units(both) -> None:
    got, ext = both
    proxies = ["random", "influence"]
    want = got.table.set_index("train_set").loc[proxies]
    have = ext.table.set_index("train_set").loc[proxies]
    # n_seeds: int there, float here (the reference row's is NaN); values the same
    pd.testing.assert_frame_equal(have, want, check_dtype=False, check_exact=True)
    assert np.isfinite(have["spearman_all_lo"]).all() and (have["n_archs"] == len(ARCHS) - 1).all()
    pd.testing.assert_frame_equal(ext.per_seed, got.per_seed, check_exact=True)
    # the reference row ranks the reference against itself, as the whole row does
    ref_row = ext.table.set_index("train_set").loc[ROW, METRICS]
    whole_row = got.table.set_index("train_set").loc["whole", METRICS]
    pd.testing.assert_series_equal(ref_row, whole_row, check_names=False)
    assert ext.table["train_set"].tolist() == [*proxies, ROW]
    assert ext.table["role"].tolist() == ["proxy", "proxy", "reference"]


def test_the_metrics_are_those_of_the_reference_numbers(both) -> None:
    """An independent truth for one cell: Spearman of influence's seed-0 ranking."""
    _, ext = both
    seed0 = ext.per_seed.set_index(["train_set", "seed"]).loc[("influence", SEEDS[0])]
    val = np.array([r["val_acc"] for r in PROXIES if r["train_set"] == "influence"])[: len(ARCHS)]
    keep = np.array([a != MISSING for a in ARCHS])
    rho = pd.Series(val[keep]).corr(pd.Series(WHOLE_VAL[keep]), method="spearman")
    assert seed0["spearman_all"] == pytest.approx(rho)
    assert metrics.spearman(val, np.where(keep, WHOLE_VAL, np.nan)) == pytest.approx(rho)


def test_the_search_outcome_equals_the_one_of_trained_whole_units(both) -> None:
    got, ext = both
    have = ext.outcome[OUTCOME_ACCURACY].reset_index(drop=True)
    want = got.outcome[OUTCOME_ACCURACY].reset_index(drop=True)
    pd.testing.assert_frame_equal(have, want, check_dtype=False)
    assert have["pick"].notna().all()
    assert (ext.outcome["confirm_s"] == 0).all() and ext.outcome["cost_ratio"].isna().all()


def test_it_is_labelled_external_everywhere(both) -> None:
    _, ext = both
    md = ext.paths["md"].read_text()
    assert "- **reference**: external, not trained here: dataset: digits; epochs: 200" in md
    assert f"| {ROW} |" in md and "Whole-set accuracies are the external reference's" in md
    assert "Whole split: external reference" in md and "external reference test" in md
    assert "# reference: external, not trained here" in ext.paths["csv"].read_text()
    assert "# reference: external" in ext.paths["outcome_csv"].read_text()
    assert "reference: external, not trained here" in ext.paths["tex"].read_text()
    summary = format_summary(ext)
    assert "whole set: external reference ref-external.csv (digits, 200 epochs)" in summary
    assert ROW in summary and "search outcome: random picks" in summary
    # missing and unknown architectures: counted, one line each
    assert f"{ROW}: 11/12 architectures; 1 not in the reference, not scored (e.g. {MISSING})" in (
        ext.notes
    )
    assert any(n.startswith(f"{ROW}: 1 id(s) of ref-external.csv") for n in ext.notes)


def test_a_trained_whole_split_is_scored_against_the_reference(tmp_path: Path) -> None:
    exp = trained(tmp_path / "exp")
    ref = external(tmp_path / "other")
    result = make_report(exp, TOP_K, N_BOOT, reference=ref)
    rows = result.table.set_index("train_set")
    assert rows.loc["whole", "role"] == "whole" and rows.loc[ROW, "role"] == "reference"
    # the same numbers: the trained whole split ranks exactly as the reference
    assert rows.loc["whole", "spearman_all"] == pytest.approx(1.0)
    assert rows.loc["whole", "n_archs"] == len(ARCHS) - 1


def refused(argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("nasproxy: error: ")
    return err


def test_a_reference_that_cannot_stand_in_is_refused_and_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = external(tmp_path / "exp", dataset="cifar10")
    report = ["report", "exp", "--results-dir", str(tmp_path), "--reference"]
    assert "of dataset 'cifar10', the experiment of 'digits'" in refused(
        [*report, str(other)], capsys
    )
    bare = tmp_path / "bare.csv"
    bare.write_text("# dataset: digits\n# epochs: 200\n# source: s\narch,acc\na,0.5\n")
    assert "no val_acc, test_acc column" in refused([*report, str(bare)], capsys)
    assert "cannot read reference" in refused([*report, str(tmp_path / "none.csv")], capsys)
    assert not list((tmp_path / "exp").glob("table1*"))
    assert cli.main([*report, str(external(tmp_path / "exp"))]) == 0
    assert "whole set: external reference" in capsys.readouterr().out
