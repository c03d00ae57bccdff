"""A Ray cluster address is checked before anything is created.

``ray.init`` on an address where nothing answers waits for minutes, and on one that is not
Ray (a web server) spends tens of seconds on warnings; a TCP connect with a timeout, then an
HTTP/2 client preface that Ray's gRPC services (the head's GCS, the Ray Client behind
``ray://``) answer with a SETTINGS frame, tells both in
seconds (with ``RAY_USE_TLS``: reachability only). ``auto`` is resolved as Ray resolves it.
See docs/reliability.md#interruptions-clusters-and-crashes.
"""

from __future__ import annotations

import os
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
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            answer = None if _tls() else _http2_answer(sock, timeout_s)
    except TimeoutError:
        reason = f"no answer within {timeout_s:g} s"
    except OSError as exc:
        reason = (exc.strerror or str(exc) or exc.__class__.__name__).lower()
    else:
        if answer is None:
            return
        raise NasproxyError(
            f"{address} answers but is not a Ray cluster ({host}:{port} does not speak Ray's "
            f"gRPC: {answer}); give the head node's GCS port (`ray start --head` prints it, "
            "6379 by default), or ray://host:10001 for the Ray Client"
        )
    raise NasproxyError(
        f"cannot reach the Ray cluster at {address} ({host}:{port}: {reason}); check the "
        f"address and that the cluster's head node is running (`ray start --head`); {AUTH_HINT}"
    )


HTTP2_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"
SETTINGS_FRAME = b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"  # empty, stream 0
SETTINGS = 0x04


def _http2_answer(sock: socket.socket, timeout_s: float) -> str | None:
    """None when the server answers an HTTP/2 client preface with a SETTINGS frame (as
    every HTTP/2 server must, gRPC included); else what it did instead, in a few words."""
    sock.settimeout(timeout_s)
    try:
        sock.sendall(HTTP2_PREFACE + SETTINGS_FRAME)
        head = b""
        while len(head) < 9:
            chunk = sock.recv(9 - len(head))
            if not chunk:
                break
            head += chunk
    except TimeoutError:
        return f"no answer to an HTTP/2 preface within {timeout_s:g} s"
    except OSError as exc:
        return f"the connection failed ({(exc.strerror or str(exc)).lower()})"
    if len(head) == 9 and head[3] == SETTINGS:
        return None
    if not head:
        return "it closed the connection"
    try:
        sock.settimeout(0.5)
        head += sock.recv(55)  # enough for a first line such as an HTTP status
    except OSError:
        pass
    text = (head.decode("ascii", "replace").splitlines() or [""])[0].strip()
    return f"it answered {text!r}" if text.isprintable() and text else "it answered garbage"


def _tls() -> bool:
    return os.environ.get("RAY_USE_TLS", "0").lower() in ("1", "true")


def _host_port(address: str, target: str) -> tuple[str, int]:
    target = target.split("://", 1)[-1].rstrip("/")  # ray://host:port (Ray Client)
    host, sep, port = target.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
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
