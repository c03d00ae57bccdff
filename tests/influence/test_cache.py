"""The verified disk cache of arrays derived from a scoring run."""

from __future__ import annotations

import json

import numpy as np
import pytest
from threadpoolctl import threadpool_limits

from nasproxy.influence.cache import ArrayCache
from nasproxy.influence.head import head_cache
from nasproxy.scoring import scoring_run
from tests.proxies.common import TINY, build


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1):
        yield


def test_cache_of_another_scoring_run_is_not_used(digits, tmp_path):
    build(digits, tmp_path, "herding")  # a method that makes the scoring run and the head
    artifact = scoring_run(digits, TINY, tmp_path, device="cpu")
    cache = head_cache(artifact, TINY.backbone_weight_decay)
    meta = json.loads((cache.folder / "head.json").read_text())
    meta["key"]["scoring_hash"] = "0" * 64
    (cache.folder / "head.json").write_text(json.dumps(meta))
    assert cache.load("head") is None and not (cache.folder / "head.npz").exists()


DAMAGE = ["flip a byte", "truncate", "bad JSON", "no arrays", "other key"]


@pytest.mark.parametrize("damage", DAMAGE)
def test_a_damaged_or_stale_entry_is_a_miss_and_removed(tmp_path, damage):
    arrays = {"s": np.arange(12.0).reshape(3, 4), "labels": np.array([2, 0, 1])}
    lines: list[str] = []
    cache = ArrayCache(tmp_path, {"scoring_hash": "a"}, lines.append)
    cache.store("entry", arrays)
    stored = cache.load("entry")
    assert stored is not None and stored.keys() == arrays.keys()
    for key, value in arrays.items():
        np.testing.assert_array_equal(stored[key], value)
        assert stored[key].dtype == value.dtype
    data, meta = tmp_path / "entry.npz", tmp_path / "entry.json"
    if damage == "flip a byte":
        blob = bytearray(data.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        data.write_bytes(bytes(blob))
    elif damage == "truncate":
        data.write_bytes(data.read_bytes()[:100])
    elif damage == "bad JSON":
        meta.write_text("{not json")
    elif damage == "no arrays":
        data.unlink()
    else:
        cache = ArrayCache(tmp_path, {"scoring_hash": "b"}, lines.append)
    assert cache.load("entry") is None
    assert not data.exists() and not meta.exists() and not cache.has("entry")
    assert len(lines) == 1 and "is unusable" in lines[0] and "recomputing" in lines[0]
