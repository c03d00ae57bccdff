"""Pure metric functions of the NAS proxy experiment (Yang et al., ICLR 2023, Table 1).

Every function takes plain arrays indexed by architecture; nothing here reads files.
A proxy training set is judged by how it *ranks* architectures compared with the whole
training set: the whole-set test accuracy of the architectures it would pick
(performance, regret) and the rank correlation of its validation accuracies with the
whole-set ones (correlation). ``nasproxy.report.table1`` applies them per training set
and seed; docs/search.md ("Report") lists the columns they fill.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class SeedMetrics:
    """Table 1 metrics of one proxy ranking (one training seed) against the reference."""

    n_archs: int  # architectures scored by both the proxy and the reference
    perf_topk: float  # mean reference test acc of the top-k archs by proxy val acc
    top1_test: float  # reference test acc of the proxy's top-1 pick
    regret: float  # best reference test acc minus top1_test
    spearman_topk: float  # Spearman(proxy val, reference val) over the proxy's top-k
    spearman_all: float  # Spearman over all archs
    kendall_all: float  # Kendall tau-b over all archs


def _finite_pair(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    a = np.asarray(a, dtype=float)
    b = np.asarray(b, dtype=float)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"expected two 1-d arrays of equal length, got {a.shape} and {b.shape}")
    keep = np.isfinite(a) & np.isfinite(b)
    return a[keep], b[keep]


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation (scipy, ties averaged); NaN when undefined.

    Undefined means fewer than two finite pairs or a constant input; scipy's
    constant-input warning is silenced because NaN is the documented answer.
    """
    a, b = _finite_pair(a, b)
    if a.size < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.spearmanr(a, b).statistic)


def kendall(a: np.ndarray, b: np.ndarray) -> float:
    """Kendall tau-b (scipy, tie-corrected); NaN when undefined (see :func:`spearman`)."""
    a, b = _finite_pair(a, b)
    if a.size < 2:
        return float("nan")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.ConstantInputWarning)
        return float(stats.kendalltau(a, b).statistic)


