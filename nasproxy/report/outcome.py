"""The search outcome of ``nasproxy search --whole-top K``: per proxy, its shortlist
confirmed on the whole split, the pick, its rank and regret, and what finding it cost.

The shortlist and the pick follow ``nasproxy.shortlist``, the rule the search itself uses;
docs/find.md ("The answer: the search outcome") explains it to a reader.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import pandas as pd

from nasproxy import shortlist
from nasproxy.report.formats import duration, md_escape, pct
from nasproxy.results import WHOLE

# search_outcome.csv's columns: per proxy, its shortlist confirmed on the whole split.
OUTCOME_COLUMNS = (
    "train_set",
    "k",
    "shortlisted",
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

    shortlisted: the size of the proxy's top K (fewer than K when fewer of its
    architectures finished "ok"); confirmed: how many of them have a whole-split result.

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
        row: dict[str, Any] = {"train_set": name, "k": k, "shortlisted": len(lists[name])}
        row["confirmed"] = len(confirmed)
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


def outcome_line(r: Mapping[str, Any]) -> str:
    """One row of the search outcome as one line of text."""
    if not r["shortlisted"]:
        return f"{r['train_set']}: no architecture finished ok on it, so it has no top K yet"
    if not isinstance(r["pick"], str):
        return f"{r['train_set']}: none of its top {r['k']} has a whole-split result yet"
    regret = "" if not math.isfinite(r["regret"]) else f", regret {pct(r['regret'])} pp"
    cost = "cost n/a"
    if math.isfinite(r["cost_ratio"]):
        how = "estimated" if r["exhaustive_estimated"] else "measured"
        cost = (
            f"cost {duration(r['proxy_s'] + r['confirm_s'])} (proxy {duration(r['proxy_s'])}"
            f" + confirmation {duration(r['confirm_s'])}) vs {duration(r['exhaustive_s'])}"
            f" for the exhaustive whole split ({how}): {r['cost_ratio']:.2f}x"
        )
    return (
        f"{r['train_set']} picks {r['pick']}: whole-split test"
        f" {pct(r['pick_test'], r['pick_test_std'])}% over {r['pick_seeds']:.0f} seed(s), rank"
        f" {r['rank']:.0f} of {r['n_confirmed']:.0f} confirmed{regret}"
        f" ({r['confirmed']:.0f} of its top {r['k']:.0f} confirmed); {cost}"
    )


def outcome_markdown(outcome: pd.DataFrame) -> str:
    """The search outcome as a Markdown section: one line per proxy, then how to read it."""
    lines = ["", "## Search outcome", ""]
    lines += [f"- {md_escape(outcome_line(r))}" for r in outcome.to_dict("records")]
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
