"""Table 1 of the NAS experiment (Yang et al., ICLR 2023) from a finished or partial sweep.

Reads ``EXP/trials.parquet`` (or ``trials.csv``) and ``EXP/manifest.json`` and writes,
atomically under ``EXP``: ``table1.md``, ``table1.csv`` (``#`` comment header, read back
with ``pd.read_csv(path, comment="#")``), ``table1.tex``, ``table1_seeds.csv`` (the
per-seed metrics behind the means) and three PNG figures.

Aggregation over seeds: the whole-set reference of an architecture is its validation /
test accuracy averaged over the whole-set training seeds; each proxy training seed ranks
the architectures on its own and is scored against that reference; the table gives the
mean and sample std over proxy seeds. Only trials with status "ok" enter the metrics;
repeated trials of one (train set, arch, seed) are averaged. Missing trials are counted
against the manifest's archs x seeds and reported, never dropped silently.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nasproxy import __version__, metrics, plots, results, shortlist
from nasproxy.errors import NasproxyError
from nasproxy.io import atomic_write_bytes, atomic_write_text
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
class ReportResult:
    """What :func:`make_report` computed and wrote."""

    exp_dir: Path
    table: pd.DataFrame  # one row per train set (proxies, then "whole"), TABLE_COLUMNS
    per_seed: pd.DataFrame  # one row per (proxy train set, seed), SEED_COLUMNS
    protocol: dict[str, str]  # the conditions every table carries, in display order
    notes: list[str]  # coverage and caveats, one line each
    top_k: int
    paths: dict[str, Path] = field(default_factory=dict)  # kind -> file written
    outcome: pd.DataFrame | None = None  # the search outcome (OUTCOME_COLUMNS), if any


# ---------------------------------------------------------------- reading


def _inputs(exp_dir: Path) -> tuple[dict[str, Any], pd.DataFrame]:
    """The manifest and trials of ``exp_dir`` (read by ``nasproxy.results``), checked for
    what the report needs: the swept archs and seeds, the training sets, a trial."""
    manifest = results.read_manifest(exp_dir)
    path = exp_dir / results.MANIFEST
    if manifest is None:
        raise NasproxyError(f"no {results.MANIFEST} in {exp_dir}: not an experiment directory")
    archs = manifest.get("archs")
    if not isinstance(archs, list) or not archs or not all(isinstance(a, str) for a in archs):
        raise NasproxyError(f"{path}: 'archs' must be a non-empty list of architecture ids")
    protocol = manifest.get("protocol")
    seeds = protocol.get("seeds") if isinstance(protocol, dict) else None
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) for s in seeds):
        raise NasproxyError(f"{path}: 'protocol.seeds' must be a non-empty list of integers")
    if not isinstance(manifest.get("train_sets"), dict):
        raise NasproxyError(f"{path}: 'train_sets' must be an object keyed by train set name")
    trials = results.read_trials(exp_dir)
    if trials.empty:
        raise NasproxyError(f"trials of {exp_dir} are empty: no trial has finished yet")
    return manifest, trials


# ---------------------------------------------------------------- computing


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


def _storage(man: dict[str, Any], name: str, rows: pd.DataFrame) -> tuple[float, float, float]:
    """(images, bytes, epsilon) of a train set; images fall back to the trials' n_train."""
    info = man["train_sets"].get(name) or {}
    n_images = info.get("n_images")
    if n_images is None and not rows.empty:
        n_images = int(rows["n_train"].iloc[0])
    return _num(n_images), _num(info.get("bytes")), _num(info.get("epsilon"))


def _row(
    name: str,
    rank_val: np.ndarray,
    ref_val: np.ndarray,
    ref_val_seeds: np.ndarray,
    ref_test: np.ndarray,
    seeds: list[int],
    archs: list[str],
    top_k: int,
    n_boot: int,
    seed: int,
) -> tuple[dict[str, float], list[dict[str, Any]]]:
    """Metrics of one train set whose (seeds, archs) val accuracies are ``rank_val``."""
    per_seed = []
    for s, pv in zip(seeds, rank_val, strict=True):
        m = metrics.seed_metrics(pv, ref_val, ref_test, top_k)
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


