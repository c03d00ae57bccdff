"""The draws of one proxy as one row: which training sets group, and their statistics.

Training sets group by (method, per_class, own epochs) when their manifest entries carry
``method``, ``per_class`` and ``draw`` (copied from proxy files built as draws,
``nasproxy.proxies.draws``); a set without them (the whole split, a proxy file from before
draws) is a group of its own, and so is a group of one draw. A group of several draws is
one row of Table 1 and of the frontier: each (draw, training seed) ranks the
architectures on its own, scored as Table 1 scores a seed; the row's value is the mean
over draws of each draw's mean over its seeds, its ``_std`` the sample std over every
(draw, seed) ranking, and its correlation intervals come from ``hierarchical_replicates``,
whose resampling includes the draws, so that they carry the proxy's own randomness.

The resampling, replicate by replicate from ``numpy.random.default_rng(seed)`` (the
contract a reader can recompute): (1) the architectures, ``rng.integers(0, A, A)``; (2)
the whole-split seeds, ``rng.integers(0, W, W)`` (none drawn when W = 1); (3) the draws,
``rng.integers(0, D, D)`` (none drawn when D = 1 or ``resample_draws`` is False: then
every draw once, in order); (4) for each drawn draw in turn, its seeds,
``rng.integers(0, S_d, S_d)`` (none drawn when S_d = 1). The reference is the mean over
the drawn whole-split seeds; each drawn (draw, seed) ranking is scored by
``metrics.resampled_correlations``; the replicate is the mean over drawn draws of the mean
over that draw's drawn seeds (of the defined values). The interval is the 95% percentile
interval of the defined replicates.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from nasproxy import metrics

DRAW_FIELDS = ("method", "per_class", "draw")
# the per-ranking statistics of a row, as Table 1 names them
STATISTICS = ("perf_topk", "top1_test", "regret", *metrics.CORRELATIONS)


@dataclass(frozen=True)
class Group:
    """Training sets that are draws of one method at one budget (and epochs), or one set."""

    label: str  # the row's name: the set's own, or "METHOD-pcK (N draws)"
    members: tuple[str, ...]  # training-set names, in manifest order
    method: str | None  # None for a set without draw fields
    per_class: int | None
    epochs: int | None  # the sets' own epochs (manifest entry ``epochs``), None: protocol's


def group_key(entry: Mapping[str, Any] | None) -> tuple[Any, Any, Any] | None:
    """(method, per_class, own epochs) of a manifest entry of a draw, else None."""
    if not isinstance(entry, Mapping) or not all(k in entry for k in DRAW_FIELDS):
        return None
    return entry["method"], entry["per_class"], entry.get("epochs")


def group_sets(manifest: Mapping[str, Any], names: Sequence[str]) -> list[Group]:
    """The groups of training sets ``names``, in order of their first member."""
    entries = manifest.get("train_sets") or {}
    by_key: dict[tuple[Any, Any, Any], list[str]] = {}
    order: list[tuple[str, tuple[Any, Any, Any] | None]] = []
    for name in names:
        key = group_key(entries.get(name))
        if key is None:
            order.append((name, None))
        elif key in by_key:
            by_key[key].append(name)
        else:
            by_key[key] = [name]
            order.append((name, key))
    groups = []
    for name, key in order:
        if key is None:
            entry = entries.get(name) or {}
            groups.append(Group(name, (name,), None, None, entry.get("epochs")))
            continue
        members = tuple(by_key[key])
        method, per_class, epochs = key
        label = name
        if len(members) > 1:
            budget = "" if per_class is None else f"-pc{per_class}"
            own = "" if epochs is None else f"@{epochs}"
            label = f"{method}{budget}{own} ({len(members)} draws)"
        groups.append(Group(label, members, str(method), per_class, epochs))
    return groups


def _nanmean(values: np.ndarray, axis: int = 0) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN -> NaN
        return np.nanmean(values, axis=axis)


def _mean_of_means(per_draw: Sequence[np.ndarray]) -> float:
    """The mean over draws of each draw's mean of its defined values (draws with none left
    out); NaN when no draw has one."""
    means = [v[np.isfinite(v)].mean() for v in per_draw if np.isfinite(v).any()]
    return float(np.mean(means)) if means else float("nan")


def hierarchical_replicates(
    draw_vals: Sequence[np.ndarray],
    ref_val_seeds: np.ndarray,
    k: int,
    n_boot: int,
    seed: int,
    resample_draws: bool = True,
) -> dict[str, np.ndarray]:
    """Bootstrap replicates of a group's correlations (the module docstring's contract):
    ``draw_vals[d]`` is draw d's (seeds, archs) validation accuracies, ``ref_val_seeds`` the
    whole split's (seeds, archs), NaN where a trial is absent. ``resample_draws=False``
    keeps every draw in every replicate (the seeds-only interval)."""
    draws = [np.atleast_2d(np.asarray(v, dtype=float)) for v in draw_vals]
    ref_val_seeds = np.atleast_2d(np.asarray(ref_val_seeds, dtype=float))
    if not draws or n_boot < 1 or k < 1:
        raise ValueError("want at least one draw, n_boot >= 1 and k >= 1")
    if any(v.shape[1] != ref_val_seeds.shape[1] for v in draws):
        raise ValueError("every draw and the reference must cover the same architectures")
    n_archs, n_w, n_d = ref_val_seeds.shape[1], ref_val_seeds.shape[0], len(draws)
    with_topk = metrics.topk_defined(np.vstack(draws), ref_val_seeds, k)
    rng = np.random.default_rng(seed)
    reps = {name: np.full(n_boot, np.nan) for name in metrics.CORRELATIONS}
    for b in range(n_boot):
        archs = rng.integers(0, n_archs, n_archs)
        w_seeds = rng.integers(0, n_w, n_w) if n_w > 1 else np.zeros(1, dtype=int)
        drawn = rng.integers(0, n_d, n_d) if resample_draws and n_d > 1 else np.arange(n_d)
        ref = _nanmean(ref_val_seeds[w_seeds])
        per_draw: dict[str, list[np.ndarray]] = {name: [] for name in metrics.CORRELATIONS}
        for d in drawn:
            n_s = draws[d].shape[0]
            seeds = rng.integers(0, n_s, n_s) if n_s > 1 else np.zeros(1, dtype=int)
            scored = metrics.resampled_correlations(draws[d][seeds], ref, archs, k, with_topk)
            for name, values in scored.items():
                per_draw[name].append(values)
        for name, values in per_draw.items():
            reps[name][b] = _mean_of_means(values)
    return reps


def group_stats(
    draw_vals: Sequence[np.ndarray],
    ref_val: np.ndarray,
    ref_val_seeds: np.ndarray,
    ref_test: np.ndarray,
    own: np.ndarray,
    k: int,
    n_boot: int,
    seed: int,
) -> dict[str, float]:
    """A group's Table 1 statistics: ``n_seeds`` (its (draw, seed) rankings), ``n_archs``,
    and for each of ``STATISTICS`` the mean over draws of the mean over seeds and the
    sample std over every ranking; the correlations' ``_lo``/``_hi`` from
    ``hierarchical_replicates``. ``ref_val``/``ref_test`` are the whole split's per-arch
    means, ``own`` the group's own architectures (as ``metrics.seed_metrics`` takes them)."""
    draws = [np.atleast_2d(np.asarray(v, dtype=float)) for v in draw_vals]
    per_draw: dict[str, list[np.ndarray]] = {name: [] for name in STATISTICS}
    for vals in draws:
        scored = [metrics.seed_metrics(row, ref_val, ref_test, k, own) for row in vals]
        for name in STATISTICS:
            per_draw[name].append(np.array([getattr(m, name) for m in scored], dtype=float))
    out: dict[str, float] = {"n_seeds": float(sum(v.shape[0] for v in draws))}
    scored_archs = np.isfinite(_nanmean(np.vstack(draws))) & np.isfinite(ref_val)
    out["n_archs"] = float((scored_archs & np.isfinite(ref_test)).sum())
    for name in STATISTICS:
        out[name] = _mean_of_means(per_draw[name])
        out[f"{name}_std"] = metrics.mean_std(np.concatenate(per_draw[name]))[1]
    if np.isfinite(ref_val).any():
        reps = hierarchical_replicates(draws, ref_val_seeds, k, n_boot, seed)
        intervals = {name: metrics.percentile_interval(v) for name, v in reps.items()}
    else:
        intervals = {name: (float("nan"), float("nan")) for name in metrics.CORRELATIONS}
    for name, (lo, hi) in intervals.items():
        out[f"{name}_lo"], out[f"{name}_hi"] = lo, hi
    return out
