"""The scoring network's softmax head refitted to its optimum, and what it measures.

``RefitHead`` refits the head on the cached penultimate features (``estimate.refit_head``)
and gives, from it, the parameter influence S of every example (Yang et al., ICLR 2023,
Eq. 2), epsilon = ||sum_{removed} S_i|| for any kept set (their Fig. 2 yardstick, for
every method alike) and per-example loss and gradient norms. The head, the Cholesky
factor of H and S are cached on disk beside the scoring run (``cache.ArrayCache``, keyed
by the run's hash and the L2), so a second build on the same run reuses them.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from nasproxy.errors import NasproxyError
from nasproxy.influence.cache import ArrayCache
from nasproxy.influence.estimate import head_hessian, parameter_influence, refit_head
from nasproxy.scoring import ScoringArtifact
from nasproxy.train import resolve_device

_CHUNK = 8192  # rows of features handled at once in the closed-form statistics
_MEMORY_SHARE = 0.8  # refuse work estimated to need more than this share of a memory


@dataclass(eq=False)
class RefitHead:
    """The scoring backbone's head refitted to the optimum of J (``estimate``'s objective)."""

    features: np.ndarray  # (n, d) penultimate features of the train split
    labels: np.ndarray  # (n,)
    head: nn.Linear  # float64, at the optimum of J
    l2: float
    info: dict[str, Any]  # refit_head's report: grad_norm, iterations, newton_steps, loss
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))  # H, solves
    cache: ArrayCache | None = field(default=None, repr=False)  # head, factor and S on disk
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
        """The refitted head for ``l2``, from the disk cache beside ``artifact`` or fitted.

        The refit starts from the trained classifier, which is already near the optimum.
        ``device`` runs the Hessian work (Newton steps here; S and epsilon later).
        """
        dev = resolve_device(device) if isinstance(device, str) else device
        cache = head_cache(artifact, l2, progress)
        stored = cache.load("head")
        if stored is not None:
            info = json.loads(str(stored["info"]))
            head = _linear(stored["weight"], stored["bias"])
            return cls(artifact.features, artifact.labels, head, l2, info, dev, cache)
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
        cache.store("head", {"weight": weight, "bias": bias, "info": np.array(json.dumps(info))})
        return cls(artifact.features, artifact.labels, head, l2, info, dev, cache)

    def influence(self) -> np.ndarray:
        """S (n x P, float32): from memory, the disk cache, or ``parameter_influence``."""
        if self._influence is None:
            if not self._load_influence():
                check_memory(self.num_params, len(self.labels), self.device, True)
                self._influence = parameter_influence(
                    self.features, self.labels, self.head, self.l2, device=self.device
                )
                self._store("influence", {"s": self._influence})
        return self._influence

    def removed_sum(self, kept: np.ndarray) -> np.ndarray:
        """sum_{i not in kept} S_i (float64, length P).

        From S when it has been computed or cached (and the factor was not); otherwise by
        linearity of Eq. 2 with one solve (the factor computed or read from the cache),
        sum_R S_i = (1/n) H^{-1} sum_R g_i, where g_i = [(p_i - y_i) x_i^T, p_i - y_i] and
        sum_R g_i = [E_R^T X_R, E_R^T 1] for the residual rows E_R (no n x P matrix).
        """
        removed = np.ones(len(self.labels), dtype=bool)
        removed[np.asarray(kept, dtype=np.int64)] = False
        if self._influence is None and self._factor is None:
            # reuse what an earlier build stored: the factor, else S; compute only if neither
            self._factor = self._cached_factor()
            if self._factor is None:
                self._load_influence()
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
            self._factor = self._cholesky_factor()
        rhs = torch.from_numpy(np.concatenate([grad_w.ravel(), grad_b])).to(self.device)
        solved = torch.cholesky_solve(rhs[:, None], self._factor)[:, 0]
        return solved.cpu().numpy() / len(self.labels)

    def _cached_factor(self) -> torch.Tensor | None:
        """The Cholesky factor of H from the disk cache, on the device; None if not stored."""
        if self.cache is None or not self.cache.has("factor"):
            return None
        check_memory(self.num_params, len(self.labels), self.device, False)
        stored = self.cache.load("factor")
        p = self.num_params
        if stored is None or stored["factor"].shape != (p, p):
            return None
        return torch.from_numpy(stored["factor"]).to(self.device)

    def _load_influence(self) -> bool:
        """Load S from the disk cache, if it is there; whether it was."""
        if self.cache is None or not self.cache.has("influence"):
            return False
        check_memory(self.num_params, len(self.labels), self.device, True)
        stored = self.cache.load("influence")
        if stored is None or stored["s"].shape != (len(self.labels), self.num_params):
            return False
        self._influence = stored["s"]
        return True

    def _cholesky_factor(self) -> torch.Tensor:
        """The lower Cholesky factor of H on the device, from the disk cache or computed."""
        cached = self._cached_factor()
        if cached is not None:
            return cached
        check_memory(self.num_params, len(self.labels), self.device, False)
        hess = head_hessian(self.features, self.labels, self.head, self.l2, device=self.device)
        factor, status = torch.linalg.cholesky_ex(torch.from_numpy(hess).to(self.device))
        if int(status) != 0:
            raise NasproxyError("the head Hessian is not positive definite; raise --head-l2")
        self._store("factor", {"factor": factor.cpu().numpy()})
        return factor

    def _store(self, name: str, arrays: dict[str, np.ndarray]) -> None:
        if self.cache is not None:
            self.cache.store(name, arrays)

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


def head_cache(
    artifact: ScoringArtifact, l2: float, progress: Callable[[str], None] | None = None
) -> ArrayCache:
    """The disk cache of the head refitted with ``l2`` on ``artifact``: a folder of the
    scoring run, keyed by the run's hash and ``l2`` (the head, H and S depend on nothing else).
    """
    key = {"scoring_hash": artifact.hash, "l2": float(l2)}
    return ArrayCache(artifact.path / f"head-l2-{float(l2)!r}", key, progress)


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
