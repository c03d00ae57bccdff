"""The Ray runner (a ``runner.Runner``, which ``runner.open_runner`` opens; this module does
not import ``runner``): the session, the Tune trainable that trains a chunk, the driver's
collector of finished units, and one Tune experiment over a list of chunks.

Trial errors are read from the ``ResultGrid`` that ``Tuner.fit`` returns (``Result.error``);
the Tune callback forwards each trial's reported rows and the crashes Tune recovers from
(``Trial.get_error``). One private Ray API remains: ``ray._private.worker``'s printer, to
drop the driver's "A worker died" notice (the crash is told once, as a progress line);
without it (another Ray version) the notice is simply printed.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from nasproxy.data import Dataset
from nasproxy.errors import NasproxyError, first_line
from nasproxy.search.config import SearchConfig
from nasproxy.search.experiment import RAY_DIR
from nasproxy.search.interrupt import SigintDeferral, interrupted
from nasproxy.search.lock import any_lost, ensure_held
from nasproxy.search.plan import Chunk
from nasproxy.search.trial import NoteFn, RowFn, TrialPlan, run_chunk

# Ray and Tune defaults that only add noise or work for this use (set unless the user did).
RAY_QUIET_ENV = {
    "RAY_USAGE_STATS_ENABLED": "0",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",  # no CSV/JSON/TensorBoard logger per trial
    "RAY_AIR_NEW_OUTPUT": "0",
    "TUNE_PRINT_ALL_TRIAL_ERRORS": "0",  # no raw traceback per crash: the callback reports it
}


# --- the trial ---------------------------------------------------------------------------


def _trainable(config: dict[str, Any], data: Dataset, plan: TrialPlan) -> None:
    """A Tune trial: train one chunk's missing units, reporting every unit's row."""
    import ray
    import torch
    from ray import tune

    torch.set_num_threads(plan.threads)
    device = "cuda" if ray.get_gpu_ids() else "cpu"
    run_chunk(
        plan, data, config["chunk"], device, lambda row: tune.report({"row": json.dumps(row)})
    )


def _chunk_name(trial: Any) -> str:
    return str(trial.config["chunk"])


# --- the driver --------------------------------------------------------------------------


class RayRunner:
    """The chunks as Ray Tune trials on the session's cluster (``ray_session``)."""

    def __init__(self, cfg: SearchConfig, cluster: Mapping[str, Any]):
        self.cfg = cfg
        self.description = str(cluster["description"])
        self.gpus = float(cluster["gpus"])
        self.crash_prefix = f"worker crashed {cfg.max_failures + 1} times"

    def slots(self, cpus_per_trial: float, gpus_per_trial: float) -> int:
        return slots(cpus_per_trial, gpus_per_trial)

    def run(
        self,
        plan: TrialPlan,
        data: Dataset,
        chunks: Sequence[Chunk],
        resources: dict[str, float],
        record: RowFn,
        name: str,
        on_recover: NoteFn | None = None,
    ) -> dict[str, str]:
        return fit(self.cfg, data, plan, resources, chunks, record, name, on_recover)


class _Collector:
    """Driver side: hands each finished unit to ``record``, each recovered crash to
    ``on_recover``."""

    def __init__(self, record: RowFn, on_recover: NoteFn | None = None):
        self.record = record
        self.on_recover = on_recover

    def on_result(self, result: Mapping[str, Any]) -> None:
        if "row" in result:
            self.record(json.loads(result["row"]))


def _tune_callback(collector: _Collector) -> Any:
    """A ``tune.Callback`` forwarding reported rows and recovered crashes to ``collector``."""
    from ray import tune

    class _Forward(tune.Callback):
        def on_trial_result(self, iteration, trials, trial, result, **info):
            collector.on_result(result)

        def on_trial_recover(self, iteration, trials, trial, **info):
            if collector.on_recover is not None:
                collector.on_recover(
                    f"trial {_chunk_name(trial)} crashed ({_last_error_line(trial)}); Tune "
                    f"restarts it (failure {trial.num_failures}), its stored units are kept"
                )

        def __reduce__(self):  # Tune pickles its run config; the live collector stays out
            return (tune.Callback, ())

    return _Forward()


