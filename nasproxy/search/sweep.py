"""``run_search``: resolve the training sets (``train_sets``), find the pending units, plan
them and drive the runner (``runner``: Ray Tune, or this process)."""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

from nasproxy import __version__, results, shortlist, spaces
from nasproxy.data import Dataset, load_dataset
from nasproxy.errors import IncompleteError, NasproxyError
from nasproxy.provenance import git_commit, utc_now
from nasproxy.proxies.base import check_budget
from nasproxy.results import WHOLE, UnitKey
from nasproxy.search.address import check_address
from nasproxy.search.config import (
    DEFAULT_GPU_SHARE,
    DEFAULT_MAX_STACK,
    Progress,
    ProgressFn,
    SearchConfig,
    TrainSet,
    wants_whole,
)
from nasproxy.search.epoch_sets import OwnEpochSets, check_bases, own_epoch_sets
from nasproxy.search.experiment import (
    build_manifest,
    check_existing,
    check_units_fit,
    finish_manifest,
    keep_whole_choice,
    next_run_number,
    remove_experiment,
)
from nasproxy.search.halving import run_rungs
from nasproxy.search.lock import any_lost, ensure_held, experiment_lock, held_token, holds
from nasproxy.search.plan import plan_trials, select_archs
from nasproxy.search.runner import check_runner, open_runner
from nasproxy.search.train_sets import proxy_names, resolve_train_sets
from nasproxy.search.trial import TrialPlan, make_row
from nasproxy.settings import SettingError, ref
from nasproxy.spaces import AnyArch, parse_arch, unit_cost
from nasproxy.train import TrainRecord

CONSOLIDATE_EVERY_S = 30.0
# A consolidation reads every unit file (its cost grows with the store): the periodic table
# waits long enough after one to keep this share of the driver's time at most.
CONSOLIDATE_SHARE = 0.01


class _Sweep:
    """The state of one run of the driver: what is done, counts, progress, consolidation."""

    def __init__(
        self,
        exp_dir: Path,
        done: dict[UnitKey, dict[str, Any]],
        total: int,
        progress: ProgressFn | None,
        train_set_order: Sequence[str],
        arch_order: Sequence[str],
    ):
        self.exp_dir = exp_dir
        self.done = done
        self.total = total
        self.progress = progress
        self.train_set_order = list(train_set_order)
        self.arch_order = list(arch_order)
        self.start = time.perf_counter()
        self.done_at_start = len(done)
        self.trained = 0
        self.last_consolidated = self.start
        self.consolidate_s = 0.0  # how long the last consolidation took
        self.statuses = Counter(row["status"] for row in done.values())  # one look a unit
        self.cost: Callable[[UnitKey], float] | None = None
        self.cost_planned = self.cost_done = 0.0

    def plan_cost(self, cost: Callable[[UnitKey], float], pending: Sequence[UnitKey]) -> None:
        """Estimate the time left from the planner's cost model (MACs x images of each
        unit), not from the count of units: the costliest units run first. Each stage of
        the run (proxies, then a --whole-top confirmation) adds its pending units."""
        self.cost = cost
        self.cost_planned += float(sum(cost(key) for key in pending))

    def record(self, row: dict[str, Any]) -> None:
        key = results.row_key(row)
        if key in self.done:
            return  # a retried trial re-reports the units it found stored
        if not holds(self.exp_dir):
            return  # lost to another driver (Tune's stopper ends the run): write nothing
        if results.read_unit(results.unit_path(self.exp_dir, key)) is None:
            results.write_unit(self.exp_dir, row)  # the trial ran where DIR is not shared
        self.add(key, row)
        self.trained += 1
        if self.cost is not None:
            self.cost_done += self.cost(key)
        self.emit(row=row)
        wait = max(CONSOLIDATE_EVERY_S, self.consolidate_s / CONSOLIDATE_SHARE)
        if time.perf_counter() - self.last_consolidated > wait:
            self.consolidate()

    def add(self, key: UnitKey, row: dict[str, Any]) -> None:
        """Count ``row`` as done (with its status, for the progress counts)."""
        self.done[key] = row
        self.statuses[row["status"]] += 1

    def consolidate(self) -> None:
        start = time.perf_counter()
        ensure_held(self.exp_dir)
        results.consolidate(self.exp_dir, self.train_set_order, self.arch_order)
        self.last_consolidated = time.perf_counter()
        self.consolidate_s = self.last_consolidated - start

    def emit(self, row: dict[str, Any] | None = None, message: str = "") -> None:
        if self.progress is None:
            return
        elapsed = time.perf_counter() - self.start
        left = max(self.cost_planned - self.cost_done, 0.0)  # units record after plan_cost
        eta = elapsed * left / self.cost_done if self.cost_done > 0 else None
        self.progress(
            Progress(
                done=self.n_done,
                total=self.total,
                failed=self.statuses["failed"],
                diverged=self.statuses["diverged"],
                elapsed_s=elapsed,
                eta_s=eta,
                row=row,
                message=message,
            )
        )

    @property
    def n_done(self) -> int:
        return len(self.done)


