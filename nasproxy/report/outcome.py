"""The search outcome of ``nasproxy search --whole-top K``: per proxy, its shortlist
confirmed on the whole split, the pick, its rank and regret, and what finding it cost.

The shortlist and the pick follow ``nasproxy.shortlist``, the rule the search itself uses;
docs/find.md ("The answer: the search outcome") explains it to a reader. A published
reference (``nasproxy.reference``) may stand in for the whole split: the shortlist is then
looked up in it instead of trained, and nothing is spent confirming it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import pandas as pd

from nasproxy import metrics, shortlist
from nasproxy.reference import Reference
from nasproxy.report.formats import duration, md_escape, pct
from nasproxy.results import WHOLE
from nasproxy.spaces import parse_arch, unit_cost

# search_outcome.csv's columns: per proxy, its shortlist confirmed on the whole split.
OUTCOME_COLUMNS = (
    "train_set",
    "whole_top",
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


def unit_cost_model(manifest: Mapping[str, Any]) -> Callable[[str, int], float] | None:
    """The planner's cost of a unit of (arch id, training images) on the experiment's
    images (``data_shape`` of the manifest); None for a manifest that does not record it."""
    shape = manifest.get("data_shape")
    keys = ("in_channels", "num_classes", "image_size")
    if not isinstance(shape, dict) or not all(isinstance(shape.get(k), int) for k in keys):
        return None
    dims = [int(shape[k]) for k in keys]
    return lambda arch, n_images: unit_cost(parse_arch(arch), n_images, *dims)


def exhaustive_cost(
    whole: pd.DataFrame,
    archs: Sequence[str],
    seeds: Sequence[int],
    n_images: int,
    cost: Callable[[str, int], float] | None,
) -> tuple[float, bool]:
    """What the whole split on every one of ``archs`` x ``seeds`` costs, in training
    seconds, and whether that is an estimate: (NaN, True) when it cannot be told.

    Measured (the summed wall_s of those units) only when every one of them finished "ok".
    Else the units that did are counted as measured and each other one is estimated by
    the planner's cost model (``cost``: MACs x images, per architecture), calibrated on
    every "ok" unit of ``whole``: seconds per cost unit = their summed wall_s over their
    summed cost. A failed or diverged unit's time is not that of a finished one, so it
    counts neither as measured nor in the calibration.
    """
    ok = whole[whole["status"] == "ok"].drop_duplicates(["arch", "seed"], keep="last")
    wanted = {(a, s) for a in archs for s in seeds}
    keys = list(zip(ok["arch"], ok["seed"], strict=True))
    done = ok[[key in wanted for key in keys]]
    measured = float(done["wall_s"].sum())
    missing = wanted - set(zip(done["arch"], done["seed"], strict=True))
    if not missing:
        return measured, False
    if cost is None or ok.empty:
        return float("nan"), True
    spent = sum(cost(a, int(n)) for a, n in zip(ok["arch"], ok["n_train"], strict=True))
    if spent <= 0:
        return float("nan"), True
    rate = float(ok["wall_s"].sum()) / spent
    return measured + rate * sum(cost(a, n_images) for a, _ in missing), True


def shortlist_size(manifest: Mapping[str, Any], top_k: int) -> tuple[int, str | None]:
    """The K of the search outcome: ``--whole-top``'s, as the search recorded it; for a
    search without it, Table 1's ``top_k``, with the note that says so (else None)."""
    top = shortlist.recorded(manifest)
    if top is not None:
        return top["whole_top"], None
    return top_k, (
        f"Search outcome: the search confirmed no shortlist (no --whole-top), so each "
        f"proxy's top K is Table 1's top-{top_k}."
    )


def _whole_results(
    trials: pd.DataFrame, reference: Reference | None
) -> tuple[pd.Series, pd.Series, pd.Series, pd.Series]:
    """Per architecture of the whole split (or of the external ``reference``): the mean
    validation accuracy, and the test accuracy's mean, sample std and number of seeds."""
    if reference is not None:
        val = pd.Series(reference.val, dtype=float).dropna()
        test = pd.Series(reference.test, dtype=float)
        nan = pd.Series(float("nan"), index=test.index)
        return val, test, nan, nan
    ok = trials[(trials["train_set"] == WHOLE) & (trials["status"] == "ok")]
    test = ok.groupby("arch")["test_acc"]
    return shortlist.scores(trials, WHOLE), test.mean(), test.std(ddof=1), test.count()


