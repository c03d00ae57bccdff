"""Successive halving on a proxy (``--halving ETA``): rungs of increasing epochs, each
training the survivors of the one before as independent shorter runs; only the best 1/ETA
of a rung (``nasproxy.shortlist``'s rule: mean proxy validation accuracy over the "ok"
seeds, a tie at the cut to the smaller id) continue.

Rung r of R trains ``epochs // ETA**(R-1-r)`` epochs on training set ``PROXY@E_r``
(``nasproxy.search.epoch_sets``); the last rung is the proxy itself at the protocol's
epochs, whose units the full proxy sweep of the same experiment already trains. The driver
(``run_rungs``) runs rung after rung under the experiment's lock, recording each rung's
candidates in the manifest (``halving``); a rerun recomputes them from the stored units,
so a sweep killed between rungs loses nothing and trains nothing twice. See
docs/search.md ("Successive halving").
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from nasproxy import results, shortlist
from nasproxy.results import UnitKey
from nasproxy.search.lock import ensure_held
from nasproxy.settings import SettingError, ref


def most_rungs(epochs: int, eta: int) -> int:
    """The most rungs ``epochs`` hold at rate ``eta``: the first must train at least one
    epoch, so ``eta ** (rungs - 1) <= epochs``."""
    rungs = 1
    while eta**rungs <= epochs:
        rungs += 1
    return rungs


def default_rungs(epochs: int, eta: int, n_archs: int) -> int:
    """The rungs of ``--halving`` without ``--halving-rungs``: as many as the epochs hold,
    but no more than halving ``n_archs`` down to about one needs (at least 2)."""
    by_archs = 1
    while eta**by_archs < n_archs:
        by_archs += 1
    return max(2, min(most_rungs(epochs, eta), by_archs))


def rung_epochs(epochs: int, eta: int, rungs: int) -> list[int]:
    """The epochs of each rung, the last the protocol's: ``epochs // eta**(rungs-1-r)``
    (strictly increasing while the first is at least 1)."""
    return [epochs // eta ** (rungs - 1 - r) for r in range(rungs)]


def check_halving(eta: int | None, rungs: int | None, epochs: int, proxies: int) -> None:
    """Refuse halving settings that cannot run (before any work)."""
    if eta is None:
        if rungs is not None:
            raise SettingError(f"{ref('halving_rungs')} needs {ref('halving')} ETA")
        return
    if not proxies:
        raise SettingError(f"{ref('halving')} halves on a proxy: give {ref('proxies')} files")
    if most_rungs(epochs, eta) < 2:
        raise SettingError(
            f"{ref('halving')} {eta} needs at least {eta} epochs for two rungs "
            f"({epochs} // {eta} = 0 epochs), the protocol has {epochs}"
        )
    if rungs is not None and eta ** (rungs - 1) > epochs:
        raise SettingError(
            f"{ref('halving_rungs')} {rungs} at rate {eta} needs at least {eta ** (rungs - 1)} "
            f"epochs (the first rung trains epochs // {eta}^{rungs - 1}), the protocol has "
            f"{epochs}; at most {most_rungs(epochs, eta)} rungs fit"
        )


def survivors(trials: Any, train_set: str, candidates: Sequence[str], eta: int) -> list[str]:
    """The best ceil(n / ``eta``) of a rung's n ``candidates`` on ``train_set`` (the
    trials table), best first, by ``nasproxy.shortlist``'s rule."""
    keep = math.ceil(len(candidates) / eta)
    return shortlist.top_k(shortlist.scores(trials, train_set, candidates), keep)


@dataclass(frozen=True)
class HalvingPlan:
    """The rungs of one sweep: ETA, each rung's epochs and, per proxy, each rung's training
    set (the last the proxy itself)."""

    eta: int
    epochs: tuple[int, ...]
    sets: Mapping[str, tuple[str, ...]]  # proxy -> rung training-set names

    def record(self) -> dict[str, Any]:
        """The manifest's ``halving`` record before any rung has chosen."""
        return {
            "eta": self.eta,
            "rungs": len(self.epochs),
            "epochs": list(self.epochs),
            "proxies": {
                p: {"train_sets": list(names), "candidates": [], "pick": None}
                for p, names in self.sets.items()
            },  # fmt: skip
        }


