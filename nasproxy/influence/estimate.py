"""Parameter influence of each training example on a softmax head (Yang et al., ICLR 2023, Eq. 2).

The pruning method of "Dataset Pruning: Reducing Training Data by Examining Generalization
Influence" (Yang et al., ICLR 2023) scores every training example z_i by the first-order
change of the optimal parameters when z_i is removed (Koh & Liang, 2017):

    S_i = (1/n) H^{-1} grad_theta L(z_i, theta*)                          (Eq. 2)

where H is the Hessian of the training objective at its optimum theta*. Here theta is the
final linear (softmax) layer of a trained network, refitted on fixed penultimate features to
the optimum of

    J(theta) = (1/n) sum_i w_i CE(W x_i + b, y_i) + (l2/2) ||theta||^2,   w_i = 1

so that the optimality assumption behind Eq. 2 holds exactly. Removing z_i means setting
w_i = 0 while keeping the 1/n normalisation; then theta moves by +S_i to first order.

Every parameter vector is ordered as ``torch.cat([head.weight.flatten(), head.bias])``:
the C x d weights row-major, then the C biases (P = C (d + 1) entries).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.optimize
import torch
from torch import nn

from nasproxy.errors import NasproxyError

# Rows of per-example gradients formed at once when solving for S (bounds temporary memory
# to about _CHUNK * P * 8 bytes).
_CHUNK = 2048
# Entries of the (examples, vectors, classes) work arrays of one Hessian-vector product.
_HVP_ENTRIES = 20_000_000


def _check_inputs(
    features: np.ndarray, labels: np.ndarray, num_classes: int
) -> tuple[np.ndarray, np.ndarray]:
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2:
        raise NasproxyError(f"features must be a 2-d array (n, d), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise NasproxyError(f"labels must have shape ({x.shape[0]},), got {y.shape}")
    if x.shape[0] == 0:
        raise NasproxyError("features are empty")
    if not np.issubdtype(y.dtype, np.integer):
        raise NasproxyError(f"labels must be integers, got dtype {y.dtype}")
    if y.min() < 0 or y.max() >= num_classes:
        raise NasproxyError(f"labels must lie in [0, {num_classes}), got [{y.min()}, {y.max()}]")
    if not np.isfinite(x).all():
        raise NasproxyError("features contain NaN or infinite values")
    return x, y.astype(np.int64)


def _head_arrays(head: nn.Linear, d: int) -> tuple[np.ndarray, np.ndarray]:
    """Weight (C, d) and bias (C,) of ``head`` as float64 arrays."""
    if not isinstance(head, nn.Linear) or head.bias is None:
        raise NasproxyError("head must be a torch.nn.Linear with a bias")
    if head.in_features != d:
        raise NasproxyError(f"head expects {head.in_features}-d features, got {d}-d")
    weight = head.weight.detach().cpu().to(torch.float64).numpy()
    bias = head.bias.detach().cpu().to(torch.float64).numpy()
    return weight, bias


def _check_l2(l2: float) -> float:
    if not l2 > 0:
        raise NasproxyError(
            f"l2 must be > 0 (the softmax Hessian is singular without it), got {l2}"
        )
    return float(l2)


def _softmax(x: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    logits = x @ weight.T + bias
    logits -= logits.max(axis=1, keepdims=True)
    np.exp(logits, out=logits)
    logits /= logits.sum(axis=1, keepdims=True)
    return logits


def _residuals(x: np.ndarray, y: np.ndarray, weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """e_i = p_i - onehot(y_i): the gradient of CE with respect to the logits."""
    e = _softmax(x, weight, bias)
    e[np.arange(len(y)), y] -= 1.0
    return e


def _gradient_rows(x: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Per-example CE gradients [(e_i outer x_i).flatten(), e_i] for a block of rows."""
    m, c = e.shape
    out = np.empty((m, c * (x.shape[1] + 1)), dtype=np.float64)
    out[:, : c * x.shape[1]] = (e[:, :, None] * x[:, None, :]).reshape(m, -1)
    out[:, c * x.shape[1] :] = e
    return out