def search_outcome(
    trials: pd.DataFrame,
    manifest: dict[str, Any],
    top_k: int,
    reference: Reference | None = None,
) -> pd.DataFrame:
    """Per proxy: its top K (``nasproxy.shortlist``; K of ``shortlist_size``) confirmed on
    the whole split, the pick and its cost (empty: no proxy, or no "ok" whole-split unit).

    whole_top: K. shortlisted: the size of the proxy's top K, the list the search recorded
    (computed by the same rule for a search without ``--whole-top``, a proxy it did not
    list, or a manifest of a version that did not record lists; fewer than K when fewer
    of its architectures finished "ok"); confirmed: how many of them have a whole-split
    result.

    pick: the best of the proxy's confirmed shortlist by mean whole-split validation
    accuracy; pick_test/_std: its whole-split test accuracy, mean and sample std over its
    whole-split seeds; rank: its place by mean test accuracy among every confirmed
    architecture (1 = best; n_confirmed of them); regret: ``nasproxy.metrics.regret``, as
    Table 1's: the best mean whole-split test accuracy among the proxy's own architectures
    minus the pick's, only when every one of them has an "ok" whole-split unit. Cost in
    training seconds (wall_s of the units, every status): the proxy's sweep, its
    shortlist's whole-split units, and the whole split on all the proxy's architectures x
    seeds (:func:`exhaustive_cost`: measured, or estimated per architecture).

    With an external ``reference``, it stands in for the whole split: confirmed means in
    the reference (with a validation accuracy), the pick's accuracies are its (no std, no
    seeds), confirming costs nothing and the exhaustive whole split's cost is not told.
    """
    k, _ = shortlist_size(manifest, top_k)
    seeds = list(manifest["protocol"]["seeds"])
    proxies = {n: shortlist.train_set_archs(manifest, n) for n in shortlist.proxy_sets(manifest)}
    whole = trials[trials["train_set"] == WHOLE]
    ok = whole[whole["status"] == "ok"]
    if not proxies or (ok.empty and reference is None):
        return pd.DataFrame(columns=list(OUTCOME_COLUMNS))
    val, test_mean, test_std, test_n = _whole_results(trials, reference)
    searched = (shortlist.recorded(manifest) or {}).get("shortlists") or {}
    lists = shortlist.shortlists(trials, {n: a for n, a in proxies.items() if n not in searched}, k)
    lists.update({name: searched[name] for name in proxies if name in searched})
    every = [a for a in shortlist.confirmed(lists) if a in val.index]
    n_images = (manifest["train_sets"].get(WHOLE) or {}).get("n_images")
    if not isinstance(n_images, int) and not ok.empty:
        n_images = int(ok["n_train"].max())
    cost = unit_cost_model(manifest)
    rows = []
    for name, archs in proxies.items():
        confirmed = [a for a in lists[name] if a in val.index]
        pick = shortlist.top_k(val[confirmed], 1)
        row: dict[str, Any] = {"train_set": name, "whole_top": k}
        row["shortlisted"] = len(lists[name])
        row["confirmed"] = len(confirmed)
        row["n_confirmed"] = len(every)
        if pick:
            a = pick[0]
            row.update(pick=a, pick_val=val[a], pick_test=test_mean[a])
            seeds_of = float("nan") if reference is not None else int(test_n[a])
            row.update(pick_test_std=test_std[a], pick_seeds=seeds_of)
            row["rank"] = 1 + int((test_mean[every] > test_mean[a]).sum())
            own = test_mean.reindex(archs)
            row["regret"] = metrics.regret(own.to_numpy(dtype=float), test_mean[a])
            if math.isfinite(row["regret"]):
                row["best_arch"] = shortlist.top_k(own, 1)[0]
        units = whole[whole["arch"].isin(confirmed)]
        row["proxy_s"] = float(trials.loc[trials["train_set"] == name, "wall_s"].sum())
        if reference is not None:  # looked up, not trained
            row.update(confirm_s=0.0, exhaustive_s=float("nan"), exhaustive_estimated=True)
            rows.append(row)
            continue
        row["confirm_s"] = float(units["wall_s"].sum())
        exhaustive, estimated = exhaustive_cost(whole, archs, seeds, n_images, cost)
        row["exhaustive_s"], row["exhaustive_estimated"] = exhaustive, estimated
        if math.isfinite(exhaustive) and exhaustive > 0:
            row["cost_ratio"] = (row["proxy_s"] + row["confirm_s"]) / exhaustive
        rows.append(row)
    return pd.DataFrame(rows).reindex(columns=list(OUTCOME_COLUMNS))


