"""Fixtures of the proxies tests: one scoring run on digits shared by the whole folder."""

from __future__ import annotations

import sys

import pytest
from threadpoolctl import threadpool_limits

from nasproxy.scoring import scoring_run
from tests.proxies.common import PLUGIN, TINY, build


@pytest.fixture(scope="module", autouse=True)
def one_blas_thread():
    with threadpool_limits(limits=1):
        yield


@pytest.fixture(scope="session")
def cache(tmp_path_factory):
    """The data root and scoring cache shared by the folder's builds."""
    return tmp_path_factory.mktemp("proxies")


@pytest.fixture(scope="session")
def artifact(digits, cache):
    return scoring_run(digits, TINY, cache, device="cpu")


@pytest.fixture(scope="session")
def records(digits, cache):
    """One proxy of each of the four paper methods, K per class."""
    return {m: build(digits, cache, m) for m in ("influence", "random", "herding", "forgetting")}


@pytest.fixture()
def plugin(tmp_path, monkeypatch):
    """A module ``my_selector`` of selectors, good and bad, importable from ``tmp_path``."""
    (tmp_path / "my_selector.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    sys.modules.pop("my_selector", None)
