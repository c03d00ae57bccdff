"""The shortlist of a proxy search: the K architectures a proxy ranks best (confirmed on the
whole split by ``nasproxy search --whole-top K``), and the pick among the confirmed.

The rule, shared by the search (what it trains) and the report (what it reads back):

- an architecture's *score* on a training set is its validation accuracy averaged over the
  seeds whose unit finished with status "ok"; one without such a unit is not ranked;
- the top K are the K highest scores; a tie at the cut goes to the smaller architecture id
  (plain string order), so a shortlist has exactly min(K, ranked) members and depends only
  on the stored units, never on the order they finished in;
- the *pick* of a proxy is the top 1, by the same rule, of its shortlist's whole-split
  scores: the choice uses validation accuracy only, the test accuracy is what is reported.

docs/find.md ("The rules") states them for a user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

ALL = "all"  # --by all: the union of every proxy's shortlist


def train_set_archs(manifest: Mapping[str, Any], name: str) -> list[str]:
    """The architecture ids training set ``name`` of ``manifest`` sweeps: its own list, or
    (a manifest from before training sets had their own) the experiment's ``archs``."""
    entry = (manifest.get("train_sets") or {}).get(name) or {}
    archs = entry.get("archs")
    return list(archs if isinstance(archs, list) else manifest.get("archs") or [])


def scores(trials: pd.DataFrame, train_set: str, archs: Iterable[str] | None = None) -> pd.Series:
    """Mean validation accuracy over the "ok" seeds of each architecture on ``train_set``,
    indexed by architecture id (restricted to ``archs`` when given)."""
    ok = trials[(trials["train_set"] == train_set) & (trials["status"] == "ok")]
    if archs is not None:
        ok = ok[ok["arch"].isin(set(archs))]
    return ok.groupby("arch")["val_acc"].mean().astype(float)


def top_k(score: pd.Series, k: int) -> list[str]:
    """The ``k`` best ids of ``score`` (highest first; a tie goes to the smaller id)."""
    ranked = sorted(((-float(v), str(a)) for a, v in score.items() if pd.notna(v)))
    return [a for _, a in ranked[:k]]


def shortlists(
    trials: pd.DataFrame, proxies: Mapping[str, Sequence[str]], k: int
) -> dict[str, list[str]]:
    """Each proxy's top ``k`` among its architectures (``proxies``: name -> arch ids)."""
    return {name: top_k(scores(trials, name, archs), k) for name, archs in proxies.items()}


def confirmed(lists: Mapping[str, Sequence[str]], by: str = ALL) -> list[str]:
    """The architectures to train on the whole split: one proxy's shortlist (``by``), or
    the union of all of them (``ALL``), in first-seen order."""
    chosen = lists.values() if by == ALL else [lists[by]]
    return list(dict.fromkeys(a for names in chosen for a in names))