def _protocol(
    exp_dir: Path, man: dict[str, Any], top_k: int, n_boot: int, seed: int
) -> dict[str, str]:
    def get(key: str) -> str:
        v = man.get(key)
        return "unknown" if v in (None, "") else str(v)

    proto = man["protocol"]
    settings = ", ".join(f"{k}={proto[k]}" for k in sorted(proto) if k != "seeds")
    space_size = man.get("space_size")
    return {
        "experiment": exp_dir.name,
        "dataset": f"{get('dataset')} ({get('dataset_name')}), fingerprint {get('fingerprint')}",
        "space": f"{get('space')}: {len(man['archs'])} architectures swept"
        f" of {space_size if space_size is not None else 'unknown'} in the space",
        "epochs": str(proto.get("epochs", "unknown")),
        "seeds": ", ".join(str(s) for s in proto["seeds"]),
        "training": settings or "unknown",
        "hardware": get("hardware"),
        "sweep": f"nasproxy {get('nasproxy_version')}, git {get('git_commit')},"
        f" created {get('created')}",
        "report": f"nasproxy {__version__}; top-k k={top_k}; bootstrap {n_boot} resamples"
        f" of archs and seeds, seed {seed}, 95% percentile intervals",
        "aggregation": "whole-set reference = per-arch mean over whole-set seeds;"
        " each proxy seed ranks archs on its own; mean +- sample std over proxy seeds;"
        " status 'ok' trials only",
    }


@dataclass(frozen=True)
class Table1:
    """Table 1 and what the figures need, computed from trials and manifest."""

    table: pd.DataFrame  # TABLE_COLUMNS, one row per train set
    per_seed: pd.DataFrame  # SEED_COLUMNS, one row per (proxy train set, seed)
    notes: list[str]  # coverage, one line per train set, then caveats
    archs: list[str]  # the architecture order of the arrays below
    val_means: dict[str, np.ndarray]  # train set -> per-arch val acc, mean over seeds