def run_search(cfg: SearchConfig, progress: ProgressFn | None = None) -> Path:
    """Run (or resume) the sweep ``cfg``; returns the experiment directory.

    Everything a user can get wrong (space, proxy files, cluster address, dataset, protocol
    of an existing experiment, resources) is checked before any training starts, and the
    experiment's lock is held from before anything in it is written or deleted.
    """
    # a missing or unreadable file fails before the dataset loads
    data, space, archs = check_search(cfg, proxy_names(cfg.proxies, cfg.whole))
    base = resolve_train_sets(
        cfg.proxies, cfg.whole or wants_whole(cfg), data, cfg.whole_per_class, cfg.split_seed
    )
    own = own_epoch_sets(cfg, base, len(archs))
    train_sets = [ts for ts in base if ts.name != WHOLE or cfg.whole] + own.sets
    with experiment_lock(cfg.exp_dir):
        return _run_locked(cfg, data, space, archs, train_sets, progress, own)


def check_search(
    cfg: SearchConfig, proxy_names: Sequence[str]
) -> tuple[Dataset, spaces.Space, list[AnyArch]]:
    """Refuse what ``run_search(cfg)`` would refuse before its lock, but the proxy files,
    which need not exist yet (``nasproxy run`` builds them after this), given the names of
    their training sets; returns the dataset, the space and the proxies' architectures."""
    results.experiment_dir(cfg.results_dir, cfg.name)  # a plain name in a writable folder
    spaces.resolve_path(cfg.space)
    check_address(cfg.address)
    check_runner(cfg)
    data = load_dataset(cfg.dataset, cfg.data_root, cfg.val_fraction, cfg.split_seed)
    if cfg.whole_per_class is not None:
        try:
            check_budget(data, cfg.whole_per_class)
        except NasproxyError as exc:
            raise SettingError(f"{ref('whole_per_class')}: {exc}") from None
    space = spaces.load(cfg.space, image_size=data.image_size)
    archs = select_archs(space, cfg.archs, cfg.sample, cfg.sample_seed)
    check_bases(cfg, proxy_names)
    if cfg.whole_by != shortlist.ALL and cfg.whole_by not in proxy_names:
        raise SettingError(
            f"{ref('whole_by')} {cfg.whole_by!r} is not a training set of this sweep; choose "
            f"from {', '.join([*proxy_names, shortlist.ALL])}"
        )
    if cfg.whole:  # patterns that match nothing fail here; a resume may keep recorded ones
        whole_archs(cfg, space, archs)
    return data, space, archs


def whole_archs(
    cfg: SearchConfig, space: spaces.Space, proxy_archs: Sequence[AnyArch]
) -> list[AnyArch]:
    """The whole split's own architectures before any confirmation: ``--whole-archs``
    patterns (default: the proxies' ``--archs``) and an optional stratified
    ``--whole-sample``; with neither, the proxies' set, or none when ``--whole-top`` is
    to choose them."""
    if cfg.whole_archs or cfg.whole_sample is not None:
        patterns = cfg.whole_archs or cfg.archs
        return select_archs(space, patterns, cfg.whole_sample, cfg.sample_seed)
    return [] if cfg.whole_top else list(proxy_archs)


