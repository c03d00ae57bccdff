"""What the proxies tests share: a tiny scoring network on digits and the build helpers."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from nasproxy.cli import main
from nasproxy.data import Dataset
from nasproxy.proxies.base import ProxyOptions, SelectionContext
from nasproxy.proxies.build import build_proxy
from nasproxy.scoring import ScoringConfig

TINY = ScoringConfig(
    backbone="w8-d3-relu-instancenorm-avgpooling", backbone_epochs=2, backbone_seed=0
)
K = 5  # per-class budget in the end-to-end tests (digits has 125-131 per class)
NEW = ("el2n", "grand", "kcenter", "ccs", "entropy")


def build(digits: Dataset, cache: Path, method: str, per_class=K, seed=0, **options) -> dict:
    """``build_proxy`` on digits with the tiny scoring network, on the CPU."""
    return build_proxy(
        digits, method, per_class, seed, cache, TINY, ProxyOptions(**options), device="cpu"
    )


def flat(record: dict) -> list[int]:
    """A record's kept indices, sorted."""
    return sorted(i for members in record["indices"].values() for i in members)


def first_k(digits: Dataset) -> list[int]:
    """The first K train images of each class, sorted."""
    labels = digits.y_train.numpy()
    return sorted(int(i) for c in range(10) for i in np.flatnonzero(labels == c)[:K])


def context(labels: np.ndarray, artifact: object, per_class: int, seed: int) -> SelectionContext:
    """A method's inputs for a hand-made case: the train labels and a scoring run's fields
    (``artifact``); a method that refits the head fails."""

    def no_head():
        raise AssertionError("the method refitted the head")

    # a stand-in for the Dataset: its train labels are what the score-based methods read
    data = SimpleNamespace(y_train=torch.as_tensor(labels))
    return SelectionContext(data, per_class, seed, ProxyOptions(), lambda: artifact, no_head)


def no_scoring_run(*args, **kwargs):
    """A stand-in for ``scoring_run`` in builds that must not make one."""
    raise AssertionError("a scoring run was made")


def cli(cache: Path, out: Path, *extra: str) -> int:
    """``nasproxy build-proxy`` with the tiny scoring network, K per class, into ``out``."""
    argv = ["build-proxy", "--per-class", str(K), "--dataset", "digits", "--device", "cpu"]
    argv += ["--data-root", str(cache), "--backbone", TINY.backbone, "--backbone-epochs", "2"]
    return main([*argv, "--out", str(out), *extra])


PLUGIN = '''
import numpy as np

def first(ctx):
    """The first K of each class (a valid selection)."""
    labels = ctx.labels
    return np.concatenate([np.flatnonzero(labels == c)[: ctx.budget()] for c in range(10)])

def boom(ctx):
    raise ValueError("no GPU here\\nsecond line")

def short(ctx):
    return first(ctx)[1:]

def outside(ctx):
    return np.append(first(ctx)[:-1], 10**6)

def twice(ctx):
    kept = first(ctx)
    return np.append(kept[:-1], kept[0])

def floats(ctx):
    return first(ctx).astype(float)

NOT_A_FUNCTION = 3
'''
