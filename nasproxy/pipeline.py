"""``nasproxy run``: build every proxy, sweep the space on them and the whole set, report.

The experiment is a ``Preset`` (``nasproxy.presets``): its proxy settings and its search
settings, from which the sweep's ``SearchConfig`` is made. Its proxies are one a method,
or a family of budgets and draws (``plan_proxies``, ``nasproxy.proxies.draws``). Each
stage is resumable: a proxy file that already matches its request is reused, the sweep
resumes from its results store, and the report is rebuilt from the results
(docs/search.md, "Presets of nasproxy run").
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from nasproxy import settings
from nasproxy.data import Dataset, default_data_root
from nasproxy.errors import NasproxyError
from nasproxy.io import check_output_dir
from nasproxy.presets import Preset
from nasproxy.proxies import registry
from nasproxy.proxies.base import check_budget
from nasproxy.proxies.build import build_proxy, write_proxy
from nasproxy.proxies.draws import ProxyDraw, draw_name, plan_draws
from nasproxy.proxies.proxy_file import read_proxy
from nasproxy.report import ReportResult, make_report
from nasproxy.results import experiment_dir
from nasproxy.scoring import ScoringConfig
from nasproxy.search import (
    ProgressFn,
    check_search,
    experiment_lock,
    remove_experiment,
    run_search,
)
from nasproxy.search.lock import ensure_held
from nasproxy.settings import SettingError, ref
from nasproxy.train import resolve_device

# A NATS-Bench topology benchmark directory: for a space of cells, its published accuracies
# stand in for the whole split (nasproxy.natsbench), which is then not trained.
NATS_ENV = "NASPROXY_NATS"
REFERENCE_FILE = "reference.csv"  # the experiment's external whole-set reference, if any

Message = Callable[[str], None]


@dataclass(frozen=True)
class PlannedProxy:
    """One proxy file ``nasproxy run`` builds: its name (the file's stem and the training
    set's name), the draw it is, and the scoring run it reads."""

    name: str
    draw: ProxyDraw
    scoring: ScoringConfig


def plan_proxies(preset: Preset) -> list[PlannedProxy]:
    """The preset's proxies: one a method, named by the method, when it gives no family;
    else every method at every budget from every draw seed (``nasproxy.proxies.draws``),
    named ``METHOD-pcK-dSEED``, each draw's scoring run seeded by its seed when
    ``proxy_seeds`` gives the draws."""
    check_methods(preset.methods)
    if not preset.family:
        seed = preset.proxy_seed
        one = [ProxyDraw(m, preset.per_class, seed, seed) for m in preset.methods]
        return [PlannedProxy(d.method, d, preset.scoring) for d in one]
    seeds = preset.proxy_seeds or (preset.proxy_seed,)
    plan = plan_draws([registry.resolve(m) for m in preset.methods], preset.proxy_budgets, seeds)
    return [
        PlannedProxy(
            draw_name(d.method, d.per_class, d.draw),
            d,
            replace(preset.scoring, backbone_seed=d.seed) if preset.proxy_seeds else preset.scoring,
        )
        for d in plan
    ]


def proxy_matches(
    record: dict[str, Any],
    data: Dataset,
    preset: Preset,
    method: str,
    planned: PlannedProxy | None = None,
) -> bool:
    """Whether a proxy file on disk was built by exactly this request (so it can be reused):
    ``planned`` (default: the preset's one proxy of ``method``)."""
    if planned is None:
        draw = ProxyDraw(method, preset.per_class, preset.proxy_seed, preset.proxy_seed)
        planned = PlannedProxy(method, draw, preset.scoring)
    backbone = record.get("backbone") or {}
    params = record.get("params") or {}
    return (
        record.get("method") == method
        and params.get("source") == registry.source(method)  # an upgraded plug-in rebuilds
        and record.get("fingerprint") == data.fingerprint
        and record.get("per_class") == planned.draw.per_class
        and record.get("seed") == planned.draw.seed
        and all(backbone.get(k) == v for k, v in planned.scoring.record().items())
    )


def proxy_path(out_dir: Path, name: str) -> Path:
    """Where ``build_proxies`` keeps the proxy file named ``name`` (never outside it)."""
    return out_dir / f"{registry.check_method_name(name)}.json"


def check_methods(methods: tuple[str, ...] | list[str]) -> None:
    """Refuse, before any work, a method that is unknown or whose name cannot name a proxy
    file and a training set (an installed plug-in may be named anything)."""
    known = registry.method_names()  # the built-ins and the installed plug-ins
    unknown = [m for m in methods if m not in known]
    if unknown:
        raise NasproxyError(
            f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}"
        )
    for method in methods:
        registry.check_method_name(method)


