"""Put a measured Table 1 beside the paper's, as a Markdown file in the experiment folder.

    python scripts/compare_with_paper.py results/table1-cifar10-cpu

Reads the experiment's ``table1.csv`` (written by ``nasproxy report``) and writes
``paper_comparison.md`` next to it. The paper's figures are those of Table 1 of Yang et al.,
"Dataset Pruning: Reducing Training Data by Examining Generalization Influence" (ICLR 2023):
CIFAR-10, 100 images per class, 720 ConvNets trained 100 epochs; performance is the mean
whole-set test accuracy of the top-10 architectures by proxy, correlation the Spearman
rank correlation over those 10.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from nasproxy.io import atomic_write_text
from nasproxy.provenance import provenance

# (performance %, Spearman top-10), Yang et al. 2023, Table 1; "influence" is "Ours"
PAPER_TABLE1 = {
    "random": (79.4, 0.21),
    "herding": (80.1, 0.23),
    "forgetting": (82.5, 0.79),
    "influence": (85.7, 0.94),
    "whole": (85.9, 1.00),
}


def _fmt(value: float, std: float, scale: float, digits: int) -> str:
    if not math.isfinite(value):
        return "n/a"
    text = f"{value * scale:.{digits}f}"
    return text + (f" ± {std * scale:.{digits}f}" if math.isfinite(std) else "")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", type=Path, help="an experiment folder with table1.csv")
    args = parser.parse_args()
    table = pd.read_csv(args.experiment / "table1.csv", comment="#").set_index("train_set")
    header = [
        line.lstrip("# ").rstrip()
        for line in (args.experiment / "table1.csv").read_text().splitlines()
        if line.startswith("#")
    ]
    k = "top-k"
    lines = [
        f"# {args.experiment.name}: measured Table 1 beside the paper's",
        "",
        "Measured: `table1.csv` of this folder (its protocol below). Paper: Yang et al., ICLR",
        "2023, Table 1 (CIFAR-10, 100 images/class, 720 ConvNets, 100 epochs, top-10).",
        "The protocols differ (see the header); compare orderings and intervals, not levels.",
        "",
        f"| train set | paper perf. (%) | measured perf. {k} (%) | paper Spearman top-10 "
        "| measured Spearman top-k [95% CI] | measured Spearman all [95% CI] |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in table.iterrows():
        paper_perf, paper_rho = PAPER_TABLE1.get(str(name), (math.nan, math.nan))
        lines.append(
            f"| {name} | {paper_perf if math.isfinite(paper_perf) else 'n/a'} "
            f"| {_fmt(row.perf_topk, row.perf_topk_std, 100, 1)} "
            f"| {paper_rho if math.isfinite(paper_rho) else 'n/a'} "
            f"| {_fmt(row.spearman_topk, row.spearman_topk_std, 1, 2)} "
            f"[{row.spearman_topk_lo:.2f}, {row.spearman_topk_hi:.2f}] "
            f"| {_fmt(row.spearman_all, row.spearman_all_std, 1, 2)} "
            f"[{row.spearman_all_lo:.2f}, {row.spearman_all_hi:.2f}] |"
        )
    lines += ["", "Protocol of the measurement:", ""] + [f"    {h}" for h in header] + [""]
    made = provenance()
    lines += [f"Written by `{made['command']}` at commit {made['git_commit']}, {made['date']}.", ""]
    out = atomic_write_text(args.experiment / "paper_comparison.md", "\n".join(lines))
    print(out)


if __name__ == "__main__":
    main()