def top_k_order(scores: np.ndarray, k: int) -> np.ndarray:
    """Positions of the ``k`` highest finite scores, best first.

    Ties are broken by position (the earlier architecture wins) so that the pick is
    deterministic; NaN scores are never picked. Returns fewer than ``k`` positions when
    fewer finite scores exist.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    scores = np.asarray(scores, dtype=float)
    finite = np.flatnonzero(np.isfinite(scores))
    # stable sort on the negated score keeps the original order among ties
    order = finite[np.argsort(-scores[finite], kind="stable")]
    return order[:k]


def regret(own_test: np.ndarray, pick_test: float) -> float:
    """Regret of a pick: the best reference test accuracy among a proxy's own architectures
    (``own_test``, every one it swept) minus the pick's ``pick_test``.

    NaN unless every one of them has a finite reference test accuracy: one without could be
    the best. So the regret of one proxy never depends on which architectures another proxy
    had trained on the reference (e.g. the union of confirmed lists under ``--whole-top``).
    """
    own_test = np.asarray(own_test, dtype=float)
    if own_test.size == 0 or not np.isfinite(own_test).all():
        return float("nan")
    return float(own_test.max() - pick_test)


def seed_metrics(
    proxy_val: np.ndarray,
    ref_val: np.ndarray,
    ref_test: np.ndarray,
    k: int,
    own: np.ndarray | None = None,
) -> SeedMetrics:
    """Table 1 metrics of one proxy ranking.

    ``proxy_val[i]`` is the validation accuracy of architecture ``i`` trained on the
    proxy, ``ref_val[i]`` / ``ref_test[i]`` those of the same architecture trained on the
    whole set (NaN where absent); ``own`` marks the proxy's own architectures (default:
    all). Definitions follow Yang et al. (ICLR 2023), Table 1:

    - performance: mean whole-set test accuracy of the top-k architectures by proxy
      validation accuracy (paper: k = 10), plus the top-1 pick's;
    - correlation: Spearman rank correlation between proxy and whole-set validation
      accuracy over the proxy's top-k (the paper's definition), and also Spearman and
      Kendall tau over all architectures, which are less noisy;
    - regret: :func:`regret` of the top-1 pick against the ``own`` architectures.

    Only architectures with a finite proxy *and* reference validation accuracy are
    ranked; the regret's "best" ranges over every own architecture, since one the proxy
    failed to score is still one it missed.
    """
    proxy_val = np.asarray(proxy_val, dtype=float)
    ref_val = np.asarray(ref_val, dtype=float)
    ref_test = np.asarray(ref_test, dtype=float)
    if not (proxy_val.shape == ref_val.shape == ref_test.shape) or proxy_val.ndim != 1:
        raise ValueError("proxy_val, ref_val and ref_test must be 1-d arrays of equal length")
    own = np.ones(proxy_val.shape, dtype=bool) if own is None else np.asarray(own, dtype=bool)
    both = np.isfinite(proxy_val) & np.isfinite(ref_val) & np.isfinite(ref_test)
    n = int(both.sum())
    nan = float("nan")
    if n == 0:
        return SeedMetrics(0, nan, nan, nan, nan, nan, nan)
    masked = np.where(both, proxy_val, np.nan)
    top = top_k_order(masked, k)
    top1_test = float(ref_test[top[0]])
    return SeedMetrics(
        n_archs=n,
        perf_topk=float(ref_test[top].mean()),
        top1_test=top1_test,
        regret=regret(ref_test[own], top1_test),
        spearman_topk=spearman(proxy_val[top], ref_val[top]),
        spearman_all=spearman(proxy_val[both], ref_val[both]),
        kendall_all=kendall(proxy_val[both], ref_val[both]),
    )


def mean_std(values: np.ndarray) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1) of the finite values.

    The std is NaN with fewer than two finite values: one seed says nothing about spread.
    """
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return float("nan"), float("nan")
    if v.size == 1:
        return float(v[0]), float("nan")
    return float(v.mean()), float(v.std(ddof=1))


CORRELATIONS = ("spearman_topk", "spearman_all", "kendall_all")