def build_proxies(
    preset: Preset,
    data: Dataset,
    out_dir: Path,
    cache_dir: Path,
    device: str = "auto",
    progress: Message | None = None,
    before_write: Callable[[], None] | None = None,
) -> list[Path]:
    """One proxy file per planned proxy (``plan_proxies``) under ``out_dir``, reusing files
    that match the request; ``before_write`` runs before each file is written (the
    experiment lock's check)."""
    paths = []
    for planned in plan_proxies(preset):
        method, path = planned.draw.method, proxy_path(out_dir, planned.name)
        if path.is_file() and proxy_matches(read_proxy(path), data, preset, method, planned):
            if progress is not None:
                progress(f"proxy {planned.name}: reusing {path}")
        else:
            if progress is not None:
                progress(f"proxy {planned.name}: building {planned.draw.per_class} per class")
            record = build_proxy(
                data,
                method,
                planned.draw.per_class,
                planned.draw.seed,
                cache_dir,
                scoring=planned.scoring,
                device=device,
                progress=progress,
                measure=True,  # Table 1 reports every proxy's epsilon
            )
            if before_write is not None:
                before_write()
            write_proxy(record, path)
        paths.append(path)
    return paths


def nats_directory(preset: Preset) -> Path | None:
    """The NATS-Bench directory whose published accuracies stand in for the whole split:
    ``$NASPROXY_NATS`` when it is set and the preset's space is the NAS-Bench-201 cells
    (``nb201``), else None (the whole split is trained as the preset says)."""
    path = os.environ.get(NATS_ENV, "").strip()
    return Path(path) if path and preset.search.space == "nb201" else None


def import_reference(nats: Path, preset: Preset, exp_dir: Path) -> Path:
    """``EXP/reference.csv`` from NATS-Bench directory ``nats`` at the preset's dataset
    and epochs, through the official package (``nasproxy reference import-nats``)."""
    from nasproxy.natsbench import import_nats  # the optional extra, only when asked for

    return import_nats(nats, preset.search.dataset, preset.epochs, exp_dir / REFERENCE_FILE)


def run_pipeline(
    preset: Preset,
    name: str,
    results_dir: str | Path | None = None,
    data_root: str | Path | None = None,
    device: str = "auto",
    fresh: bool | None = None,
    search_options: Mapping[str, Any] | None = None,
    progress: Message | None = None,
    search_progress: ProgressFn | None = None,
) -> ReportResult:
    """Proxies, then the sweep, then Table 1, under ``results_dir/name``.

    ``results_dir``, ``data_root`` and ``fresh`` override the preset's search settings of
    those names when given (``search_options``, settings by key, is deprecated: set them in
    ``preset.search``). The name, the folders and every setting are checked before
    anything is written or deleted, and before the proxies are built (minutes) for a sweep
    that would be refused.
    """
    given = {"results_dir": results_dir, "data_root": data_root, "fresh": fresh}
    search = replace(preset.search, **{k: v for k, v in given.items() if v is not None})
    if search_options:
        warnings.warn(
            "run_pipeline(search_options=...) is deprecated: give the preset's search settings "
            "(nasproxy.settings.replace_settings(preset.search, {...}))",
            DeprecationWarning,
            stacklevel=2,
        )
        search = settings.replace_settings(search, search_options)
    exp_dir = experiment_dir(search.results_dir, name)
    check_methods(preset.methods)
    root = Path(search.data_root) if search.data_root is not None else default_data_root()
    check_output_dir(root, "data root")  # the scoring runs are cached there
    resolve_device(device)
    proxies_dir = exp_dir / "proxies"
    planned = plan_proxies(preset)
    named = preset.family  # a family's draws share a method: each set goes by its name
    cfg = search.config(  # the proxy files it names are built below
        name,
        tuple(
            (f"{p.name}=" if named else "") + str(proxy_path(proxies_dir, p.name)) for p in planned
        ),
        train=replace(search.train, device=device),
        data_root=str(root),
        results_dir=str(search.results_dir),
    )
    # the experiment goes before its proxies are built, not by the search (after the build)
    cfg = replace(cfg, fresh=False)
    nats = nats_directory(preset)
    if nats is not None:  # a published reference stands in for the whole split
        cfg = replace(
            cfg, whole=False, whole_per_class=None, whole_archs=(), whole_sample=None,
            whole_top=None,
        )  # fmt: skip
    # what the search refuses, before the build
    data, _, _ = check_search(cfg, [p.name for p in planned])
    key = "budgets" if preset.budgets else "per_class"
    try:
        for budget in preset.proxy_budgets:
            check_budget(data, budget)
    except NasproxyError as exc:
        raise SettingError(f"{ref(key)}: {exc}") from None
    with experiment_lock(exp_dir):  # no other driver builds, searches or deletes meanwhile
        if search.fresh:
            # the proxies live inside the experiment, so the experiment goes before they are
            # rebuilt (a fresh search after the build would delete them with it)
            remove_experiment(exp_dir)
        reference = None if nats is None else import_reference(nats, preset, exp_dir)
        build_proxies(
            preset, data, proxies_dir, root, device, progress, lambda: ensure_held(exp_dir)
        )
        if progress is not None:
            progress("searching")
        run_search(cfg, search_progress)
    if progress is not None:
        progress("reporting")
    return make_report(exp_dir, top_k=preset.top_k, reference=reference)
