"""Table 1 and the search outcome as text: Markdown, CSV (``#`` header), LaTeX, terminal.

Every table carries the conditions it was measured under (``protocol``); cells are named
by the table's column names, never picked by position. The files: docs/search.md ("Report").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from nasproxy import __version__, metrics
from nasproxy.reference import ROW as EXTERNAL
from nasproxy.results import WHOLE

REFERENCE = "reference"  # the protocol's key of an external whole-set reference


def protocol(
    exp_dir: Path,
    man: dict[str, Any],
    top_k: int,
    n_boot: int,
    seed: int,
    reference: str | None = None,
) -> dict[str, str]:
    """The conditions every table carries, in display order: data, space, training,
    hardware, the sweep's and the report's versions and settings, the aggregation, and
    the external whole-set reference when one stands in for the whole split (``reference``:
    what it is, in one line)."""

    def get(key: str) -> str:
        v = man.get(key)
        return "unknown" if v in (None, "") else str(v)

    proto = man["protocol"]
    settings = ", ".join(f"{k}={proto[k]}" for k in sorted(proto) if k != "seeds")
    space_size = man.get("space_size")
    out = {
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
    if reference is not None:
        out["aggregation"] = (
            "whole-set reference = the external reference's per-arch accuracies (not trained"
            " here); each proxy seed ranks archs on its own; mean +- sample std over proxy"
            " seeds; status 'ok' trials only"
        )
        out[REFERENCE] = reference
    return out


def pct(v: float, std: float = float("nan")) -> str:
    """A fraction as a percentage, with its std when finite ("n/a" when undefined)."""
    if not math.isfinite(v):
        return "n/a"
    return f"{100 * v:.2f}" + (f" ± {100 * std:.2f}" if math.isfinite(std) else "")


def corr(
    v: float, std: float = float("nan"), lo: float = float("nan"), hi: float = float("nan")
) -> str:
    """A correlation, its std and its interval, each shown when finite."""
    if not math.isfinite(v):
        return "n/a"
    s = f"{v:.2f}" + (f" ± {std:.2f}" if math.isfinite(std) else "")
    if math.isfinite(lo) and math.isfinite(hi):
        s += f" [{lo:.2f}, {hi:.2f}]"
    return s


def duration(s: float) -> str:
    """Seconds in the unit that reads best: s, min or h."""
    if not math.isfinite(s):
        return "n/a"
    if s < 120:
        return f"{s:.1f} s"
    if s < 7200:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.2f} h"


def size(b: float) -> str:
    """Bytes in B, KiB, MiB or GiB."""
    if not math.isfinite(b):
        return "n/a"
    for unit in ("B", "KiB", "MiB", "GiB"):
        if b < 1024 or unit == "GiB":
            return f"{b:.0f} {unit}" if unit == "B" else f"{b:.1f} {unit}"
        b /= 1024
    raise AssertionError("unreachable")


# The columns of the displayed table (Markdown, LaTeX, terminal): a name, its header.
# "trials" shows the four trials_* columns as one; the rest show the table column of
# their name (with its _std and interval where it has them).
def _headers(k: int) -> dict[str, str]:
    return {
        "train_set": "Train set",
        "n_images": "Images",
        "bytes": "Storage",
        "epsilon": "ε",
        "trials": "Trials",
        "perf_topk": f"Perf. top-{k} (%)",
        "top1_test": "Top-1 (%)",
        "regret": "Regret (pp)",
        "spearman_topk": f"Spearman top-{k} [95% CI]",
        "spearman_all": "Spearman all [95% CI]",
        "kendall_all": "Kendall all [95% CI]",
        "seed_spearman": "Seed-to-seed ρ",
        "train_s": "Train time",
        "sweep_wall_s": "Sweep wall",
    }


# the displayed columns that fit a terminal
TERMINAL_COLUMNS = (
    "train_set",
    "trials",
    "perf_topk",
    "top1_test",
    "regret",
    "spearman_topk",
    "spearman_all",
    "train_s",
)


def _trials_cell(r: Mapping[str, Any]) -> str:
    gaps = [
        f"{r[c]} {w}"
        for c, w in (("trials_missing", "missing"), ("trials_not_ok", "not ok"))
        if r[c]
    ]
    return f"{r['trials_present']}/{r['trials_expected']}" + (
        f" ({', '.join(gaps)})" if gaps else ""
    )


def _display(table: pd.DataFrame, k: int) -> tuple[dict[str, str], list[dict[str, str]]]:
    """The display headers by column name, and each row's cells by the same names
    (accuracies in %, regret in points)."""
    cells = []
    for r in table.to_dict("records"):
        row = {
            "train_set": str(r["train_set"]),
            "n_images": "n/a" if not math.isfinite(r["n_images"]) else f"{r['n_images']:.0f}",
            "bytes": size(r["bytes"]),
            "epsilon": "n/a" if not math.isfinite(r["epsilon"]) else f"{r['epsilon']:.4g}",
            "trials": _trials_cell(r),
        }
        for c in ("perf_topk", "top1_test", "regret"):
            row[c] = pct(r[c], r[f"{c}_std"])
        for c in metrics.CORRELATIONS:
            row[c] = corr(r[c], r[f"{c}_std"], r[f"{c}_lo"], r[f"{c}_hi"])
        row["seed_spearman"] = corr(r["seed_spearman"])
        row["train_s"] = duration(r["train_s"])
        row["sweep_wall_s"] = duration(r["sweep_wall_s"])
        cells.append(row)
    return _headers(k), cells


def _definitions(k: int, external: bool = False) -> list[str]:
    last = (
        [
            "Whole-set accuracies are the external reference's (see 'reference' above), not"
            " trained here; its row ranks it against itself; a trained whole split is scored"
            " against it like a proxy."
        ]
        if external
        else ["The whole-set row ranks the reference against itself."]
    )
    return [
        f"Perf. top-{k}: mean whole-set test accuracy of the {k} architectures with the"
        " highest proxy validation accuracy (Yang et al., ICLR 2023, Table 1); Top-1: that"
        " of the single best.",
        "Regret: best whole-set test accuracy among the proxy's own swept architectures"
        " minus that of its top-1 pick; n/a unless every one of them has a whole-set"
        " result (one without could be the best), so it never depends on other proxies.",
        f"Spearman top-{k}: rank correlation of proxy and whole-set validation accuracy over"
        f" the proxy's top-{k} (the paper's definition); Spearman/Kendall all: over every"
        " architecture scored by both.",
        "± is the sample std over proxy training seeds; [..] a bootstrap 95% percentile"
        f" interval (the top-{k} one over the distinct resampled architectures, not shown"
        f" with {k} or fewer ranked); seed-to-seed ρ: mean Spearman between the seeds of one"
        " training set.",
        "ε: the proxy's ||sum of removed influence|| from the manifest. Train time: sum of"
        " trial training seconds, all statuses; sweep wall: wall-clock of the sweep.",
        *last,
    ]


def md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def markdown(table: pd.DataFrame, protocol: dict[str, str], notes: list[str], k: int) -> str:
    """Table 1 as Markdown: the conditions, the table, coverage and definitions."""
    headers, cells = _display(table, k)
    lines = [
        f"# Table 1: architecture search on proxy training sets ({protocol['experiment']})",
        "",
    ]
    lines += [f"- **{key}**: {md_escape(val)}" for key, val in protocol.items()]
    lines += ["", "| " + " | ".join(headers.values()) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(md_escape(row[c]) for c in headers) + " |" for row in cells]
    lines += ["", "**Coverage**", ""] + [f"- {md_escape(n)}" for n in notes]
    definitions = _definitions(k, REFERENCE in protocol)
    lines += ["", "**Definitions**", ""] + [f"- {d}" for d in definitions]
    return "\n".join(lines) + "\n"


def _one_line(s: str) -> str:
    return " ".join(str(s).split())


def csv(table: pd.DataFrame, protocol: dict[str, str], notes: list[str], name: str) -> str:
    """``table`` as CSV under a ``#`` header of its conditions (``pd.read_csv(comment="#")``)."""
    head = [f"# {name}"]
    head += [f"# {key}: {_one_line(val)}" for key, val in protocol.items()]
    head += [f"# coverage: {_one_line(n)}" for n in notes]
    head += [
        "# accuracies are fractions in 0..1; _std: sample std over proxy seeds;"
        " _lo/_hi: bootstrap 95% percentile interval"
    ]
    return "\n".join(head) + "\n" + table.to_csv(index=False, lineterminator="\n")


