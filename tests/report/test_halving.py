"""nasproxy.report.halving: successive halving's pick, regret and cost recomputed here from
the trials and the stub's closed forms (a unit's wall_s is its epochs), with and without
the whole split; Table 1 leaves the rungs out."""

from __future__ import annotations

import math

import pandas as pd
import pytest

from nasproxy import results, spaces
from nasproxy.report import HALVING_COLUMNS, make_report
from nasproxy.search import run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.search.halving import default_rungs
from nasproxy.train import TrainConfig
from tests.search.conftest import _config, inputs  # noqa: F401 (a fixture)
from tests.search.test_halving import SPACE12, _expected, accuracy, stub_runner, stub_test_acc
from tests.test_shortlist import _brute_force


@pytest.mark.parametrize("whole", [True, False])
def test_the_halving_outcome_matches_a_recomputation(inputs, monkeypatch, tmp_path, whole):  # noqa: F811
    space = tmp_path / "space12.yaml"
    space.write_text(SPACE12)
    monkeypatch.setattr(sweep_module, "_run_pending", stub_runner()[0])
    seeds, epochs, eta = (0, 1), 9, 2
    cfg = _config(
        inputs, tmp_path, "report", whole=whole, space=str(space), seeds=seeds,
        train=TrainConfig(epochs=epochs), halving=eta,
    )  # fmt: skip
    exp_dir = run_search(cfg)
    report = make_report(exp_dir, top_k=3, n_boot=10)
    ids = spaces.load(str(space)).ids
    rungs = default_rungs(epochs, eta, len(ids))
    eps, want = _expected(ids, eta, epochs, rungs, seeds)
    manifest = results.read_manifest(exp_dir)
    shape = manifest["data_shape"]
    dims = (shape["in_channels"], shape["num_classes"], shape["image_size"])

    def macs(arch: str, n_epochs: int) -> float:
        return spaces.Arch.from_id(arch).macs(*dims) * 100 * n_epochs * len(seeds)

    out = report.halving.set_index("train_set")
    assert sorted(out.index) == sorted(want)
    for proxy, (_, cands, pick) in want.items():
        r = out.loc[proxy]
        mean_val = {a: sum(accuracy((proxy, s, a)) for s in seeds) / 2 for a in ids}
        full = _brute_force(mean_val, 1).pop()
        assert (r["pick"], r["full_pick"], r["same_pick"]) == (pick, full, pick == full)
        if whole:
            test = {a: sum(stub_test_acc(("whole", s, a)) for s in seeds) / 2 for a in ids}
            assert r["regret_vs"] == "whole split"
            assert r["regret"] == pytest.approx(max(test.values()) - test[pick])
            assert r["full_regret"] == pytest.approx(max(test.values()) - test[full])
        else:
            assert r["regret_vs"] == "full sweep"
            assert r["regret"] == pytest.approx(mean_val[full] - mean_val[pick])
        spent = sum(len(c) * e * len(seeds) for c, e in zip(cands, eps, strict=True))
        assert r["halving_s"] == spent and r["full_s"] == len(ids) * epochs * len(seeds)
        assert r["time_ratio"] == pytest.approx(len(ids) * epochs * len(seeds) / spent)
        halving_macs = sum(macs(a, e) for c, e in zip(cands, eps, strict=True) for a in c)
        assert r["halving_macs"] == pytest.approx(halving_macs)
        assert r["full_macs"] == pytest.approx(sum(macs(a, epochs) for a in ids))
        assert r["goal_met"] == (pick == full and r["time_ratio"] >= 3)
        assert ("goal met" in r["verdict"]) == r["goal_met"]
        if pick != full:
            assert f"it picked {pick}, the full sweep {full}" in r["verdict"]
    written = pd.read_csv(exp_dir / "halving.csv", comment="#")
    assert list(written.columns) == list(HALVING_COLUMNS) and len(written) == len(want)
    assert "## Successive halving" in (exp_dir / "table1.md").read_text()
    # the rungs are halving's, not rows of Table 1
    assert sorted(report.table["train_set"]) == sorted([*want, "whole"])
    assert not math.isnan(report.table.set_index("train_set").loc["random", "n_images"])