def _run_locked(
    cfg: SearchConfig,
    data: Dataset,
    space: spaces.Space,
    archs: Sequence[AnyArch],
    train_sets: Sequence[TrainSet],
    progress: ProgressFn | None,
    own: OwnEpochSets | None = None,
) -> Path:
    """The part of ``run_search`` that writes to the experiment (its lock held): the proxies
    sweep ``archs``, the whole split its own (as the experiment recorded them chosen); the
    sets with their own epochs (``own``) sweep ``archs`` too, but halving's later rungs,
    which train their rung's survivors after the first stage."""
    own = own or OwnEpochSets()
    exp_dir = cfg.exp_dir
    if cfg.fresh:
        remove_experiment(exp_dir)
    previous = check_existing(exp_dir, cfg.rebuild_manifest)
    cfg, kept = keep_whole_choice(cfg, previous)
    archs_by_set = {ts.name: archs for ts in train_sets if ts.name != WHOLE}
    archs_by_set.update({name: [] for name in own.later_rungs})
    if cfg.whole:
        archs_by_set[WHOLE] = whole_archs(cfg, space, archs)
    manifest = build_manifest(cfg, data, space, archs_by_set, train_sets, previous)
    own.annotate(manifest)
    # every stored unit must fit the manifest: it is rebuilt from them, or they resume
    check_units_fit(
        exp_dir, manifest, space, train_sets, rebuilding=cfg.rebuild_manifest and previous is None
    )
    ensure_held(exp_dir)
    results.write_manifest(exp_dir, manifest)
    results.remove_stale_temporaries(exp_dir)

    all_keys = [
        UnitKey(ts.name, seed, a.id)
        for ts in train_sets
        for seed in cfg.seeds
        for a in archs_by_set[ts.name]
    ]
    damaged: list[Path] = []
    stored = results.read_units(exp_dir, skipped=damaged)
    # every failed unit of the experiment trains again, also one this command does not
    # select (an earlier command's, or confirmed by an earlier shortlist): a rerun retries
    # every failure the exit code counts
    planned = set(all_keys)
    retry = [k for k in sorted(stored) if k not in planned and stored[k]["status"] == "failed"]
    all_keys += retry
    # failed units (out of memory, crashed worker: often transient) run again; ok and
    # diverged ones are final
    done = {k: stored[k] for k in all_keys if k in stored and stored[k]["status"] != "failed"}
    pending = [k for k in all_keys if k not in done]
    sweep = _Sweep(
        exp_dir, done, len(all_keys), progress, manifest["train_sets"], manifest["archs"]
    )
    if kept:
        sweep.emit(message=kept)
    if cfg.rebuild_manifest and previous is not None:
        sweep.emit(message="manifest.json is intact; --rebuild-manifest leaves it as it is")
    if retry:
        sweep.emit(
            message=f"retrying {len(retry)} failed work unit{'s' * (len(retry) > 1)} outside "
            "this command's architectures (stored by an earlier command or shortlist)"
        )
    for line in own.messages:
        sweep.emit(message=line)
    for path in damaged:
        sweep.emit(
            message=f"unit file {path} is damaged or misplaced; it is ignored, and its unit "
            "trains again"
        )

    started, t0 = utc_now(), time.perf_counter()
    run_info: dict[str, Any] = {"started": started, "units_pending": len(pending)}
    try:
        if pending:
            run_info.update(_run_pending(cfg, data, train_sets, pending, sweep))
        elif not cfg.whole_top and own.halving is None:
            sweep.emit(message=f"all {len(all_keys)} work units are done; nothing to run")
        if own.halving is not None and not [k for k in pending if k not in sweep.done]:
            rungs, run_info["halving"] = run_rungs(
                own.halving, exp_dir, space.ids, cfg.seeds, stored, sweep, set(all_keys),
                lambda keys: _run_pending(cfg, data, train_sets, keys, sweep),
            )  # fmt: skip
            pending += rungs
        if cfg.whole_top and not [k for k in pending if k not in sweep.done]:
            confirm = _confirm_keys(cfg, exp_dir, space, stored, sweep, set(all_keys))
            run_info["confirm_pending"] = len(confirm)
            pending += confirm
            if confirm:
                run_info["confirm"] = _run_pending(cfg, data, train_sets, confirm, sweep)
    except KeyboardInterrupt:
        run_info["interrupted"] = True  # Ray is down by now; the same command resumes
        raise
    finally:
        if not any_lost():  # else another driver owns the experiment now: write nothing
            sweep.consolidate()
            run_info["wall_s"] = time.perf_counter() - t0
            run_info["units_trained"] = sweep.trained
            finish_manifest(exp_dir, run_info)
    ensure_held(exp_dir)
    missing = [k for k in pending if k not in sweep.done]
    if missing:
        raise IncompleteError(
            f"the sweep stopped with {len(missing)} of {sweep.total} work units unfinished; "
            "run the same command again to continue"
        )
    return exp_dir