def _flat(weight: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.concatenate([weight.ravel(), bias])


def _unflat(theta: np.ndarray, c: int, d: int) -> tuple[np.ndarray, np.ndarray]:
    return theta[: c * d].reshape(c, d), theta[c * d :]


def _cholesky(hess: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor of H; H is positive definite whenever l2 > 0."""
    factor, info = torch.linalg.cholesky_ex(hess)
    if int(info) != 0:
        raise NasproxyError("the head Hessian is not positive definite; increase l2")
    return factor


def _make_head(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    c, d = weight.shape
    head = nn.Linear(d, c, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weight))
        head.bias.copy_(torch.from_numpy(bias))
    return head


def _objective(
    x: np.ndarray, y: np.ndarray, c: int, l2: float, sample_weight: np.ndarray | None
) -> Callable[[np.ndarray], tuple[float, np.ndarray]]:
    """J(theta) and its gradient; J = (1/n) sum_i w_i CE_i + (l2/2)||theta||^2."""
    n, d = x.shape
    rows = np.arange(n)

    def fun(theta: np.ndarray) -> tuple[float, np.ndarray]:
        weight, bias = _unflat(theta, c, d)
        logits = x @ weight.T + bias
        top = logits.max(axis=1, keepdims=True)
        z = np.exp(logits - top)
        norm = z.sum(axis=1, keepdims=True)
        ce = (np.log(norm) + top)[:, 0] - logits[rows, y]
        e = z / norm
        e[rows, y] -= 1.0
        if sample_weight is not None:
            ce = ce * sample_weight
            e *= sample_weight[:, None]
        loss = ce.sum() / n + 0.5 * l2 * theta @ theta
        grad = _flat(e.T @ x / n, e.sum(axis=0) / n) + l2 * theta
        return float(loss), grad

    return fun


def refit_head(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    l2: float,
    init: nn.Linear | None = None,
    tol: float = 1e-10,
    sample_weight: np.ndarray | None = None,
    newton_steps: int = 3,
    device: str | torch.device = "cpu",
) -> tuple[nn.Linear, dict]:
    """Refit a softmax head to the optimum of J(theta) on fixed features, in float64.

    SGD with augmentation leaves the head near, not at, an optimum, while Eq. 2 assumes one.
    L-BFGS (with the analytic gradient) runs from ``init`` (zeros if None) until the
    Euclidean gradient norm is below ``tol``; if it stalls above ``tol`` (float64 line
    searches can), up to ``newton_steps`` Newton steps finish the job, each solved by
    conjugate gradients with exact Hessian-vector products (no P x P matrix is formed; torch
    on ``device``).
    ``sample_weight`` (default all ones) multiplies each example's loss inside the same 1/n
    average: a zero weight removes the example as Eq. 2 models it.

    Returns the head as a float64 ``nn.Linear`` (use ``.float()`` for float32 features) and
    info ``{"grad_norm", "iterations", "newton_steps", "loss"}``.
    """
    x, y = _check_inputs(features, labels, num_classes)
    l2 = _check_l2(l2)
    n, d = x.shape
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
        if sample_weight.shape != (n,):
            raise NasproxyError(f"sample_weight must have shape ({n},), got {sample_weight.shape}")
    if init is None:
        theta0 = np.zeros(num_classes * (d + 1))
    else:
        if init.out_features != num_classes:
            raise NasproxyError(f"init head has {init.out_features} outputs, not {num_classes}")
        theta0 = _flat(*_head_arrays(init, d))
    fun = _objective(x, y, num_classes, l2, sample_weight)
    dev = torch.device(device)
    res = scipy.optimize.minimize(
        fun,
        theta0,
        jac=True,
        method="L-BFGS-B",
        options={"maxiter": 20000, "maxcor": 30, "ftol": 0.0, "gtol": tol / 10},
    )
    theta = res.x
    loss, grad = fun(theta)
    steps = 0
    while np.linalg.norm(grad) > tol and steps < newton_steps:
        # Newton-CG step from L-BFGS's endpoint (the quadratic model is accurate there).
        p = _softmax(x, *_unflat(theta, num_classes, d))
        hvp = _hvp_factory(x, p, l2, sample_weight, dev)
        step = _solve_cg(hvp, torch.from_numpy(grad[None]).to(dev), 1e-6, 500)
        theta = theta - step[0].cpu().numpy()
        loss, grad = fun(theta)
        steps += 1
    head = _make_head(*_unflat(theta, num_classes, d))
    info = {
        "grad_norm": float(np.linalg.norm(grad)),
        "iterations": int(res.nit),
        "newton_steps": steps,
        "loss": loss,
    }
    return head, info


def _hessian_tensor(
    x: np.ndarray,
    p: np.ndarray,
    l2: float,
    sample_weight: np.ndarray | None,
    device: torch.device,
) -> torch.Tensor:
    """H of J (float64, on ``device``) from features and softmax outputs; see head_hessian."""
    n, d = x.shape
    c = p.shape[1]
    xt = torch.ones((n, d + 1), dtype=torch.float64, device=device)
    xt[:, :d] = torch.from_numpy(x).to(device)
    pt = torch.from_numpy(p).to(device)
    pw = pt if sample_weight is None else pt * torch.from_numpy(sample_weight).to(device)[:, None]
    # Blocks in "class-major" order: index a (d+1) + k, with k = d the bias of class a.
    size = c * (d + 1)
    hess = torch.empty((size, size), dtype=torch.float64, device=device)
    for a in range(c):
        for b in range(a, c):
            # A_i[a, b] = p_ia (delta_ab - p_ib), times the sample weight.
            w = pw[:, a] * ((1.0 if a == b else 0.0) - pt[:, b])
            block = xt.T @ (xt * w[:, None])
            block /= n
            hess[a * (d + 1) : (a + 1) * (d + 1), b * (d + 1) : (b + 1) * (d + 1)] = block
            if a != b:
                hess[b * (d + 1) : (b + 1) * (d + 1), a * (d + 1) : (a + 1) * (d + 1)] = block.T
    # Reorder to theta = [weights row-major, biases]: theta index c d + k <- c (d+1) + k,
    # theta index C d + c <- c (d+1) + d.
    order = torch.arange(size, device=device).reshape(c, d + 1)
    order = torch.cat([order[:, :d].reshape(-1), order[:, d]])
    hess = hess[order][:, order]
    hess.diagonal().add_(l2)
    return hess


def head_hessian(
    features: np.ndarray,
    labels: np.ndarray,
    head: nn.Linear,
    l2: float,
    sample_weight: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Exact Hessian of J(theta) at ``head`` (P x P, float64, theta ordering above).

    H = (1/n) sum_i w_i (diag(p_i) - p_i p_i^T) kron x~_i x~_i^T + l2 I with x~_i = [x_i, 1].
    Built block by block: for each class pair (a, b), X~^T diag(w_i A_i[a, b]) X~ is one
    (d+1) x (d+1) matrix product (torch, on ``device``), then permuted to theta order. The
    CE Hessian does not depend on the labels; they are validated only, so that all
    functions here share one signature.
    """
    c = head.out_features
    x, _ = _check_inputs(features, labels, c)
    l2 = _check_l2(l2)
    weight, bias = _head_arrays(head, x.shape[1])
    if sample_weight is not None:
        sample_weight = np.asarray(sample_weight, dtype=np.float64)
    hess = _hessian_tensor(x, _softmax(x, weight, bias), l2, sample_weight, torch.device(device))
    return hess.cpu().numpy()


def per_example_gradients(features: np.ndarray, labels: np.ndarray, head: nn.Linear) -> np.ndarray:
    """Gradients of each example's CE loss (no L2 term) w.r.t. theta: (n, P) float64.

    Row i is [((p_i - onehot(y_i)) outer x_i).flatten(), p_i - onehot(y_i)].
    """
    x, y = _check_inputs(features, labels, head.out_features)
    weight, bias = _head_arrays(head, x.shape[1])
    return _gradient_rows(x, _residuals(x, y, weight, bias))


Hvp = Callable[[torch.Tensor, np.ndarray | None], torch.Tensor]


def _hvp_factory(
    x: np.ndarray,
    p: np.ndarray,
    l2: float,
    sample_weight: np.ndarray | None,
    device: torch.device,
) -> Hvp:
    """Hessian-vector products without forming H, for a block of vectors (m, P), in torch.

    hvp(V, rows) applies (1/|rows|) sum_{i in rows} w_i A_i kron x~_i x~_i^T + l2 I to each
    row of V (all examples when rows is None): cost O(|rows| m P).
    """
    c, d = p.shape[1], x.shape[1]
    xt = torch.from_numpy(x).to(device)
    pt = torch.from_numpy(p).to(device)
    wt = None if sample_weight is None else torch.from_numpy(sample_weight).to(device)

    def hvp(v: torch.Tensor, rows: np.ndarray | None) -> torch.Tensor:
        if rows is None:
            xs, ps, ws = xt, pt, wt
        else:
            index = torch.from_numpy(rows).to(device)
            xs, ps = xt[index], pt[index]
            ws = None if wt is None else wt[index]
        m, k = v.shape[0], xs.shape[0]
        # u[i, j, :] = V_j applied to x~_i (the logit change of example i along direction j).
        u = (xs @ v[:, : c * d].reshape(m * c, d).T).reshape(k, m, c) + v[None, :, c * d :]
        # A_i u = p_i * u - p_i (p_i . u)
        t = ps[:, None, :] * (u - torch.einsum("nc,nmc->nm", ps, u)[:, :, None])
        if ws is not None:
            t *= ws[:, None, None]
        t /= k
        out = torch.empty_like(v)
        out[:, : c * d] = (t.reshape(k, m * c).T @ xs).reshape(m, c * d)
        out[:, c * d :] = t.sum(dim=0)
        return out + l2 * v

    return hvp


def _solve_cg(hvp: Hvp, rhs: torch.Tensor, tol: float, maxiter: int) -> torch.Tensor:
    """Conjugate gradients run in lock step on every row of ``rhs`` (each its own system)."""
    sol = torch.zeros_like(rhs)
    res = rhs.clone()
    direction = res.clone()
    rr = (res * res).sum(dim=1)
    stop = (tol * torch.linalg.vector_norm(rhs, dim=1)) ** 2
    for _ in range(maxiter):
        active = torch.nonzero(rr > stop)[:, 0]
        if len(active) == 0:
            break
        dirs = direction[active]
        hd = hvp(dirs, None)
        alpha = rr[active] / (dirs * hd).sum(dim=1)
        sol[active] += alpha[:, None] * dirs
        res[active] -= alpha[:, None] * hd
        rr_new = (res[active] * res[active]).sum(dim=1)
        direction[active] = res[active] + (rr_new / rr[active])[:, None] * dirs
        rr[active] = rr_new
    return sol


def _largest_eigenvalue(hvp: Hvp, dim: int, seed: int, device: torch.device) -> float:
    """Power iteration for lambda_max(H) (H is positive definite)."""
    v = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, dim))).to(device)
    v /= torch.linalg.vector_norm(v)
    lam = 0.0
    for _ in range(100):
        hv = hvp(v, None)
        lam_new = float(torch.linalg.vector_norm(hv))
        v = hv / lam_new
        if abs(lam_new - lam) <= 1e-6 * lam_new:
            break
        lam = lam_new
    return lam_new


