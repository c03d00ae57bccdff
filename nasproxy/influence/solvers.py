"""Discrete selection over parameter influences S (Yang et al., ICLR 2023, Eq. 3 and Eq. 4).

Given the per-example parameter influences S (n x P, see ``estimate``), the paper prunes
the training set by choosing the removed set R:

  * Eq. 4 (cardinality form): with |R| fixed, minimise || sum_{i in R} S_i ||_2 (here with
    the removed count fixed per class, so the kept set has ``kept_per_class`` examples of
    each class);
  * Eq. 3 (generalization-bound form): maximise |R| subject to || sum_{i in R} S_i ||_2 <= eps.

Both objectives of the cardinality form reduce to || sum_{i in K} S_i - t ||_2 over the kept
set K for a target vector t:

  * ``"removed-sum"`` (Eq. 4): sum_R S = sum_all S - sum_K S, so t = sum_all S;
  * ``"kept-mean"``: || sum_K S - (|K| / n) sum_all S ||, i.e. t = (|K| / n) sum_all S.

Solvers of the cardinality form:

  * ``"greedy"``: forward selection (add the example that most reduces the norm, class
    quotas respected), then best-improvement 1-swap local search within classes until no
    swap improves (or ``max_swaps``). Per step one matrix-vector product with S.
  * ``"relax"``: convex relaxation w in [0, 1]^n with the class sums fixed, minimise
    || S^T w - t ||^2 (cvxpy), round to the top-k_c weights per class, then the same
    local search. Refused when n * dim is too large (use ``project_dim``).
  * ``"exact"``: the L2 optimum by enumerating every feasible kept set (product over
    classes of C(n_c, k_c) <= ``max_combinations``); small instances only.
  * ``"exact-l1"`` / ``"exact-linf"``: the optimum of the L1 / L-infinity norm of
    sum_K S - t (not the L2 norm) as a mixed-integer linear program solved by CBC (pulp);
    moderate n only.

``project_dim=k`` runs greedy / relax on a seeded Gaussian random projection of S to k
dimensions (Johnson-Lindenstrauss); objective values are always reported in the full space.
"""

from __future__ import annotations

import importlib
import itertools
import math
import warnings
from collections.abc import Mapping
from types import ModuleType

import numpy as np

from nasproxy.errors import NasproxyError

OBJECTIVES = ("removed-sum", "kept-mean")
SOLVERS = ("greedy", "relax", "exact", "exact-l1", "exact-linf")
EPSILON_SOLVERS = ("greedy", "exact")
# the solvers whose library comes with the ``solvers`` extra: pip install "nasproxy[solvers]"
SOLVER_LIBRARIES = {"relax": "cvxpy", "exact-l1": "pulp", "exact-linf": "pulp"}

# Limits that keep a call from silently running for hours or exhausting memory.
_MAX_COMBINATIONS = 2_000_000
_MAX_RELAX_ENTRIES = 5_000_000
_MAX_MILP_ENTRIES = 200_000
# Entries of one block of subset sums materialised by the enumerations.
_BLOCK_ENTRIES = 4_000_000


def require_solver(solver: str) -> ModuleType | None:
    """The library ``solver`` needs (None for none), or one line naming the extra to install.

    Imported on use only: cvxpy is slow to import, and a GPU host may lack both.
    """
    name = SOLVER_LIBRARIES.get(solver)
    if name is None:
        return None
    try:
        return importlib.import_module(name)
    except ImportError:
        raise NasproxyError(
            f"solver {solver!r} needs {name}, which is not installed; install the solvers "
            'extra: pip install "nasproxy[solvers]"'
        ) from None


def _check_s(s: np.ndarray, labels: np.ndarray | None = None) -> np.ndarray:
    s = np.asarray(s)
    if s.ndim != 2 or s.shape[0] == 0:
        raise NasproxyError(f"S must be a non-empty 2-d array (n, P), got shape {s.shape}")
    if not np.issubdtype(s.dtype, np.floating):
        s = s.astype(np.float64)
    if labels is not None:
        if labels.shape != (s.shape[0],):
            raise NasproxyError(f"labels must have shape ({s.shape[0]},), got {labels.shape}")
        if not np.issubdtype(labels.dtype, np.integer):
            raise NasproxyError(f"labels must be integers, got dtype {labels.dtype}")
    return s