class SweepState(Protocol):
    """What the rungs read and update of the driver's state (``sweep._Sweep``)."""

    done: dict[UnitKey, dict[str, Any]]
    total: int

    def add(self, key: UnitKey, row: dict[str, Any]) -> None: ...

    def emit(self, row: dict[str, Any] | None = None, message: str = "") -> None: ...


def run_rungs(
    plan: HalvingPlan,
    exp_dir: Path,
    space_ids: Sequence[str],
    seeds: Sequence[int],
    stored: Mapping[UnitKey, dict[str, Any]],
    sweep: SweepState,
    planned: set[UnitKey],
    run: Callable[[list[UnitKey]], Any],
) -> tuple[list[UnitKey], dict[str, Any]]:
    """Rungs 1..R-1 after the first stage (which trained rung 0 and the proxies): each
    rung's candidates from the stored units of the one before, recorded in the manifest,
    then its units that are not stored trained with ``run``. Stops (to be continued by a
    rerun) when a rung has a unit that is missing or failed. Returns the units it asked
    ``run`` for and the run provenance."""
    asked: list[UnitKey] = []
    info: dict[str, Any] = {"rungs_done": 1}
    order = {a: i for i, a in enumerate(space_ids)}
    manifest = results.read_manifest(exp_dir) or {}
    chosen = {p: [shortlist.train_set_archs(manifest, names[0])] for p, names in plan.sets.items()}
    for r in range(1, len(plan.epochs) + 1):
        table = results.to_frame({**stored, **sweep.done}.values())
        unfinished = _unfinished(plan, chosen, r - 1, seeds, {**stored, **sweep.done})
        if unfinished:
            sweep.emit(
                message=f"successive halving stops after rung {r}: {unfinished} of its "
                "units are missing or failed; run the same command again to retry and go on"
            )
            info["stopped"] = f"{unfinished} units of rung {r} missing or failed"
            break
        manifest = results.read_manifest(exp_dir) or {}
        record = manifest["halving"]
        keys: list[UnitKey] = []
        for proxy, names in plan.sets.items():
            cands = chosen[proxy]
            best = survivors(table, names[r - 1], cands[r - 1], plan.eta)
            mine = record["proxies"][proxy]
            mine["candidates"] = [sorted(c, key=order.get) for c in cands]
            if r == len(plan.epochs):  # past the last rung: its best is the pick
                mine["pick"] = best[0] if best else None
                continue
            cands.append(best)
            mine["candidates"].append(sorted(best, key=order.get))
            entry = manifest["train_sets"][names[r]]
            have = set(entry["archs"]) | set(best)
            entry["archs"] = [a for a in space_ids if a in have]
            keys += [UnitKey(names[r], s, a) for s in seeds for a in best]
        ensure_held(exp_dir)
        results.write_manifest(exp_dir, manifest)
        if r == len(plan.epochs):
            info["rungs_done"] = r
            break
        fresh = [k for k in keys if k not in planned]  # the rest ran in an earlier stage
        for key in fresh:
            if key in stored and stored[key]["status"] != "failed":
                sweep.add(key, stored[key])
        planned.update(fresh)
        todo = [k for k in fresh if k not in sweep.done]
        sweep.total += len(fresh)
        sweep.emit(
            message=f"successive halving rung {r + 1} of {len(plan.epochs)} ({plan.epochs[r]} "
            f"epochs): {len({k.arch for k in keys})} architectures on {len(plan.sets)} "
            f"prox{'ies' if len(plan.sets) > 1 else 'y'}, {len(todo)} work units to run"
        )
        if todo:
            asked += todo
            info.setdefault("runs", []).append(run(todo))
        info["rungs_done"] = r + 1
    return asked, info


def _unfinished(
    plan: HalvingPlan,
    chosen: Mapping[str, list[list[str]]],
    rung: int,
    seeds: Sequence[int],
    units: Mapping[UnitKey, dict[str, Any]],
) -> int:
    """How many units of rung ``rung`` (every proxy's candidates x seeds) are missing or
    failed: its survivors are chosen only from a complete rung."""
    count = 0
    for proxy, names in plan.sets.items():
        for a in chosen[proxy][rung]:
            for s in seeds:
                row = units.get(UnitKey(names[rung], s, a))
                count += row is None or row["status"] == "failed"
    return count
