"""nasproxy.search.address: a cluster address is checked, in seconds and in one line,
before anything is created."""

from __future__ import annotations

import http.server
import socket
import subprocess
import threading

import pytest

from nasproxy.errors import NasproxyError
from nasproxy.search.address import check_address
from tests.search.conftest import _none_left, _search_command


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_unreachable_address_fails_in_seconds_and_creates_nothing(inputs, tmp_path, marked):
    address = f"127.0.0.1:{_closed_port()}"
    proc = marked(
        _search_command(inputs, tmp_path, "nowhere", "--address", address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        out, err = proc.communicate(timeout=90)  # it used to wait on ray.init for minutes
    except subprocess.TimeoutExpired:
        pytest.fail(f"nasproxy search --address {address} still waits after 90 s")
    lines = err.decode().strip().splitlines()
    assert proc.returncode != 0 and len(lines) == 1, lines
    assert f"cannot reach the Ray cluster at {address}" in lines[0]
    assert "RAY_AUTH_TOKEN" in lines[0]
    assert not (tmp_path / "nowhere").exists() and out == b""
    for bad in ("127.0.0.1", "127.0.0.1:\u00b2", "127.0.0.1:70000"):
        with pytest.raises(NasproxyError, match="not auto, local or host:port"):
            check_address(bad)


def test_an_address_that_answers_but_is_not_ray_fails_in_one_line_creating_nothing(
    cluster, inputs, tmp_path, marked
):
    """A web server on the port: refused in seconds, before any folder or Ray exists."""
    server = http.server.HTTPServer(("127.0.0.1", 0), _Quiet)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        address = f"127.0.0.1:{server.server_address[1]}"
        proc = marked(
            _search_command(inputs, tmp_path, "web", "--address", address),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        out, err = proc.communicate(timeout=60)
    finally:
        server.shutdown()
    lines = err.decode().strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, lines
    assert f"{address} answers but is not a Ray cluster" in lines[0]
    assert not (tmp_path / "web").exists() and out == b""
    assert _none_left(marked) == {}
    check_address(cluster)  # a real cluster's address passes


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):  # no request log on the test's stderr
        pass
