"""One driver per experiment: the lock file ``DIR/EXP/.lock``.

The lock is created whole (a private temporary file, hard-linked to ``.lock``: the link
fails when a lock exists), so two drivers never both take it and nobody reads half a lock.
Its holder refreshes the file's mtime every ``HEARTBEAT_S`` seconds. A stale lock (its
holder's process gone on this host, ``host_id``; elsewhere, no heartbeat for ``STALE_S``)
is broken under a ``flock`` on ``.lock.break`` and only while its random token is
unchanged. ``ensure_held`` checks the token before every write; a lost lock ends the run
with ``LockLostError``. See docs/reliability.md#one-driver-per-experiment.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nasproxy import results
from nasproxy.errors import IncompleteError, NasproxyError
from nasproxy.provenance import utc_now

LOCK_NAME = results.LOCK
BREAK_NAME = ".lock.break"
HEARTBEAT_S = 20.0
STALE_S = 180.0  # a heartbeat this old means the holder is gone (or hung)


class LockLostError(IncompleteError):
    """This driver's experiment lock was taken over or removed: it must write nothing more."""


# locks this process holds, by path: a nested take (--fresh, then the sweep) reuses them
_held: dict[Path, _Lock] = {}
_held_guard = threading.Lock()


class _Lock:
    def __init__(self, path: Path, token: str, created_dir: bool):
        self.path = path
        self.token = token
        self.created_dir = created_dir
        self.depth = 1
        self.lost = False
        self.stop = threading.Event()
        self.heartbeat = threading.Thread(target=self._beat, name="nasproxy-lock", daemon=True)
        self.heartbeat.start()

    def _beat(self) -> None:
        while not self.stop.wait(HEARTBEAT_S):
            if not self.check():
                return  # never refresh a lock another driver holds now
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def check(self) -> bool:
        """Whether the lock file still carries this holder's token (remembered once lost).

        A lock file that cannot be read for a moment (an I/O error) is not taken as lost;
        one that is gone or names another holder is.
        """
        if not self.lost:
            try:
                token = (json.loads(self.path.read_text()) or {}).get("token")
            except FileNotFoundError:
                token = None
            except OSError:
                return True
            except (ValueError, AttributeError):
                token = None
            self.lost = token != self.token
        return not self.lost

    def release(self) -> None:
        self.stop.set()
        self.heartbeat.join()
        if (_read(self.path) or {}).get("token") == self.token:
            self.path.unlink(missing_ok=True)
        if self.created_dir:  # the directory existed only for the lock: leave nothing
            with contextlib.suppress(OSError):
                self.path.parent.rmdir()


@contextlib.contextmanager
def experiment_lock(exp_dir: Path) -> Iterator[None]:
    """Hold ``exp_dir``'s lock for the block; refuse (one line) when a live driver holds it.

    Re-entrant within a process. Creates ``exp_dir`` if needed, and removes it again on
    release when it is left empty.
    """
    path = Path(exp_dir).resolve() / LOCK_NAME  # one key however the caller spells it
    with _held_guard:
        held = _held.get(path)
        if held is not None:
            held.depth += 1
    if held is None:
        held = _acquire(path)
        with _held_guard:
            _held[path] = held
    try:
        yield
    finally:
        with _held_guard:
            held.depth -= 1
            last = held.depth == 0
            if last:
                del _held[path]
        if last:
            held.release()


def holds(exp_dir: Path | str) -> bool:
    """Whether this process holds ``exp_dir``'s lock and the lock file still names it."""
    with _held_guard:
        held = _held.get(Path(exp_dir).resolve() / LOCK_NAME)
    return held is not None and held.check()


def ensure_held(exp_dir: Path | str) -> None:
    """Raise ``LockLostError`` unless this process ``holds`` ``exp_dir``'s lock: called
    before anything is written to or deleted from the experiment."""
    if not holds(exp_dir):
        raise LockLostError(lost_message(Path(exp_dir).resolve() / LOCK_NAME))


def any_lost() -> bool:
    """Whether a lock this process holds has been lost (read by the sweep's Tune stopper)."""
    with _held_guard:
        held = list(_held.values())
    return any(lock.lost for lock in held)


def held_token(exp_dir: Path | str) -> str:
    """The token of ``exp_dir``'s lock held by this process (for the trials' own check)."""
    with _held_guard:
        held = _held.get(Path(exp_dir).resolve() / LOCK_NAME)
    if held is None:
        raise LockLostError(lost_message(Path(exp_dir).resolve() / LOCK_NAME))
    return held.token


def check_token(exp_dir: Path | str, token: str) -> None:
    """Raise ``LockLostError`` when ``exp_dir``'s lock file names a holder other than
    ``token``: a trial's check, in its own process or the driver's, that its driver still
    holds the experiment. A missing lock file is lost where the experiment's manifest is
    seen (the driver writes it before any trial: the results directory is shared); a node
    that does not share the results directory has neither, and passes."""
    path = Path(exp_dir) / LOCK_NAME
    if path.exists():
        if _token(path) != token:
            raise LockLostError(lost_message(path))
    elif (path.parent / results.MANIFEST).exists():
        raise LockLostError(lost_message(path))


def lost_message(path: Path) -> str:
    holder = _read(path)
    who = "nobody holds it now" if holder is None else _who(holder)
    return (
        f"this driver lost the lock of experiment {path.parent.name!r} ({who}); it stopped "
        "and wrote nothing more: let the other driver finish, or run the command again"
    )