def _class_counts(labels: np.ndarray, kept_per_class: int | Mapping[int, int]) -> dict[int, int]:
    """Kept count per class present in ``labels``, validated against the class sizes."""
    classes, sizes = np.unique(labels, return_counts=True)
    size = dict(zip(classes.tolist(), sizes.tolist(), strict=True))
    if isinstance(kept_per_class, Mapping):
        unknown = sorted(set(kept_per_class) - set(size))
        if unknown:
            raise NasproxyError(f"kept_per_class names classes absent from labels: {unknown}")
        missing = sorted(set(size) - set(kept_per_class))
        if missing:
            raise NasproxyError(f"kept_per_class has no count for classes {missing}")
        counts = {int(c): int(k) for c, k in kept_per_class.items()}
    else:
        counts = {c: int(kept_per_class) for c in size}
    for c, k in counts.items():
        if not 0 <= k <= size[c]:
            raise NasproxyError(f"cannot keep {k} examples of class {c}: it has {size[c]}")
    return counts


def _target(s: np.ndarray, objective: str, kept_total: int) -> np.ndarray:
    total = s.sum(axis=0, dtype=np.float64)
    if objective == "removed-sum":
        return total
    if objective == "kept-mean":
        return total * (kept_total / s.shape[0])
    raise NasproxyError(f"unknown objective {objective!r}; use one of {', '.join(OBJECTIVES)}")


def objective_value(s: np.ndarray, kept: np.ndarray, objective: str = "removed-sum") -> float:
    """|| sum_K S_i - t ||_2 in the full space, float64 (t as in the module docstring).

    ``"removed-sum"`` gives || sum_{i not in K} S_i ||, the epsilon of Eq. 3 / Eq. 4.
    """
    s = _check_s(s)
    kept = np.asarray(kept, dtype=np.int64)
    if kept.ndim != 1 or len(np.unique(kept)) != len(kept):
        raise NasproxyError("kept must be a 1-d array of distinct indices")
    if len(kept) and (kept.min() < 0 or kept.max() >= s.shape[0]):
        raise NasproxyError(f"kept indices must lie in [0, {s.shape[0]})")
    target = _target(s, objective, len(kept))
    return float(np.linalg.norm(s[kept].sum(axis=0, dtype=np.float64) - target))


def _projection(s: np.ndarray, dim: int | None, seed: int) -> np.ndarray | None:
    """Seeded Gaussian map G / sqrt(dim) (P x dim, in S's dtype), or None for no projection."""
    if dim is None:
        return None
    if dim < 1:
        raise NasproxyError(f"project_dim must be a positive integer, got {dim}")
    gauss = np.random.default_rng([seed, 0x4A4C]).standard_normal((s.shape[1], dim))
    return (gauss / math.sqrt(dim)).astype(s.dtype)


def _pick(values: np.ndarray, rank: np.ndarray) -> int:
    """Index of the smallest value; exact ties go to the lowest seeded rank."""
    best = np.flatnonzero(values == values.min())
    return int(best[np.argmin(rank[best])])


def _sq_norm(v: np.ndarray) -> float:
    return float(np.dot(v, v))