def bootstrap_replicates(
    proxy_val: np.ndarray, ref_val_seeds: np.ndarray, k: int, n_boot: int, seed: int
) -> dict[str, np.ndarray]:
    """The bootstrap replicates behind :func:`bootstrap_correlations`: ``{name: values}``,
    ``n_boot`` values a name, NaN where a replicate's statistic is undefined.

    ``proxy_val`` is (proxy seeds, archs) and ``ref_val_seeds`` is (whole seeds, archs),
    NaN where a trial is absent. Each replicate draws, with replacement, the architectures
    (one draw shared by proxy and reference, so pairs stay paired), the proxy seeds and the
    whole-set seeds; the reference is the mean over the drawn whole-set seeds, each drawn
    proxy seed is scored as :func:`seed_metrics` scores it and the replicate value is the
    mean over the drawn proxy seeds. With one seed only the architectures vary.

    The correlations over all architectures use the draw as it is (the paired bootstrap).
    The top-k Spearman ranks the *distinct* drawn architectures, so its top k are k
    different ones (a repeated architecture would be a tie of itself, which the statistic
    never sees); a replicate that draws fewer than k distinct ranked architectures leaves
    it undefined, and so does an experiment that ranks k or fewer (the top k is then every
    architecture, and no draw of k distinct ones varies).
    """
    proxy_val = np.atleast_2d(np.asarray(proxy_val, dtype=float))
    ref_val_seeds = np.atleast_2d(np.asarray(ref_val_seeds, dtype=float))
    if proxy_val.shape[1] != ref_val_seeds.shape[1]:
        raise ValueError("proxy and reference must cover the same architectures")
    if n_boot < 1:
        raise ValueError(f"n_boot must be >= 1, got {n_boot}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    n_archs = proxy_val.shape[1]
    n_p, n_w = proxy_val.shape[0], ref_val_seeds.shape[0]
    with_topk = topk_defined(proxy_val, ref_val_seeds, k)
    rng = np.random.default_rng(seed)
    reps = {name: np.full(n_boot, np.nan) for name in CORRELATIONS}
    for b in range(n_boot):
        archs = rng.integers(0, n_archs, n_archs)
        p_seeds = rng.integers(0, n_p, n_p) if n_p > 1 else np.zeros(1, dtype=int)
        w_seeds = rng.integers(0, n_w, n_w) if n_w > 1 else np.zeros(1, dtype=int)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN
            ref = np.nanmean(ref_val_seeds[w_seeds], axis=0)
        per_seed = resampled_correlations(proxy_val[p_seeds], ref, archs, k, with_topk)
        for name, values in per_seed.items():
            defined = values[np.isfinite(values)]
            if defined.size:
                reps[name][b] = defined.mean()
    return reps


def topk_defined(proxy_val: np.ndarray, ref_val_seeds: np.ndarray, k: int) -> bool:
    """Whether a resample's top-k Spearman can vary: more than ``k`` architectures are
    ranked by both the proxy rows (any) and the reference rows (any)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN column -> NaN
        ranked = np.isfinite(np.nanmean(proxy_val, 0)) & np.isfinite(np.nanmean(ref_val_seeds, 0))
    return int(ranked.sum()) > k


def resampled_correlations(
    rankings: np.ndarray, ref: np.ndarray, archs: np.ndarray, k: int, with_topk: bool
) -> dict[str, np.ndarray]:
    """The correlations of each row of ``rankings`` (rows, all archs) with ``ref`` over the
    resampled architectures ``archs`` (positions, repeats allowed), as one bootstrap
    replicate scores them (:func:`bootstrap_replicates`): over all drawn architectures as
    drawn, the top-k Spearman over the distinct ones (only ``with_topk``); NaN where
    undefined."""
    rankings = np.atleast_2d(rankings)
    distinct = np.unique(archs)
    out = {name: np.full(rankings.shape[0], np.nan) for name in CORRELATIONS}
    for j, row in enumerate(rankings):
        pv, rv = row[archs], ref[archs]
        both = np.isfinite(pv) & np.isfinite(rv)
        if both.sum() < 2:
            continue
        out["spearman_all"][j] = spearman(pv[both], rv[both])
        out["kendall_all"][j] = kendall(pv[both], rv[both])
        pv_d, rv_d = row[distinct], ref[distinct]
        top = top_k_order(np.where(np.isfinite(rv_d), pv_d, np.nan), k)
        if with_topk and top.size == k:
            out["spearman_topk"][j] = spearman(pv_d[top], rv_d[top])
    return out


def bootstrap_correlations(
    proxy_val: np.ndarray,
    ref_val_seeds: np.ndarray,
    k: int,
    n_boot: int,
    seed: int,
    level: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap intervals of the seed-averaged correlations, from
    :func:`bootstrap_replicates` (which says how a replicate is drawn). Replicates whose
    statistic is undefined (e.g. a constant resample) are left out; an interval with no
    defined replicate is (NaN, NaN). Returns ``{name: (low, high)}`` for the names in
    :data:`CORRELATIONS`.
    """
    reps = bootstrap_replicates(proxy_val, ref_val_seeds, k, n_boot, seed)
    return {name: percentile_interval(values, level) for name, values in reps.items()}


def percentile_interval(replicates: np.ndarray, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of the defined (finite) replicates; (NaN, NaN) if none."""
    alpha = (1.0 - level) / 2.0
    r = np.asarray(replicates, dtype=float)
    r = r[np.isfinite(r)]
    if r.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(r, [alpha, 1.0 - alpha])
    return float(lo), float(hi)