def outcome_line(r: Mapping[str, Any], external: bool = False) -> str:
    """One row of the search outcome as one line of text (``external``: the whole split is
    an external reference's, as ``search_outcome`` was given one)."""
    if not r["shortlisted"]:
        return f"{r['train_set']}: no architecture finished ok on it, so it has no top K yet"
    if not isinstance(r["pick"], str):
        where = "is in the external reference" if external else "has a whole-split result yet"
        return f"{r['train_set']}: none of its top {r['whole_top']} {where}"
    regret = "" if not math.isfinite(r["regret"]) else f", regret {pct(r['regret'])} pp"
    if external:
        return (
            f"{r['train_set']} picks {r['pick']}: external reference test {pct(r['pick_test'])}%,"
            f" rank {r['rank']:.0f} of {r['n_confirmed']:.0f} confirmed{regret}"
            f" ({r['confirmed']:.0f} of its top {r['whole_top']:.0f} in the reference); cost"
            f" {duration(r['proxy_s'])} (proxy only: the whole split is looked up in the"
            " external reference, not trained)"
        )
    cost = "cost n/a"
    if not math.isfinite(r["exhaustive_s"]):
        cost += " (the manifest does not record the image shape the estimate needs: a rerun"
        cost += " of the search records it)"
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
        f" ({r['confirmed']:.0f} of its top {r['whole_top']:.0f} confirmed); {cost}"
    )


def outcome_markdown(outcome: pd.DataFrame, external: str | None = None) -> str:
    """The search outcome as a Markdown section: one line per proxy, then how to read it
    (``external``: the label of the external reference that stands in for the whole split)."""
    lines = ["", "## Search outcome", ""]
    if external is not None:
        lines += [f"Whole split: {md_escape(external)}.", ""]
    lines += [
        f"- {md_escape(outcome_line(r, external is not None))}" for r in outcome.to_dict("records")
    ]
    if external is not None:
        lines += [
            "",
            "Each proxy's top K by mean proxy validation accuracy (a tie at the cut goes to"
            " the smaller architecture id) looked up in the external reference instead of"
            " trained on the whole split; its pick is the best of them by the reference's"
            " validation accuracy, reported with the reference's test accuracy. Rank: by test"
            " accuracy among every confirmed architecture (in the reference). Regret: against"
            " the best of the proxy's own architectures, only when the reference has every one"
            " of them (as Table 1's). Cost: the proxy sweep's summed training time; the"
            " reference costs nothing here.",
        ]
        return "\n".join(lines) + "\n"
    lines += [
        "",
        "Each proxy's top K by mean proxy validation accuracy (a tie at the cut goes to the"
        " smaller architecture id) trained on the whole split; its pick is the best of them by"
        " mean whole-split validation accuracy, reported with its whole-split test accuracy"
        " (mean ± sample std over seeds). Rank: by mean test accuracy among every confirmed"
        " architecture. Regret: against the best of the proxy's own architectures, only when"
        " every one of them has an ok whole-split unit (as Table 1's). Cost: summed training"
        " time of the units; the exhaustive whole split's is measured when every one of its"
        " units finished ok, else the missing ones are estimated per architecture (MACs x"
        " images, calibrated on the ok whole-split units).",
    ]
    return "\n".join(lines) + "\n"
