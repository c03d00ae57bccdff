"""The NAS sweep: every architecture x training set x seed, resumable, on Ray Tune or in
this process.

A work unit is one (architecture, training set, seed): one trained model, one row. The
planner goes units -> stacks (units of one shape and training-set size, trained in
lockstep as one network when the sweep fuses) -> chunks (whole stacks, about
``trial_size`` units: one trial's work, so a worker's start is paid once for many units).
A runner runs the chunks as trials: Ray Tune by default, or one after another in this
process (``--runner local``). Each trial stores every finished unit as its own file, and
those files are what a rerun resumes from.

Modules: ``config`` (``SearchConfig``: what a sweep is asked to do), ``plan`` (no Ray:
architectures, units -> stacks -> chunks), ``trial`` (one chunk's work), ``runner`` (the
runner seam, in-process runner), ``ray_runner`` (Ray Tune), ``train_sets`` (the proxy files
and the whole split), ``sweep`` (``run_search``),
``experiment`` (protocol, manifest), ``lock`` (one driver), ``address``, ``interrupt``.

See docs/search.md#how-trials-map-to-work, docs/reliability.md and docs/find.md.
"""

from nasproxy.search.config import (
    DEFAULT_GPU_SHARE,
    DEFAULT_MAX_STACK,
    DEFAULT_TRIAL_SIZE,
    FAST_DEFAULTS,
    FUSE_MODES,
    FastChoice,
    Progress,
    ProgressFn,
    SearchConfig,
    SearchSettings,
    TrainSet,
    parse_seeds,
)
from nasproxy.search.experiment import protocol, remove_experiment
from nasproxy.search.lock import experiment_lock
from nasproxy.search.plan import (
    Chunk,
    Stack,
    plan_chunks,
    plan_stacks,
    plan_trials,
    select_archs,
    stratified_sample,
)
from nasproxy.search.sweep import check_search, run_search
from nasproxy.search.train_sets import resolve_train_sets

__all__ = [
    "DEFAULT_GPU_SHARE",
    "DEFAULT_MAX_STACK",
    "DEFAULT_TRIAL_SIZE",
    "FAST_DEFAULTS",
    "FUSE_MODES",
    "Chunk",
    "FastChoice",
    "Progress",
    "ProgressFn",
    "SearchConfig",
    "SearchSettings",
    "TrainSet",
    "Stack",
    "check_search",
    "experiment_lock",
    "plan_chunks",
    "plan_stacks",
    "plan_trials",
    "protocol",
    "parse_seeds",
    "remove_experiment",
    "resolve_train_sets",
    "run_search",
    "select_archs",
    "stratified_sample",
]
