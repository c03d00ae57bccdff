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

The search records its shortlists in the manifest (``record``), K and ``--by`` under the
names of their settings, ``whole_top`` and ``whole_by``; the report reads them back
(``recorded``). docs/find.md ("The rules") states them for a user.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import pandas as pd

from nasproxy.errors import NasproxyError
from nasproxy.results import WHOLE

ALL = "all"  # --by all: the union of every proxy's shortlist
RUNG = "halving_rung"  # a manifest entry's key: the set is a rung of successive halving
# what an older manifest's ``whole_top`` record named K and --by
OLD_NAMES = {"whole_top": "k", "whole_by": "by"}


def train_set_archs(manifest: Mapping[str, Any], name: str) -> list[str]:
    """The architecture ids training set ``name`` of ``manifest`` sweeps: its own list, or
    (a manifest from before training sets had their own) the experiment's ``archs``."""
    entry = (manifest.get("train_sets") or {}).get(name) or {}
    archs = entry.get("archs")
    return list(archs if isinstance(archs, list) else manifest.get("archs") or [])


def proxy_sets(manifest: Mapping[str, Any]) -> list[str]:
    """The training sets of ``manifest`` that rank architectures as proxies (shortlisted by
    ``--whole-top``, rows of Table 1 and of the search outcome): every set but the whole
    split and the rungs of successive halving (entries with ``halving_rung``), which rank
    only the survivors of the rung before (``nasproxy.report.halving`` reports them)."""
    sets = manifest.get("train_sets") or {}
    return [n for n, e in sets.items() if n != WHOLE and not (isinstance(e, dict) and RUNG in e)]


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


def record(whole_top: int, whole_by: str, lists: Mapping[str, Sequence[str]]) -> dict[str, Any]:
    """The manifest's ``whole_top`` record of a confirmation: K, ``--by`` and the lists."""
    return {"whole_top": whole_top, "whole_by": whole_by, "shortlists": dict(lists)}


def recorded(manifest: Mapping[str, Any]) -> dict[str, Any] | None:
    """The ``whole_top`` record of ``manifest`` (``record``; an older manifest's ``k`` and
    ``by`` read as ``whole_top`` and ``whole_by``, its missing lists as None), or None when
    the search confirmed no shortlist. A record without K or with lists that are not lists
    of ids is refused, never taken for another K."""
    top = manifest.get("whole_top")
    if top is None:
        return None
    if isinstance(top, dict):
        found = {key: top.get(key, top.get(old)) for key, old in OLD_NAMES.items()}
        found["whole_by"] = found["whole_by"] or ALL
        found["shortlists"] = top.get("shortlists")
        k, by, lists = found["whole_top"], found["whole_by"], found["shortlists"]
        if (
            isinstance(k, int)
            and not isinstance(k, bool)
            and k >= 1
            and isinstance(by, str)
            and (lists is None or _are_lists(lists))
        ):
            return found
    raise NasproxyError(
        f"the manifest's 'whole_top' record is damaged ({top!r}): it holds the shortlists' "
        "size whole_top (a whole number of at least 1), whole_by and the shortlists"
    )


def _are_lists(lists: Any) -> bool:
    """Whether ``lists`` maps names to lists of architecture ids."""
    return isinstance(lists, dict) and all(
        isinstance(v, list) and all(isinstance(a, str) for a in v) for v in lists.values()
    )
