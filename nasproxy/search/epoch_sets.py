"""Training sets with their own epochs: ``BASE@N`` trains the set BASE (a proxy's
training-set name, or ``whole``) for N epochs instead of the protocol's, as a training set
of its own (``nasproxy.results.split_epochs`` splits the name). They come from three
settings: ``--also BASE@N`` (``epoch_sets``), ``--equal-compute`` (the whole split at the
compute of each proxy: ``whole@N``) and the rungs of ``--halving``
(``nasproxy.search.halving``). One name is one set: a rung or an equal-compute set that a
user also asked for is trained once. See docs/search.md ("Training sets with their own
epochs").
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from nasproxy import results
from nasproxy.results import WHOLE
from nasproxy.search.config import SearchConfig, TrainSet
from nasproxy.search.halving import HalvingPlan, default_rungs, rung_epochs
from nasproxy.settings import SettingError, ref
from nasproxy.shortlist import RUNG

# --equal-compute: a rounding of whole@N that moves its compute (N x whole images) further
# than this share from the proxy's (epochs x proxy images) is said in the manifest and report.
EQUAL_COMPUTE_TOLERANCE = 0.10


def check_bases(cfg: SearchConfig, names: Sequence[str]) -> None:
    """Refuse a ``BASE@N`` whose base is neither one of the sweep's proxies (``names``,
    their training-set names) nor ``whole``."""
    known = [*[n for n in names if n != WHOLE], WHOLE]
    for name in cfg.epoch_sets:
        base = results.split_epochs(name)[0]
        if base not in known:
            raise SettingError(
                f"{ref('epoch_sets')} {name}: {base!r} is not a training set of this sweep; "
                f"choose from {', '.join(known)}"
            )


def equal_compute_epochs(epochs: int, n_proxy: int, n_whole: int) -> tuple[int, float]:
    """The epochs N of the whole split (``n_whole`` images) at the compute of ``epochs``
    epochs on ``n_proxy`` images: (N, the exact target epochs x n_proxy / n_whole). N is
    the target rounded half up, at least 1."""
    target = epochs * n_proxy / n_whole
    return max(1, math.floor(target + 0.5)), target


@dataclass
class OwnEpochSets:
    """The sets with their own epochs of a sweep, and what the manifest says of them."""

    sets: list[TrainSet] = field(default_factory=list)
    later_rungs: set[str] = field(default_factory=set)  # trained on survivors only
    annotations: dict[str, dict[str, Any]] = field(default_factory=dict)  # -> manifest entry
    messages: list[str] = field(default_factory=list)  # for the user, once a run
    halving: HalvingPlan | None = None

    def annotate(self, manifest: dict[str, Any]) -> None:
        """Add each set's annotations (``equal_compute``, ``halving_rung``) to its manifest
        entry and the halving record (kept from a stored one: its rungs' choices)."""
        for name, extra in self.annotations.items():
            manifest["train_sets"][name].update(extra)
        if self.halving is not None:
            stored = manifest.get("halving")
            fresh = self.halving.record()
            same = (
                isinstance(stored, dict)
                and isinstance(stored.get("proxies"), dict)
                and all(stored.get(k) == fresh[k] for k in ("eta", "rungs", "epochs"))
            )
            if same:  # a proxy added since starts its record
                for proxy, record in fresh["proxies"].items():
                    stored["proxies"].setdefault(proxy, record)
            manifest["halving"] = stored if same else fresh


def own_epoch_sets(cfg: SearchConfig, base: Sequence[TrainSet], n_archs: int) -> OwnEpochSets:
    """The sets ``cfg`` asks for with their own epochs, from its resolved sets ``base``
    (the proxies and, where one is asked for, the whole split): ``--also`` sets, the
    equal-compute whole split of each proxy, then the halving rungs below the last."""
    epochs = cfg.train.epochs
    by_name = {ts.name: ts for ts in base}
    proxies = [ts for ts in base if ts.name != WHOLE]
    out: dict[str, TrainSet] = {}
    result = OwnEpochSets()

    def add(base_set: TrainSet, n: int) -> str:
        name = f"{base_set.name}@{n}"
        out.setdefault(name, replace(base_set, name=name, epochs=n))
        return name

    for name in cfg.epoch_sets:
        base_name, n = results.split_epochs(name)
        add(by_name[base_name], n or epochs)
    if cfg.equal_compute:
        whole = by_name[WHOLE]
        for proxy in proxies:
            n, target = equal_compute_epochs(epochs, proxy.n_images, whole.n_images)
            ratio = n / target
            if n == epochs:
                result.messages.append(
                    f"--equal-compute: {proxy.name} ({proxy.n_images} images) matches the "
                    f"whole split at {epochs} epochs, which is the whole split itself; no "
                    "set added"
                )
                continue
            name = add(whole, n)
            note = {
                "proxy": proxy.name,
                "proxy_images": proxy.n_images,
                "whole_images": whole.n_images,
                "target_epochs": target,
                "compute_ratio": ratio,
            }
            if abs(ratio - 1) > EQUAL_COMPUTE_TOLERANCE:
                why = "rounded up to the least, 1" if target < 0.5 else "rounded"
                note["note"] = (
                    f"{name} for {proxy.name}: {epochs} x {proxy.n_images} / {whole.n_images} "
                    f"= {target:.3g} epochs, {why}: {ratio:.2f}x the proxy's compute (more "
                    f"than {EQUAL_COMPUTE_TOLERANCE:.0%} off)"
                )
                result.messages.append(f"--equal-compute: {note['note']}")
            entry = result.annotations.setdefault(name, {"equal_compute": []})
            entry["equal_compute"].append(note)
    if cfg.halving is not None:
        eta = cfg.halving
        rungs = cfg.halving_rungs or default_rungs(epochs, eta, n_archs)
        rung_eps = rung_epochs(epochs, eta, rungs)
        sets: dict[str, tuple[str, ...]] = {}
        for proxy in proxies:
            names = []
            for r, n in enumerate(rung_eps[:-1]):
                name = f"{proxy.name}@{n}"
                if name not in out:
                    add(proxy, n)
                    result.annotations.setdefault(name, {})[RUNG] = r
                    if r > 0:
                        result.later_rungs.add(name)
                names.append(name)
            sets[proxy.name] = (*names, proxy.name)
        result.halving = HalvingPlan(eta, tuple(rung_eps), sets)
        result.messages.append(
            f"successive halving at rate {eta} on {len(proxies)} prox"
            f"{'ies' if len(proxies) > 1 else 'y'}: {rungs} rungs of "
            f"{'/'.join(map(str, rung_eps))} epochs; rung 1 trains with the proxies, each later "
            f"one the best 1/{eta} of the one before"
        )
    result.sets.extend(out.values())
    return result
