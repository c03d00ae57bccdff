"""Influence of examples on a refitted softmax head, checked against autograd and retraining."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from nasproxy.errors import NasproxyError
from nasproxy.influence.estimate import (
    head_hessian,
    parameter_influence,
    per_example_gradients,
    refit_head,
)


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """These problems are tiny: extra BLAS / torch threads only add contention."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(1):
            yield
    finally:
        torch.set_num_threads(threads)


def _problem(n: int = 40, d: int = 4, c: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, d))
    y = rng.integers(0, c, n)
    head = torch.nn.Linear(d, c, dtype=torch.float64)
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(rng.standard_normal((c, d))))
        head.bias.copy_(torch.from_numpy(rng.standard_normal(c)))
    return x, y, head


def _theta(head: torch.nn.Linear) -> np.ndarray:
    return torch.cat([head.weight.flatten(), head.bias]).detach().numpy()


def _torch_objective(x, y, c, l2, weight=None):
    """J(theta) written directly with torch.nn.functional, theta in the documented order."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    wt = torch.ones(len(y), dtype=torch.float64) if weight is None else torch.from_numpy(weight)
    d = x.shape[1]

    def objective(theta: torch.Tensor) -> torch.Tensor:
        logits = xt @ theta[: c * d].reshape(c, d).T + theta[c * d :]
        ce = F.cross_entropy(logits, yt, reduction="none")
        return (wt * ce).sum() / len(y) + 0.5 * l2 * theta @ theta

    return objective


@pytest.mark.parametrize("weighted", [False, True])
def test_hessian_matches_autograd(weighted):
    x, y, head = _problem()
    weight = np.random.default_rng(1).uniform(0, 2, len(y)) if weighted else None
    theta = torch.from_numpy(_theta(head))
    expected = torch.autograd.functional.hessian(_torch_objective(x, y, 3, 0.3, weight), theta)
    got = head_hessian(x, y, head, 0.3, sample_weight=weight)
    assert got.dtype == np.float64
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-10, atol=1e-12)


def test_per_example_gradients_match_autograd():
    x, y, head = _problem()
    got = per_example_gradients(x, y, head)
    for i in range(len(y)):
        theta = torch.from_numpy(_theta(head)).requires_grad_(True)
        ce = _torch_objective(x[i : i + 1], y[i : i + 1], 3, 0.0)(theta)
        (grad,) = torch.autograd.grad(ce, theta)
        np.testing.assert_allclose(got[i], grad.numpy(), rtol=1e-10, atol=1e-13)


def test_refit_head_reaches_the_unique_optimum():
    x, y, head = _problem(n=80)
    fitted, info = refit_head(x, y, 3, l2=0.05)
    assert fitted.weight.dtype == torch.float64
    theta = torch.from_numpy(_theta(fitted)).requires_grad_(True)
    loss = _torch_objective(x, y, 3, 0.05)(theta)
    (grad,) = torch.autograd.grad(loss, theta)
    assert grad.norm().item() < 1e-9
    assert info["grad_norm"] < 1e-10
    assert info["loss"] == pytest.approx(loss.item(), rel=1e-12)
    # Strictly convex objective: another start reaches the same point.
    again, _ = refit_head(x, y, 3, l2=0.05, init=head)
    np.testing.assert_allclose(_theta(again), _theta(fitted), atol=1e-9)


def test_whole_set_sum_closed_form():
    # At the optimum (1/n) sum_i g_i + l2 theta = 0, so sum_i S_i = -l2 H^{-1} theta.
    x, y, head = _problem(n=50)
    l2 = 0.2
    fitted, _ = refit_head(x, y, 3, l2)
    theta = torch.from_numpy(_theta(fitted))
    hess = torch.autograd.functional.hessian(_torch_objective(x, y, 3, l2), theta).numpy()
    s = parameter_influence(x, y, fitted, l2, dtype=np.float64)
    expected = -l2 * np.linalg.solve(hess, theta.numpy())
    np.testing.assert_allclose(s.sum(axis=0), expected, rtol=1e-8, atol=1e-12)
    assert np.linalg.norm(expected) > 1e-3  # not trivially zero


def _digits_problem():
    x, y = load_digits(return_X_y=True)
    # A fixed random projection to 16 dimensions keeps refits fast (P = 170).
    proj = np.random.default_rng(0).standard_normal((64, 16)) / 8.0
    return (x / 16.0) @ proj, y


def test_influence_predicts_retraining_on_digits():
    """sum_R S_i matches theta(weights of R set to 0, same 1/n) - theta* (real data)."""
    x, y = _digits_problem()
    l2 = 1e-2
    head, _ = refit_head(x, y, 10, l2)
    s = parameter_influence(x, y, head, l2, dtype=np.float64)
    theta = _theta(head)
    rng = np.random.default_rng(0)
    errors = {}
    for size in (1, 64):
        errors[size] = []
        for _ in range(3):
            removed = rng.choice(len(y), size, replace=False)
            weight = np.ones(len(y))
            weight[removed] = 0.0
            refit, info = refit_head(x, y, 10, l2, init=head, sample_weight=weight)
            assert info["grad_norm"] < 1e-10
            actual = _theta(refit) - theta
            predicted = s[removed].sum(axis=0)
            errors[size].append(np.linalg.norm(predicted - actual) / np.linalg.norm(actual))
    # Observed: about 0.006-0.011 for single removals, 0.02-0.03 for 64 removals.
    assert max(errors[1]) < 0.03
    assert max(errors[64]) < 0.08
    assert np.mean(errors[1]) < np.mean(errors[64])


def test_influence_is_the_derivative_of_the_refit():
    """Down-weighting z_i by eps moves theta by eps S_i + O(eps^2): error shrinks like eps."""
    x, y = _digits_problem()
    l2 = 1e-2
    head, _ = refit_head(x, y, 10, l2)
    s = parameter_influence(x, y, head, l2, dtype=np.float64)
    group = np.arange(5)
    errors = []
    for eps in (1e-1, 1e-2):
        weight = np.ones(len(y))
        weight[group] = 1.0 - eps
        refit, _ = refit_head(x, y, 10, l2, init=head, sample_weight=weight)
        actual = _theta(refit) - _theta(head)
        predicted = eps * s[group].sum(axis=0)
        errors.append(np.linalg.norm(predicted - actual) / np.linalg.norm(actual))
    assert errors[0] < 0.01
    assert errors[1] < 0.2 * errors[0]


def test_cg_and_lissa_agree_with_cholesky():
    x, y, head = _problem(n=60, seed=1)
    l2 = 0.1
    fitted, _ = refit_head(x, y, 3, l2)
    exact = parameter_influence(x, y, fitted, l2, dtype=np.float64)

    def rel(other: np.ndarray) -> float:
        return float(np.linalg.norm(other - exact) / np.linalg.norm(exact))

    assert rel(parameter_influence(x, y, fitted, l2, solver="cg", dtype=np.float64)) < 1e-8
    # Full-batch LiSSA is a truncated Neumann series: exact up to (1 - l2/scale)^depth.
    full = parameter_influence(x, y, fitted, l2, solver="lissa", lissa_depth=400, dtype=np.float64)
    assert rel(full) < 1e-8
    # Mini-batch LiSSA has a noise floor (observed ~0.23 with one run, ~0.07 averaging 10).
    one = parameter_influence(
        x, y, fitted, l2, solver="lissa", lissa_depth=300, lissa_batch=20, dtype=np.float64
    )
    ten = parameter_influence(
        x,
        y,
        fitted,
        l2,
        "lissa",
        lissa_depth=300,
        lissa_batch=20,
        lissa_repeats=10,
        dtype=np.float64,
    )
    assert rel(ten) < 0.15
    assert rel(ten) < rel(one)


def test_default_output_is_float32_close_to_float64():
    x, y, head = _problem(n=30)
    fitted, _ = refit_head(x, y, 3, 0.1)
    s32 = parameter_influence(x, y, fitted, 0.1)
    s64 = parameter_influence(x, y, fitted, 0.1, dtype=np.float64)
    assert s32.dtype == np.float32 and s32.shape == (30, 3 * 5)
    np.testing.assert_allclose(s32, s64, rtol=1e-6, atol=1e-9)


def test_float32_head_and_features_are_accepted():
    x, y, head = _problem(n=30)
    fitted, _ = refit_head(x, y, 3, 0.1)
    s = parameter_influence(x.astype(np.float32), y, fitted.float(), 0.1, dtype=np.float64)
    ref = parameter_influence(x, y, fitted, 0.1, dtype=np.float64)
    np.testing.assert_allclose(s, ref, rtol=1e-4, atol=1e-7)


def test_precomputed_hessian_gives_the_same_influence():
    x, y, head = _problem(n=30)
    fitted, _ = refit_head(x, y, 3, 0.1)
    hess = head_hessian(x, y, fitted, 0.1)
    kept = hess.copy()
    s = parameter_influence(x, y, fitted, 0.1, dtype=np.float64, hessian=hess)
    np.testing.assert_array_equal(hess, kept)  # the caller's matrix is not overwritten
    ref = parameter_influence(x, y, fitted, 0.1, dtype=np.float64)
    np.testing.assert_allclose(s, ref, rtol=1e-12, atol=1e-15)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_cpu():
    x, y, head = _problem(n=200, d=6, c=4)
    fitted, _ = refit_head(x, y, 4, 0.1, init=head, tol=1e-20, newton_steps=2, device="cuda")
    ref, _ = refit_head(x, y, 4, 0.1, init=head, tol=1e-20, newton_steps=2)
    np.testing.assert_allclose(_theta(fitted), _theta(ref), atol=1e-9)
    np.testing.assert_allclose(
        head_hessian(x, y, ref, 0.1, device="cuda"), head_hessian(x, y, ref, 0.1), atol=1e-12
    )
    s_gpu = parameter_influence(x, y, ref, 0.1, dtype=np.float64, device="cuda")
    s_cpu = parameter_influence(x, y, ref, 0.1, dtype=np.float64)
    np.testing.assert_allclose(s_gpu, s_cpu, rtol=1e-9, atol=1e-13)
    s_cg = parameter_influence(x, y, ref, 0.1, "cg", dtype=np.float64, device="cuda")
    np.testing.assert_allclose(s_cg, s_cpu, rtol=1e-7, atol=1e-12)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"l2": 0.0}, "l2 must be > 0"),
        ({"solver": "newton"}, "unknown influence solver"),
        ({"labels": np.array([0, 1, 5])}, "labels must lie in"),
        ({"labels": np.array([0, 1])}, "labels must have shape"),
        ({"features": np.zeros((3, 5))}, "head expects 4-d features"),
        ({"solver": "cg", "hessian": np.eye(15)}, "cholesky solver only"),
        ({"hessian": np.eye(14)}, "hessian must have shape"),
    ],
)
def test_bad_input_raises_one_line_error(kwargs, message):
    x, _, head = _problem(n=3)
    args = {"features": x, "labels": np.array([0, 1, 2]), "head": head, "l2": 0.1}
    args.update(kwargs)
    with pytest.raises(NasproxyError, match=message) as err:
        parameter_influence(**args)
    assert "\n" not in str(err.value)
