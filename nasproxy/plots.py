"""Figures of the NAS proxy report, rendered off-screen (Agg) to PNG bytes.

The functions take plain data and return bytes so that the caller decides where and how
(atomically) they are written; pyplot's global state is never touched. The three figures
of ``nasproxy report`` (docs/search.md, "Report"): proxy vs whole-set accuracy, the rank
correlations with their intervals, accuracy against search cost; and the frontier's,
ranking quality against training cost. Given ``external`` (the label of an external
whole-set reference), the first three say on their axes and titles that their whole-set
numbers are that reference's.
"""

from __future__ import annotations

import io
import math
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

_DPI = 120


@dataclass(frozen=True)
class ScatterPanel:
    """One proxy method: per-architecture validation accuracies and its top-k picks."""

    name: str
    whole_val: np.ndarray  # whole-set val acc per arch (reference, mean over seeds)
    proxy_val: np.ndarray  # proxy val acc per arch (mean over proxy seeds)
    top: np.ndarray  # boolean mask of the top-k archs by proxy_val


def _png(fig: Figure) -> bytes:
    FigureCanvasAgg(fig)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=_DPI)
    return buf.getvalue()


def _empty(message: str) -> bytes:
    fig = Figure(figsize=(5, 3))
    ax = fig.add_subplot()
    ax.axis("off")
    ax.text(0.5, 0.5, message, ha="center", va="center")
    return _png(fig)


def _whole(external: str | None) -> str:
    """What the whole-set numbers are called on a figure."""
    return "whole-set" if external is None else "external reference"


def _title(title: str, external: str | None) -> str:
    return title if external is None else title + "\n" + textwrap.fill(f"whole set: {external}", 64)


