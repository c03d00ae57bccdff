"""The outcome of successive halving (``nasproxy search --halving ETA``), per proxy: what
halving picked, its regret, and its cost against the full proxy sweep of the same
experiment, read from the manifest's ``halving`` record (each rung's training set and
candidates, the pick; ``nasproxy.search.halving``) and the trials.

Regret is against the whole split where every architecture of the proxy has an "ok"
whole-split unit (the best mean whole-split test accuracy among them minus the pick's, as
Table 1's), else against the full proxy sweep's pick (its mean proxy validation accuracy
at the protocol's epochs minus halving's pick's). Cost is the summed wall_s of the units
of halving's rungs (each rung's candidates x seeds; the last rung's units are the proxy's
own) and, as an estimate, MACs x images x epochs of the same units; the full sweep's is
that of the proxy's units on all its architectures. docs/search.md ("Successive halving").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from nasproxy import metrics, shortlist
from nasproxy.report.formats import duration, md_escape, pct
from nasproxy.report.outcome import unit_cost_model
from nasproxy.results import WHOLE

GOAL = 3.0  # halving should be at least this many times cheaper at the same pick
# halving.csv's columns, one row per proxy halving ran on
HALVING_COLUMNS = (
    "train_set",  # the proxy
    "eta",
    "rung_epochs",  # each rung's epochs, "1/3/9"
    "rung_archs",  # each rung's candidates, "12/4/2"
    "finished",  # whether every rung chose (else the columns below are partial)
    "pick",  # halving's pick: the best of the last rung
    "full_pick",  # the full proxy sweep's best (mean proxy validation accuracy)
    "same_pick",
    "regret_vs",  # "whole split" (test accuracy) or "full sweep" (proxy validation accuracy)
    "regret",
    "full_regret",  # the full sweep's pick's regret, against the whole split
    "halving_units",
    "full_units",
    "halving_s",  # summed wall_s of halving's units
    "full_s",  # summed wall_s of the full proxy sweep's units
    "time_ratio",  # full_s / halving_s
    "halving_macs",  # MACs x images x epochs of halving's units
    "full_macs",
    "macs_ratio",  # full_macs / halving_macs
    "goal_met",  # same pick and at least GOAL times cheaper (measured time)
    "verdict",  # the goal in words: met, or why not
)


def _units(trials: pd.DataFrame, train_set: str, archs: Sequence[str]) -> pd.DataFrame:
    rows = trials[trials["train_set"] == train_set]
    return rows[rows["arch"].isin(set(archs))]


def _macs(rows: pd.DataFrame, manifest: Mapping[str, Any]) -> float:
    """MACs x images x epochs of ``rows`` (NaN: the manifest lacks the image shape)."""
    cost = unit_cost_model(manifest)
    if cost is None:
        return float("nan")
    return float(
        sum(
            cost(a, int(n)) * int(e)
            for a, n, e in zip(rows["arch"], rows["n_train"], rows["epochs"], strict=True)
        )  # fmt: skip
    )


def halving_outcome(trials: pd.DataFrame, manifest: Mapping[str, Any]) -> pd.DataFrame:
    """One row per proxy successive halving ran on (``HALVING_COLUMNS``); empty when the
    experiment ran none."""
    record = manifest.get("halving")
    if not isinstance(record, dict) or not isinstance(record.get("proxies"), dict):
        return pd.DataFrame(columns=list(HALVING_COLUMNS))
    whole = trials[(trials["train_set"] == WHOLE) & (trials["status"] == "ok")]
    whole_test = whole.groupby("arch")["test_acc"].mean()
    rows = []
    for proxy, mine in record["proxies"].items():
        names, cands = list(mine.get("train_sets") or []), list(mine.get("candidates") or [])
        archs = shortlist.train_set_archs(manifest, proxy)
        val = shortlist.scores(trials, proxy, archs)
        full = shortlist.top_k(val, 1)
        pick = mine.get("pick")
        row: dict[str, Any] = {
            "train_set": proxy,
            "eta": record.get("eta"),
            "rung_epochs": "/".join(map(str, record.get("epochs") or [])),
            "rung_archs": "/".join(str(len(c)) for c in cands),
            "finished": isinstance(pick, str),
            "pick": pick,
            "full_pick": full[0] if full else None,
        }
        row["same_pick"] = row["finished"] and pick == row["full_pick"]
        own = whole_test.reindex(archs).to_numpy(dtype=float)
        if row["finished"] and row["full_pick"] is not None:
            if np.isfinite(own).all() and own.size:
                row["regret_vs"] = "whole split"
                row["regret"] = metrics.regret(own, float(whole_test[pick]))
                row["full_regret"] = metrics.regret(own, float(whole_test[row["full_pick"]]))
            else:
                row["regret_vs"] = "full sweep"
                row["regret"] = float(val[row["full_pick"]] - val.get(pick, np.nan))
        spent = pd.concat(
            [_units(trials, n, c) for n, c in zip(names, cands, strict=False)] or [trials.iloc[:0]]
        )
        every = _units(trials, proxy, archs)
        row["halving_units"], row["full_units"] = len(spent), len(every)
        row["halving_s"], row["full_s"] = float(spent["wall_s"].sum()), float(every["wall_s"].sum())
        row["halving_macs"], row["full_macs"] = _macs(spent, manifest), _macs(every, manifest)
        for what in ("s", "macs"):
            part, total = row[f"halving_{what}"], row[f"full_{what}"]
            ratio = total / part if part > 0 and math.isfinite(part) else float("nan")
            row["time_ratio" if what == "s" else "macs_ratio"] = ratio
        row["goal_met"], row["verdict"] = _verdict(row)
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=list(HALVING_COLUMNS))


def _verdict(row: Mapping[str, Any]) -> tuple[bool, str]:
    """Whether halving was at least ``GOAL`` times cheaper (measured) at the full sweep's
    pick, and in words why not."""
    if not row["finished"]:
        return False, "halving has not finished: rerun the search to go on"
    why = []
    if not row["same_pick"]:
        why.append(f"it picked {row['pick']}, the full sweep {row['full_pick']}")
    ratio, macs = row["time_ratio"], row["macs_ratio"]
    if not (math.isfinite(ratio) and ratio >= GOAL):
        cheap = f"{ratio:.2f}x" if math.isfinite(ratio) else "n/a"
        reason = f"only {cheap} cheaper in time"
        if math.isfinite(macs) and macs >= GOAL:
            reason += (
                f" though {macs:.2f}x in MACs x images x epochs (a unit's fixed costs, start-up"
                " and evaluation, do not shrink with its epochs)"
            )
        elif math.isfinite(macs):
            reason += (
                f" ({macs:.2f}x in MACs x images x epochs: too few architectures or rungs for"
                " the rungs to save more)"
            )
        why.append(reason)
    if why:
        return False, f"goal ({GOAL:g}x cheaper at the same pick) not met: " + "; ".join(why)
    return True, f"goal met: {ratio:.2f}x cheaper at the same pick"


def halving_line(r: Mapping[str, Any]) -> str:
    """One row of the halving outcome as one line of text."""
    head = (
        f"{r['train_set']}: successive halving (ETA {r['eta']}, rungs of {r['rung_epochs']}"
        f" epochs on {r['rung_archs']} architectures)"
    )
    if not r["finished"]:
        return f"{head} has not finished; {r['verdict']}"
    regret = "regret n/a"
    if isinstance(r["regret_vs"], str) and math.isfinite(r["regret"]):
        regret = f"regret {pct(r['regret'])} pp against the {r['regret_vs']}"
        if r["regret_vs"] == "whole split" and math.isfinite(r["full_regret"]):
            regret += f" (the full sweep's pick: {pct(r['full_regret'])} pp)"
    same = "the same pick as" if r["same_pick"] else f"not {r['full_pick']}, the pick of"
    macs = f"{r['macs_ratio']:.2f}x" if math.isfinite(r["macs_ratio"]) else "n/a"
    return (
        f"{head} picks {r['pick']}, {same} the full proxy sweep; {regret}; cost "
        f"{duration(r['halving_s'])} in {r['halving_units']} units vs {duration(r['full_s'])} "
        f"in {r['full_units']} for the full sweep ({macs} cheaper in MACs x images x epochs); "
        f"{r['verdict']}"
    )


def halving_markdown(outcome: pd.DataFrame) -> str:
    """The halving outcome as a Markdown section: one line per proxy, then how to read it."""
    lines = ["", "## Successive halving", ""]
    lines += [f"- {md_escape(halving_line(r))}" for r in outcome.to_dict("records")]
    lines += [
        "",
        "Each rung trains its candidates as independent shorter runs of the proxy (its own"
        " epochs, a full cosine schedule); the best 1/ETA by mean proxy validation accuracy"
        " over seeds (a tie at the cut goes to the smaller id) go on; the last rung is the"
        " proxy's own units, and its best is the pick. Regret: against the whole split when"
        " every architecture of the proxy has an ok whole-split unit (best test accuracy"
        " minus the pick's), else against the full sweep's pick in proxy validation"
        " accuracy. Cost: summed training time of halving's units against the proxy's units"
        f" on every architecture; the goal is {GOAL:g}x cheaper at the same pick.",
    ]
    return "\n".join(lines) + "\n"
