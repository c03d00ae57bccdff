"""Influence-based dataset pruning (Yang et al., "Dataset Pruning", ICLR 2023), end to end.

The softmax head of the scoring backbone is refitted to the optimum of an L2-regularised
cross-entropy on the cached penultimate features (``influence.refit_head``), each example's
parameter influence S_i = (1/n) H^{-1} grad L(z_i) is computed (Eq. 2,
``influence.parameter_influence``), and the kept set is chosen so that the removed set's
summed influence ||sum_{removed} S_i||_2 is small (Eq. 4-5, ``solvers``).

``RefitHead`` also measures that epsilon for any proxy, whatever method chose it, so all
methods are compared on the paper's own yardstick (Fig. 2), with the same head and S.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nasproxy.errors import NasproxyError
from nasproxy.io import atomic_write_bytes
from nasproxy.proxies.base import SelectionContext
from nasproxy.proxies.influence import head_hessian, parameter_influence, refit_head
from nasproxy.proxies.solvers import remove_max_under_epsilon, select_kept
from nasproxy.scoring import ScoringArtifact
from nasproxy.train import resolve_device

_CHUNK = 8192  # rows of features handled at once in the closed-form statistics
_MEMORY_SHARE = 0.8  # refuse work estimated to need more than this share of a memory


@dataclass(eq=False)
class RefitHead:
    """The scoring backbone's head refitted to the optimum of J (influence.py's objective)."""

    features: np.ndarray  # (n, d) penultimate features of the train split
    labels: np.ndarray  # (n,)
    head: nn.Linear  # float64, at the optimum of J
    l2: float
    info: dict[str, Any]  # refit_head's report: grad_norm, iterations, newton_steps, loss
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # H, solves
    _influence: np.ndarray | None = field(default=None, repr=False)
    _factor: torch.Tensor | None = field(default=None, repr=False)
    _stats: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    @property
    def num_params(self) -> int:
        """P = C (d + 1), the length of every S_i."""
        return self.head.out_features * (self.head.in_features + 1)

    @classmethod
    def load_or_fit(
        cls,
        artifact: ScoringArtifact,
        l2: float,
        device: str | torch.device = "cpu",
        progress: Callable[[str], None] | None = None,
    ) -> RefitHead:
        """The refitted head for ``l2``, cached beside the scoring artifact it comes from.

        The refit starts from the trained classifier, which is already near the optimum.
        ``device`` runs the Hessian work (Newton steps here; S and epsilon later).
        """
        dev = resolve_device(device) if isinstance(device, str) else device
        path = artifact.path / f"head-l2-{float(l2)!r}.npz"
        if path.is_file():
            with np.load(path, allow_pickle=False) as z:
                weight, bias, info = z["weight"], z["bias"], json.loads(str(z["info"]))
            head = _linear(weight, bias)
            return cls(artifact.features, artifact.labels, head, l2, info, dev)
        n, d = artifact.features.shape
        check_memory(artifact.head_weight.shape[0] * (d + 1), n, dev, with_influence=False)
        if progress is not None:
            progress(f"refitting the softmax head on {artifact.features.shape} features, l2={l2}")
        head, info = refit_head(
            artifact.features,
            artifact.labels,
            artifact.head_weight.shape[0],
            l2,
            init=_linear(artifact.head_weight, artifact.head_bias),
            device=dev,
        )
        weight = head.weight.detach().numpy()
        bias = head.bias.detach().numpy()
        buffer = _npz(weight=weight, bias=bias, info=np.array(json.dumps(info)))
        atomic_write_bytes(path, buffer)
        return cls(artifact.features, artifact.labels, head, l2, info, dev)

    def influence(self) -> np.ndarray:
        """S (n x P, float32), computed once (``influence.parameter_influence``)."""
        if self._influence is None:
            check_memory(self.num_params, len(self.labels), self.device, True)
            self._influence = parameter_influence(
                self.features, self.labels, self.head, self.l2, device=self.device
            )
        return self._influence

    def removed_sum(self, kept: np.ndarray) -> np.ndarray:
        """sum_{i not in kept} S_i (float64, length P).

        From S when it has been computed; otherwise by linearity of Eq. 2 with one solve,
        sum_R S_i = (1/n) H^{-1} sum_R g_i, where g_i = [(p_i - y_i) x_i^T, p_i - y_i] and
        sum_R g_i = [E_R^T X_R, E_R^T 1] for the residual rows E_R (no n x P matrix).
        """
        removed = np.ones(len(self.labels), dtype=bool)
        removed[np.asarray(kept, dtype=np.int64)] = False
        if self._influence is not None:
            return self._influence[removed].sum(axis=0, dtype=np.float64)
        weight, bias = self._arrays()
        grad_w = np.zeros_like(weight)
        grad_b = np.zeros_like(bias)
        rows = np.flatnonzero(removed)
        for start in range(0, len(rows), _CHUNK):
            block = rows[start : start + _CHUNK]
            x = self.features[block].astype(np.float64)
            e = _softmax(x @ weight.T + bias)
            e[np.arange(len(block)), self.labels[block]] -= 1.0
            grad_w += e.T @ x
            grad_b += e.sum(axis=0)
        if self._factor is None:
            check_memory(self.num_params, len(self.labels), self.device, False)
            hess = head_hessian(self.features, self.labels, self.head, self.l2, device=self.device)
            factor, status = torch.linalg.cholesky_ex(torch.from_numpy(hess).to(self.device))
            if int(status) != 0:
                raise NasproxyError("the head Hessian is not positive definite; raise --head-l2")
            self._factor = factor
        rhs = torch.from_numpy(np.concatenate([grad_w.ravel(), grad_b])).to(self.device)
        solved = torch.cholesky_solve(rhs[:, None], self._factor)[:, 0]
        return solved.cpu().numpy() / len(self.labels)

    def epsilon(self, kept: np.ndarray) -> float:
        """||sum_{removed} S_i||_2: the first-order parameter change of dropping the rest."""
        return float(np.linalg.norm(self.removed_sum(kept)))

    def diagnostics(self, indices: np.ndarray) -> dict[str, float]:
        """Mean cross-entropy and mean per-example gradient norm ||g_i|| under the head."""
        loss, grad_norm = self._per_example()
        idx = np.asarray(indices, dtype=np.int64)
        return {"loss": float(loss[idx].mean()), "grad_norm": float(grad_norm[idx].mean())}

    def _per_example(self) -> tuple[np.ndarray, np.ndarray]:
        """Per-example loss and ||g_i|| = ||p_i - y_i|| sqrt(||x_i||^2 + 1) (g_i is an outer
        product of the residual and [x_i, 1])."""
        if self._stats is None:
            weight, bias = self._arrays()
            n = len(self.labels)
            loss, grad_norm = np.empty(n), np.empty(n)
            for start in range(0, n, _CHUNK):
                rows = slice(start, start + _CHUNK)
                x = self.features[rows].astype(np.float64)
                y = self.labels[rows]
                logits = x @ weight.T + bias
                top = logits.max(axis=1, keepdims=True)
                lse = (np.log(np.exp(logits - top).sum(axis=1, keepdims=True)) + top)[:, 0]
                loss[rows] = lse - logits[np.arange(len(y)), y]
                e = np.exp(logits - lse[:, None])
                e[np.arange(len(y)), y] -= 1.0
                grad_norm[rows] = np.linalg.norm(e, axis=1) * np.sqrt(
                    np.einsum("ij,ij->i", x, x) + 1.0
                )
            self._stats = (loss, grad_norm)
        return self._stats

    def _arrays(self) -> tuple[np.ndarray, np.ndarray]:
        return (
            self.head.weight.detach().cpu().double().numpy(),
            self.head.bias.detach().cpu().double().numpy(),
        )


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


def _linear(weight: np.ndarray, bias: np.ndarray) -> nn.Linear:
    """An ``nn.Linear`` (float64) holding ``weight`` (C, d) and ``bias`` (C,)."""
    c, d = weight.shape
    layer = nn.Linear(d, c, dtype=torch.float64)
    with torch.no_grad():
        layer.weight.copy_(torch.from_numpy(np.asarray(weight, dtype=np.float64)))
        layer.bias.copy_(torch.from_numpy(np.asarray(bias, dtype=np.float64)))
    return layer


def _softmax(logits: np.ndarray) -> np.ndarray:
    z = np.exp(logits - logits.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)


def check_memory(num_params: int, n: int, device: torch.device, with_influence: bool) -> None:
    """Refuse, in one line, work that cannot fit in the host's or the device's memory.

    The Hessian and its Cholesky factor are two P x P float64 arrays (on the device,
    with a host copy of H); S is n x P float32 on the host.
    """
    p = num_params
    if device.type == "cuda":
        device_total = torch.cuda.get_device_properties(device).total_memory
        host_needed = 8 * p * p + (4 * n * p if with_influence else 0)
        device_needed = 16 * p * p
    else:
        device_total, device_needed = None, 0
        host_needed = 16 * p * p + (4 * n * p if with_influence else 0)
    try:
        host_total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # not a POSIX system: do not guess
        host_total = None
    for needed, total, where in (
        (host_needed, host_total, "memory"),
        (device_needed, device_total, f"{device} memory"),
    ):
        if total is not None and needed > _MEMORY_SHARE * total:
            raise NasproxyError(
                f"influence on a {p}-parameter head needs about {needed / 2**30:.0f} GiB "
                f"of {where} (there are {total / 2**30:.0f} GiB); use a backbone with "
                "fewer features, e.g. --backbone resnet18 (512-d)"
            )


def _npz(**arrays: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()
