"""The influence method: influence-based dataset pruning (Yang et al., ICLR 2023).

It reads the parameter influence S_i = (1/n) H^{-1} grad L(z_i) of every example (Eq. 2)
from the scoring run's refitted head (``nasproxy.influence.head.RefitHead``) and keeps the
set whose removed examples' summed influence ||sum_{removed} S_i||_2 is small (Eq. 3-4,
``nasproxy.influence.solvers``). Options and their flags: docs/methods.md.
"""

from __future__ import annotations

import numpy as np

from nasproxy.errors import NasproxyError
from nasproxy.influence.solvers import remove_max_under_epsilon, select_kept
from nasproxy.proxies.base import SelectionContext


def select(ctx: SelectionContext) -> np.ndarray:
    """The registry entry: keep the examples whose removal moves the head least.

    With a per-class budget: Eq. 4 under class quotas (``solvers.select_kept``). With
    ``options.epsilon``: Eq. 3, remove as many as ||sum_R S_i|| <= epsilon allows
    (``solvers.remove_max_under_epsilon``); the kept classes are then not balanced.
    """
    opts = ctx.options
    influence = ctx.head.influence()
    if opts.epsilon is not None:
        kept = remove_max_under_epsilon(
            influence,
            ctx.labels,
            opts.epsilon,
            solver=opts.solver,
            min_kept_per_class=opts.min_per_class,
            seed=ctx.seed,
            project_dim=opts.project_dim,
        )
        if len(kept) == 0:
            # Eq. 3 is first-order: removing everything moves theta by sum_all S_i, which
            # is small when the L2 term dominates; a budget above it allows an empty set.
            total = float(np.linalg.norm(influence.sum(axis=0, dtype=np.float64)))
            raise NasproxyError(
                f"epsilon {opts.epsilon:g} allows removing every example "
                f"(||sum of all S_i|| = {total:.4g}); use a smaller epsilon or a minimum "
                "per class"
            )
    else:
        kept = select_kept(
            influence,
            ctx.labels,
            ctx.budget(),
            objective=opts.objective,
            solver=opts.solver,
            seed=ctx.seed,
            project_dim=opts.project_dim,
        )
    return np.sort(np.asarray(kept, dtype=np.int64))