def _solve_lissa(
    hvp: Hvp,
    rhs: torch.Tensor,
    n: int,
    depth: int,
    scale: float,
    batch_size: int,
    repeats: int,
    seed: int,
) -> torch.Tensor:
    """LiSSA (Agarwal et al., 2017; as used by Koh & Liang, 2017 and Yang et al., 2023).

    The truncated Neumann series h_j = v + (I - H_j / scale) h_{j-1}, with H_j the Hessian
    of a random mini-batch, converges to scale * H^{-1} v when scale >= lambda_max(H);
    H^{-1} v is estimated as h_depth / scale, averaged over ``repeats`` runs.
    """
    rng = np.random.default_rng(seed)
    total = torch.zeros_like(rhs)
    for _ in range(repeats):
        h = rhs.clone()
        for _ in range(depth):
            rows = None if batch_size >= n else rng.choice(n, size=batch_size, replace=False)
            h = rhs + h - hvp(h, rows) / scale
        total += h / scale
    return total / repeats


def parameter_influence(
    features: np.ndarray,
    labels: np.ndarray,
    head: nn.Linear,
    l2: float,
    solver: str = "cholesky",
    dtype: type[np.floating] = np.float32,
    cg_tol: float = 1e-10,
    cg_maxiter: int | None = None,
    lissa_depth: int = 1000,
    lissa_scale: float | None = None,
    lissa_batch: int | None = None,
    lissa_repeats: int = 1,
    seed: int = 0,
    hessian: np.ndarray | None = None,
    device: str | torch.device = "cpu",
) -> np.ndarray:
    """Per-example parameter influence S_i = (1/n) H^{-1} grad L(z_i, theta) (Eq. 2).

    S_i is the first-order change of the optimal theta when z_i is removed from J (weight
    set to zero under the same 1/n normalisation); the sum of S over a set R predicts the
    change when R is removed. ``head`` should be at the optimum of J (see ``refit_head``).

    Solvers for H^{-1} g_i, all in float64:
      * ``"cholesky"``: exact H (or ``hessian`` if given, e.g. from ``head_hessian``),
        H^{-1} from its Cholesky factor and one product per block of gradients, in torch
        on ``device`` (a GPU takes the O(n P^2 + P^3) work); the default.
      * ``"cg"``: conjugate gradients with Hessian-vector products (H never formed), to
        relative residual ``cg_tol``; O(iterations n^2 P) for all rows, for small n only.
      * ``"lissa"``: the stochastic recursion of Agarwal et al. (2017) used in the paper;
        mini-batches of ``lissa_batch`` examples (default: all, i.e. deterministic),
        ``lissa_scale`` defaults to 1.05 lambda_max(H) from power iteration.

    All three run in torch on ``device``.

    Returns S as an (n, P) array of ``dtype`` (float32 by default: 50,000 x 5,130 float64
    would be 2 GB). Columns follow ``torch.cat([head.weight.flatten(), head.bias])``.
    """
    c = head.out_features
    x, y = _check_inputs(features, labels, c)
    l2 = _check_l2(l2)
    weight, bias = _head_arrays(head, x.shape[1])
    n, d = x.shape
    size = c * (d + 1)
    e = _residuals(x, y, weight, bias)
    out = np.empty((n, size), dtype=dtype)
    if solver == "cholesky":
        dev = torch.device(device)
        if hessian is None:
            hess = _hessian_tensor(x, _softmax(x, weight, bias), l2, None, dev)
        else:
            if hessian.shape != (size, size):
                raise NasproxyError(
                    f"hessian must have shape ({size}, {size}), got {hessian.shape}"
                )
            hess = torch.as_tensor(hessian, dtype=torch.float64, device=dev)
        # H^{-1} from its Cholesky factor, then one matrix product per block of rows: the
        # same O(n P^2) work as two triangular solves, in a faster kernel.
        inverse = torch.cholesky_inverse(_cholesky(hess))
        del hess
        out_dtype = torch.from_numpy(out[:0]).dtype  # cast on the device: half the copy
        for start in range(0, n, _CHUNK):
            rows = slice(start, start + _CHUNK)
            grads = torch.from_numpy(_gradient_rows(x[rows], e[rows])).to(dev)
            solved = grads @ inverse
            solved /= n
            out[rows] = solved.to(out_dtype).cpu().numpy()
        return out
    if solver not in ("cg", "lissa"):
        raise NasproxyError(f"unknown influence solver {solver!r}; use cholesky, cg or lissa")
    if hessian is not None:
        raise NasproxyError(
            f"a precomputed hessian is used by the cholesky solver only, not {solver}"
        )
    dev = torch.device(device)
    hvp = _hvp_factory(x, _softmax(x, weight, bias), l2, None, dev)
    if solver == "lissa":
        if lissa_scale is None:
            scale = 1.05 * _largest_eigenvalue(hvp, size, seed, dev)
        else:
            scale = lissa_scale
        batch = n if lissa_batch is None else lissa_batch
    # Right-hand sides per block, so that the (rows, block, C) work arrays stay near 2e7.
    block = max(1, _HVP_ENTRIES // (min(n, batch if solver == "lissa" else n) * c))
    for start in range(0, n, block):
        rows = slice(start, start + block)
        grads = torch.from_numpy(_gradient_rows(x[rows], e[rows])).to(dev)
        if solver == "cg":
            maxiter = size if cg_maxiter is None else cg_maxiter
            solved = _solve_cg(hvp, grads, cg_tol, maxiter)
        else:
            solved = _solve_lissa(
                hvp, grads, n, lissa_depth, scale, batch, lissa_repeats, seed + start
            )
        out[rows] = (solved / n).cpu().numpy()
    return out