def compute_table(
    trials: pd.DataFrame,
    manifest: dict[str, Any],
    top_k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
) -> Table1:
    """Table 1 from validated trials and manifest (see :func:`make_report`).

    Rows: one per proxy train set (train_set != "whole"; manifest order, then any found
    only in the trials), then the whole set. The whole-set row ranks the reference
    against itself, so its correlation is 1 by computation (NaN if undefined).
    """
    archs = list(manifest["archs"])
    archs += sorted(set(trials["arch"]) - set(archs))
    seeds = list(manifest["protocol"]["seeds"])
    names = list(manifest["train_sets"])
    names += sorted(set(trials["train_set"]) - set(names))
    proxies = [n for n in names if n != WHOLE]

    def rows_of(name: str) -> pd.DataFrame:
        return trials[trials["train_set"] == name]

    def ok_of(name: str) -> pd.DataFrame:
        r = rows_of(name)
        return r[r["status"] == "ok"]

    whole = _matrices(ok_of(WHOLE), archs)
    ref_val, ref_test = _nanmean0(whole.val), _nanmean0(whole.test)

    notes: list[str] = []
    table_rows: list[dict[str, Any]] = []
    seed_rows: list[dict[str, Any]] = []
    means: dict[str, np.ndarray] = {WHOLE: ref_val}
    for name in [*proxies, WHOLE]:
        rows = rows_of(name)
        # each training set against its own architectures (a set the manifest lacks: all)
        mine = (
            shortlist.train_set_archs(manifest, name) if name in manifest["train_sets"] else archs
        )
        cov = _coverage(rows, mine, seeds)
        notes.append(_coverage_line(name, cov))
        n_images, nbytes, eps = _storage(manifest, name, rows)
        if name == WHOLE:
            # the reference ranks itself once (one pseudo-seed, -1, not kept per seed)
            rank_val, run_seeds = ref_val[None, :], [-1]
            boot_ref = ref_val[None, :]
            seed_spread = _seed_to_seed(whole.val)
        else:
            mats = _matrices(ok_of(name), archs)
            rank_val, run_seeds, boot_ref = mats.val, mats.seeds, whole.val
            seed_spread = _seed_to_seed(mats.val)
            means[name] = _nanmean0(mats.val)
        stats_row, per_seed = _row(
            name, rank_val, ref_val, boot_ref, ref_test, run_seeds, archs, top_k, n_boot, seed
        )
        if name == WHOLE:
            stats_row["n_seeds"] = len(whole.seeds)
        else:
            seed_rows += per_seed
        table_rows.append(
            {
                "train_set": name,
                "role": "reference" if name == WHOLE else "proxy",
                "n_images": n_images,
                "bytes": nbytes,
                "epsilon": eps,
                **{k: v for k, v in cov.items() if k != "unexpected"},
                **stats_row,
                "seed_spearman": seed_spread,
                "train_s": float(rows["wall_s"].sum()),
                "sweep_wall_s": _num((manifest.get("wall_s") or {}).get(name)),
            }
        )
    if not np.isfinite(ref_val).any():
        notes.append(
            "no whole-set trial with status ok: performance, regret and correlation are n/a"
        )
    table = pd.DataFrame(table_rows).reindex(columns=list(TABLE_COLUMNS))
    per_seed_df = pd.DataFrame(seed_rows, columns=list(SEED_COLUMNS))
    return Table1(table, per_seed_df, notes, archs, means)


# ---------------------------------------------------------------- formatting


def _pct(v: float, std: float = float("nan")) -> str:
    if not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if math.isfinite(std) else "")


def _corr(
    v: float, std: float = float("nan"), lo: float = float("nan"), hi: float = float("nan")
) -> str:
    if not math.isfinite(v):
        return "n/a"
    s = f"{v:.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "")
    if math.isfinite(lo) and math.isfinite(hi):
        s += f" [{lo:.2f}, {hi:.2f}]"
    return s


def _duration(s: float) -> str:
    if not math.isfinite(s):
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def _size(b: float) -> str:
    if not math.isfinite(b):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    raise AssertionError("unreachable")


def _display(table: pd.DataFrame, k: int) -> tuple[list[str], list[list[str]]]:
    """Human-readable headers and cells (accuracies in %, regret in points)."""
    headers = [
        "Train set",
        "Images",
        "Storage",
        "ε",
        "Trials",
        f"Perf. top-{k} (%)",
        "Top-1 (%)",
        "Regret (pp)",
        f"Spearman top-{k} [95% CI]",
        "Spearman all [95% CI]",
        "Kendall all [95% CI]",
        "Seed-to-seed ρ",
        "Train time",
        "Sweep wall",
    ]
    cells = []
    for r in table.to_dict("records"):
        gaps = [
            f"{r[c]} {w}"
            for c, w in (("trials_missing", "missing"), ("trials_not_ok", "not ok"))
            if r[c]
        ]
        trials = f"{r['trials_present']}/{r['trials_expected']}" + (
            f" ({', '.join(gaps)})" if gaps else ""
        )
        cells.append(
            [
                str(r["train_set"]),
                "n/a" if not math.isfinite(r["n_images"]) else f"{r['n_images']:.0f}",
                _size(r["bytes"]),
                "n/a" if not math.isfinite(r["epsilon"]) else f"{r['epsilon']:.4g}",
                trials,
                _pct(r["perf_topk"], r["perf_topk_std"]),
                _pct(r["top1_test"], r["top1_test_std"]),
                _pct(r["regret"], r["regret_std"]),
                _corr(
                    r["spearman_topk"],
                    r["spearman_topk_std"],
                    r["spearman_topk_lo"],
                    r["spearman_topk_hi"],
                ),
                _corr(
                    r["spearman_all"],
                    r["spearman_all_std"],
                    r["spearman_all_lo"],
                    r["spearman_all_hi"],
                ),
                _corr(
                    r["kendall_all"], r["kendall_all_std"], r["kendall_all_lo"], r["kendall_all_hi"]
                ),
                _corr(r["seed_spearman"]),
                _duration(r["train_s"]),
                _duration(r["sweep_wall_s"]),
            ]
        )
    return headers, cells


