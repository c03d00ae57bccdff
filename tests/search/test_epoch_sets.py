"""nasproxy.search.epoch_sets: ``BASE@N`` sets train N epochs on their base set (checked
against a retrained unit), kept apart from the protocol's epochs in the store and on a
resume; the equal-compute whole split of each proxy; the refusals of bad names."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from nasproxy import cli, results
from nasproxy.errors import NasproxyError
from nasproxy.search import run_search
from nasproxy.search import sweep as sweep_module
from nasproxy.search.epoch_sets import EQUAL_COMPUTE_TOLERANCE
from nasproxy.train import TrainConfig, train
from tests.search.conftest import _config
from tests.search.test_halving import stub_runner

ARCH = "w8-d1-relu-batchnorm-maxpooling"


def test_a_set_with_its_own_epochs_trains_them_and_is_kept_apart(inputs, digits, tmp_path):
    cfg = _config(
        inputs, tmp_path, "own", proxies=(str(inputs["proxies"][0]),), archs=(ARCH,),
        train=TrainConfig(epochs=2), epoch_sets=("whole@1", "random@1"), runner="local",
    )  # fmt: skip
    exp_dir = run_search(cfg)
    table = results.read_trials(exp_dir).set_index("train_set")
    n_whole = len(digits.y_train)
    assert sorted(table.index) == ["random", "random@1", "whole", "whole@1"]
    assert table.loc["whole@1", "epochs"] == 1 and table.loc["whole", "epochs"] == 2
    assert table.loc["random@1", "epochs"] == 1 and table.loc["random", "epochs"] == 2
    assert table.loc["whole@1", "n_train"] == n_whole == table.loc["whole", "n_train"]
    assert table.loc["whole@1", "images_seen"] == n_whole  # one epoch, no batch dropped
    assert table.loc["whole", "images_seen"] == 2 * n_whole
    assert math.isnan(table.loc["whole@1", "test_acc"])  # only the whole split is tested

    # independent truth: the whole split trained here for one epoch gives the same unit
    torch.set_num_threads(1)
    again = train(ARCH, digits, None, TrainConfig(epochs=1, seed=0, device="cpu"), test=False)
    assert table.loc["whole@1", "val_acc"] == pytest.approx(again.val_acc)
    assert table.loc["whole@1", "train_loss"] == pytest.approx(again.train_loss, rel=1e-5)
    assert table.loc["whole@1", "val_acc"] != table.loc["whole", "val_acc"]

    # the store: a folder of its own, a manifest entry that says its epochs
    assert results.unit_path(exp_dir, results.UnitKey("whole@1", 0, ARCH)).is_file()
    sets = results.read_manifest(exp_dir)["train_sets"]
    assert sets["whole@1"]["epochs"] == 1 and "epochs" not in sets["whole"]
    assert sets["whole@1"]["n_images"] == n_whole and sets["random@1"]["archs"] == [ARCH]
    assert sets["random@1"]["proxy_hash"] == sets["random"]["proxy_hash"]

    # a resume trains nothing; a unit of one epochs put in the other's place is refused
    events = []
    run_search(cfg, progress=events.append)
    assert [e.row for e in events if e.row is not None] == []
    whole_path = results.unit_path(exp_dir, results.UnitKey("whole", 0, ARCH))
    kept = whole_path.read_bytes()
    short = results.read_unit(results.unit_path(exp_dir, results.UnitKey("whole@1", 0, ARCH)))
    results.write_unit(exp_dir, {**short, "train_set": "whole"})
    with pytest.raises(NasproxyError, match="1 epochs, this command gives 2 for 'whole'"):
        run_search(cfg)
    whole_path.write_bytes(kept)
    # the protocol's epochs stay the experiment's: another --epochs is refused
    with pytest.raises(NasproxyError, match="epochs 2, this run asks for 3"):
        run_search(_config(inputs, tmp_path, "own", train=TrainConfig(epochs=3)))


@pytest.mark.parametrize("epochs", [3, 40, 100])
def test_equal_compute_adds_the_whole_split_at_each_proxys_compute(
    inputs, digits, monkeypatch, tmp_path, epochs
):
    run, calls = stub_runner()
    monkeypatch.setattr(sweep_module, "_run_pending", run)
    cfg = _config(
        inputs, tmp_path, f"equal-{epochs}", whole=False, equal_compute=True,
        train=TrainConfig(epochs=epochs),
    )  # fmt: skip
    events = []
    exp_dir = run_search(cfg, progress=events.append)
    n_whole = len(digits.y_train)
    target = epochs * 100 / n_whole  # each proxy: 10 images of each of 10 classes
    n = max(1, int(np.floor(target + 0.5)))
    sets = results.read_manifest(exp_dir)["train_sets"]
    assert sorted(sets) == ["herding", "random", f"whole@{n}"]  # one set for equal budgets
    entry = sets[f"whole@{n}"]
    assert entry["epochs"] == n and entry["n_images"] == n_whole
    notes = entry["equal_compute"]
    assert [x["proxy"] for x in notes] == ["random", "herding"]
    assert all(x["compute_ratio"] == pytest.approx(n / target) for x in notes)
    off = abs(n / target - 1) > EQUAL_COMPUTE_TOLERANCE
    assert all(("note" in x) == off for x in notes)
    said = [e.message for e in events if e.message.startswith("--equal-compute")]
    assert len(said) == (2 if off else 0)
    if target < 0.5:
        assert "rounded up to the least, 1" in said[0]
    units = results.read_units(exp_dir)
    assert {a for ts, _, a in units if ts == f"whole@{n}"} == {
        a for ts, _, a in units if ts == "random"
    }
    assert all(row["epochs"] == n for k, row in units.items() if k.train_set == f"whole@{n}")


def _one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("nasproxy: error: "), err
    return err[0]


def test_bad_sets_are_refused_before_any_work(inputs, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(sweep_module, "_run_pending", lambda *a: pytest.fail("trained"))
    proxy = ["--proxy", str(inputs["proxies"][0])]
    base = ["search", "--dataset", "digits", "--space", inputs["space"], "--name", "bad",
            "--results-dir", str(tmp_path), "--epochs", "2"]  # fmt: skip
    want = "--also items must be SET@N"
    cases = [
        ([*proxy, "--also", "whole@0"], want),
        ([*proxy, "--also", "whole@1.5"], want),
        ([*proxy, "--also", "whole@x"], want),
        ([*proxy, "--also", "whole"], want),
        ([*proxy, "--also", "whole@01"], want),
        ([*proxy, "--also", "nope@1"], "'nope' is not a training set of this sweep"),
        ([*proxy, "--also", "whole@2"], "2 epochs are the protocol's"),
        ([*proxy, "--also", "random@1", "--also", "random@1"], "random@1 is given twice"),
        (["--whole", "--equal-compute"], "--equal-compute matches each proxy"),
    ]
    for extra, message in cases:
        assert cli.main([*base, *extra]) == 2, extra
        assert message in _one_line_error(capsys), extra
        assert not (tmp_path / "bad").exists()


def test_fused_stacks_never_mix_a_set_with_its_own_epochs(inputs, digits, tmp_path):
    """whole and whole@1 have the same images and shape but not the same epochs: each
    trains as a stack of its own (two activations of one shape), each for its epochs."""
    cfg = _config(
        inputs, tmp_path, "fused", proxies=(), archs=("w8-d1-*-batchnorm-maxpooling",),
        train=TrainConfig(epochs=2), epoch_sets=("whole@1",), runner="local", fuse="on",
    )  # fmt: skip
    table = results.read_trials(run_search(cfg))
    assert sorted(table["train_set"]) == [
        "whole",
        "whole",
        "whole",
        "whole@1",
        "whole@1",
        "whole@1",
    ]
    assert (table["stack_size"] == 3).all() and table["trainer"].str.startswith("stacked").all()
    epochs = table.groupby("train_set")["epochs"].unique()
    assert {k: list(v) for k, v in epochs.items()} == {"whole": [2], "whole@1": [1]}
    assert (table["images_seen"] == table["epochs"] * len(digits.y_train)).all()