def _last_error_line(trial: Any) -> str:
    return _last_line(trial.get_error())


def _last_line(error: object) -> str:
    """The last line of a trial's error (Ray's text ends with the exception itself)."""
    lines = [line for line in str(error or "the trial's worker died").splitlines() if line.strip()]
    return lines[-1][:300] if lines else "unknown error"


def _errors(grid: Any) -> dict[str, str]:
    """The errors of the trials that gave up, by chunk id, from ``Tuner.fit``'s grid."""
    errors = {}
    for result in grid:
        if result.error:
            chunk = (result.config or {}).get("chunk") or Path(result.path).name
            errors[str(chunk)] = _last_line(result.error)
    return errors


def _sigint_stopper() -> Any:
    """A ``tune.Stopper`` that ends the experiment once a Ctrl-C is held (``interrupt``) or
    the driver's lock is lost (``lock``)."""
    from ray import tune
    from ray.tune.stopper import NoopStopper

    class _StopOnSigint(tune.Stopper):
        def __call__(self, trial_id, result):
            return False

        def stop_all(self):
            return interrupted() or any_lost()

        def __reduce__(self):  # Tune may pickle its run config; the flag stays out
            return (NoopStopper, ())

    return _StopOnSigint()


def fit(
    cfg: SearchConfig,
    data: Dataset,
    plan: TrialPlan,
    resources: dict[str, float],
    chunks: Sequence[Chunk],
    record: RowFn,
    name: str,
    on_recover: NoteFn | None = None,
) -> dict[str, str]:
    """One Tune experiment over ``chunks``, each finished unit passed to ``record`` and each
    crash Tune recovers from to ``on_recover``; returns the errors of trials that gave up.
    A Ctrl-C held by the session stops every trial, then raises KeyboardInterrupt."""
    from ray import tune

    collector = _Collector(record, on_recover)
    trainable = tune.with_resources(
        tune.with_parameters(_trainable, data=data, plan=plan), resources
    )
    tuner = tune.Tuner(
        trainable,
        param_space={"chunk": tune.grid_search([c.id for c in chunks])},
        tune_config=tune.TuneConfig(
            trial_name_creator=_chunk_name,
            trial_dirname_creator=_chunk_name,
            reuse_actors=cfg.reuse_actors,
        ),
        run_config=tune.RunConfig(
            name=name,
            storage_path=str(Path(plan.exp_dir) / RAY_DIR),
            verbose=0,
            callbacks=[_tune_callback(collector)],
            failure_config=tune.FailureConfig(max_failures=cfg.max_failures),
            stop=_sigint_stopper(),
        ),
    )
    # no per-trial metrics files to read back: expected; the trials that gave up are told
    # by the run itself (one progress line), not by Tune's log
    with _quiet_logger("ray.tune"), _without_line("ray.tune.tune", INCOMPLETE_TRIALS):
        grid = tuner.fit()
    if any_lost():
        ensure_held(plan.exp_dir)  # raises LockLostError, naming the new holder
    if interrupted():
        raise KeyboardInterrupt
    return _errors(grid)


@contextlib.contextmanager
def ray_session(address: str | None) -> Iterator[dict[str, Any]]:
    """Join ``address``, reuse a Ray this process already runs, or start a local one.

    Ctrl-C is held from before ``ray.init`` to after ``ray.shutdown`` (``interrupt``): it
    stops the sweep at the next safe point and comes out as KeyboardInterrupt, with a Ray
    this session started always shut down.
    """
    for key, value in RAY_QUIET_ENV.items():
        os.environ.setdefault(key, value)
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"  # Ctrl-C is ours (the stopper), not Tune's
    import ray

    with SigintDeferral() as sigint, _without_worker_death_notices():
        started = _start_ray(address)
        try:
            sigint.check()
            yield _cluster()
        finally:
            if started:
                ray.shutdown()