def proxy_vs_whole(panels: Sequence[ScatterPanel], k: int, external: str | None = None) -> bytes:
    """Scatter of proxy vs whole-set validation accuracy (%), one panel per method."""
    if not panels:
        return _empty("no proxy training sets in this experiment")
    cols = min(len(panels), 3)
    rows = math.ceil(len(panels) / cols)
    fig = Figure(figsize=(4.2 * cols, 3.8 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax, p in zip(axes.flat, panels, strict=False):
        x, y = 100 * np.asarray(p.whole_val), 100 * np.asarray(p.proxy_val)
        top = np.asarray(p.top, dtype=bool)
        ax.scatter(x[~top], y[~top], s=12, alpha=0.6, color="tab:gray", label="other archs")
        ax.scatter(x[top], y[top], s=30, color="tab:red", edgecolor="k", label=f"top-{k} by proxy")
        ax.set_title(p.name)
        ax.set_xlabel(f"{_whole(external)} val acc (%)")
        ax.set_ylabel("proxy val acc (%)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", loc="best")
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(
        _title(f"Proxy vs {_whole(external)} validation accuracy (mean over seeds)", external)
    )
    return _png(fig)


def correlations(table: pd.DataFrame, k: int, external: str | None = None) -> bytes:
    """Spearman (all archs and proxy top-k) per train set with bootstrap 95% intervals.

    ``table`` has columns train_set, spearman_all(_lo/_hi), spearman_topk(_lo/_hi).
    """
    if table.empty:
        return _empty("no training sets to show")
    fig = Figure(figsize=(max(4.5, 1.3 * len(table) + 2), 3.8), layout="constrained")
    ax = fig.add_subplot()
    pos = np.arange(len(table))
    for off, col, label, color in (
        (-0.15, "spearman_all", "Spearman, all archs", "tab:blue"),
        (0.15, "spearman_topk", f"Spearman, proxy top-{k}", "tab:orange"),
    ):
        mid = table[col].to_numpy(dtype=float)
        lo = table[f"{col}_lo"].to_numpy(dtype=float)
        hi = table[f"{col}_hi"].to_numpy(dtype=float)
        # drawn as lo..hi segments: a percentile interval need not contain the estimate
        ax.plot(pos + off, mid, "o", color=color, label=label)
        ok = np.isfinite(lo) & np.isfinite(hi)
        x = (pos + off)[ok]
        ax.vlines(x, lo[ok], hi[ok], color=color)
        for end in (lo[ok], hi[ok]):
            ax.hlines(end, x - 0.05, x + 0.05, color=color)
    ax.axhline(0, color="k", lw=0.8)
    ax.set_xticks(pos, table["train_set"].tolist())
    ax.set_ylim(-1.05, 1.05)
    ax.set_ylabel(
        "rank correlation with whole set"
        if external is None
        else "rank correlation with external reference"
    )
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize="small")
    ax.set_title(_title("Rank correlation (bootstrap 95% percentile intervals)", external))
    return _png(fig)


def accuracy_vs_time(table: pd.DataFrame, k: int, external: str | None = None) -> bytes:
    """Whole-set test acc of the top-k picks (%) vs total training time of each sweep.

    ``table`` has columns train_set, train_s, perf_topk, perf_topk_std.
    """
    t = table["train_s"].to_numpy(dtype=float)
    y = 100 * table["perf_topk"].to_numpy(dtype=float)
    shown = np.isfinite(t) & np.isfinite(y)
    if not shown.any():
        return _empty("no training time / accuracy to show")
    yerr = 100 * np.nan_to_num(table["perf_topk_std"].to_numpy(dtype=float))
    fig = Figure(figsize=(5.5, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.errorbar(t[shown], y[shown], yerr=yerr[shown], fmt="o", capsize=4)
    for name, ti, yi in zip(table["train_set"][shown], t[shown], y[shown], strict=True):
        ax.annotate(str(name), (ti, yi), textcoords="offset points", xytext=(5, 5))
    if (t[shown] > 0).all():
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
    ax.margins(x=0.2, y=0.15)
    ax.set_xlabel("total training time of the sweep (s, sum over trials)")
    ax.set_ylabel(f"{_whole(external)} test acc of top-{k} picks (%)")
    ax.grid(alpha=0.3)
    ax.set_title(_title("Accuracy vs search cost", external))
    return _png(fig)


def frontier(budget: pd.DataFrame, epoch: pd.DataFrame, k: int) -> bytes:
    """Ranking quality (Spearman over all archs) against training cost (image-epochs),
    along budgets (one line a method, its 95% intervals; ``whole@N`` its own line) and,
    when there are checkpoints, along epochs (one line a training set, coloured by its
    method's line). ``budget``/``epoch`` have the frontier's columns (line, row,
    image_epochs, spearman_all, spearman_all_lo, spearman_all_hi)."""
    shown = [t for t in (budget, epoch) if not t.empty]
    if not shown:
        return _empty("no frontier to show")
    fig = Figure(figsize=(6 * len(shown), 4.2), layout="constrained")
    axes = fig.subplots(1, len(shown), squeeze=False)[0]
    lines = sorted({*budget["line"], *epoch["line"]})
    colors = {name: f"C{i % 10}" for i, name in enumerate(lines)}
    titles = {id(budget): "along budgets", id(epoch): "along epochs (checkpoints)"}
    for ax, table in zip(axes, shown, strict=True):
        title = titles[id(table)]
        keys = ["line", "row"] if table is epoch else ["line"]
        labelled: set[str] = set()
        for _, part in table.groupby(keys, sort=True):
            line = str(part["line"].iloc[0])
            part = part.sort_values("image_epochs")
            x = part["image_epochs"].to_numpy(dtype=float)
            y = part["spearman_all"].to_numpy(dtype=float)
            ok = np.isfinite(x) & np.isfinite(y) & (x > 0)
            if not ok.any():
                continue
            label = None if line in labelled else line
            labelled.add(line)
            ax.plot(x[ok], y[ok], "o-", color=colors[line], label=label, lw=1.2, ms=4)
            lo = part["spearman_all_lo"].to_numpy(dtype=float)
            hi = part["spearman_all_hi"].to_numpy(dtype=float)
            bars = ok & np.isfinite(lo) & np.isfinite(hi)
            ax.vlines(x[bars], lo[bars], hi[bars], color=colors[line], alpha=0.6)
        ax.set_xscale("log")
        ax.set_ylim(-1.05, 1.05)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("training cost of one architecture (images x epochs)")
        ax.set_ylabel("Spearman with whole set, all archs")
        ax.set_title(f"Ranking quality {title}")
        ax.grid(alpha=0.3)
        if labelled:
            ax.legend(fontsize="small")
    return _png(fig)
