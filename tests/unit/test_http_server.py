"""The HTTP server strangers can reach (/healthz, healthCheckNodePorts): idle or slow
clients cannot starve it, vanished clients leave no traceback."""

from __future__ import annotations

import resource
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from structlog.testing import capture_logs

from kproxy.health import http
from kproxy.health.http import TEXT, RouteServer


@pytest.fixture
def server() -> Iterator[RouteServer]:
    s = RouteServer("127.0.0.1:0", {"/healthz": lambda: (200, TEXT, b"ok")}, "test").start(announce=False)
    try:
        yield s
    finally:
        s.close()


def get(port: int, path: str = "/healthz", timeout: float = 2.0) -> tuple[int, bytes]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as resp:
        return resp.status, resp.read()


def idle_clients(port: int, count: int, send: bytes = b"") -> list[socket.socket]:
    clients = []
    for _ in range(count):
        c = socket.create_connection(("127.0.0.1", port), timeout=5)
        if send:
            c.sendall(send)
        clients.append(c)
    return clients


@pytest.fixture
def many_files() -> Iterator[None]:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_healthz_answers_while_thousands_of_idle_connections_are_open(server, many_files):
    clients = idle_clients(server.port, 1500) + idle_clients(server.port, 1500, send=b"GET /healthz HTTP/1.1\r\n")
    try:
        started = time.monotonic()
        assert get(server.port) == (200, b"ok")
        assert time.monotonic() - started < 2
    finally:
        for c in clients:
            c.close()


def test_when_full_the_longest_waiting_client_makes_room(server, monkeypatch):
    monkeypatch.setattr(http, "MAX_CONNECTIONS", 20)
    clients = idle_clients(server.port, 40)
    try:
        assert get(server.port) == (200, b"ok")
        time.sleep(0.2)
        clients[0].settimeout(2)
        assert clients[0].recv(1) == b""  # the oldest was closed to make room
    finally:
        for c in clients:
            c.close()


def test_a_client_too_slow_to_send_its_request_is_dropped(server, monkeypatch):
    monkeypatch.setattr(http, "HEADER_TIMEOUT_S", 0.3)
    (slow,) = idle_clients(server.port, 1, send=b"GET /hea")
    slow.settimeout(3)
    started = time.monotonic()
    assert slow.recv(1) == b""
    assert time.monotonic() - started < 2
    slow.close()


def test_a_vanished_client_is_a_debug_line_not_a_traceback(server):
    with capture_logs() as logs:
        for _ in range(20):
            c = socket.create_connection(("127.0.0.1", server.port))
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")  # reset on close
            c.sendall(b"GET /healthz HTTP/1.1\r\n\r\n")
            c.close()
        assert get(server.port) == (200, b"ok")
        time.sleep(0.2)
    assert not [entry for entry in logs if entry["log_level"] not in ("debug",)]


def test_routes_methods_and_unknown_paths(server):
    assert get(server.port)[0] == 200
    with pytest.raises(urllib.error.HTTPError) as err:
        get(server.port, "/nope")
    assert err.value.code == 404
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as c:
        c.sendall(b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
        assert c.recv(100).startswith(b"HTTP/1.1 405")
    with socket.create_connection(("127.0.0.1", server.port), timeout=2) as c:
        c.sendall(b"HEAD /healthz HTTP/1.1\r\n\r\n")
        reply = c.recv(1000)
        assert reply.startswith(b"HTTP/1.1 200") and reply.endswith(b"\r\n\r\n")  # headers, no body


def test_a_port_in_use_fails_in_the_caller(server):
    with pytest.raises(OSError):
        RouteServer(f"127.0.0.1:{server.port}", {}, "twice")


def test_every_address_of_both_families():
    s = RouteServer(":0", {"/": lambda: (200, TEXT, b"both")}, "both").start(announce=False)
    try:
        assert get(s.port, "/") == (200, b"both")
        with urllib.request.urlopen(f"http://[::1]:{s.port}/", timeout=2) as resp:
            assert resp.read() == b"both"
    finally:
        s.close()
