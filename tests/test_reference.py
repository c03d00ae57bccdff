"""The reference file: written and read back, and each refusal of a file that cannot stand
in for an experiment's whole split (one line), ids through ``canonical``."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from nasproxy import reference
from nasproxy.errors import NasproxyError
from nasproxy.reference import ROW, read_reference, write_reference

PROTOCOL = {"dataset": "digits", "epochs": 200, "source": "a made-up paper, Table 9"}
ARCHS = ["a1", "a2", "a3", "a4"]


def write(path: Path, body: str, header: str | None = None) -> Path:
    head = "# dataset: digits\n# epochs: 200\n# source: a paper\n" if header is None else header
    path.write_text(head + body)
    return path


def test_written_rows_read_back(tmp_path: Path) -> None:
    rows = [
        {"arch": "a1", "val_acc": 0.5, "test_acc": 0.55, "index": 0},
        {"arch": "a2", "val_acc": 0.123456789, "test_acc": float("nan"), "index": 7},
    ]
    path = write_reference(tmp_path / "ref.csv", {**PROTOCOL, "note": "x: y"}, rows)
    ref = read_reference(path)
    assert ref.protocol == {
        "dataset": "digits",
        "epochs": "200",
        "source": PROTOCOL["source"],
        "note": "x: y",
    }
    assert ref.val == {"a1": 0.5, "a2": 0.123456789}
    assert ref.test["a1"] == 0.55 and math.isnan(ref.test["a2"])
    assert ref.unknown == ()
    assert not list(tmp_path.glob(".*"))  # no temporary left beside it


@pytest.mark.parametrize(
    ("header", "body", "says"),
    [
        ("# dataset: digits\n# source: s\n", "arch,val_acc,test_acc\na1,0.5,0.5\n", "# epochs"),
        (None, "arch,val,test_acc\na1,0.5,0.5\n", "no val_acc column"),
        (None, "", "no arch, val_acc, test_acc column"),
        (None, "arch,val_acc,test_acc\na1,93.5,0.5\n", "not a fraction in 0..1"),
        (None, "arch,val_acc,test_acc\na1,0.5,high\n", "'high' is not a number"),
        (None, "arch,val_acc,test_acc\na1,0.5,0.5\na1,0.6,0.6\n", "given twice"),
    ],
)
def test_a_file_that_is_no_reference_is_refused_in_one_line(
    tmp_path: Path, header: str | None, body: str, says: str
) -> None:
    path = write(tmp_path / "ref.csv", body, header)
    with pytest.raises(NasproxyError, match=says) as info:
        read_reference(path)
    assert "\n" not in str(info.value)


def test_ids_go_through_canonical_and_refused_ones_are_counted(tmp_path: Path) -> None:
    def canonical(text: str) -> str:
        if not text.upper().startswith("A"):
            raise NasproxyError(f"{text} is not an architecture")
        return text.lower()

    body = (
        "arch,test_acc,val_acc,params\nA1,0.6,0.5,9\nbogus,0.1,0.1,1\nA3,,0.7,3\nnope,0.2,0.2,2\n"
    )
    ref = read_reference(write(tmp_path / "ref.csv", body), canonical)
    assert ref.val == {"a1": 0.5, "a3": 0.7}  # columns found by name, not position
    assert ref.test["a1"] == 0.6 and math.isnan(ref.test["a3"])
    assert ref.unknown == ("bogus", "nope")
    notes = ref.notes(ARCHS)
    # a2 and a4 missing; a3 lacks a test accuracy; two ids are no architecture
    assert notes[0] == (
        f"{ROW}: 2/4 architectures; 2 not in the reference, not scored (e.g. a2);"
        " 1 without both a validation and a test accuracy"
    )
    assert notes[1].startswith(f"{ROW}: 2 id(s) of ref.csv are not architectures")
    assert ref.coverage(ARCHS) == {
        "trials_expected": 4,
        "trials_present": 2,
        "trials_missing": 2,
        "trials_not_ok": 1,
        "unexpected": 0,
    }
    val, test = ref.accuracies(ARCHS)
    np.testing.assert_array_equal(val, [0.5, np.nan, 0.7, np.nan])
    np.testing.assert_array_equal(test, [0.6, np.nan, np.nan, np.nan])


def test_a_file_of_no_architecture_or_none_of_the_experiments_is_refused(tmp_path: Path) -> None:
    def refuse(text: str) -> str:
        raise ValueError(text)

    path = write(tmp_path / "ref.csv", "arch,val_acc,test_acc\nx,0.5,0.5\n")
    with pytest.raises(NasproxyError, match="none of its 1 ids is one"):
        read_reference(path, refuse)
    with pytest.raises(NasproxyError, match="holds none of the experiment's 4 architectures"):
        read_reference(path).accuracies(ARCHS)


@pytest.mark.parametrize(
    ("manifest", "ok"),
    [
        ({"dataset": "digits", "dataset_name": "digits"}, True),
        ({"dataset": "imagefolder:/d/Digits", "dataset_name": "Digits"}, True),
        ({"dataset": "cifar10", "dataset_name": "cifar10"}, False),
        ({}, False),
    ],
)
def test_a_reference_of_another_dataset_is_refused(
    tmp_path: Path, manifest: dict, ok: bool
) -> None:
    ref = read_reference(write(tmp_path / "ref.csv", "arch,val_acc,test_acc\na1,0.5,0.5\n"))
    if ok:
        ref.check_dataset(manifest)
    else:
        with pytest.raises(NasproxyError, match="dataset") as info:
            ref.check_dataset(manifest)
        assert "\n" not in str(info.value)


def test_identity_is_the_default_canonical() -> None:
    assert reference.identity("|none~0|") == "|none~0|"
