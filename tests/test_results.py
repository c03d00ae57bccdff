"""The results store: unit files, the consolidated table, the manifest."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pandas as pd
import pytest

from nasproxy import results
from nasproxy.errors import NasproxyError
from nasproxy.search.experiment import remove_experiment
from nasproxy.search.trial import make_row
from nasproxy.spaces import Arch
from nasproxy.train import TrainRecord

ARCHS = [
    Arch(32, 1, "relu", "none", "maxpooling"),
    Arch(64, 2, "sigmoid", "batchnorm", "avgpooling"),
    Arch(128, 3, "leakyrelu", "groupnorm", "none"),
]


def _row(arch: Arch, train_set: str, seed: int, status: str = "ok") -> dict:
    record = TrainRecord(
        arch=arch.id,
        status=status,
        reason="" if status == "ok" else "non-finite training loss in epoch 1",
        seed=seed,
        epochs=3,
        n_train=100,
        train_loss=0.5 if status == "ok" else math.nan,
        val_acc=0.25 + 0.01 * seed if status == "ok" else math.nan,
        test_acc=0.3 if status == "ok" else math.nan,
        checkpoints={1: 0.125, 3: 0.25 + 0.01 * seed} if status == "ok" else {},
        wall_s=1.5,
        images_seen=300,
        device="cpu",
    )
    return make_row(arch, train_set, "abc123" if train_set != "whole" else "", record)


def _all_rows() -> list[dict]:
    rows = [_row(a, ts, s) for ts in ("random", "whole") for s in (0, 1) for a in ARCHS]
    rows.append(_row(ARCHS[0], "influence", 0, status="diverged"))
    return rows


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def test_round_trip_through_unit_files_parquet_and_csv(tmp_path):
    rows = _all_rows()
    for row in rows:
        results.write_unit(tmp_path, row, {"history": [{"epoch": 1, "train_loss": 0.5}]})
    table = results.consolidate(tmp_path, ["random", "whole", "influence"], [a.id for a in ARCHS])

    assert list(table.columns) == list(results.COLUMNS)
    assert len(table) == len(rows)
    from_parquet = pd.read_parquet(tmp_path / results.TRIALS_PARQUET)
    floats = [c for c, dtype in results.COLUMNS.items() if dtype == "float64"]
    from_csv = pd.read_csv(
        tmp_path / results.TRIALS_CSV,
        keep_default_na=False,  # "" is a string (no reason, no proxy hash) ...
        na_values={c: [""] for c in floats},  # ... except in float columns, where it is NaN
    )
    by_key = {results.row_key(r): r for r in rows}
    for frame in (table, from_parquet, from_csv):
        assert len(frame) == len(rows)
        for record in frame.to_dict("records"):
            expected = by_key[results.row_key(record)]
            for column in results.COLUMNS:
                got = record[column]
                assert _same(got, expected[column]), (column, got, expected[column])
    # the order asked for: train sets as given, then seed, then arch order
    assert list(table["train_set"].drop_duplicates()) == ["random", "whole", "influence"]
    first = table[(table["train_set"] == "random") & (table["seed"] == 0)]
    assert list(first["arch"]) == [a.id for a in ARCHS]
    assert str(table["val_acc"].dtype) == "float64" and str(table["seed"].dtype) == "int64"
    # extras stay in the unit file, only the columns reach the table
    unit = json.loads(results.unit_path(tmp_path, results.row_key(rows[0])).read_text())
    assert unit["history"] == [{"epoch": 1, "train_loss": 0.5}]


def test_a_unit_key_names_its_parts_and_places_its_file(tmp_path):
    """A unit key is (training set, seed, architecture) by name; its file lies at
    units/<train_set>/s<seed>/<arch>.json, the layout of the module docstring."""
    arch_id = "w64-d2-sigmoid-batchnorm-avgpooling"  # ARCHS[1]
    key = results.row_key(_row(ARCHS[1], "random", 7))
    assert key == results.UnitKey(train_set="random", seed=7, arch=arch_id)
    assert (key.train_set, key.seed, key.arch) == ("random", 7, arch_id)
    expected = tmp_path / "units" / "random" / "s7" / f"{arch_id}.json"
    assert results.unit_path(tmp_path, key) == expected


@pytest.mark.parametrize(
    "name, split",
    [
        ("whole@5", ("whole", 5)),
        ("random@12", ("random", 12)),
        ("a@b@3", ("a@b", 3)),
        ("whole", ("whole", None)),
        ("whole@0", ("whole@0", None)),
        ("whole@05", ("whole@05", None)),
        ("whole@x", ("whole@x", None)),
        ("whole@", ("whole@", None)),
        ("@3", ("@3", None)),
    ],
)
def test_split_epochs_reads_a_sets_own_epochs(name, split):
    assert results.split_epochs(name) == split


def test_the_store_and_the_report_load_neither_torch_nor_the_trainer() -> None:
    """The store and the report read and write tables only: importing them in a fresh
    interpreter loads neither torch nor the trainer nor the stacked trainer."""
    code = (
        "import sys, nasproxy.report, nasproxy.results\n"
        "print(sorted(m for m in ('torch', 'nasproxy.train', 'nasproxy.multitrain') "
        "if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_writes_leave_no_temporary_files(tmp_path):
    for row in _all_rows():
        results.write_unit(tmp_path, row)
    results.consolidate(tmp_path)
    leftovers = [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]
    assert leftovers == []


def test_torn_and_misplaced_unit_files_are_ignored(tmp_path):
    rows = _all_rows()
    for row in rows:
        results.write_unit(tmp_path, row)
    torn_key = results.row_key(rows[1])
    torn = results.unit_path(tmp_path, torn_key)
    blob = torn.read_bytes()
    torn.write_bytes(blob[: len(blob) // 2])  # a crash in the middle of a non-atomic write
    misplaced_key = results.row_key(rows[2])
    misplaced = results.unit_path(tmp_path, misplaced_key._replace(train_set="random", seed=7))
    misplaced.parent.mkdir(parents=True, exist_ok=True)
    misplaced.write_bytes(results.unit_path(tmp_path, misplaced_key).read_bytes())
    stale = torn.parent / f".{torn.name}.x1y2.tmp"
    stale.write_text("{")

    units = results.read_units(tmp_path)
    assert set(units) == {results.row_key(r) for r in rows} - {torn_key}
    assert results.read_unit(torn) is None and results.read_unit(misplaced) is None
    table = results.consolidate(tmp_path)
    assert len(table) == len(rows) - 1
    assert results.remove_stale_temporaries(tmp_path) == 1 and not stale.exists()

    results.write_unit(tmp_path, rows[1])  # the unit runs again and replaces the torn file
    assert len(results.read_units(tmp_path)) == len(rows)


def test_write_unit_refuses_an_incomplete_row(tmp_path):
    row = _all_rows()[0]
    del row["val_acc"]
    with pytest.raises(ValueError, match="val_acc"):
        results.write_unit(tmp_path, row)


def test_empty_experiment_gives_an_empty_typed_table(tmp_path):
    table = results.consolidate(tmp_path)
    assert len(table) == 0 and list(table.columns) == list(results.COLUMNS)
    assert len(pd.read_parquet(tmp_path / results.TRIALS_PARQUET)) == 0


def test_manifest_round_trip_turns_non_finite_floats_into_null(tmp_path):
    assert results.read_manifest(tmp_path) is None
    results.write_manifest(tmp_path, {"train_sets": {"random": {"epsilon": math.nan}}, "n": 3})
    assert results.read_manifest(tmp_path) == {"train_sets": {"random": {"epsilon": None}}, "n": 3}
    (tmp_path / results.MANIFEST).write_text("{not json")
    with pytest.raises(NasproxyError, match="cannot read"):
        results.read_manifest(tmp_path)


def test_read_trials_without_a_table_is_a_clear_error(tmp_path):
    with pytest.raises(NasproxyError, match="nasproxy search"):
        results.read_trials(tmp_path)


def test_read_trials_gives_the_consolidated_table_from_parquet_or_csv(tmp_path):
    for row in _all_rows():
        results.write_unit(tmp_path, row)
    table = results.consolidate(tmp_path)
    pd.testing.assert_frame_equal(results.read_trials(tmp_path), table)
    (tmp_path / results.TRIALS_PARQUET).unlink()  # the text copy is the same table
    pd.testing.assert_frame_equal(results.read_trials(tmp_path), table)


def test_read_trials_fills_the_columns_an_older_table_lacks(tmp_path):
    for row in _all_rows():
        results.write_unit(tmp_path, row)
    table = results.consolidate(tmp_path)
    older = table.drop(columns=list(results.LATER_COLUMNS))
    older.to_parquet(tmp_path / results.TRIALS_PARQUET, index=False)
    back = results.read_trials(tmp_path)
    assert list(back.columns) == list(results.COLUMNS)
    assert set(back["stack_size"]) == {1} and set(back["trainer"]) == {"plain"}
    pd.testing.assert_frame_equal(back[list(older.columns)], table[list(older.columns)])


def test_a_table_without_a_column_or_not_a_table_is_a_one_line_error(tmp_path):
    for row in _all_rows():
        results.write_unit(tmp_path, row)
    table = results.consolidate(tmp_path)
    table.drop(columns=["val_acc"]).to_parquet(tmp_path / results.TRIALS_PARQUET)
    with pytest.raises(NasproxyError, match="lacks the column.s. val_acc$"):
        results.read_trials(tmp_path)
    table.assign(seed="one").to_parquet(tmp_path / results.TRIALS_PARQUET)
    with pytest.raises(NasproxyError, match="wrong type"):
        results.read_trials(tmp_path)
    (tmp_path / results.TRIALS_PARQUET).write_bytes(b"not a parquet file")
    with pytest.raises(NasproxyError, match="cannot read") as err:
        results.read_trials(tmp_path)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", ["/abs/path", "../up", "a/b", "..", ".", "", ".hidden", "a\nb"])
def test_experiment_names_that_are_paths_are_refused(tmp_path, name):
    with pytest.raises(NasproxyError, match="bad experiment name"):
        results.experiment_dir(tmp_path, name)


def test_results_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NasproxyError, match="is a file, not a folder"):
        results.experiment_dir(tmp_path / "file", "exp")
    with pytest.raises(NasproxyError, match="is a file, not a folder"):
        results.experiment_dir(tmp_path / "file" / "below", "exp")


def _experiment(exp_dir):
    results.write_manifest(exp_dir, {"protocol": {}, "train_sets": {}, "fingerprint": "f"})
    for row in _all_rows():
        results.write_unit(exp_dir, row)
    results.consolidate(exp_dir)
    (exp_dir / "proxies").mkdir()
    (exp_dir / "proxies" / "random.json").write_text('{"format": "nasproxy-proxy/1"}')
    (exp_dir / "table1.md").write_text("| table |\n")
    (exp_dir / "ray" / "run-001").mkdir(parents=True)


def test_remove_experiment_deletes_only_what_nasproxy_wrote(tmp_path):
    ours = tmp_path / "ours"
    _experiment(ours)
    (ours / "units" / "random" / "s0" / ".x.json.123.tmp").write_text("torn")
    remove_experiment(ours)
    assert not ours.exists()

    foreign_cases = {
        "notes.txt": lambda d: (d / "notes.txt").write_text("precious"),
        "units/random/notes.txt": lambda d: (d / "units" / "random" / "notes.txt").write_text("x"),
        "proxies/data.npy": lambda d: (d / "proxies" / "data.npy").write_bytes(b"x"),
        "no nasproxy": lambda d: [
            (d / "manifest.json").write_text("{}"),
            *(p.unlink() for p in d.rglob("*.json") if "units" in p.parts or "proxies" in p.parts),
        ],
    }
    for i, (what, spoil) in enumerate(foreign_cases.items()):
        exp = tmp_path / f"exp{i}"
        _experiment(exp)
        spoil(exp)
        before = sorted(p for p in exp.rglob("*"))
        with pytest.raises(NasproxyError, match=f"{what}.*refusing to delete"):
            remove_experiment(exp)
        assert sorted(p for p in exp.rglob("*")) == before
    (tmp_path / "empty").mkdir()
    remove_experiment(tmp_path / "empty")  # nothing to lose
    assert not (tmp_path / "empty").exists()
    (tmp_path / "link").symlink_to(tmp_path / "exp0")
    with pytest.raises(NasproxyError, match="refusing to delete"):
        remove_experiment(tmp_path / "link")
    assert (tmp_path / "exp0" / "notes.txt").exists()


def test_unit_files_written_before_the_stack_columns_still_count(tmp_path):
    """A unit file from before the trainer columns existed is a plain, unstacked unit."""
    row = _all_rows()[0]
    path = results.write_unit(tmp_path, row)
    payload = json.loads(path.read_text())
    for column in results.LATER_COLUMNS:
        del payload["row"][column]
    path.write_text(json.dumps(payload))
    back = results.read_unit(path)
    assert back is not None
    assert (back["stack_size"], back["trainer"], back["fallback"]) == (1, "plain", "")
    assert back["val_checkpoints"] == "" and results.checkpoint_accs("") == {}
    table = results.consolidate(tmp_path)
    assert list(table.columns) == list(results.COLUMNS) and table["stack_size"].tolist() == [1]
    assert table["val_checkpoints"].tolist() == [""]
    del payload["row"]["val_acc"]  # an older row is still refused when a real column lacks
    path.write_text(json.dumps(payload))
    assert results.read_unit(path) is None


def test_checkpoints_are_a_json_object_of_ascending_epochs_read_back_exactly(tmp_path):
    """The val_checkpoints cell (interface: a JSON object, decimal-string epochs ascending,
    the final one included) survives the unit file, parquet and CSV, and reads back as the
    trainer's {epoch: accuracy}; a unit without checkpoints holds ""."""
    rows = _all_rows()
    assert rows[0]["val_checkpoints"] == '{"1": 0.125, "3": 0.25}'
    assert rows[-1]["status"] == "diverged" and rows[-1]["val_checkpoints"] == ""
    for row in rows:
        results.write_unit(tmp_path, row)
    results.consolidate(tmp_path)
    table = results.read_trials(tmp_path)
    (tmp_path / results.TRIALS_PARQUET).unlink()
    from_csv = results.read_trials(tmp_path)
    for frame in (table, from_csv):
        ok = frame[frame["status"] == "ok"]
        for record in ok.to_dict("records"):
            accs = results.checkpoint_accs(record["val_checkpoints"])
            assert accs == {1: 0.125, 3: record["val_acc"]}
            assert list(json.loads(record["val_checkpoints"])) == ["1", "3"]
        assert frame[frame["status"] == "diverged"]["val_checkpoints"].tolist() == [""]


