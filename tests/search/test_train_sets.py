"""nasproxy.search.train_sets: each proxy file's training-set name, the refusal of clashes
and of a file given twice, and the whole split's seeded class-balanced subset."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nasproxy.errors import NasproxyError
from nasproxy.proxies.build import write_proxy
from nasproxy.search import resolve_train_sets
from tests.search.conftest import _proxy


def test_train_set_names_disambiguate_and_refuse_clashes(inputs, digits, tmp_path):
    indices = json.loads(inputs["proxies"][0].read_text())["indices"]
    half = {k: v[:5] for k, v in indices.items()}
    a = tmp_path / "influence-small.json"
    b = tmp_path / "influence-large.json"
    write_proxy(_proxy("influence", digits, half), a)
    write_proxy(_proxy("influence", digits, indices), b)
    sets = resolve_train_sets([str(a), str(b)], True, digits)
    assert [s.name for s in sets] == ["influence-small", "influence-large", "whole"]
    assert [s.n_images for s in sets] == [50, 100, len(digits.y_train)]
    named = resolve_train_sets([f"mine={a}", str(b)], False, digits)
    assert [s.name for s in named] == ["mine", "influence-large"]

    other = tmp_path / "other"
    other.mkdir()
    write_proxy(_proxy("influence", digits, indices), other / a.name)
    with pytest.raises(NasproxyError, match="would be named"):
        resolve_train_sets([str(a), str(other / a.name)], False, digits)
    with pytest.raises(NasproxyError, match="select the same images"):
        resolve_train_sets([str(a), str(a)], False, digits)
    c = tmp_path / "c.json"
    write_proxy(_proxy("whole", digits, half), c)
    with pytest.raises(NasproxyError, match="'whole'"):
        resolve_train_sets([str(c)], True, digits)


def test_whole_subset_is_class_balanced_and_seeded(digits):
    sets = resolve_train_sets((), True, digits, whole_per_class=7, whole_seed=3)
    (whole,) = sets
    labels = digits.y_train.numpy()[whole.indices]
    assert whole.name == "whole" and whole.n_images == 70
    assert np.bincount(labels, minlength=10).tolist() == [7] * 10
    again = resolve_train_sets((), True, digits, whole_per_class=7, whole_seed=3)[0]
    other = resolve_train_sets((), True, digits, whole_per_class=7, whole_seed=4)[0]
    assert np.array_equal(whole.indices, again.indices)
    assert not np.array_equal(whole.indices, other.indices)
    assert resolve_train_sets((), True, digits)[0].indices is None
    with pytest.raises(NasproxyError, match="exceeds class"):
        resolve_train_sets((), True, digits, whole_per_class=10_000)


def test_a_draw_s_manifest_entry_copies_its_method_budget_and_draw(inputs, digits, tmp_path):
    """A proxy built as a draw gives its manifest entry ``method``, ``per_class`` and
    ``draw``; a file from before draws (no ``draw`` field) gives none."""
    indices = json.loads(inputs["proxies"][0].read_text())["indices"]
    drawn = tmp_path / "random-pc10-d3.json"
    write_proxy({**_proxy("random", digits, indices), "per_class": 10, "draw": 3}, drawn)
    old = inputs["proxies"][1]
    sets = resolve_train_sets([str(drawn), str(old)], False, digits)
    entries = [s.manifest_entry(digits, []) for s in sets]
    assert {k: entries[0][k] for k in ("method", "per_class", "draw")} == {
        "method": "random",
        "per_class": 10,
        "draw": 3,
    }
    assert not {"method", "per_class", "draw"} & set(entries[1])
