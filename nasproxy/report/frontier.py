"""The frontier: each proxy's ranking quality against its training cost, along budgets
and along epochs, in ``frontier.md``, ``frontier.csv`` and ``frontier.png``.

Two kinds of rows (``axis``), one table (``FRONTIER_COLUMNS``):

- ``budget``: one row a row of Table 1 but the whole split's: a method at a budget with
  its draws grouped (``report.draws``), a set with its own epochs (``whole@N``, the whole
  split for N epochs: the equal-compute baseline), or a set without draw fields. Its
  values are Table 1's, so both agree; its cost is one draw's: ``image_epochs`` (images x
  epochs, what one architecture and seed trains on) and ``train_s`` (Table 1's training
  seconds over the number of draws: one draw's sweep).
- ``epoch``: one row a training set and a checkpoint epoch of its units
  (``val_checkpoints``): the architectures ranked by their validation accuracy after that
  epoch, scored against the whole split's final reference, mean and sample std over
  training seeds (no interval); ``image_epochs`` = images x that epoch, ``train_s`` is not
  measured at a checkpoint (NaN). A checkpoint of a run of E epochs under a cosine
  schedule has not decayed its learning rate as a run of that many epochs would have, so
  it is not the same as a shorter run.

``line`` says which line of the plot a row belongs to: its method (``@N`` appended for a
proxy with its own epochs), ``whole@N`` for the whole split's own-epoch sets, else the
set's name. The files are written only for an experiment that has something to show: a
proxy built as a draw, a set with its own epochs, or checkpoints.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nasproxy import metrics, plots, shortlist
from nasproxy.io import atomic_write_bytes, atomic_write_text
from nasproxy.report.draws import Group, group_sets
from nasproxy.report.formats import corr, csv, duration, pct
from nasproxy.report.table1 import Table1
from nasproxy.results import WHOLE, checkpoint_accs

FRONTIER_COLUMNS = (
    "axis",
    "line",
    "row",
    "method",
    "per_class",
    "epochs",
    "n_draws",
    "n_images",
    "image_epochs",
    "train_s",
    "n_rankings",
    "spearman_all",
    "spearman_all_std",
    "spearman_all_lo",
    "spearman_all_hi",
    "spearman_topk",
    "spearman_topk_std",
    "spearman_topk_lo",
    "spearman_topk_hi",
    "perf_topk",
    "top1_test",
    "regret",
)
STATISTICS = FRONTIER_COLUMNS[FRONTIER_COLUMNS.index("spearman_all") :]  # Table 1's
CHECKPOINT_NOTE = (
    "a checkpoint is the validation accuracy after epoch e of a run of E epochs: under a "
    "cosine schedule its learning rate has not decayed as in a run of e epochs, so a "
    "checkpoint is not the same as a shorter run"
)


def own_epochs(entry: Mapping[str, Any] | None) -> int | None:
    """The epochs a training set trains for itself (its manifest entry's ``epochs``)."""
    epochs = (entry or {}).get("epochs")
    return int(epochs) if isinstance(epochs, int) else None


def applies(manifest: Mapping[str, Any], trials: pd.DataFrame) -> bool:
    """Whether the experiment has a frontier to show: a proxy built as a draw, a set with
    its own epochs, or a unit with checkpoints."""
    entries = (manifest.get("train_sets") or {}).values()
    if any(isinstance(e, Mapping) and ("draw" in e or "epochs" in e) for e in entries):
        return True
    cells = trials["val_checkpoints"] if "val_checkpoints" in trials else pd.Series([], dtype=str)
    return bool(cells.fillna("").astype(str).str.strip().ne("").any())


def _line(name: str, group: Group, entry: Mapping[str, Any] | None) -> str:
    epochs = own_epochs(entry)
    if name.partition("@")[0] == WHOLE and epochs is not None:
        return f"{WHOLE}@N"
    if group.method is None:
        return name
    return group.method + ("" if epochs is None else f"@{epochs}")


def _set_names(manifest: Mapping[str, Any], trials: pd.DataFrame) -> list[str]:
    """The training sets as Table 1 orders them: the manifest's, then any only in trials."""
    entries = list(manifest.get("train_sets") or {})
    return entries + sorted(set(trials["train_set"]) - set(entries))


def _budget_rows(
    t1: Table1, trials: pd.DataFrame, manifest: Mapping[str, Any]
) -> list[dict[str, Any]]:
    entries = manifest.get("train_sets") or {}
    proxies = [n for n in _set_names(manifest, trials) if n != WHOLE]
    groups = {g.label: g for g in group_sets(manifest, proxies)}
    protocol_epochs = (manifest.get("protocol") or {}).get("epochs")
    rows = []
    for row in t1.table.to_dict("records"):
        if row["role"] != "proxy" or row["train_set"] not in groups:
            continue
        group = groups[row["train_set"]]
        entry = entries.get(group.members[0])
        epochs = own_epochs(entry) or protocol_epochs
        n_draws = len(group.members)
        rows.append(
            {
                "axis": "budget",
                "line": _line(group.members[0], group, entry),
                "row": row["train_set"],
                "method": group.method or "",
                "per_class": group.per_class,
                "epochs": epochs,
                "n_draws": n_draws,
                "n_images": row["n_images"],
                "image_epochs": _product(row["n_images"], epochs),
                "train_s": row["train_s"] / n_draws,
                "n_rankings": row["n_seeds"],
                **{k: row[k] for k in STATISTICS},
            }
        )
    return rows


def _product(images: Any, epochs: Any) -> float:
    try:
        value = float(images) * float(epochs)
    except (TypeError, ValueError):
        return float("nan")
    return value if math.isfinite(value) else float("nan")


def _epoch_rows(
    trials: pd.DataFrame, manifest: Mapping[str, Any], t1: Table1, top_k: int
) -> list[dict[str, Any]]:
    if "val_checkpoints" not in trials:
        return []
    archs = t1.archs
    ok = trials[trials["status"] == "ok"]
    ref_val = t1.val_means[t1.reference]  # the whole split's, or an external reference's
    ref_test = t1.ref_test if t1.ref_test is not None else np.full(len(archs), np.nan)
    entries = manifest.get("train_sets") or {}
    names = _set_names(manifest, trials)
    group_of = {m: g for g in group_sets(manifest, names) for m in g.members}
    rows = []
    for name in names:
        mine = ok[ok["train_set"] == name]
        accs = [checkpoint_accs(v) for v in mine["val_checkpoints"]]
        # the epochs every unit of the set recorded (a resume may change the setting)
        epochs = sorted(set.intersection(*(set(a) for a in accs))) if accs else []
        if not epochs:
            continue
        entry = entries.get(name)
        own = np.isin(archs, shortlist.train_set_archs(manifest, name) if entry else archs)
        group = group_of[name]
        for epoch in epochs:
            at = mine.assign(acc=[a.get(epoch, np.nan) for a in accs])
            table = at.groupby(["seed", "arch"])["acc"].mean().unstack("arch")
            val = table.reindex(columns=archs).to_numpy(dtype=float)
            scored = [metrics.seed_metrics(v, ref_val, ref_test, top_k, own) for v in val]
            row: dict[str, Any] = {
                "axis": "epoch",
                "line": _line(name, group, entry),
                "row": name,
                "method": group.method or "",
                "per_class": group.per_class,
                "epochs": epoch,
                "n_draws": 1,
                "n_images": float(entry["n_images"]) if entry else float(mine["n_train"].iloc[0]),
                "train_s": float("nan"),
                "n_rankings": len(scored),
            }
            row["image_epochs"] = _product(row["n_images"], epoch)
            for stat in ("perf_topk", "top1_test", "regret", *metrics.CORRELATIONS):
                mean, std = metrics.mean_std(np.array([getattr(m, stat) for m in scored]))
                row[stat] = mean
                if f"{stat}_std" in FRONTIER_COLUMNS:
                    row[f"{stat}_std"] = std
            rows.append(row)
    return rows


def frontier_table(
    t1: Table1, trials: pd.DataFrame, manifest: Mapping[str, Any], top_k: int
) -> pd.DataFrame:
    """The frontier (``FRONTIER_COLUMNS``): the budget rows by line and cost, then the
    epoch rows by training set and epoch."""
    budget = sorted(_budget_rows(t1, trials, manifest), key=_along_line)
    rows = budget + _epoch_rows(trials, manifest, t1, top_k)
    return pd.DataFrame(rows).reindex(columns=list(FRONTIER_COLUMNS))


def _along_line(row: Mapping[str, Any]) -> tuple[str, float]:
    """A budget row's place: by line, then by cost (NaN last)."""
    cost = row["image_epochs"]
    return row["line"], cost if math.isfinite(cost) else math.inf


def _markdown(table: pd.DataFrame, described: Mapping[str, str], k: int) -> str:
    lines = ["# The frontier: ranking quality against training cost", ""]
    lines += [f"- {key}: {value}" for key, value in described.items()]
    budget = table[table["axis"] == "budget"]
    lines += [
        "",
        "## Along budgets",
        "",
        f"| Line | Row | Draws | Images | Epochs | Image-epochs | Train s (one draw) | Spearman "
        f"all [95% CI] | Spearman top-{k} [95% CI] | Perf. top-{k} (%) | Top-1 (%) | Regret (pp) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in budget.to_dict("records"):
        lines.append(
            f"| {r['line']} | {r['row']} | {r['n_draws']} | {_int(r['n_images'])} | "
            f"{_int(r['epochs'])} | {_int(r['image_epochs'])} | {duration(r['train_s'])}"
            f" | {_corr(r, 'spearman_all')} | {_corr(r, 'spearman_topk')} | "
            f"{pct(r['perf_topk'])} | {pct(r['top1_test'])} | "
            f"{_pp(r['regret'])} |"
        )
    epoch = table[table["axis"] == "epoch"]
    if not epoch.empty:
        lines += [
            "",
            "## Along epochs (checkpoints of each training set's units)",
            "",
            f"| Line | Training set | Epoch | Image-epochs | Spearman all | Spearman top-{k} | "
            f"Perf. top-{k} (%) | Top-1 (%) | Regret (pp) |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        for r in epoch.to_dict("records"):
            lines.append(
                f"| {r['line']} | {r['row']} | {_int(r['epochs'])} | {_int(r['image_epochs'])} | "
                f"{_corr(r, 'spearman_all')} | {_corr(r, 'spearman_topk')} | "
                f"{pct(r['perf_topk'])} | {pct(r['top1_test'])} | "
                f"{_pp(r['regret'])} |"
            )
    return "\n".join([*lines, ""])


def _int(v: Any) -> str:
    return f"{float(v):.0f}" if isinstance(v, int | float) and math.isfinite(v) else "n/a"


def _pp(v: float) -> str:
    return f"{100 * v:.2f}" if math.isfinite(v) else "n/a"


def _corr(r: Mapping[str, Any], col: str) -> str:
    return corr(r[col], r[f"{col}_std"], r[f"{col}_lo"], r[f"{col}_hi"])


def frontier_notes(k: int) -> dict[str, str]:
    """What every frontier file says about its rows, by topic."""
    return {
        "reference": "the whole split at the protocol's epochs (Table 1's whole row); each "
        "row ranks the architectures against it",
        "budget rows": "Table 1's rows: the draws of one method at one budget in one row, "
        "mean over draws of each draw's mean over training seeds, +- std over every (draw, "
        "seed); intervals resample the archs, whole-set seeds, draws, then seeds",
        "cost": "image-epochs = images x epochs, what one architecture and seed trains on "
        "(whole@N matches a proxy when N x whole images = epochs x proxy images); train s is "
        "one draw's sweep, summed over its units",
        "epoch rows": f"ranked by the validation accuracy at that checkpoint; top-{k} picks "
        "and regret against the whole split's final accuracies; mean +- std over seeds, no "
        "interval; train s not measured at a checkpoint",
        "checkpoints": CHECKPOINT_NOTE,
    }


def write_frontier(
    exp_dir: Path,
    t1: Table1,
    trials: pd.DataFrame,
    manifest: Mapping[str, Any],
    protocol: dict[str, str],
    top_k: int,
) -> dict[str, Path]:
    """Write ``frontier.md``, ``frontier.csv`` and ``frontier.png`` under ``exp_dir`` when
    the experiment has a frontier (``applies``); the paths by kind ({} otherwise)."""
    if not applies(manifest, trials):
        return {}
    table = frontier_table(t1, trials, manifest, top_k)
    described = {**protocol, **frontier_notes(top_k)}
    budget = table[table["axis"] == "budget"]
    epoch = table[table["axis"] == "epoch"]
    return {
        "frontier_md": atomic_write_text(
            exp_dir / "frontier.md", _markdown(table, described, top_k)
        ),
        "frontier_csv": atomic_write_text(
            exp_dir / "frontier.csv", csv(table, described, [], "Frontier (nasproxy)")
        ),
        "plot_frontier": atomic_write_bytes(
            exp_dir / "frontier.png", plots.frontier(budget, epoch, top_k)
        ),
    }