def test_checkpoint_cells_read_sorted_and_refuse_what_is_not_one() -> None:
    assert results.checkpoint_value({33: 0.5, 4: 0.25, 100: 0.75}) == (
        '{"4": 0.25, "33": 0.5, "100": 0.75}'
    )
    assert results.checkpoint_accs('{"100": 0.75, "4": 0.25}') == {4: 0.25, 100: 0.75}
    assert list(results.checkpoint_accs('{"100": 0.75, "4": 0.25}')) == [4, 100]
    assert results.checkpoint_value({}) == "" and results.checkpoint_accs(None) == {}
    assert results.checkpoint_accs(pd.NA) == {} and results.checkpoint_accs(math.nan) == {}
    for bad in ("[1, 2]", "{", '{"x": 1}', '{"3": "a"}', 5):
        with pytest.raises(NasproxyError, match="val_checkpoints"):
            results.checkpoint_accs(bad)


@pytest.fixture
def umask_022():
    import os

    old = os.umask(0o022)
    yield
    os.umask(old)


def test_result_files_get_the_mode_the_umask_gives(tmp_path, umask_022):
    """Under umask 0022 every result file is readable by others (0644), as any new file."""
    import os
    import stat

    exp = tmp_path / "exp"
    for arch in ARCHS:
        results.write_unit(exp, _row(arch, "whole", 0))
    results.consolidate(exp)
    results.write_manifest(exp, {"protocol": {}, "train_sets": {}})
    written = [p for p in exp.rglob("*") if p.is_file()]
    assert len(written) == len(ARCHS) + 3
    assert {oct(stat.S_IMODE(p.stat().st_mode)) for p in written} == {oct(0o644)}
    os.umask(0o077)  # a private umask stays private
    results.write_manifest(exp, {"protocol": {}, "train_sets": {}})
    assert stat.S_IMODE((exp / results.MANIFEST).stat().st_mode) == 0o600