_LAST = (WHOLE, EXTERNAL)  # the reference rows, set apart by a rule in LaTeX
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


def latex(table: pd.DataFrame, protocol: dict[str, str], notes: list[str], k: int) -> str:
    """Table 1 as a booktabs LaTeX table, its conditions and coverage in the caption."""
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
        " & ".join(_tex_escape(h) for h in headers.values()) + " \\\\",
        "\\midrule",
    ]
    for i, row in enumerate(cells):
        if i == len(cells) - 1 and table["train_set"].iloc[-1] in _LAST and len(cells) > 1:
            lines.append("\\midrule")
        lines.append(" & ".join(_tex_escape(row[c]) for c in headers) + " \\\\")
    lines += ["\\bottomrule", "\\end{tabular}}", "\\end{table}"]
    return "\n".join(lines) + "\n"


def text(table: pd.DataFrame, k: int, columns: Sequence[str] = TERMINAL_COLUMNS) -> str:
    """The named display ``columns`` of Table 1 as aligned plain text."""
    headers, cells = _display(table, k)
    rows = [[headers[c] for c in columns], *([row[c] for c in columns] for row in cells)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(columns))]
    fmt = "  ".join(f"{{:<{w}}}" for w in widths)
    out = [fmt.format(*rows[0]), fmt.format(*("-" * w for w in widths))]
    out += [fmt.format(*row) for row in rows[1:]]
    return "\n".join(line.rstrip() for line in out)
