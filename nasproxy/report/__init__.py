"""``nasproxy report``: Table 1 and the search outcome of an experiment, from its results.

Reads ``EXP/manifest.json`` and the trials table through ``nasproxy.results`` and writes,
atomically under ``EXP``: ``table1.md``, ``table1.csv`` (``#`` comment header, read back
with ``pd.read_csv(path, comment="#")``), ``table1.tex``, ``table1_seeds.csv`` (the
per-seed metrics behind the means), three PNG figures, and ``search_outcome.csv`` (with a
"Search outcome" section in ``table1.md``) when the experiment has a proxy training set and
a whole-split unit that finished "ok" (``--whole-top``, or ``--whole``, ``--whole-archs``,
``--whole-sample``, which take K from ``top_k``), ``halving.csv`` (with a "Successive
halving" section) when the search ran ``--halving``, and ``frontier.md``, ``frontier.csv``,
``frontier.png`` when it has proxies built as draws, sets with their own epochs or
checkpoints. The rooms: ``table1`` computes Table 1 (``draws`` groups a proxy's draws into
one row), ``outcome`` the search outcome, ``halving`` successive halving's, ``frontier``
the frontier, ``formats`` writes them as text, ``nasproxy.plots`` draws the figures. With
``reference`` (``--reference FILE``), a published whole-set reference
(``nasproxy.reference``) stands in for the whole split in Table 1, the outcome and the
figures, labelled as external. What the files say: docs/search.md ("Report", "Successive
halving") and docs/find.md ("The answer: the search outcome").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from nasproxy import metrics, plots, results, spaces
from nasproxy.errors import NasproxyError
from nasproxy.io import atomic_write_bytes, atomic_write_text
from nasproxy.reference import Reference, read_reference
from nasproxy.report import formats
from nasproxy.report.frontier import write_frontier
from nasproxy.report.halving import HALVING_COLUMNS, halving_line, halving_markdown, halving_outcome
from nasproxy.report.outcome import (
    OUTCOME_COLUMNS,
    outcome_line,
    outcome_markdown,
    search_outcome,
    shortlist_size,
)
from nasproxy.report.table1 import SEED_COLUMNS, TABLE_COLUMNS, Table1, compute_table


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
    reference: Reference | None = None  # the external whole-set reference, if one was given
    halving: pd.DataFrame | None = None  # successive halving's outcome (HALVING_COLUMNS)


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


def outcome_lines(exp_dir: Path, top_k: int = 10) -> list[str]:
    """The search outcome of experiment ``exp_dir`` as lines for the terminal."""
    manifest, trials = _inputs(Path(exp_dir))
    outcome = search_outcome(trials, manifest, top_k)
    halving = halving_outcome(trials, manifest)
    return [f"search outcome: {outcome_line(r)}" for r in outcome.to_dict("records")] + [
        f"halving: {halving_line(r)}" for r in halving.to_dict("records")
    ]


def _figures(t1: Table1, top_k: int, external: str | None = None) -> dict[str, tuple[str, bytes]]:
    """kind -> (file name, PNG) of the three figures (``external``: the label of an
    external whole-set reference, said on each)."""
    means, ref = t1.val_means, t1.val_means[t1.reference]
    panels = []
    for name in t1.table.loc[t1.table["role"] != "reference", "train_set"]:
        pv = means[name]
        both = np.isfinite(pv) & np.isfinite(ref)
        top = np.zeros(len(t1.archs), dtype=bool)
        top[metrics.top_k_order(np.where(both, pv, np.nan), top_k)] = True
        panels.append(plots.ScatterPanel(name, ref[both], pv[both], top[both]))
    return {
        "plot_proxy_vs_whole": (
            "proxy_vs_whole.png",
            plots.proxy_vs_whole(panels, top_k, external),
        ),
        "plot_correlation": ("correlation.png", plots.correlations(t1.table, top_k, external)),
        "plot_acc_vs_time": (
            "acc_vs_time.png",
            plots.accuracy_vs_time(t1.table, top_k, external),
        ),
    }


def make_report(
    exp_dir: Path,
    top_k: int = 10,
    n_boot: int = 1000,
    seed: int = 0,
    reference: str | Path | None = None,
    canonical: Callable[[str], str] = spaces.canonical_id,
) -> ReportResult:
    """Compute Table 1 of experiment ``exp_dir`` and write its tables and figures there.

    ``top_k`` is the paper's k = 10 of "top-10 architectures"; ``n_boot`` the bootstrap
    resamples of the correlation intervals, drawn from ``seed``. ``reference``: a reference
    file (``nasproxy.reference``) of the experiment's dataset that stands in for the whole
    split, its ids read through ``canonical`` (by default any form of any space's id, a
    benchmark's own cell strings included); it is read and checked before anything is
    written.
    """
    exp_dir = Path(exp_dir)
    if not exp_dir.is_dir():
        raise NasproxyError(f"experiment directory {exp_dir} does not exist")
    if top_k < 1:
        raise NasproxyError(f"top_k must be at least 1, got {top_k}")
    if n_boot < 1:
        raise NasproxyError(f"n_boot must be at least 1, got {n_boot}")
    manifest, trials = _inputs(exp_dir)
    ref = None
    if reference is not None:
        ref = read_reference(reference, canonical)
        ref.check_dataset(manifest)
    t1 = compute_table(trials, manifest, top_k, n_boot, seed, ref)
    table, per_seed, notes = t1.table, t1.per_seed, t1.notes
    details = None if ref is None else f"external, not trained here: {ref.details()}"
    protocol = formats.protocol(exp_dir, manifest, top_k, n_boot, seed, details)
    outcome = search_outcome(trials, manifest, top_k, ref)
    note = shortlist_size(manifest, top_k)[1]
    if not outcome.empty and note is not None:
        notes = [*notes, note]
    short = None if ref is None else ref.short()
    markdown = formats.markdown(table, protocol, notes, top_k)
    if not outcome.empty:
        markdown += outcome_markdown(outcome, short)
    halving = halving_outcome(trials, manifest)
    if not halving.empty:
        markdown += halving_markdown(halving)

    paths = {
        "md": atomic_write_text(exp_dir / "table1.md", markdown),
        "csv": atomic_write_text(
            exp_dir / "table1.csv", formats.csv(table, protocol, notes, "Table 1 (nasproxy)")
        ),
        "seeds_csv": atomic_write_text(
            exp_dir / "table1_seeds.csv",
            formats.csv(per_seed, protocol, notes, "Table 1 per proxy seed (nasproxy)"),
        ),
        "tex": atomic_write_text(
            exp_dir / "table1.tex", formats.latex(table, protocol, notes, top_k)
        ),
    }
    if not outcome.empty:
        paths["outcome_csv"] = atomic_write_text(
            exp_dir / "search_outcome.csv",
            formats.csv(outcome, protocol, notes, "Search outcome (nasproxy)"),
        )
    if not halving.empty:
        paths["halving_csv"] = atomic_write_text(
            exp_dir / "halving.csv",
            formats.csv(halving, protocol, notes, "Successive halving (nasproxy)"),
        )
    for kind, (fname, png) in _figures(t1, top_k, short).items():
        paths[kind] = atomic_write_bytes(exp_dir / fname, png)
    paths |= write_frontier(exp_dir, t1, trials, manifest, protocol, top_k)
    return ReportResult(
        exp_dir, table, per_seed, protocol, notes, top_k, paths, outcome, ref, halving
    )


def format_summary(result: ReportResult) -> str:
    """A few plain-text lines for the terminal: where the files are, and the table."""
    names = ", ".join(p.name for p in result.paths.values())
    lines = [
        f"Table 1 of {result.protocol['experiment']}: {result.protocol['dataset']};"
        f" {result.protocol['space']}",
        *([] if result.reference is None else [f"whole set: {result.reference.short()}"]),
        f"written to {result.exp_dir}: {names}",
        "",
        formats.text(result.table, result.top_k),
        "",
        *result.notes,
    ]
    if result.outcome is not None and not result.outcome.empty:
        lines += [
            "",
            *(
                f"search outcome: {outcome_line(r, result.reference is not None)}"
                for r in result.outcome.to_dict("records")
            ),
        ]
    if result.halving is not None and not result.halving.empty:
        lines += ["", *(f"halving: {halving_line(r)}" for r in result.halving.to_dict("records"))]
    return "\n".join(lines)


__all__ = [
    "HALVING_COLUMNS",
    "OUTCOME_COLUMNS",
    "SEED_COLUMNS",
    "TABLE_COLUMNS",
    "ReportResult",
    "Table1",
    "compute_table",
    "format_summary",
    "halving_outcome",
    "make_report",
    "outcome_lines",
    "search_outcome",
]