def _row_sq_norms(w: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", w, w, dtype=np.float64)


def _greedy_forward(
    w: np.ndarray, labels: np.ndarray, counts: dict[int, int], target: np.ndarray, rank: np.ndarray
) -> np.ndarray:
    """Forward selection: repeatedly add the example minimising || sum_K w - t ||^2.

    Adding x changes the squared norm by 2 r.w_x + ||w_x||^2 with r = sum_K w - t; one
    product W @ w_x per step keeps q = W @ r current.
    """
    n = w.shape[0]
    sq = _row_sq_norms(w)
    resid = -target
    q = (w @ resid.astype(w.dtype)).astype(np.float64)
    quota = dict(counts)
    open_ = np.isin(labels, [c for c, k in quota.items() if k > 0])
    kept = np.zeros(n, dtype=bool)
    for _ in range(sum(counts.values())):
        cand = np.flatnonzero(open_)
        j = int(cand[_pick(2.0 * q[cand] + sq[cand], rank[cand])])
        kept[j] = True
        open_[j] = False
        resid = resid + w[j]
        q += w @ w[j]
        quota[int(labels[j])] -= 1
        if quota[int(labels[j])] == 0:
            open_[labels == labels[j]] = False
    return kept


def _local_search(
    w: np.ndarray, labels: np.ndarray, kept: np.ndarray, target: np.ndarray, max_swaps: int
) -> np.ndarray:
    """Best-improvement 1-swap search: swap a kept i for a non-kept j of the same class.

    The change of ||r||^2 is ||w_i||^2 + ||w_j||^2 - 2 w_i.w_j + 2 r.(w_j - w_i). Each class
    keeps its Gram block (kept x members); a swap costs one product W @ r and one row of
    Gram. A swap is applied only if the exactly recomputed norm decreases, so the search
    is monotone and stops.
    """
    kept = kept.copy()
    sq = _row_sq_norms(w)
    resid = w[kept].sum(axis=0, dtype=np.float64) - target
    members = {c: np.flatnonzero(labels == c) for c in np.unique(labels[kept]).tolist()}
    members = {c: m for c, m in members.items() if kept[m].sum() < len(m)}
    if not members:
        return kept
    rows = {c: np.flatnonzero(kept[m]) for c, m in members.items()}  # positions in members
    gram = {c: w[m[rows[c]]] @ w[m].T for c, m in members.items()}
    value = float(resid @ resid)
    for _ in range(max_swaps):
        q = (w @ resid.astype(w.dtype)).astype(np.float64)
        best = (0.0, -1, -1, -1)
        for c, m in members.items():
            qm, sqm = q[m], sq[m]
            delta = (sqm + 2.0 * qm)[None, :] - 2.0 * gram[c]
            delta += (sqm - 2.0 * qm)[rows[c]][:, None]
            delta[:, rows[c]] = np.inf
            a, b = np.unravel_index(np.argmin(delta), delta.shape)
            if delta[a, b] < best[0]:
                best = (float(delta[a, b]), c, int(a), int(b))
        _, c, a, b = best
        if c < 0:
            break
        i, j = members[c][rows[c][a]], members[c][b]
        new_resid = resid - w[i] + w[j]
        new_value = float(new_resid @ new_resid)
        if not new_value < value:
            break
        kept[i], kept[j] = False, True
        resid, value = new_resid, new_value
        rows[c][a] = b
        gram[c][a] = w[members[c]] @ w[j]
    return kept


def _relax(
    w: np.ndarray, labels: np.ndarray, counts: dict[int, int], target: np.ndarray
) -> np.ndarray:
    """Solve the convex relaxation min ||W^T v - t||^2, v in [0,1]^n, class sums fixed."""
    cp = require_solver("relax")

    n, dim = w.shape
    if n * dim > _MAX_RELAX_ENTRIES:
        raise NasproxyError(
            f"relax needs n*dim <= {_MAX_RELAX_ENTRIES:,} (got {n:,} x {dim:,}); "
            "pass project_dim or use the greedy solver"
        )
    scale = float(np.abs(w).max()) or 1.0  # well-scaled data for the conic solver
    v = cp.Variable(n)
    cons = [v >= 0, v <= 1]
    cons += [cp.sum(v[np.flatnonzero(labels == c)]) == k for c, k in counts.items()]
    prob = cp.Problem(
        cp.Minimize(cp.sum_squares(w.astype(np.float64).T @ v / scale - target / scale)), cons
    )
    # Clarabel explicitly: OSQP 1.1 crashed (segfault) inside cvxpy in our runs.
    prob.solve(solver=cp.CLARABEL)
    if v.value is None:
        raise NasproxyError(f"the convex relaxation failed (cvxpy status {prob.status})")
    return np.asarray(v.value)


def _round_top(
    weights: np.ndarray, labels: np.ndarray, counts: dict[int, int], rank: np.ndarray
) -> np.ndarray:
    """Keep the k_c largest relaxed weights of each class (ties: lowest seeded rank)."""
    kept = np.zeros(len(labels), dtype=bool)
    for c, k in counts.items():
        m = np.flatnonzero(labels == c)
        order = np.lexsort((rank[m], -weights[m]))
        kept[m[order[:k]]] = True
    return kept


def _exact_l2(
    s: np.ndarray,
    labels: np.ndarray,
    counts: dict[int, int],
    target: np.ndarray,
    max_combinations: int,
) -> np.ndarray:
    """Enumerate every kept set with the class counts; return the L2-optimal one."""
    classes = sorted(counts)
    sizes = [math.comb(int((labels == c).sum()), counts[c]) for c in classes]
    total = math.prod(sizes)
    if total > max_combinations:
        raise NasproxyError(
            f"exact enumeration needs {total:,} kept sets (> {max_combinations:,}); "
            "use greedy, relax or exact-l1/exact-linf"
        )
    combos, sums = [], []
    for c in classes:
        m = np.flatnonzero(labels == c)
        idx = np.array(list(itertools.combinations(m, counts[c])), dtype=np.int64)
        idx = idx.reshape(len(idx), counts[c])
        combos.append(idx)
        sums.append(s[idx].sum(axis=1, dtype=np.float64))
    block = max(1, _BLOCK_ENTRIES // s.shape[1])
    best_value, best_flat = np.inf, 0
    for start in range(0, total, block):
        flat = np.arange(start, min(start + block, total))
        picks = np.unravel_index(flat, sizes)
        vec = -np.broadcast_to(target, (len(flat), s.shape[1]))
        for sum_c, pick in zip(sums, picks, strict=True):
            vec = vec + sum_c[pick]
        values = np.einsum("ij,ij->i", vec, vec)
        i = int(np.argmin(values))
        if values[i] < best_value:
            best_value, best_flat = float(values[i]), int(flat[i])
    kept = np.zeros(len(labels), dtype=bool)
    for combo, pick in zip(combos, np.unravel_index(best_flat, sizes), strict=True):
        kept[combo[int(pick)]] = True
    return kept


def _exact_milp(
    s: np.ndarray,
    labels: np.ndarray,
    counts: dict[int, int],
    target: np.ndarray,
    norm: str,
    time_limit: float,
) -> np.ndarray:
    """Optimum of the L1 or L-infinity norm of sum_K S - t as a MILP (CBC via pulp).

    Binary x_i (kept), class sums fixed, deviations bounded by t_p (L1: minimise sum_p t_p)
    or by one t (L-inf: minimise t). Coefficients are scaled to max |S| = 1 first.
    """
    pulp = require_solver(f"exact-{norm}")

    n, dim = s.shape
    if n * dim > _MAX_MILP_ENTRIES:
        raise NasproxyError(
            f"{'exact-l1' if norm == 'l1' else 'exact-linf'} needs n*P <= "
            f"{_MAX_MILP_ENTRIES:,} (got {n:,} x {dim:,}); use greedy or relax"
        )
    scale = float(np.abs(s).max()) or 1.0
    a = s.astype(np.float64) / scale
    t = target / scale
    with warnings.catch_warnings():
        # pulp 3 announces its 4.0 API; these calls are the ones pulp 2.7-3.x all accept.
        warnings.simplefilter("ignore", DeprecationWarning)
        prob = pulp.LpProblem("kept_set", pulp.LpMinimize)
        x = [pulp.LpVariable(f"x{i}", cat="Binary") for i in range(n)]
        if norm == "l1":
            bound = [pulp.LpVariable(f"t{p}", lowBound=0) for p in range(dim)]
            prob += pulp.lpSum(bound)
        else:
            one = pulp.LpVariable("t", lowBound=0)
            bound = [one] * dim
            prob += one
        for c, k in counts.items():
            prob += pulp.lpSum(x[i] for i in np.flatnonzero(labels == c)) == k
        for p in range(dim):
            nz = np.flatnonzero(a[:, p])
            dev = pulp.lpSum(float(a[i, p]) * x[i] for i in nz) - float(t[p])
            prob += dev <= bound[p]
            prob += -dev <= bound[p]
        prob.solve(pulp.PULP_CBC_CMD(msg=False, timeLimit=time_limit, gapRel=0.0, threads=1))
    if prob.sol_status != pulp.LpSolutionOptimal:
        raise NasproxyError(
            f"CBC did not prove an optimum within {time_limit:g} s "
            f"(status {pulp.LpStatus[prob.status]}); raise time_limit or use greedy"
        )
    return np.array([v.value() > 0.5 for v in x])


def select_kept(
    s: np.ndarray,
    labels: np.ndarray,
    kept_per_class: int | Mapping[int, int],
    objective: str = "removed-sum",
    solver: str = "greedy",
    seed: int = 0,
    project_dim: int | None = None,
    max_swaps: int | None = None,
    max_combinations: int = _MAX_COMBINATIONS,
    time_limit: float = 60.0,
) -> np.ndarray:
    """Kept set K of the cardinality form (Eq. 4): sorted indices, class counts as given.

    ``kept_per_class``: one count for every class, or ``{class: count}`` for each class in
    ``labels``. ``objective`` and ``solver`` as in the module docstring. ``max_swaps`` bounds
    the local search (default 10 x kept); ``max_combinations`` bounds ``exact``;
    ``time_limit`` (seconds) bounds ``exact-l1`` / ``exact-linf``. Ties are broken by a
    permutation seeded with ``seed``, so a seed gives one answer.
    """
    labels = np.asarray(labels)
    s = _check_s(s, labels)
    counts = _class_counts(labels, kept_per_class)
    kept_total = sum(counts.values())
    target = _target(s, objective, kept_total)
    if solver not in SOLVERS:
        raise NasproxyError(f"unknown solver {solver!r}; use one of {', '.join(SOLVERS)}")
    if solver.startswith("exact"):
        if project_dim is not None:
            raise NasproxyError(f"{solver} solves in the full space; drop project_dim")
        if solver == "exact":
            kept = _exact_l2(s, labels, counts, target, max_combinations)
        else:
            kept = _exact_milp(s, labels, counts, target, solver[len("exact-") :], time_limit)
        return np.flatnonzero(kept)
    rank = np.random.default_rng(seed).permutation(len(labels))
    proj = _projection(s, project_dim, seed)
    w = s if proj is None else s @ proj
    work_target = target if proj is None else target @ proj.astype(np.float64)
    if solver == "greedy":
        kept = _greedy_forward(w, labels, counts, work_target, rank)
    else:
        kept = _round_top(_relax(w, labels, counts, work_target), labels, counts, rank)
    swaps = 10 * kept_total if max_swaps is None else max_swaps
    kept = _local_search(w, labels, kept, work_target, swaps)
    return np.flatnonzero(kept)


def _removal_floor(labels: np.ndarray, min_kept_per_class: int) -> dict[int, int]:
    """Most examples removable per class while keeping ``min_kept_per_class`` of each."""
    if min_kept_per_class < 0:
        raise NasproxyError(f"min_kept_per_class must be >= 0, got {min_kept_per_class}")
    classes, sizes = np.unique(labels, return_counts=True)
    return {
        int(c): max(0, int(k) - min_kept_per_class) for c, k in zip(classes, sizes, strict=True)
    }


def _greedy_epsilon(
    s: np.ndarray,
    w: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    room: dict[int, int],
    rank: np.ndarray,
) -> np.ndarray:
    """Grow R by the example keeping || sum_R S || smallest, while it stays <= epsilon.

    Candidates are ranked by the work matrix ``w`` (S or its projection) and checked in
    that order against the exact full-space norm, so epsilon is never exceeded.
    """
    n = s.shape[0]
    sq = _row_sq_norms(w)
    removed = np.zeros(n, dtype=bool)
    open_ = np.isin(labels, [c for c, k in room.items() if k > 0])
    room = dict(room)
    full = np.zeros(s.shape[1])
    q = np.zeros(n)
    eps2 = epsilon * epsilon
    check = 256
    while open_.any():
        cand = np.flatnonzero(open_)
        score = 2.0 * q[cand] + sq[cand]
        chosen = int(cand[_pick(score, rank[cand])])
        if _sq_norm(full + s[chosen]) > eps2:
            # The best-ranked example does not fit (possible under a projection): try the
            # others in ranked order, a block at a time; stop if none fits.
            order = cand[np.lexsort((rank[cand], score))]
            chosen = -1
            for start in range(0, len(order), check):
                batch = order[start : start + check]
                sums = full[None, :] + s[batch]
                ok = np.flatnonzero(np.einsum("ij,ij->i", sums, sums) <= eps2)
                if len(ok):
                    chosen = int(batch[ok[0]])
                    break
        if chosen < 0:
            break
        removed[chosen] = True
        open_[chosen] = False
        full += s[chosen]
        q += w @ w[chosen]
        c = int(labels[chosen])
        room[c] -= 1
        if room[c] == 0:
            open_[labels == c] = False
    return removed


def _exact_epsilon(
    s: np.ndarray, labels: np.ndarray, epsilon: float, room: dict[int, int], max_combinations: int
) -> np.ndarray:
    """Enumerate all 2^n removed sets; the largest with norm <= epsilon (ties: smallest norm)."""
    n = s.shape[0]
    if 2**n > max_combinations:
        raise NasproxyError(
            f"exact Eq. 3 enumerates 2^{n} subsets (> {max_combinations:,}); use greedy"
        )
    classes = sorted(room)
    onehot = (labels[:, None] == np.array(classes)[None, :]).astype(np.int64)
    limit = np.array([room[c] for c in classes])
    bits = 1 << np.arange(n, dtype=np.int64)
    block = max(1, _BLOCK_ENTRIES // max(s.shape[1], n))
    best = (-1, np.inf, 0)  # (size, squared norm, mask)
    for start in range(0, 2**n, block):
        masks = np.arange(start, min(start + block, 2**n), dtype=np.int64)
        member = (masks[:, None] & bits[None, :]) != 0
        sums = member.astype(np.float64) @ s.astype(np.float64)
        sq = np.einsum("ij,ij->i", sums, sums)
        size = member.sum(axis=1)
        ok = (sq <= epsilon * epsilon) & (member.astype(np.int64) @ onehot <= limit).all(axis=1)
        if not ok.any():
            continue
        idx = np.flatnonzero(ok)
        top = idx[np.lexsort((sq[idx], -size[idx]))[0]]
        if (size[top], -sq[top]) > (best[0], -best[1]):
            best = (int(size[top]), float(sq[top]), int(masks[top]))
    return (best[2] & bits) != 0


def remove_max_under_epsilon(
    s: np.ndarray,
    labels: np.ndarray,
    epsilon: float,
    solver: str = "greedy",
    min_kept_per_class: int = 0,
    seed: int = 0,
    project_dim: int | None = None,
    max_combinations: int = _MAX_COMBINATIONS,
) -> np.ndarray:
    """Kept indices (sorted) of the generalization-bound form (Eq. 3).

    Removes as many examples as possible with || sum_R S_i ||_2 <= ``epsilon`` (checked in
    the full space, float64), keeping at least ``min_kept_per_class`` of each class (0 is
    the paper's unconstrained form). ``"greedy"`` grows R one example at a time (each step
    one product with S, or with its ``project_dim`` projection used for ranking only);
    ``"exact"`` enumerates all subsets (n <= log2(max_combinations)).
    """
    labels = np.asarray(labels)
    s = _check_s(s, labels)
    if not epsilon >= 0:
        raise NasproxyError(f"epsilon must be >= 0, got {epsilon}")
    room = _removal_floor(labels, min_kept_per_class)
    if solver == "greedy":
        rank = np.random.default_rng(seed).permutation(len(labels))
        proj = _projection(s, project_dim, seed)
        w = s if proj is None else s @ proj
        removed = _greedy_epsilon(s, w, labels, float(epsilon), room, rank)
    elif solver == "exact":
        if project_dim is not None:
            raise NasproxyError("exact solves in the full space; drop project_dim")
        removed = _exact_epsilon(s, labels, float(epsilon), room, max_combinations)
    else:
        raise NasproxyError(f"unknown solver {solver!r}; use one of {', '.join(EPSILON_SOLVERS)}")
    return np.flatnonzero(~removed)