def _definitions(k: int) -> list[str]:
    return [
        f"Perf. top-{k}: mean whole-set test accuracy of the {k} architectures with the"
        " highest proxy validation accuracy (Yang et al., ICLR 2023, Table 1); Top-1: that"
        " of the single best.",
        "Regret: best whole-set test accuracy among the swept architectures minus that of"
        " the proxy's top-1 pick.",
        f"Spearman top-{k}: rank correlation of proxy and whole-set validation accuracy over"
        f" the proxy's top-{k} (the paper's definition); Spearman/Kendall all: over every"
        " architecture scored by both.",
        "± is the sample std over proxy training seeds; [..] a bootstrap 95% percentile"
        " interval; seed-to-seed ρ: mean Spearman between the seeds of one training set.",
        "ε: the proxy's ||sum of removed influence|| from the manifest. Train time: sum of"
        " trial training seconds, all statuses; sweep wall: wall-clock of the sweep.",
        "The whole-set row ranks the reference against itself.",
    ]


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def _markdown(result_table: pd.DataFrame, protocol: dict, notes: list[str], k: int) -> str:
    headers, cells = _display(result_table, k)
    lines = [
        f"# Table 1: architecture search on proxy training sets ({protocol['experiment']})",
        "",
    ]
    lines += [f"- **{key}**: {_md_escape(val)}" for key, val in protocol.items()]
    lines += ["", "| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in cells]
    lines += ["", "**Coverage**", ""] + [f"- {_md_escape(n)}" for n in notes]
    lines += ["", "**Definitions**", ""] + [f"- {d}" for d in _definitions(k)]
    return "\n".join(lines) + "\n"


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def _csv(table: pd.DataFrame, protocol: dict, notes: list[str], name: str) -> str:
    head = [f"# {name}"]
    head += [f"# {key}: {_one_line(val)}" for key, val in protocol.items()]
    head += [f"# coverage: {_one_line(n)}" for n in notes]
    head += [
        "# accuracies are fractions in 0..1; _std: sample std over proxy seeds;"
        " _lo/_hi: bootstrap 95% percentile interval"
    ]
    return "\n".join(head) + "\n" + table.to_csv(index=False, lineterminator="\n")


_TEX_SPECIAL = {
    "\\": r"\textbackslash{}",
    "&": r"\&",
    "%": r"\%",
    "$": r"\$",
    "#": r"\#",
    "_": r"\_",
    "{": r"\{",
    "}": r"\}",
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "±": r"$\pm$",
    "ε": r"$\varepsilon$",
    "ρ": r"$\rho$",
}


def _tex_escape(s: str) -> str:
    return "".join(_TEX_SPECIAL.get(ch, ch) for ch in str(s))


def _latex(table: pd.DataFrame, protocol: dict, notes: list[str], k: int) -> str:
    headers, cells = _display(table, k)
    caption = (
        "Architecture search on proxy training sets (cf. Yang et al., ICLR 2023, Table 1). "
        + "; ".join(f"{key}: {val}" for key, val in protocol.items())
        + ". Coverage: "
        + "; ".join(notes)
        + "."
    )
    lines = [
        "% requires \\usepackage{booktabs}",
        "\\begin{table}[t]",
        "\\centering",
        "\\caption{" + _tex_escape(_one_line(caption)) + "}",
        "\\label{tab:nasproxy-table1}",
        "\\resizebox{\\textwidth}{!}{%",
        "\\begin{tabular}{l" + "r" * (len(headers) - 1) + "}",
        "\\toprule",
        " & ".join(_tex_escape(h) for h in headers) + " \\\\",
        "\\midrule",
    ]
    for i, row in enumerate(cells):
        if i == len(cells) - 1 and table["train_set"].iloc[-1] == WHOLE and len(cells) > 1:
            lines.append("\\midrule")
        lines.append(" & ".join(_tex_escape(c) for c in row) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def _text_table(headers: list[str], cells: list[list[str]]) -> str:
    widths = [max(len(h), *(len(r[i]) for r in cells)) for i, h in enumerate(headers)]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*headers), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in cells]
    return "\n".join(line.rstrip() for line in out)