WORKER_DEATH_NOTICE = "A worker died or was killed"


@contextlib.contextmanager
def _without_worker_death_notices() -> Iterator[None]:
    """Drop Ray's notice of a dead worker, which its driver prints on stdout: the trial's
    crash is reported as one progress line instead (``fit``'s ``on_recover``, or a failed
    row). Ray's other notices pass unchanged."""
    try:
        from ray._private import worker
    except ImportError:
        yield
        return
    original = getattr(worker, "print_to_stdstream", None)
    if original is None:
        yield
        return

    def filtered(data: dict[str, Any], *args: Any, **kwargs: Any) -> None:
        lines = [str(line) for line in data.get("lines", [])]
        if data.get("pid") == "raylet" and lines:
            kept = [line for line in lines if not line.startswith(WORKER_DEATH_NOTICE)]
            if not kept:
                return
            data = {**data, "lines": kept}
        original(data, *args, **kwargs)

    worker.print_to_stdstream = filtered
    try:
        yield
    finally:
        worker.print_to_stdstream = original


def _start_ray(address: str | None) -> bool:
    """Start or join Ray unless this process runs one; returns whether it started one."""
    import ray

    started = False
    if not ray.is_initialized():
        try:
            if address:
                ray.init(address=address, log_to_driver=False, logging_level=logging.ERROR)
            else:  # "local": never attach to some other cluster running on this machine
                ray.init(
                    address="local",
                    include_dashboard=False,
                    log_to_driver=False,
                    logging_level=logging.ERROR,
                )
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as exc:
            ray.shutdown()  # whatever part of a local Ray had started
            where = f"the Ray cluster at {address}" if address else "a local Ray"
            raise NasproxyError(
                f"cannot start or join {where} ({first_line(exc)}); check the address and that "
                "both sides run the same Ray version; a cluster with token authentication needs "
                "RAY_AUTH_MODE=token and its token in RAY_AUTH_TOKEN or ~/.ray/auth_token"
            ) from None
        started = True
    return started


def _cluster() -> dict[str, Any]:
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    cpus = sum(n["Resources"].get("CPU", 0.0) for n in nodes)
    gpus = sum(n["Resources"].get("GPU", 0.0) for n in nodes)
    description = f"{len(nodes)} node{'s' * (len(nodes) != 1)}, {cpus:g} CPUs, {gpus:g} GPUs"
    return {"nodes": nodes, "cpus": cpus, "gpus": gpus, "description": description}


def slots(cpus_per_trial: float, gpus_per_trial: float) -> int:
    """How many trials the cluster runs at once; refuse a trial no node can hold."""
    import ray

    slots = 0
    for node in ray.nodes():
        if not node.get("Alive"):
            continue
        res = node["Resources"]
        fit = math.floor(res.get("CPU", 0.0) / cpus_per_trial + 1e-9)
        if gpus_per_trial > 0:
            fit = min(fit, math.floor(res.get("GPU", 0.0) / gpus_per_trial + 1e-9))
        slots += fit
    if slots == 0:
        raise NasproxyError(
            f"no node of the Ray cluster has {cpus_per_trial:g} CPUs and {gpus_per_trial:g} GPUs "
            "free for a trial; lower --cpus-per-trial / --gpus-per-trial"
        )
    return slots


INCOMPLETE_TRIALS = "Trials did not complete"  # Tune's log line of the trials that gave up


class _DropLines(logging.Filter):
    """Drops the log records whose message starts with ``prefix``."""

    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(self.prefix)


@contextlib.contextmanager
def _without_line(name: str, prefix: str) -> Iterator[None]:
    """Logger ``name`` logs no record starting with ``prefix`` within the block."""
    logger, drop = logging.getLogger(name), _DropLines(prefix)
    logger.addFilter(drop)
    try:
        yield
    finally:
        logger.removeFilter(drop)


@contextlib.contextmanager
def _quiet_logger(name: str) -> Iterator[None]:
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(level, logging.ERROR))
    try:
        yield
    finally:
        logger.setLevel(level)
