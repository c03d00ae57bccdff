"""Build a proxy training set and measure it.

``build_proxy`` runs (or reuses) the scoring run, refits the softmax head (or reads it
from its cache), runs one method (a built-in, a plug-in, or ``from_indices``'s wrapper
of a selection made elsewhere), checks its selection (``check_selection``), and measures
it on the paper's yardstick: epsilon =
||sum_{removed} S_i||_2 (Yang et al., ICLR 2023, Eq. 3), for every method alike, with the
mean loss and gradient norm of the kept examples beside those of the whole train split.
It returns the proxy record; the file's format, writer and reader are ``proxy_file``'s
(``proxy_record``, ``write_proxy`` and ``proxy_indices`` are also importable from here).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from nasproxy import __version__
from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError, first_line
from nasproxy.influence.head import RefitHead
from nasproxy.influence.solvers import (
    EPSILON_SOLVERS,
    OBJECTIVES,
    SOLVERS,
    objective_value,
    require_solver,
)
from nasproxy.provenance import utc_now
from nasproxy.proxies import registry
from nasproxy.proxies.base import ProxyOptions, SelectionContext, check_budget
from nasproxy.proxies.proxy_file import check_selection, proxy_indices, proxy_record, write_proxy
from nasproxy.proxies.registry import Method
from nasproxy.scoring import (
    ScoringArtifact,
    ScoringConfig,
    artifact_dir,
    platform_record,
    scoring_run,
)
from nasproxy.train import resolve_device

__all__ = ["build_proxy", "proxy_indices", "proxy_record", "run_method", "write_proxy"]

Progress = Callable[[str], None]


class _Scoring:
    """The scoring run and the refitted head of a build, each made (or read from the cache)
    on first use, with the seconds each took: a method that reads only the scoring run
    (herding, forgetting, ...) does not refit the head, which only epsilon then needs."""

    def __init__(
        self,
        data: Dataset,
        cfg: ScoringConfig,
        l2: float,
        cache_dir: str | Path,
        device: str,
        progress: Progress | None,
    ):
        self.data, self.cfg, self.l2 = data, cfg, l2
        self.cache_dir, self.device, self.progress = cache_dir, device, progress
        self.cached = artifact_dir(cache_dir, data, cfg).is_dir()  # before this build
        self.made_artifact: ScoringArtifact | None = None
        self.made_head: RefitHead | None = None
        self.scoring_s = self.head_s = 0.0

    def artifact(self) -> ScoringArtifact:
        """The scoring run, trained or read from the cache."""
        if self.made_artifact is None:
            start = time.perf_counter()
            self.made_artifact = scoring_run(
                self.data, self.cfg, self.cache_dir, self.device, self.progress
            )
            self.scoring_s = time.perf_counter() - start
        return self.made_artifact

    def head(self) -> RefitHead:
        """The head refitted on the scoring run (which it makes first if needed)."""
        if self.made_head is None:
            artifact = self.artifact()
            start = time.perf_counter()
            self.made_head = RefitHead.load_or_fit(artifact, self.l2, self.device, self.progress)
            self.head_s = time.perf_counter() - start
        return self.made_head


def build_proxy(
    data: Dataset,
    method: str | Method,
    per_class: int | None,
    seed: int,
    cache_dir: str | Path,
    scoring: ScoringConfig | None = None,
    options: ProxyOptions | None = None,
    device: str = "auto",
    progress: Progress | None = None,
    measure: bool | None = None,
) -> dict[str, Any]:
    """Select a proxy of ``per_class`` examples per class with ``method``; its record.

    ``method`` is a built-in or installed method's name, ``MODULE:FUNCTION``, or a
    resolved ``Method`` (e.g. ``indices_method``). Whatever it is, its selection is checked
    (integers, in range, no duplicates, ``per_class`` of every class) before anything is
    measured. ``per_class`` is None only for the influence method with ``options.epsilon``:
    it then removes as many examples as the epsilon budget allows, and the classes are no
    longer balanced. The scoring run is cached under ``cache_dir`` and made only when the
    method reads it: epsilon and the diagnostics are then measured with it, and for a
    method that does not (random, a selection made elsewhere) only when a scoring run of
    this dataset and backbone is cached or ``measure`` is True (never when it is False);
    ``epsilon_from`` in the record says which. The record's ``draw`` is ``seed`` (null for a
    method with no randomness); a caller building draws seeds the scoring run alike
    (``scoring.backbone_seed``, ``nasproxy.proxies.draws``).
    """
    scoring = scoring or ScoringConfig()
    options = options or ProxyOptions()
    chosen = method if isinstance(method, Method) else registry.resolve(method)
    _check_request(data, chosen.name, per_class, options)
    where = platform_record(resolve_device(device))  # a device it lacks: refused before work
    start = time.perf_counter()
    l2 = options.head_l2 if options.head_l2 is not None else scoring.backbone_weight_decay
    run = _Scoring(data, scoring, l2, cache_dir, device, progress)
    if progress is not None:
        progress(f"selecting with {chosen.name}")
    ctx = SelectionContext(data, per_class, seed, options, run.artifact, run.head)
    kept = run_method(chosen, ctx)
    select_s = time.perf_counter() - start - run.scoring_s - run.head_s
    method = chosen.name
    # the method's own scoring run is measured on unless told not to (the head refit that
    # epsilon needs may be all the memory it costs); a head the method refitted, always
    if run.made_head is not None or (run.made_artifact is not None and measure is not False):
        epsilon_from = "the scoring run the method used"
    elif measure or (measure is None and run.cached):
        epsilon_from = "a cached scoring run" if run.cached else "a scoring run made to measure it"
    else:
        epsilon_from = None
    epsilon = diagnostics = None
    params: dict[str, Any] = {}
    epsilon_s = 0.0
    if epsilon_from is not None:
        before, made_before = time.perf_counter(), run.scoring_s + run.head_s
        epsilon, diagnostics, head = _measure(run, kept, method)
        made_now = run.scoring_s + run.head_s - made_before  # a run made to measure it
        epsilon_s = time.perf_counter() - before - made_now
        params |= {
            "head_l2": l2,
            "head_grad_norm": head.info["grad_norm"],
            "head_iterations": head.info["iterations"],
            "head_newton_steps": head.info["newton_steps"],
            "head_loss": head.info["loss"],
        }
    if not chosen.builtin:
        params["source"] = chosen.source
    if method == "influence":
        assert run.made_head is not None  # the influence method reads the head
        params |= {
            "solver": options.solver,
            "project_dim": options.project_dim,
            "epsilon_budget": options.epsilon,
            "min_per_class": options.min_per_class if options.epsilon is not None else None,
            "class_balanced": options.epsilon is None,
        }
        if options.epsilon is None:
            params["objective"] = options.objective
            params["objective_value"] = objective_value(
                run.made_head.influence(), kept, options.objective
            )
    artifact = run.made_artifact
    return proxy_record(
        data,
        kept,
        method=method,
        per_class=per_class,
        seed=seed,
        params=params,
        epsilon=epsilon,
        draw=None if chosen.deterministic else seed,  # proxies.draws: null, no randomness
        backbone=None
        if artifact is None
        else {
            **scoring.record(),
            "device": artifact.meta.get("device"),
            "train_s": artifact.meta.get("train_s"),
            "train_acc_eval": artifact.meta.get("train_acc_eval"),
            "feature_dim": int(artifact.features.shape[1]),
            "platform": artifact.meta.get("platform"),
        },
        backbone_hash=None if artifact is None else artifact.hash,
        epsilon_from=epsilon_from,
        diagnostics=diagnostics,
        timings={
            "scoring_s": run.scoring_s,
            "head_s": run.head_s,
            "select_s": select_s,
            "epsilon_s": epsilon_s,
            "total_s": time.perf_counter() - start,
        },
        nasproxy_version=__version__,
        platform=where,
        created=utc_now(),
    )


def _measure(
    run: _Scoring, kept: np.ndarray, method: str
) -> tuple[float, dict[str, dict[str, float]], RefitHead]:
    """epsilon and the diagnostics of ``kept``, with the head (refitted now if the method
    did not); for a method other than influence, work that does not fit in memory is
    refused with epsilon named as the reason, and how to build the proxy without it."""
    try:
        head = run.head()
        epsilon = head.epsilon(kept)
    except NasproxyError as exc:
        if method == "influence":
            raise
        raise NasproxyError(
            f"measuring the proxy's epsilon (which needs the refitted head's Hessian; {method} "
            f"itself does not): {exc}; or build the proxy without epsilon "
            "(build-proxy --no-measure-epsilon; run always measures it for Table 1)"
        ) from None
    diagnostics = {
        "kept": head.diagnostics(kept),
        "all": head.diagnostics(np.arange(len(head.labels))),
    }
    return epsilon, diagnostics, head


def _check_request(
    data: Dataset, method: str, per_class: int | None, options: ProxyOptions
) -> None:
    """Refuse a bad request before any training starts."""
    if options.solver not in SOLVERS:
        raise NasproxyError(f"unknown solver {options.solver!r}; choose from {', '.join(SOLVERS)}")
    require_solver(options.solver)  # a missing extra fails before the scoring run
    if options.objective not in OBJECTIVES:
        raise NasproxyError(
            f"unknown objective {options.objective!r}; choose from {', '.join(OBJECTIVES)}"
        )
    if options.epsilon is not None:
        if method != "influence":
            raise NasproxyError("an epsilon budget applies to the influence method only")
        if per_class is not None:
            raise NasproxyError("give either a per-class budget or an epsilon budget, not both")
        if options.solver not in EPSILON_SOLVERS:
            raise NasproxyError(
                f"solver {options.solver!r} has no epsilon form; "
                f"choose from {', '.join(EPSILON_SOLVERS)}"
            )
        return
    if per_class is None:
        raise NasproxyError("a per-class budget is required (--per-class)")
    check_budget(data, per_class)


def run_method(method: Method, ctx: SelectionContext) -> np.ndarray:
    """Run ``method`` on ``ctx`` and check what it returns: sorted int64 indices.

    A plug-in that raises, or any method whose result is not a list of distinct
    train-split indices with ``ctx.per_class`` of every class, ends in one line naming it.
    """
    if method.builtin:
        result = method.select(ctx)
    else:
        try:
            result = method.select(ctx)
        except NasproxyError as exc:
            raise NasproxyError(f"method {method.name!r}: {exc}") from None
        except registry.ESCAPES as exc:  # a user's selector may raise anything, or exit
            reason = first_line(exc, with_type=True)
            raise NasproxyError(f"method {method.name!r} failed ({reason})") from None
    return check_selection(result, ctx.data, ctx.per_class, f"method {method.name!r}")