# ---------------------------------------------------------------- search outcome

# search_outcome.csv's columns: per proxy, its shortlist confirmed on the whole split.
OUTCOME_COLUMNS = (
    "train_set",
    "k",
    "confirmed",
    "pick",
    "pick_val",
    "pick_test",
    "pick_test_std",
    "pick_seeds",
    "rank",
    "n_confirmed",
    "best_arch",
    "regret",
    "proxy_s",
    "confirm_s",
    "exhaustive_s",
    "exhaustive_estimated",
    "cost_ratio",
)


def search_outcome(trials: pd.DataFrame, manifest: dict[str, Any], top_k: int) -> pd.DataFrame:
    """Per proxy: its top K (``nasproxy.shortlist``; K of ``--whole-top``, else ``top_k``)
    confirmed on the whole split, the pick and its cost (empty: no proxy, or no "ok"
    whole-split unit).

    pick: the best of the proxy's confirmed shortlist by mean whole-split validation
    accuracy; pick_test/_std: its whole-split test accuracy, mean and sample std over its
    whole-split seeds; rank: its place by mean test accuracy among every confirmed
    architecture (1 = best; n_confirmed of them); regret: the best mean whole-split test
    accuracy among the proxy's architectures minus the pick's, only when every one of them
    has a whole-split result. Cost in training seconds (wall_s of the units, every
    status): the proxy's sweep, its shortlist's whole-split units, and the whole split on
    all the proxy's architectures x seeds: measured when all those units exist, else
    estimated from the per-image rate (wall_s / images_seen) of the confirmed units.
    """
    k = int((manifest.get("whole_top") or {}).get("k") or top_k)
    seeds = list(manifest["protocol"]["seeds"])
    proxies = {
        n: shortlist.train_set_archs(manifest, n) for n in manifest["train_sets"] if n != WHOLE
    }
    whole = trials[trials["train_set"] == WHOLE]
    ok = whole[whole["status"] == "ok"]
    if not proxies or ok.empty:
        return pd.DataFrame(columns=list(OUTCOME_COLUMNS))
    val = shortlist.scores(trials, WHOLE)
    test = ok.groupby("arch")["test_acc"]
    test_mean, test_std, test_n = test.mean(), test.std(ddof=1), test.count()
    lists = shortlist.shortlists(trials, proxies, k)
    every = [a for a in shortlist.confirmed(lists) if a in val.index]
    rows = []
    for name, archs in proxies.items():
        confirmed = [a for a in lists[name] if a in val.index]
        pick = shortlist.top_k(val[confirmed], 1)
        row: dict[str, Any] = {"train_set": name, "k": k, "confirmed": len(confirmed)}
        row["n_confirmed"] = len(every)
        if pick:
            a = pick[0]
            row.update(pick=a, pick_val=val[a], pick_test=test_mean[a])
            row.update(pick_test_std=test_std[a], pick_seeds=int(test_n[a]))
            row["rank"] = 1 + int((test_mean[every] > test_mean[a]).sum())
        if pick and set(archs) <= set(test_mean.index):
            best = test_mean[archs]
            row["best_arch"] = shortlist.top_k(best, 1)[0]
            row["regret"] = float(best.max() - test_mean[pick[0]])
        units = whole[whole["arch"].isin(confirmed)]
        row["proxy_s"] = float(trials.loc[trials["train_set"] == name, "wall_s"].sum())
        row["confirm_s"] = float(units["wall_s"].sum())
        mine = whole[whole["arch"].isin(archs) & whole["seed"].isin(seeds)]
        if len(set(zip(mine["arch"], mine["seed"], strict=True))) == len(archs) * len(seeds):
            row["exhaustive_s"], row["exhaustive_estimated"] = float(mine["wall_s"].sum()), False
        elif units["images_seen"].sum() > 0:
            rate = row["confirm_s"] / float(units["images_seen"].sum())
            per_unit = float(whole["images_seen"].mean())
            row["exhaustive_s"] = rate * per_unit * len(archs) * len(seeds)
            row["exhaustive_estimated"] = True
        if "exhaustive_s" in row and row["exhaustive_s"] > 0:
            row["cost_ratio"] = (row["proxy_s"] + row["confirm_s"]) / row["exhaustive_s"]
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=list(OUTCOME_COLUMNS))


