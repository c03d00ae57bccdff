"""Metric functions of Table 1 against scipy.stats and hand-computed answers."""

from __future__ import annotations

import itertools
import warnings

import numpy as np
import pytest
from scipy import stats

from nasproxy import metrics


def test_correlations_match_scipy_with_ties() -> None:
    rng = np.random.default_rng(1)
    for _ in range(20):
        a = rng.integers(0, 4, 15).astype(float)  # many ties
        b = a + rng.integers(-2, 3, 15)
        assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a, b).statistic)
        assert metrics.kendall(a, b) == pytest.approx(stats.kendalltau(a, b).statistic)


def test_correlations_drop_nan_pairs() -> None:
    a = np.array([0.1, 0.5, np.nan, 0.3, 0.9, 0.2])
    b = np.array([0.2, 0.4, 0.8, np.nan, 0.7, 0.1])
    keep = [0, 1, 4, 5]
    assert metrics.spearman(a, b) == pytest.approx(stats.spearmanr(a[keep], b[keep]).statistic)
    assert metrics.kendall(a, b) == pytest.approx(stats.kendalltau(a[keep], b[keep]).statistic)


def test_undefined_correlation_is_nan_without_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert np.isnan(metrics.spearman(np.ones(5), np.arange(5.0)))
        assert np.isnan(metrics.kendall(np.arange(5.0), np.full(5, 0.3)))
        assert np.isnan(metrics.spearman(np.array([1.0]), np.array([2.0])))
        assert np.isnan(metrics.kendall(np.array([np.nan, 1.0]), np.array([1.0, 2.0])))


def test_top_k_order_ties_by_position_and_skips_nan() -> None:
    s = np.array([0.5, np.nan, 0.9, 0.5, 0.9, 0.1])
    assert metrics.top_k_order(s, 3).tolist() == [2, 4, 0]
    assert metrics.top_k_order(s, 10).tolist() == [2, 4, 0, 3, 5]
    with pytest.raises(ValueError):
        metrics.top_k_order(s, 0)


def test_seed_metrics_hand_built_table() -> None:
    # 6 archs; arch 4 has no proxy trial. Proxy ranking by val: 2 > 0 > 5 > 1 > 3.
    proxy = np.array([0.60, 0.40, 0.70, 0.30, np.nan, 0.50])
    ref_val = np.array([0.80, 0.85, 0.70, 0.60, 0.95, 0.75])
    ref_test = np.array([0.79, 0.86, 0.69, 0.61, 0.94, 0.74])
    m = metrics.seed_metrics(proxy, ref_val, ref_test, k=3)
    assert m.n_archs == 5
    assert m.perf_topk == pytest.approx((0.69 + 0.79 + 0.74) / 3)
    assert m.top1_test == pytest.approx(0.69)
    # the best whole-set arch (4) counts although the proxy never scored it
    assert m.regret == pytest.approx(0.94 - 0.69)
    top = [2, 0, 5]
    assert m.spearman_topk == pytest.approx(stats.spearmanr(proxy[top], ref_val[top]).statistic)
    keep = [0, 1, 2, 3, 5]
    assert m.spearman_all == pytest.approx(stats.spearmanr(proxy[keep], ref_val[keep]).statistic)
    assert m.kendall_all == pytest.approx(stats.kendalltau(proxy[keep], ref_val[keep]).statistic)


def test_monotone_and_reversed_proxies() -> None:
    ref = np.linspace(0.5, 0.9, 12)
    up = metrics.seed_metrics(np.exp(3 * ref), ref, ref + 0.01, k=10)
    assert (up.spearman_topk, up.spearman_all, up.kendall_all) == pytest.approx((1, 1, 1))
    assert up.regret == pytest.approx(0.0)
    assert up.perf_topk == pytest.approx(np.sort(ref + 0.01)[-10:].mean())
    down = metrics.seed_metrics(-ref, ref, ref + 0.01, k=10)
    assert (down.spearman_topk, down.spearman_all, down.kendall_all) == pytest.approx((-1, -1, -1))
    assert down.regret == pytest.approx(ref.max() - ref.min())


def test_constant_proxy_gives_nan_correlation() -> None:
    ref = np.linspace(0.5, 0.9, 8)
    m = metrics.seed_metrics(np.full(8, 0.1), ref, ref, k=3)
    assert np.isnan(m.spearman_all) and np.isnan(m.spearman_topk) and np.isnan(m.kendall_all)
    # all tied: position breaks the tie, so the first three archs are picked
    assert m.perf_topk == pytest.approx(ref[:3].mean())


def test_seed_metrics_without_overlap() -> None:
    m = metrics.seed_metrics(np.array([0.5, np.nan]), np.array([np.nan, 0.5]), np.ones(2), k=1)
    assert m.n_archs == 0 and np.isnan(m.perf_topk) and np.isnan(m.regret)


def test_mean_std_sample_std() -> None:
    assert metrics.mean_std(np.array([1.0, 2.0, 4.0, np.nan])) == pytest.approx(
        (7 / 3, np.std([1.0, 2.0, 4.0], ddof=1))
    )
    mean, std = metrics.mean_std(np.array([0.3]))
    assert mean == 0.3 and np.isnan(std)
    assert all(np.isnan(metrics.mean_std(np.array([np.nan]))))


