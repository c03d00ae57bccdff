"""Table 1 of the NAS experiment (Yang et al., ICLR 2023) computed from the trials table.

Aggregation over seeds: the whole-set reference of an architecture is its validation /
test accuracy averaged over the whole-set training seeds; each proxy training seed ranks
the architectures on its own and is scored against that reference (``nasproxy.metrics``);
the table gives the mean and sample std over proxy seeds. Only trials with status "ok"
enter the metrics; repeated trials of one (train set, arch, seed) are averaged. Missing
trials are counted against each training set's archs x seeds and reported, never dropped
silently. A published reference (``nasproxy.reference``) may stand in for the whole-set
trials: its row, ``reference.ROW``, is then the reference, and a trained whole split is
scored against it like a proxy. The draws of one proxy (``report.draws``) make one row,
whose spread and intervals include the draws. What the columns mean for a reader:
docs/search.md ("Report").
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np
import pandas as pd

from nasproxy import metrics, shortlist
from nasproxy.reference import ROW as EXTERNAL
from nasproxy.reference import Reference
from nasproxy.report.draws import group_sets, group_stats
from nasproxy.results import WHOLE

# The CSV's columns, in order. Accuracies are fractions in 0..1 as in trials.parquet;
# "_std" is the sample std over proxy seeds, "_lo"/"_hi" the bootstrap 95% interval.
TABLE_COLUMNS = (
    "train_set",
    "role",
    "n_images",
    "bytes",
    "epsilon",
    "trials_expected",
    "trials_present",
    "trials_missing",
    "trials_not_ok",
    "n_seeds",
    "n_archs",
    "perf_topk",
    "perf_topk_std",
    "top1_test",
    "top1_test_std",
    "regret",
    "regret_std",
    "spearman_topk",
    "spearman_topk_std",
    "spearman_topk_lo",
    "spearman_topk_hi",
    "spearman_all",
    "spearman_all_std",
    "spearman_all_lo",
    "spearman_all_hi",
    "kendall_all",
    "kendall_all_std",
    "kendall_all_lo",
    "kendall_all_hi",
    "seed_spearman",
    "train_s",
    "sweep_wall_s",
)
SEED_COLUMNS = (
    "train_set",
    "seed",
    "n_archs",
    "top1_arch",
    "perf_topk",
    "top1_test",
    "regret",
    "spearman_topk",
    "spearman_all",
    "kendall_all",
)


@dataclass(frozen=True)
class _Matrices:
    """Accuracies of one train set: (seeds, archs), NaN where no ok trial exists."""

    seeds: list[int]
    val: np.ndarray
    test: np.ndarray


def _matrices(ok: pd.DataFrame, archs: list[str]) -> _Matrices:
    if ok.empty:
        empty = np.empty((0, len(archs)))
        return _Matrices([], empty, empty)
    # several trials of one (arch, seed) -> their mean
    agg = ok.groupby(["seed", "arch"])[["val_acc", "test_acc"]].mean()
    seeds = sorted(agg.index.get_level_values("seed").unique().tolist())
    val = agg["val_acc"].unstack("arch").reindex(index=seeds, columns=archs)
    test = agg["test_acc"].unstack("arch").reindex(index=seeds, columns=archs)
    return _Matrices(seeds, val.to_numpy(dtype=float), test.to_numpy(dtype=float))


def _external(reference: Reference, archs: list[str]) -> _Matrices:
    """The external reference's accuracies as the whole split's: one pseudo-seed."""
    val, test = reference.accuracies(archs)
    return _Matrices([], val[None, :], test[None, :])


def _nanmean0(a: np.ndarray) -> np.ndarray:
    if a.shape[0] == 0:
        return np.full(a.shape[1], np.nan)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an arch with no trial -> NaN
        return np.nanmean(a, axis=0)


def _seed_to_seed(val: np.ndarray) -> float:
    """Mean Spearman between the val-acc rankings of every pair of seeds (NaN if < 2)."""
    rhos = [metrics.spearman(val[i], val[j]) for i, j in combinations(range(val.shape[0]), 2)]
    rhos = [r for r in rhos if math.isfinite(r)]
    return float(np.mean(rhos)) if rhos else float("nan")


def _coverage(rows: pd.DataFrame, archs: list[str], seeds: list[int]) -> dict[str, int]:
    expected = {(a, s) for a in archs for s in seeds}
    pairs = set(zip(rows["arch"], rows["seed"], strict=True))
    ok = rows[rows["status"] == "ok"]
    ok_pairs = set(zip(ok["arch"], ok["seed"], strict=True))
    present = pairs & expected
    return {
        "trials_expected": len(expected),
        "trials_present": len(present),
        "trials_missing": len(expected - present),
        "trials_not_ok": len(present - ok_pairs),
        "unexpected": len(pairs - expected),
    }


def _coverage_line(name: str, cov: dict[str, int]) -> str:
    line = f"{name}: {cov['trials_present']}/{cov['trials_expected']} trials"
    parts = []
    if cov["trials_missing"]:
        parts.append(f"{cov['trials_missing']} missing")
    if cov["trials_not_ok"]:
        parts.append(f"{cov['trials_not_ok']} not ok (diverged/failed)")
    if cov["unexpected"]:
        parts.append(f"{cov['unexpected']} outside the manifest's archs x seeds (used)")
    return line + ("; " + "; ".join(parts) if parts else " (complete)")


def _num(v: Any) -> float:
    """A manifest number, NaN when absent (None) or not a number."""
    return float(v) if isinstance(v, int | float) else float("nan")


def _storage(man: dict[str, Any], name: str, rows: pd.DataFrame) -> dict[str, float]:
    """The n_images, bytes and epsilon columns of a train set, from the manifest; the
    images fall back to the trials' n_train."""
    info = man["train_sets"].get(name) or {}
    n_images = info.get("n_images")
    if n_images is None and not rows.empty:
        n_images = int(rows["n_train"].iloc[0])
    return {
        "n_images": _num(n_images),
        "bytes": _num(info.get("bytes")),
        "epsilon": _num(info.get("epsilon")),
    }


