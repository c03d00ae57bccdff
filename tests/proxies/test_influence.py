"""The influence method: Eq. 4 under class quotas and Eq. 3 under an epsilon budget."""

from __future__ import annotations

import numpy as np
import pytest

from nasproxy.errors import NasproxyError
from nasproxy.influence.head import RefitHead
from nasproxy.scoring import scoring_run
from tests.proxies.common import TINY, K, build


def test_influence_keeps_a_set_with_a_small_removed_influence(records, digits, cache):
    record = records["influence"]
    assert record["params"]["solver"] == "greedy"
    assert record["params"]["objective"] == "removed-sum"
    assert record["params"]["objective_value"] == pytest.approx(record["epsilon"], rel=1e-6)
    # the selection targets epsilon: it beats every other method and many random draws
    others = [records[m]["epsilon"] for m in ("random", "herding", "forgetting")]
    draws = [build(digits, cache, "random", seed=s)["epsilon"] for s in range(1, 6)]
    assert record["epsilon"] < min(others + draws)


def test_influence_under_an_epsilon_budget(digits, cache):
    artifact = scoring_run(digits, TINY, cache, device="cpu")
    influence = RefitHead.load_or_fit(artifact, TINY.backbone_weight_decay).influence()
    everything = np.linalg.norm(influence.sum(axis=0, dtype=np.float64))
    budget = 0.5 * everything
    record = build(digits, cache, "influence", per_class=None, epsilon=budget, min_per_class=30)
    assert record["per_class"] is None and record["params"]["epsilon_budget"] == budget
    assert record["params"]["class_balanced"] is False and "objective" not in record["params"]
    assert record["params"]["min_per_class"] == 30
    assert record["epsilon"] <= budget
    assert 0 < record["n_images"] < len(digits.y_train)
    assert min(len(v) for v in record["indices"].values()) >= 30
    # a budget above ||sum of all S_i|| would remove everything: refused in one line
    with pytest.raises(NasproxyError, match="allows removing every example"):
        build(digits, cache, "influence", per_class=None, epsilon=1.01 * everything)


def test_influence_kept_mean_objective_and_projection(records, digits, cache):
    record = build(digits, cache, "influence", objective="kept-mean", project_dim=64)
    assert record["params"]["objective"] == "kept-mean"
    assert record["params"]["project_dim"] == 64
    assert record["n_images"] == K * digits.num_classes
    assert record["indices"] != records["influence"]["indices"]
