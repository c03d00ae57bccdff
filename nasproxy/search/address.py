"""A Ray cluster address is checked for reachability before anything is created.

``ray.init(address=...)`` on an address where nothing answers waits for minutes with only
warnings; a TCP connect with a timeout answers in seconds. ``auto`` is resolved the way Ray
resolves it (``RAY_ADDRESS``, else the cluster that ``ray start`` recorded on this machine).
"""

from __future__ import annotations

import socket

from nasproxy.errors import NasproxyError, first_line

CONNECT_TIMEOUT_S = 5.0
AUTH_HINT = (
    "a cluster with token authentication also needs RAY_AUTH_MODE=token and its token in "
    "RAY_AUTH_TOKEN or ~/.ray/auth_token"
)


def check_address(address: str | None, timeout_s: float = CONNECT_TIMEOUT_S) -> None:
    """Refuse, in one line naming it, a Ray address that is malformed or does not answer."""
    if address is None or address == "local":
        return
    target = _auto_address() if address == "auto" else address
    if target is None:  # Ray's resolver moved: ray.init resolves "auto" itself
        return
    host, port = _host_port(address, target)
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except OSError as exc:
        reason = (exc.strerror or str(exc) or exc.__class__.__name__).lower()
    else:
        return
    raise NasproxyError(
        f"cannot reach the Ray cluster at {address} ({host}:{port}: {reason}); check the "
        f"address and that the cluster's head node is running (`ray start --head`); {AUTH_HINT}"
    )


def _host_port(address: str, target: str) -> tuple[str, int]:
    target = target.split("://", 1)[-1].rstrip("/")  # ray://host:port (Ray Client)
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise NasproxyError(f"--address {address!r} is not auto, local or host:port")
    return host, int(port)


def _auto_address() -> str | None:
    """What Ray's ``address="auto"`` would join: RAY_ADDRESS or the recorded local cluster."""
    try:
        from ray._private.services import canonicalize_bootstrap_address
    except ImportError:
        return None
    try:
        resolved = canonicalize_bootstrap_address("auto")
    except (ConnectionError, ValueError) as exc:
        raise NasproxyError(
            f"--address auto found no Ray cluster ({first_line(exc)}); start one with `ray start "
            "--head`, or give host:port"
        ) from None
    if not resolved:
        raise NasproxyError("--address auto found no Ray cluster; give host:port")
    return resolved
