"""nasproxy.search.interrupt: a Ctrl-C held while Ray runs, raised at the safe point.

What a held Ctrl-C does to a whole sweep (no Ray process left, a store that resumes) is
checked end to end in test_sweep.py's ``test_a_stopped_sweep_resumes_every_unit_exactly_once``.
"""

from __future__ import annotations

import os
import signal
import threading

import pytest

from nasproxy.search.interrupt import SigintDeferral, interrupted


def _sigint() -> None:
    """Ctrl-C to this process: Python runs the handler before the next line."""
    os.kill(os.getpid(), signal.SIGINT)


def test_a_ctrl_c_is_held_until_check_and_the_old_handler_comes_back():
    seen: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: seen.append(signum))
    try:
        mine = signal.getsignal(signal.SIGINT)
        with SigintDeferral() as sigint:
            assert not interrupted()
            sigint.check()  # nothing held: no KeyboardInterrupt
            _sigint()
            assert sigint.received and interrupted() and seen == []  # held, not raised
            with pytest.raises(KeyboardInterrupt):
                sigint.check()
        assert not interrupted()  # a closed deferral holds nothing
        assert signal.getsignal(signal.SIGINT) is mine
        _sigint()
        assert seen == [signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_an_ignored_ctrl_c_stays_ignored_and_other_threads_install_nothing():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with SigintDeferral() as sigint:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            _sigint()
            sigint.check()
            assert not sigint.received
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)

    handlers = []

    def in_a_thread() -> None:
        with SigintDeferral():  # signal.signal would raise outside the main thread
            handlers.append(signal.getsignal(signal.SIGINT))

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert handlers == [signal.getsignal(signal.SIGINT)]