def _confirm_keys(
    cfg: SearchConfig,
    exp_dir: Path,
    space: spaces.Space,
    stored: dict[UnitKey, dict[str, Any]],
    sweep: _Sweep,
    planned: set[UnitKey],
) -> list[UnitKey]:
    """Stage 2 of ``--whole-top``: each proxy's shortlist from the stored proxy units
    (``nasproxy.shortlist``), recorded in the manifest; returns the whole-split units of
    the confirmed architectures that still have to run (adding them to the sweep)."""
    manifest = results.read_manifest(exp_dir) or {}
    sets = manifest["train_sets"]
    proxies = {n: shortlist.train_set_archs(manifest, n) for n in shortlist.proxy_sets(manifest)}
    table = results.to_frame({**stored, **sweep.done}.values())
    lists = shortlist.shortlists(table, proxies, cfg.whole_top or 0)
    picked = shortlist.confirmed(lists, cfg.whole_by)
    have = set(shortlist.train_set_archs(manifest, WHOLE))
    sets[WHOLE]["archs"] = [a for a in space.ids if a in have | set(picked)]
    union = set(manifest["archs"]) | set(picked)
    manifest["archs"] = [a for a in space.ids if a in union]
    manifest["whole_top"] = shortlist.record(cfg.whole_top or 0, cfg.whole_by, lists)
    ensure_held(exp_dir)
    results.write_manifest(exp_dir, manifest)
    sweep.arch_order = manifest["archs"]

    keys = [UnitKey(WHOLE, seed, a) for seed in cfg.seeds for a in picked]
    fresh = [k for k in keys if k not in planned]  # the rest ran (or runs) in stage 1
    for key in fresh:
        if key in stored and stored[key]["status"] != "failed":
            sweep.add(key, stored[key])
    todo = [k for k in fresh if k not in sweep.done]
    sweep.total += len(fresh)
    who = "each proxy's" if cfg.whole_by == shortlist.ALL else f"{cfg.whole_by}'s"
    sweep.emit(
        message=f"confirming {who} top {cfg.whole_top} on the whole split: {len(picked)} "
        f"architectures, {len(todo)} work units to run"
    )
    return todo