def _row(
    name: str,
    rank_val: np.ndarray,
    ref_val: np.ndarray,
    ref_val_seeds: np.ndarray,
    ref_test: np.ndarray,
    seeds: list[int],
    archs: list[str],
    own: np.ndarray,
    top_k: int,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics of one train set whose (seeds, archs) val accuracies are ``rank_val``;
    ``own`` marks the train set's own architectures, which its regret is measured against."""
    per_seed = []
    for s, pv in zip(seeds, rank_val, strict=True):
        m = metrics.seed_metrics(pv, ref_val, ref_test, top_k, own)
        both = np.isfinite(pv) & np.isfinite(ref_val) & np.isfinite(ref_test)
        top1 = metrics.top_k_order(np.where(both, pv, np.nan), 1) if m.n_archs else []
        per_seed.append(
            {
                "train_set": name,
                "seed": s,
                "n_archs": m.n_archs,
                "top1_arch": archs[top1[0]] if len(top1) else "",
                "perf_topk": m.perf_topk,
                "top1_test": m.top1_test,
                "regret": m.regret,
                "spearman_topk": m.spearman_topk,
                "spearman_all": m.spearman_all,
                "kendall_all": m.kendall_all,
            }
        )
    out: dict[str, float] = {"n_seeds": len(seeds)}
    scored = np.isfinite(_nanmean0(rank_val)) & np.isfinite(ref_val) & np.isfinite(ref_test)
    out["n_archs"] = int(scored.sum())
    for col in ("perf_topk", "top1_test", "regret", *metrics.CORRELATIONS):
        mean, std = metrics.mean_std(np.array([r[col] for r in per_seed], dtype=float))
        out[col], out[f"{col}_std"] = mean, std
    if seeds and np.isfinite(ref_val).any():
        ci = metrics.bootstrap_correlations(rank_val, ref_val_seeds, top_k, n_boot, seed)
    else:
        ci = {c: (float("nan"), float("nan")) for c in metrics.CORRELATIONS}
    for col, (lo, hi) in ci.items():
        out[f"{col}_lo"], out[f"{col}_hi"] = lo, hi
    return out, per_seed


def _group_row(
    label: str, members: list[dict[str, Any]], stats_row: dict[str, float]
) -> dict[str, Any]:
    """Table 1's row of a proxy's draws (``members``: their own rows): storage as one
    draw's (epsilon: the mean), trials and training time summed, the statistics of
    ``report.draws.group_stats``."""

    def column(key: str) -> np.ndarray:
        return np.array([m[key] for m in members], dtype=float)

    def finite_mean(key: str) -> float:
        v = column(key)
        return float(v[np.isfinite(v)].mean()) if np.isfinite(v).any() else float("nan")

    row: dict[str, Any] = {"train_set": label, "role": "proxy"}
    row |= {"n_images": members[0]["n_images"], "bytes": members[0]["bytes"]}
    row["epsilon"] = finite_mean("epsilon")
    for key in ("trials_expected", "trials_present", "trials_missing", "trials_not_ok"):
        row[key] = int(column(key).sum())
    row |= stats_row
    row["n_seeds"] = int(stats_row["n_seeds"])
    row["n_archs"] = int(stats_row["n_archs"])
    row["seed_spearman"] = finite_mean("seed_spearman")
    row["train_s"] = float(column("train_s").sum())
    row["sweep_wall_s"] = float(column("sweep_wall_s").sum())
    return row


@dataclass(frozen=True)
class Table1:
    """Table 1 and what the figures need, computed from trials and manifest."""

    table: pd.DataFrame  # TABLE_COLUMNS, one row per train set
    per_seed: pd.DataFrame  # SEED_COLUMNS, one row per (proxy train set, seed)
    notes: list[str]  # coverage, one line per train set, then caveats
    archs: list[str]  # the architecture order of the arrays below
    val_means: dict[str, np.ndarray]  # train set -> per-arch val acc, mean over seeds
    reference: str = WHOLE  # the reference's row (whole, or the external reference's)
    ref_test: np.ndarray | None = None  # the reference's per-arch test acc (its mean)


def compute_table(
    trials: pd.DataFrame,
    manifest: dict[str, Any],
    top_k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    reference: Reference | None = None,
) -> Table1:
    """Table 1 from validated trials and manifest (see :func:`make_report`).

    Rows: one per proxy train set (train_set != "whole"; manifest order, then any found
    only in the trials), then the whole set. The whole-set row ranks the reference
    against itself, so its correlation is 1 by computation (NaN if undefined). With an
    external ``reference``, it stands in for the whole-set trials in a last row of its
    own, and a trained whole split, if any, is scored against it like a proxy.
    """
    archs = list(manifest["archs"])
    archs += sorted(set(trials["arch"]) - set(archs))
    seeds = list(manifest["protocol"]["seeds"])
    names = list(manifest["train_sets"])
    names += sorted(set(trials["train_set"]) - set(names))
    ref_name = WHOLE if reference is None else EXTERNAL
    rungs = set(manifest["train_sets"]) - set(shortlist.proxy_sets(manifest)) - {WHOLE}
    # a trained whole split is a row too, given a reference; rungs: report.halving
    proxies = [n for n in names if n != ref_name and n not in rungs]

    def rows_of(name: str) -> pd.DataFrame:
        return trials[trials["train_set"] == name]

    def ok_of(name: str) -> pd.DataFrame:
        r = rows_of(name)
        return r[r["status"] == "ok"]

    whole = _matrices(ok_of(WHOLE), archs) if reference is None else _external(reference, archs)
    ref_val, ref_test = _nanmean0(whole.val), _nanmean0(whole.test)

    notes: list[str] = []
    table_rows: list[dict[str, Any]] = []
    seed_rows: list[dict[str, Any]] = []
    means: dict[str, np.ndarray] = {ref_name: ref_val}
    vals: dict[str, np.ndarray] = {}  # proxy train set -> its (seeds, archs), for its group
    owns: dict[str, np.ndarray] = {}
    for name in [*proxies, ref_name]:
        rows = rows_of(name)
        # each training set against its own architectures (a set the manifest lacks: all)
        mine = (
            shortlist.train_set_archs(manifest, name) if name in manifest["train_sets"] else archs
        )
        if reference is not None and name == ref_name:
            cov = reference.coverage(archs)
            notes += reference.notes(archs)
        else:
            cov = _coverage(rows, mine, seeds)
            notes.append(_coverage_line(name, cov))
        if name == ref_name:
            # the reference ranks itself once (one pseudo-seed, -1, not kept per seed)
            rank_val, run_seeds = ref_val[None, :], [-1]
            boot_ref = ref_val[None, :]
            seed_spread = _seed_to_seed(whole.val)
        else:
            mats = _matrices(ok_of(name), archs)
            rank_val, run_seeds, boot_ref = mats.val, mats.seeds, whole.val
            seed_spread = _seed_to_seed(mats.val)
            means[name] = _nanmean0(mats.val)
            vals[name] = mats.val
        own = np.isin(archs, mine)
        owns[name] = own
        stats_row, per_seed = _row(
            name, rank_val, ref_val, boot_ref, ref_test, run_seeds, archs, own, top_k, n_boot, seed
        )
        if name == ref_name:
            stats_row["n_seeds"] = len(whole.seeds) if reference is None else float("nan")
        else:
            seed_rows += per_seed
        table_rows.append(
            {
                "train_set": name,
                "role": "reference" if name == ref_name else "whole" if name == WHOLE else "proxy",
                **_storage(manifest, name, rows),
                **{k: v for k, v in cov.items() if k != "unexpected"},
                **stats_row,
                "seed_spearman": seed_spread,
                "train_s": float(rows["wall_s"].sum()) if name != EXTERNAL else float("nan"),
                "sweep_wall_s": _num((manifest.get("wall_s") or {}).get(name)),
            }
        )
    groups = group_sets(manifest, proxies)
    if any(len(g.members) > 1 for g in groups):  # the draws of a proxy: one row
        by_name = {r["train_set"]: r for r in table_rows}
        table_rows = []
        for g in groups:
            if len(g.members) == 1:
                table_rows.append(by_name[g.members[0]])
                continue
            members = [by_name[m] for m in g.members]
            own = np.logical_or.reduce([owns[m] for m in g.members])
            stats_row = group_stats(
                [vals[m] for m in g.members], ref_val, whole.val, ref_test, own, top_k, n_boot,
                seed,
            )  # fmt: skip
            table_rows.append(_group_row(g.label, members, stats_row))
            means[g.label] = _nanmean0(np.vstack([means[m][None, :] for m in g.members]))
            notes.append(
                f"{g.label}: draws {', '.join(g.members)}; mean over draws of each draw's mean "
                "over seeds, +- std over every (draw, seed); intervals resample the archs, the "
                "whole-set seeds, the draws, then the seeds of each drawn draw"
            )
        table_rows.append(by_name[ref_name])
    if not np.isfinite(ref_val).any():
        notes.append(
            "no whole-set trial with status ok: performance, regret and correlation are n/a"
            if reference is None
            else f"{EXTERNAL}: no validation accuracy of these architectures: performance,"
            " regret and correlation are n/a"
        )
    for entry in manifest["train_sets"].values():  # --equal-compute: a rounding far off
        notes += [
            f"equal compute: {m['note']}" for m in entry.get("equal_compute", []) if m.get("note")
        ]
    table = pd.DataFrame(table_rows).reindex(columns=list(TABLE_COLUMNS))
    per_seed_df = pd.DataFrame(seed_rows, columns=list(SEED_COLUMNS))
    return Table1(table, per_seed_df, notes, archs, means, ref_name, ref_test)
