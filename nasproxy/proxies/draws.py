"""Draws and budgets of a proxy: one method built at several budgets and several seeds.

A draw is one build of a method from one seed. For random that seed picks other subsets;
for a method that reads the scoring run (influence, herding, forgetting, EL2N, ...) it is
also the scoring run's seed, so each draw trains its own scoring run: herding has no seed
of its own, yet its draws differ through their scoring runs. A method with no randomness
at all (a selection made elsewhere, ``--from-indices``; a plug-in whose function sets
``deterministic = True``) gives the same set whatever the seed, so it is built once and
its record says ``draw: null``.

``plan_draws`` lists the builds of a family (methods x budgets x seeds), ``draw_name``
names each (``METHOD-pcK-dSEED``, ``METHOD-pcK`` without randomness): the name of its file
under ``nasproxy run`` and of its training set. ``parse_budgets`` reads ``--per-class``'s
comma list (the draw seeds read as ``search --seeds``: a count or a comma list);
``check_family`` refuses a repeated budget or seed and a budget above a class's size,
before any work.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError
from nasproxy.proxies import build
from nasproxy.proxies.base import ProxyOptions, check_budget
from nasproxy.proxies.registry import Method
from nasproxy.scoring import ScoringConfig
from nasproxy.settings import SEED


@dataclass(frozen=True)
class ProxyDraw:
    """One build of a family: the method, its budget, the seed it is built from, and its
    draw (the seed; None for a method with no randomness, built once)."""

    method: str
    per_class: int | None  # None only for the influence method under an epsilon budget
    seed: int
    draw: int | None


def draw_name(method: str, per_class: int | None, draw: int | None) -> str:
    """``METHOD-pcK-dSEED`` (``METHOD-pcK`` for a method with no randomness; no ``-pcK``
    for an epsilon budget)."""
    budget = "" if per_class is None else f"-pc{per_class}"
    return f"{method}{budget}" + ("" if draw is None else f"-d{draw}")


def parse_budgets(text: str) -> tuple[int, ...]:
    """Per-class budgets from ``100`` or ``10,50,100,500``."""
    words = [w.strip() for w in text.split(",")]
    try:
        values = tuple(int(w) for w in words if w)
    except ValueError:
        raise NasproxyError(
            f"--per-class: want integers separated by commas, got {text!r}"
        ) from None
    if not values:
        raise NasproxyError(f"--per-class: want at least one integer, got {text!r}")
    return values


def check_family(
    budgets: Sequence[int],
    seeds: Sequence[int],
    data: Dataset | None = None,
    budget_name: str = "--per-class",
    seed_name: str = "--seeds",
) -> None:
    """Refuse a repeated budget or seed, a seed out of range and, given ``data``, a budget
    below 1 or above a class's size: one line, before any work."""
    for values, name in ((budgets, budget_name), (seeds, seed_name)):
        repeated = sorted({v for v in values if list(values).count(v) > 1})
        if repeated:
            raise NasproxyError(
                f"{name} repeats {', '.join(map(str, repeated))}: each value builds once"
            )
    bad = [s for s in seeds if not SEED.holds(s)]
    if bad:
        raise NasproxyError(f"{seed_name}: a seed must be {SEED.want}, got {bad[0]}")
    if data is not None:
        for budget in budgets:
            check_budget(data, budget)


def plan_draws(
    methods: Sequence[Method], budgets: Sequence[int | None], seeds: Sequence[int]
) -> list[ProxyDraw]:
    """Every build of the family, method by method, budget by budget, seed by seed; a
    method with no randomness once a budget, from the first seed."""
    plan = []
    for method in methods:
        for budget in budgets:
            if method.deterministic:
                plan.append(ProxyDraw(method.name, budget, seeds[0], None))
            else:
                plan += [ProxyDraw(method.name, budget, s, s) for s in seeds]
    return plan


def one_draw_notice(method: Method, seeds: Sequence[int]) -> str | None:
    """The line that says a method with no randomness was built once though several seeds
    were asked for (None otherwise)."""
    if not method.deterministic or len(seeds) < 2:
        return None
    return (
        f"{method.name} has no randomness (the same selection whatever the seed): one draw "
        f"built, from seed {seeds[0]}"
    )


def build_draws(
    data: Dataset,
    method: Method,
    budgets: Sequence[int | None],
    seeds: Sequence[int],
    cache_dir: str | Path,
    scoring: ScoringConfig | None = None,
    options: ProxyOptions | None = None,
    device: str = "auto",
    progress: Callable[[str], None] | None = None,
    measure: bool | None = None,
    seed_scoring: bool = True,
) -> Iterator[tuple[ProxyDraw, dict[str, Any]]]:
    """Build ``method`` at every budget from every seed (once a budget without randomness),
    yielding each draw and its record as soon as it is built, so a caller writes it before
    the next starts. With ``seed_scoring`` each draw's scoring run is seeded by the draw's
    seed (``scoring.backbone_seed`` is replaced), else every draw reads ``scoring``'s."""
    scoring = scoring or ScoringConfig()
    check_family([b for b in budgets if b is not None], seeds, data)
    for item in plan_draws([method], budgets, seeds):
        own = replace(scoring, backbone_seed=item.seed) if seed_scoring else scoring
        record = build.build_proxy(  # through the module: where a caller may wrap it
            data,
            method,
            item.per_class,
            item.seed,
            cache_dir,
            scoring=own,
            options=options,
            device=device,
            progress=progress,
            measure=measure,
        )
        yield item, record
