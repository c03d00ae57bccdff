"""The NAS sweep: every architecture x training set x seed, resumable, on Ray Tune.

Ray Tune runs the trials by default; ``runner="local"`` (``--runner local``) runs the same
trials one after another in this process, with no Ray imported, for tests and for
debugging with pdb (``nasproxy.search.runner`` states what every runner does). Where
below a trial's worker, its resources or Tune are named, the local runner has one trial at
a time in this process (on its GPU when it has one) and no Tune retries (``max_failures``);
a crashing unit is isolated, and recorded as ``failed``, by either runner.

How trials map to work
----------------------
A *work unit* is one (architecture, training set, seed): one trained model and one row of
the results table. Units of one shape (width, depth, norm, pooling; the activation may
differ) whose training sets have the same size can train in lockstep as one *stack*
(``nasproxy.multitrain.train_many``): the activations x proxies x seeds of a shape, or the
activations x seeds on the whole split. With ``fuse`` (by default when the
trials have a GPU, where one small net at a time is launch-bound) a stack trains as one
network; without it every unit is its own stack, trained by ``train.train()``.

A Tune *trial* is a *chunk*: whole stacks of about ``trial_size`` (default 16) units,
trained one after another in the trial's worker, which reports each unit as it is stored.
Starting a trial in a fresh worker costs seconds (a process, torch imports, the dataset, a
CUDA context, first-call warm-up) while a unit on a 1,000-image proxy trains in seconds,
so one trial a unit would spend much of a proxy sweep starting workers. Two things remove
that: a chunk pays the start once for ``trial_size`` units, and Tune hands a finished
trial's worker to the next trial (``reuse_actors``, on by default), so a slot starts a
worker once per sweep (scripts/bench_search_overhead.py measures both).

The planner (``plan``, no Ray) goes units -> stacks -> chunks. Chunks are planned per pool
of training sets: when a pool has fewer than ``trial_size`` x slots units (slots = trials
the cluster runs at once), its stacks are spread over all slots so none idles. Within a
pool the stacks are sorted by estimated cost (multiply-accumulates x images) and dealt out
to the least loaded chunk, so chunks carry similar work; the costliest chunks (the whole
train split) are queued first, so the short ones fill in at the end. How large a stack may
be (``max_stack``, and a trial's GPU memory) is described in ``nasproxy.search.trial``.

Resources and data
------------------
Each trial asks for ``cpus_per_trial`` CPUs and ``gpus_per_trial`` GPUs (fractional values
pack several trials on one GPU; by default 0.25 when the cluster has GPUs, else none) and
trains on the GPU Ray assigned it, else on the CPU. The dataset goes into the object store
once (``tune.with_parameters``) and every trial reads it from there, on any node, with no
dataset cache needed on the workers (for CIFAR-10's 184 MB of uint8 that read took ~0.3 s on
the 2-core benchmark machine, an .npz cache load ~0.1 s; once a trial either way); the proxy
indices travel the same way. ``address`` joins an existing cluster (every node needs nasproxy
installed, and the results directory should be storage all nodes mount, as Tune's own files
under DIR/EXP/ray/ are); without one a local Ray starts with the machine's CPUs and GPUs and
stops at the end.

Results, resume, failures
-------------------------
Each finished unit (a stack's units when the stack finishes) is written by its trial as its
own file under ``DIR/EXP/units/`` (atomic rename; see ``nasproxy.results``); the driver also
writes any it hears of but cannot see (a node without the shared results directory) and
rebuilds trials.parquet/csv as results arrive and at the end. The unit files are the source
of truth: running the same sweep again schedules only units without a file (a torn file
counts as missing) plus those recorded as ``failed`` (out of memory, crashed worker: often
transient); ``ok`` and ``diverged`` units never run twice. Tune's own experiment restore is
not used: it replays the old grid of trials, while the store already names exactly the units
left. Within a run Tune retries a trial whose worker died (``max_failures``); the retry
skips the units already stored. Units of a trial that keeps crashing are retried once more a
trial each, so a single bad unit is isolated, and what still crashes is recorded as
``failed`` with the error. A stack that fails inside a trial (out of memory, an error of the
stacked path) splits in halves down to the plain trainer, with the reason in each row's
``fallback``.

Architectures per training set, and finding the architecture
------------------------------------------------------------
The proxies train ``archs`` (``--archs``/``--sample``); the whole split may train its own
set (``--whole-archs``/``--whole-sample``, a stratified sample as ``--sample``) and, with
``whole_top`` K (``--whole-top K [--by PROXY]``), a second stage: once every first-stage
unit is stored, each proxy's top K by mean proxy validation accuracy (or one proxy's, with
``whole_by``) trains on the whole split in the same run (``nasproxy.shortlist`` states the
tie rule). The shortlist is recomputed from the stored units on every run, so a run
stopped in or between the stages resumes where it stopped. The manifest lists each
training set's architectures (``train_sets[NAME]["archs"]``, the union over runs: a set
grows, never shrinks; an older manifest's one list stands for every set) and the last
shortlists (``whole_top``).

A sweep's protocol (dataset fingerprint, space, epochs, seeds, training settings) is fixed in
``manifest.json`` when it starts; the same name with a different protocol is refused. The
architecture selection and the training sets may grow between runs (the manifest lists the
union); every stored training set must be given again, unchanged (same proxy hash). A
damaged or missing manifest is rebuilt from the command and the unit files
(``rebuild_manifest``). One driver at a time holds an experiment (``lock``); Ctrl-C stops a
sweep cleanly (``interrupt``); a cluster address is checked before anything is created
(``address``).
The manifest's ``wall_s`` gives, per training set, the summed training seconds of its units
(the cost of searching on that set); ``sweep_wall_s`` the driver's wall time over all runs,
and ``runs`` each run's provenance (commit, cluster, trial size, fusing, units trained).
Fusing and the stacked path's options are not part of the protocol: they change rounding
or random streams, not the experiment, and each row records how its unit was trained.
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
from nasproxy.search.sweep import resolve_train_sets, run_search

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