def _outcome_line(r: dict[str, Any]) -> str:
    """One row of the search outcome as one line of text."""
    if not isinstance(r["pick"], str):
        return f"{r['train_set']}: none of its top {r['k']} has a whole-split result yet"
    regret = "" if not math.isfinite(r["regret"]) else f", regret {_pct(r['regret'])} pp"
    cost = "cost n/a"
    if math.isfinite(r["cost_ratio"]):
        how = "estimated" if r["exhaustive_estimated"] else "measured"
        cost = (
            f"cost {_duration(r['proxy_s'] + r['confirm_s'])} (proxy {_duration(r['proxy_s'])}"
            f" + confirmation {_duration(r['confirm_s'])}) vs {_duration(r['exhaustive_s'])}"
            f" for the exhaustive whole split ({how}): {r['cost_ratio']:.2f}x"
        )
    return (
        f"{r['train_set']} picks {r['pick']}: whole-split test"
        f" {_pct(r['pick_test'], r['pick_test_std'])}% over {r['pick_seeds']:.0f} seed(s), rank"
        f" {r['rank']:.0f} of {r['n_confirmed']:.0f} confirmed{regret}"
        f" ({r['confirmed']:.0f} of its top {r['k']:.0f} confirmed); {cost}"
    )


def _outcome_markdown(outcome: pd.DataFrame) -> str:
    lines = ["", "## Search outcome", ""]
    lines += [f"- {_md_escape(_outcome_line(r))}" for r in outcome.to_dict("records")]
    lines += [
        "",
        "Each proxy's top K by mean proxy validation accuracy (a tie at the cut goes to the"
        " smaller architecture id) trained on the whole split; its pick is the best of them by"
        " mean whole-split validation accuracy, reported with its whole-split test accuracy"
        " (mean ± sample std over seeds). Rank: by mean test accuracy among every confirmed"
        " architecture. Regret: against the best of the proxy's architectures, only when all"
        " of them have a whole-split result. Cost: summed training time of the units.",
    ]
    return "\n".join(lines) + "\n"


def outcome_lines(exp_dir: Path, top_k: int = 10) -> list[str]:
    """The search outcome of experiment ``exp_dir`` as lines for the terminal."""
    exp_dir = Path(exp_dir)
    manifest, trials = _inputs(exp_dir)
    outcome = search_outcome(trials, manifest, top_k)
    return [f"search outcome: {_outcome_line(r)}" for r in outcome.to_dict("records")]


# ---------------------------------------------------------------- public API