def test_bootstrap_degenerate_intervals() -> None:
    ref = np.linspace(0.5, 0.9, 12)
    up = metrics.bootstrap_correlations(np.exp(ref)[None], ref[None], 5, 50, 0)
    for lo, hi in up.values():
        assert lo == pytest.approx(1.0) and hi == pytest.approx(1.0)
    down = metrics.bootstrap_correlations(-ref[None], np.vstack([ref, ref + 0.1]), 5, 50, 0)
    for lo, hi in down.values():
        assert lo == pytest.approx(-1.0) and hi == pytest.approx(-1.0)
    flat = metrics.bootstrap_correlations(np.ones((1, 12)), ref[None], 5, 20, 0)
    assert all(np.isnan(v) for pair in flat.values() for v in pair)


def test_bootstrap_matches_scipy_percentile_bootstrap() -> None:
    # one seed: only architectures are resampled, as scipy's paired bootstrap does
    rng = np.random.default_rng(3)
    ref = rng.random(30)
    proxy = ref + rng.normal(0, 0.25, 30)
    ours = metrics.bootstrap_correlations(proxy[None], ref[None], 10, 1500, 0)
    for name, fn in (("spearman_all", stats.spearmanr), ("kendall_all", stats.kendalltau)):
        ci = stats.bootstrap(
            (proxy, ref),
            lambda x, y, fn=fn: fn(x, y).statistic,
            paired=True,
            vectorized=False,
            n_resamples=1500,
            method="percentile",
            random_state=1,
        ).confidence_interval
        assert ours[name] == pytest.approx((ci.low, ci.high), abs=0.03)


def test_bootstrap_is_deterministic_and_covers_the_estimate() -> None:
    rng = np.random.default_rng(4)
    ref_seeds = rng.random((1, 20)) + rng.normal(0, 0.05, (3, 20))
    proxy = ref_seeds.mean(0) + rng.normal(0, 0.2, (3, 20))
    a = metrics.bootstrap_correlations(proxy, ref_seeds, 10, 100, 7)
    assert a == metrics.bootstrap_correlations(proxy, ref_seeds, 10, 100, 7)
    lo, hi = a["spearman_all"]
    point = np.mean([metrics.spearman(p, ref_seeds.mean(0)) for p in proxy])
    assert lo <= point <= hi


def test_regret_is_against_every_own_architecture_or_undefined() -> None:
    assert metrics.regret(np.array([0.7, 0.9, 0.8]), 0.8) == pytest.approx(0.1)
    assert np.isnan(metrics.regret(np.array([0.7, np.nan, 0.8]), 0.8))  # the NaN could be best
    assert np.isnan(metrics.regret(np.array([]), 0.8))
    # seed_metrics: the best counts only among the proxy's own architectures
    proxy = np.array([0.6, 0.4, 0.7, np.nan])
    ref = np.array([0.8, 0.85, 0.7, 0.95])
    own = np.array([True, True, True, False])
    assert metrics.seed_metrics(proxy, ref, ref, 2, own).regret == pytest.approx(0.85 - 0.7)
    assert metrics.seed_metrics(proxy, ref, ref, 2).regret == pytest.approx(0.95 - 0.7)


def _exact_topk_distribution(proxy: np.ndarray, ref: np.ndarray, k: int) -> dict[float, float]:
    """Every draw of n of n architectures with replacement (n^n, equally likely): the
    probability of each value of Spearman over the top k of the distinct drawn ones, and of
    None (fewer than k distinct drawn: undefined)."""
    n = proxy.size
    dist: dict = {}
    for draw in itertools.product(range(n), repeat=n):
        distinct = sorted(set(draw), key=lambda i: -proxy[i])
        value = None
        if len(distinct) >= k:
            top = distinct[:k]  # distinct values: rho = 1 - 6 sum d^2 / (k (k^2 - 1))
            d = stats.rankdata(proxy[top]) - stats.rankdata(ref[top])
            value = round(1 - 6 * float((d**2).sum()) / (k * (k * k - 1)), 9)
        dist[value] = dist.get(value, 0) + 1 / n**n
    return dist


def test_bootstrap_top_k_keeps_k_distinct_architectures_brute_force() -> None:
    """One seed, 5 architectures, k = 3: the replicates of the top-k Spearman follow the
    distribution that enumerating all 5^5 draws gives (within 5 binomial sigmas), each
    value one of k distinct architectures. Drawing with replacement into the top k (a
    repeated architecture twice in it) does not."""
    proxy = np.array([0.9, 0.1, 0.5, 0.7, 0.3])
    ref = np.array([0.6, 0.2, 0.9, 0.3, 0.8])
    n_boot = 1000
    exact = _exact_topk_distribution(proxy, ref, 3)
    reps = metrics.bootstrap_replicates(proxy[None], ref[None], 3, n_boot, seed=2)
    got = [None if np.isnan(v) else round(float(v), 9) for v in reps["spearman_topk"]]
    assert set(got) <= set(exact)
    for value, p in exact.items():
        sigma = np.sqrt(n_boot * p * (1 - p))
        assert abs(got.count(value) - n_boot * p) <= 5 * sigma + 1, (value, p)


def test_bootstrap_top_k_interval_is_undefined_with_k_or_fewer_ranked() -> None:
    """With k or fewer ranked architectures the top k is every one of them: no resample
    of k distinct ones varies, so the interval is (NaN, NaN); the others stay defined."""
    rng = np.random.default_rng(6)
    ref = rng.random(8)
    proxy = ref + rng.normal(0, 0.1, 8)
    proxy[[1, 4, 6]] = np.nan  # 5 ranked
    ci = metrics.bootstrap_correlations(proxy[None], ref[None], 5, 200, 0)
    assert all(np.isnan(ci["spearman_topk"])) and all(np.isfinite(ci["spearman_all"]))
    ci = metrics.bootstrap_correlations(proxy[None], ref[None], 4, 200, 0)
    assert all(np.isfinite(ci["spearman_topk"]))