def host_id() -> str:
    """What tells this host apart: hostname, boot id and PID namespace (containers sharing a
    hostname differ in the latter; two boots of one host in the former)."""
    parts = [socket.gethostname()]
    try:
        parts.append(Path("/proc/sys/kernel/random/boot_id").read_text().strip())
    except OSError:
        parts.append("")
    try:
        parts.append(str(os.stat("/proc/self/ns/pid").st_ino))
    except OSError:
        parts.append("")
    return "/".join(parts)


def _token(path: Path) -> str | None:
    return (_read(path) or {}).get("token")


def _acquire(path: Path) -> _Lock:
    created_dir = not path.parent.exists()
    token = os.urandom(8).hex()
    info = {
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "host_id": host_id(),
        "started": utc_now(),
        "process_start": _process_start(os.getpid()),
        "token": token,
    }
    tmp = path.with_name(f"{LOCK_NAME}.{token}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(info) + "\n")
    except OSError as exc:
        if created_dir:
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise NasproxyError(f"cannot write the lock {path} ({exc.strerror or exc})") from None
    try:
        for _ in range(20):  # each pass either takes the lock, refuses, or clears a stale one
            if _create(tmp, path):
                return _Lock(path, token, created_dir)
            if path.is_dir():  # no driver's lock: never judged stale, never removed
                raise NasproxyError(
                    f"the lock {path} is a directory, not a nasproxy lock file; if no driver "
                    "runs this experiment, remove it"
                )
            holder = _read(path)
            if holder is None and not path.exists():
                continue  # released between the link and the read
            if not _is_stale(path, holder):
                raise NasproxyError(_busy_message(path, holder))
            _break(path, holder)
            time.sleep(0.05)
        raise NasproxyError(f"cannot take the lock {path}: other drivers keep taking it")
    except BaseException:
        tmp.unlink(missing_ok=True)
        if created_dir:
            with contextlib.suppress(OSError):
                path.parent.rmdir()
        raise
    finally:
        tmp.unlink(missing_ok=True)


def _create(tmp: Path, path: Path) -> bool:
    """Make ``tmp``'s content appear as ``path`` unless ``path`` exists; whether it did."""
    try:
        os.link(tmp, path)  # atomic, and the lock appears with its content
        return True
    except FileExistsError:
        return False
    except OSError:  # no hard links on this file system: exclusive create, then write
        pass
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as fh:
        fh.write(tmp.read_bytes())
    return True


def _who(holder: dict[str, Any]) -> str:
    return (
        f"another nasproxy search (pid {holder.get('pid')} on {holder.get('host')}, "
        f"since {holder.get('started')})"
    )


def _busy_message(path: Path, holder: dict[str, Any] | None) -> str:
    if holder is None:
        who = "another driver (its lock file is unreadable)"
    else:
        who = _who(holder)
    return (
        f"experiment {path.parent.name!r} is in use by {who}; wait for it to finish, or, if "
        f"it is no longer running, delete {path}"
    )


def _read(path: Path) -> dict[str, Any] | None:
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return info if isinstance(info, dict) else None


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0


def _same_host(holder: dict[str, Any]) -> bool:
    if "host_id" in holder:
        return holder["host_id"] == host_id()
    return holder.get("host") == socket.gethostname()  # a lock of an older nasproxy


def _is_stale(path: Path, holder: dict[str, Any] | None) -> bool:
    if holder is not None and _same_host(holder):
        pid = holder.get("pid")
        if not isinstance(pid, int) or not _alive(pid):
            return True
        start = holder.get("process_start")
        # a live holder here is never stale, however old its heartbeat (it may be paused)
        return start is not None and _process_start(pid) not in (None, start)  # pid reused
    return _age(path) > STALE_S


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _process_start(pid: int) -> int | None:
    """The process's start time in clock ticks after boot (Linux), else None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[-1].split()
    return int(fields[19]) if len(fields) > 19 else None


def _break(path: Path, stale: dict[str, Any] | None) -> None:
    """Remove the stale lock ``stale`` unless it was replaced meanwhile."""
    with _break_guard(path.with_name(BREAK_NAME)) as guarded:
        if not guarded:
            return  # another driver is breaking it; try again
        current = _read(path)
        same = (current or {}).get("token") == (stale or {}).get("token")
        if same and _is_stale(path, current):
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def _break_guard(guard: Path) -> Iterator[bool]:
    """Hold an exclusive ``flock`` on ``guard`` for the block (whether it was free).

    The kernel drops the flock of a process that dies, so a guard never needs expiring; a
    file left by a dead breaker (or an older nasproxy) is simply locked and reused. The file
    is removed before its flock is dropped, so a waiter that then locks the removed file
    sees that it is no longer ``guard`` and tries again.
    """
    for _ in range(20):
        fd = os.open(guard, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            yield False
            return
        except OSError as exc:
            os.close(fd)
            raise NasproxyError(
                f"cannot lock {guard} ({exc.strerror or exc}); if no driver runs this "
                f"experiment, delete {guard.with_name(LOCK_NAME)}"
            ) from None
        try:
            current = os.stat(guard).st_ino
        except FileNotFoundError:
            current = None
        if current != os.fstat(fd).st_ino:  # removed by the breaker that held it before
            os.close(fd)
            continue
        try:
            yield True
        finally:
            guard.unlink(missing_ok=True)
            os.close(fd)  # drops the flock
        return
    yield False