def make_report(exp_dir: Path, top_k: int = 10, n_boot: int = 1000, seed: int = 0) -> ReportResult:
    """Compute Table 1 of experiment ``exp_dir`` and write its tables and figures there.

    ``top_k`` is the paper's k = 10 of "top-10 architectures"; ``n_boot`` the bootstrap
    resamples of the correlation intervals, drawn from ``seed``.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise NasproxyError(f"experiment directory {exp_dir} does not exist")
    if top_k < 1:
        raise NasproxyError(f"top_k must be at least 1, got {top_k}")
    if n_boot < 1:
        raise NasproxyError(f"n_boot must be at least 1, got {n_boot}")
    manifest, trials = _inputs(exp_dir)
    t1 = compute_table(trials, manifest, top_k, n_boot, seed)
    table, per_seed, notes, means = t1.table, t1.per_seed, t1.notes, t1.val_means
    protocol = _protocol(exp_dir, manifest, top_k, n_boot, seed)
    outcome = search_outcome(trials, manifest, top_k)
    markdown = _markdown(table, protocol, notes, top_k)
    if not outcome.empty:
        markdown += _outcome_markdown(outcome)

    paths = {
        "md": atomic_write_text(exp_dir / "table1.md", markdown),
        "csv": atomic_write_text(
            exp_dir / "table1.csv", _csv(table, protocol, notes, "Table 1 (nasproxy)")
        ),
        "seeds_csv": atomic_write_text(
            exp_dir / "table1_seeds.csv",
            _csv(per_seed, protocol, notes, "Table 1 per proxy seed (nasproxy)"),
        ),
        "tex": atomic_write_text(exp_dir / "table1.tex", _latex(table, protocol, notes, top_k)),
    }
    if not outcome.empty:
        paths["outcome_csv"] = atomic_write_text(
            exp_dir / "search_outcome.csv",
            _csv(outcome, protocol, notes, "Search outcome (nasproxy)"),
        )
    panels = []
    for name in table.loc[table["role"] == "proxy", "train_set"]:
        pv = means[name]
        both = np.isfinite(pv) & np.isfinite(means[WHOLE])
        top = np.zeros(len(t1.archs), dtype=bool)
        top[metrics.top_k_order(np.where(both, pv, np.nan), top_k)] = True
        panels.append(plots.ScatterPanel(name, means[WHOLE][both], pv[both], top[both]))
    figures = {
        "plot_proxy_vs_whole": ("proxy_vs_whole.png", plots.proxy_vs_whole(panels, top_k)),
        "plot_correlation": ("correlation.png", plots.correlations(table, top_k)),
        "plot_acc_vs_time": ("acc_vs_time.png", plots.accuracy_vs_time(table, top_k)),
    }
    for kind, (fname, png) in figures.items():
        paths[kind] = atomic_write_bytes(exp_dir / fname, png)
    return ReportResult(exp_dir, table, per_seed, protocol, notes, top_k, paths, outcome)


def format_summary(result: ReportResult) -> str:
    """A few plain-text lines for the terminal: where the files are, and the table."""
    headers, cells = _display(result.table, result.top_k)
    keep = [0, 4, 5, 6, 7, 8, 9, 12]  # the columns that fit a terminal
    text = _text_table([headers[i] for i in keep], [[row[i] for i in keep] for row in cells])
    names = ", ".join(p.name for p in result.paths.values())
    lines = [
        f"Table 1 of {result.protocol['experiment']}: {result.protocol['dataset']};"
        f" {result.protocol['space']}",
        f"written to {result.exp_dir}: {names}",
        "",
        text,
        "",
        *result.notes,
    ]
    if result.outcome is not None and not result.outcome.empty:
        lines += [
            "",
            *(f"search outcome: {_outcome_line(r)}" for r in result.outcome.to_dict("records")),
        ]
    return "\n".join(lines)


__all__ = [
    "OUTCOME_COLUMNS",
    "ReportResult",
    "Table1",
    "compute_table",
    "format_summary",
    "make_report",
    "outcome_lines",
    "search_outcome",
]
