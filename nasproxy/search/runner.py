"""The runner seam: what runs a sweep's planned chunks (``Runner``), and the in-process runner.

``open_runner`` picks one by ``SearchConfig.runner``: ``ray`` (``ray_runner``, the default)
runs each chunk as a Ray Tune trial; ``local`` runs the chunks one after another in this
process through the same trial code (``trial.run_chunk``), without importing Ray, for
tests and for debugging with pdb. See docs/search.md#resources-data-and-clusters.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch

from nasproxy.data import Dataset
from nasproxy.errors import first_line
from nasproxy.search.config import SearchConfig
from nasproxy.search.lock import LockLostError, any_lost, ensure_held
from nasproxy.search.plan import Chunk
from nasproxy.search.trial import NoteFn, RowFn, TrialPlan, run_chunk
from nasproxy.settings import SettingError, ref
from nasproxy.train import torch_threads


class Runner(Protocol):
    """Runs planned chunks. Every runner honours one contract:

    - each finished unit's row goes to the driver's ``record`` as soon as it is stored;
    - ``run`` returns the error of each chunk that kept failing (by chunk id); the sweep then
      retries the missing units a trial each and records what still fails as ``failed`` rows
      whose reason starts with the runner's ``crash_prefix``;
    - a lost experiment lock ends the run with ``LockLostError``, writing nothing more;
    - a Ctrl-C comes out as KeyboardInterrupt, after which the same command resumes. The Ray
      runner holds it until Ray has stopped (``interrupt``); the local runner lets it through
      at once (a unit half trained is simply not stored), as pdb and a debugger expect.
    """

    description: str  # where the trials run, for the plan's progress line and the manifest
    gpus: float  # GPUs the runner can give its trials (0: none)
    crash_prefix: str  # starts the reason of a unit whose trial kept failing

    def slots(self, cpus_per_trial: float, gpus_per_trial: float) -> int:
        """How many trials run at once; refuse resources no trial can get."""
        ...

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
        """Run ``chunks`` (``plan.chunks`` holds them), each finished unit to ``record``;
        returns the errors of the chunks that gave up, by chunk id."""
        ...


@contextlib.contextmanager
def open_runner(cfg: SearchConfig) -> Iterator[Runner]:
    """The runner ``cfg`` asks for, open for the block (Ray started or joined, then
    stopped if this session started it)."""
    if cfg.runner == "local":
        yield LocalRunner()
        return
    from nasproxy.search.ray_runner import RayRunner, ray_session

    with ray_session(cfg.address) as cluster:
        yield RayRunner(cfg, cluster)


def check_runner(cfg: SearchConfig) -> None:
    """Refuse, before anything is written, a trial the in-process runner cannot hold (a Ray
    cluster's resources are known once it is joined)."""
    if cfg.runner == "local":
        LocalRunner().slots(cfg.cpus_per_trial, cfg.gpus_per_trial or 0.0)


class _DriverError(Exception):
    """An error of the driver's side (recording a unit), not the trial's: it ends the run."""


class LocalRunner:
    """The chunks one after another in this process, on its first GPU if asked for."""

    crash_prefix = "trial raised"

    def __init__(self) -> None:
        self.gpus = float(torch.cuda.device_count())
        cpus = os.cpu_count() or 1
        self.description = f"this process ({cpus} CPUs, {self.gpus:g} GPUs; no Ray)"

    def slots(self, cpus_per_trial: float, gpus_per_trial: float) -> int:
        if gpus_per_trial > 0 and self.gpus == 0:
            raise SettingError(
                f"{ref('gpus_per_trial')} {gpus_per_trial:g} asks for a GPU this process does "
                f"not see ({ref('runner')} local)"
            )
        return 1

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
        device = "cuda" if resources.get("gpu", 0.0) > 0 else "cpu"

        def report(row: dict[str, Any]) -> None:
            try:
                record(row)
                if any_lost():
                    ensure_held(plan.exp_dir)  # raises LockLostError, naming the new holder
            except Exception as exc:
                raise _DriverError from exc

        errors: dict[str, str] = {}
        with torch_threads(plan.threads):  # as a Ray trial's worker does
            for chunk in chunks:
                try:
                    run_chunk(plan, data, chunk.id, device, report)
                except _DriverError as exc:
                    raise exc.__cause__ from None  # type: ignore[misc]
                except LockLostError:
                    raise  # the trial's own check before writing a unit
                except Exception as exc:  # the trial's error: its units fail, the rest go on
                    errors[chunk.id] = first_line(exc, with_type=True)[:300]
        return errors
