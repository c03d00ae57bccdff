"""Ctrl-C while Ray runs: held until a safe point, so Ray always starts and stops whole.

Interrupting ``ray.init`` half way leaves its agents orphaned or the process crashing on
exit, and a KeyboardInterrupt raised inside Tune's loop skips its cleanup. So while a Ray
session is open, SIGINT only sets a flag: the session acts on it right after ``ray.init``
returns, Tune stops every trial at its next step (see ``ray_runner.fit``), and the
KeyboardInterrupt is raised after that, from where ``ray.shutdown()`` always runs.
See docs/reliability.md#interruptions-clusters-and-crashes.
"""

from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType


class SigintDeferral:
    """Records SIGINT instead of raising it (main thread only); ``check`` raises it later."""

    def __init__(self) -> None:
        self.received = False
        self._previous: object = None
        self._installed = False

    def __enter__(self) -> SigintDeferral:
        if threading.current_thread() is threading.main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if previous is not signal.SIG_IGN:  # an ignored Ctrl-C stays ignored
                self._previous = signal.signal(signal.SIGINT, self._handle)
                self._installed = True
        _active.append(self)
        return self

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        self.received = True

    def check(self) -> None:
        """Raise the KeyboardInterrupt held so far, if any."""
        if self.received:
            raise KeyboardInterrupt

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        _active.remove(self)
        if self._installed:
            signal.signal(signal.SIGINT, self._previous)  # type: ignore[arg-type]


_active: list[SigintDeferral] = []


def interrupted() -> bool:
    """Whether a Ctrl-C is being held by an open deferral (read by Tune's stopper)."""
    return any(d.received for d in _active)