def _run_pending(
    cfg: SearchConfig,
    data: Dataset,
    train_sets: Sequence[TrainSet],
    pending: Sequence[UnitKey],
    sweep: _Sweep,
) -> dict[str, Any]:
    """Plan the pending units into chunks and run them with ``cfg``'s runner (Ray Tune or
    this process), isolating crashing units; returns run provenance."""
    by_name = {ts.name: ts for ts in train_sets}
    shape = (data.in_channels, data.num_classes, data.image_size)
    per_image = {a: unit_cost(parse_arch(a), 1, *shape) for a in {key.arch for key in pending}}
    epochs = {ts.name: ts.epochs or cfg.train.epochs for ts in train_sets}

    def cost(key: UnitKey) -> float:
        return per_image[key.arch] * by_name[key.train_set].n_images * epochs[key.train_set]

    sweep.plan_cost(cost, pending)
    with open_runner(cfg) as runner:
        gpus = cfg.gpus_per_trial
        if gpus is None:
            gpus = DEFAULT_GPU_SHARE if runner.gpus > 0 else 0.0
        n_slots = runner.slots(cfg.cpus_per_trial, gpus)
        fuse = cfg.fuse == "on" or (cfg.fuse == "auto" and gpus > 0)
        max_stack = cfg.max_stack or DEFAULT_MAX_STACK
        n_images = {ts.name: ts.n_images for ts in train_sets}
        chunks = plan_trials(
            pending, n_images, fuse, max_stack, cfg.trial_size, n_slots, cost, epochs
        )
        stacks = [stack for c in chunks for stack in c.stacks]
        how = (
            f"as {len(stacks)} stacks of up to {max(map(len, stacks))} (fused)"
            if fuse
            else "one at a time (not fused)"
        )
        sweep.emit(
            message=(
                f"{len(pending)} work units to run ({sweep.n_done} of {sweep.total} done) {how}, "
                f"in {len(chunks)} trials of up to {max(len(c.units) for c in chunks)} units; "
                f"{n_slots} at a time ({cfg.cpus_per_trial:g} CPU, {gpus:g} GPU each) on "
                f"{runner.description}"
            )
        )
        plan = TrialPlan(
            exp_dir=str(sweep.exp_dir),
            chunks={c.id: c for c in chunks},
            indices={ts.name: ts.indices for ts in train_sets},
            hashes={ts.name: ts.proxy_hash for ts in train_sets},
            train=cfg.train,
            epochs={ts.name: ts.epochs for ts in train_sets if ts.epochs is not None},
            threads=max(1, int(cfg.cpus_per_trial)),
            run=next_run_number(sweep.exp_dir),
            fuse=fuse,
            fast=cfg.fast,
            gpu_share=gpus,
            lock_token=held_token(sweep.exp_dir),
        )
        resources = {"cpu": cfg.cpus_per_trial, "gpu": gpus}
        recovered: list[str] = []

        def on_recover(message: str) -> None:  # a worker crash Tune retries: say and keep it
            recovered.append(message)
            sweep.emit(message=message)

        name = f"run-{plan.run:03d}"
        errors = runner.run(plan, data, chunks, resources, sweep.record, name, on_recover)
        missing = [k for k in pending if k not in sweep.done]
        if errors and missing and len(errors) < len(chunks):
            # isolate the crashing unit(s): the rest of an errored chunk gets its own trials
            solo = plan_trials(missing, n_images, fuse, 1, 1, n_slots, cost, epochs)
            sweep.emit(message=f"{len(errors)} trials crashed; retrying {len(missing)} units alone")
            plan = replace(plan, chunks={c.id: c for c in solo})
            name = f"run-{plan.run:03d}-isolated"
            errors.update(runner.run(plan, data, solo, resources, sweep.record, name, on_recover))
            missing = [k for k in pending if k not in sweep.done]
        if errors:
            reason = f"{runner.crash_prefix}: " + "; ".join(sorted(set(errors.values())))[:500]
            for key in missing:
                sweep.record(_crash_row(key, by_name[key.train_set], cfg, reason))
        return {
            "run": plan.run,
            "trial_size": cfg.trial_size,
            "trials": len(chunks),
            "fuse": fuse,
            "max_stack": max_stack,
            "stacks": len(stacks),
            "cpus_per_trial": cfg.cpus_per_trial,
            "gpus_per_trial": gpus,
            "slots": n_slots,
            "runner": cfg.runner,
            "cluster": runner.description,
            "crashed_trials": len(errors),
            "recovered_crashes": recovered,  # worker crashes Tune retried (units kept)
            "git_commit": git_commit(),
            "nasproxy_version": __version__,
        }


def _crash_row(key: UnitKey, train_set: TrainSet, cfg: SearchConfig, reason: str) -> dict:
    record = TrainRecord(
        arch=key.arch,
        status="failed",
        reason=reason,
        seed=key.seed,
        epochs=train_set.epochs or cfg.train.epochs,
        n_train=train_set.n_images,
    )
    return make_row(parse_arch(key.arch), key.train_set, train_set.proxy_hash, record)
