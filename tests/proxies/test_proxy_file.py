"""The proxy file: making a record (``proxy_record``), writing and reading it, and the
refusal of a record that is damaged or of another dataset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasproxy.data import load_dataset
from nasproxy.errors import NasproxyError
from nasproxy.proxies.proxy_file import (
    load_proxy,
    proxy_record,
    read_proxy,
    selection_hash,
    write_proxy,
)
from nasproxy.proxies.random import random_per_class
from tests.proxies.common import K, build, flat


def test_proxy_file_round_trip(records, digits, tmp_path):
    record = records["herding"]
    path = write_proxy(record, tmp_path / "p.json")
    text = path.read_text()
    assert text.startswith("{\n  ")  # indented for people
    assert read_proxy(path) == json.loads(json.dumps(record))  # every field, as JSON has it
    assert read_proxy(path)["nasproxy_version"]
    np.testing.assert_array_equal(load_proxy(path, digits), flat(record))
    assert load_proxy(path, digits).dtype == np.int64


def test_proxy_record_is_the_builders_record_of_the_same_selection(digits, tmp_path):
    """A record made from a kept set reads back as that set, and defines the same selection
    (``selection_hash``) as the record ``build_proxy`` writes for it."""
    kept = random_per_class(digits.y_train.numpy(), K, seed=3)
    record = proxy_record(digits, kept[::-1], method="random", per_class=K, seed=3, note="x")
    path = write_proxy(record, tmp_path / "p.json")
    np.testing.assert_array_equal(load_proxy(path, digits), kept)
    assert read_proxy(path)["note"] == "x" and read_proxy(path)["dataset"] == digits.spec
    built = build(digits, tmp_path / "cache", "random", seed=3)  # nothing cached: no epsilon
    assert selection_hash(record) == selection_hash(built)
    shared = record.keys() & built.keys()
    assert shared == record.keys() - {"note"}
    assert {k: record[k] for k in shared} == {k: built[k] for k in shared}


@pytest.mark.parametrize(
    "kept, options, message",
    [
        (np.array([0, 0]), {}, "more than once"),
        (np.array([-1]), {}, "outside the train split"),
        (np.arange(40), {"per_class": K}, "expected 5 \\(the per-class budget\\)"),
        (np.array([0]), {"fingerprint": "0123456789abcdef"}, "fingerprint cannot be given"),
    ],
    ids=["repeated", "outside", "unbalanced", "clashing field"],
)
def test_proxy_record_refuses_what_would_not_read_back(digits, kept, options, message):
    with pytest.raises(NasproxyError, match=message):
        proxy_record(digits, kept, method="random", **options)


def test_proxy_for_another_dataset_is_refused(records, tmp_path):
    path = write_proxy(records["random"], tmp_path / "p.json")
    other = load_dataset("digits", data_root=tmp_path, val_fraction=0.2)
    with pytest.raises(NasproxyError) as err:
        load_proxy(path, other)
    fp = records["random"]["fingerprint"]
    assert str(err.value) == (
        f"proxy {path} was built on dataset fingerprint {fp}, this dataset is {other.fingerprint}"
    )


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda r: r["indices"]["3"].append(10**6), "outside the train split"),
        (lambda r: r["indices"]["3"].append(r["indices"]["4"][0]), "another class"),
        (lambda r: r["indices"].update({"cat": []}), "lacks"),
        (lambda r: r.update({"n_images": 1}), "n_images"),
        (lambda r: r.update({"format": "other/1"}), "not a nasproxy proxy file"),
    ],
)
def test_damaged_proxy_is_refused(records, digits, tmp_path, edit, message):
    record = json.loads(json.dumps(records["random"]))
    edit(record)
    path = write_proxy(record, tmp_path / "p.json")
    with pytest.raises(NasproxyError, match=message):
        load_proxy(path, digits)
