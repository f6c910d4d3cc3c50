"""The metrics and healthz servers when their address cannot be bound: retried (upstream
retries every 5 s), given up after a while so `kproxy run` exits non-zero, or fatal at once
with --bind-address-hard-fail (upstream's bindAddressHardFail)."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request
from collections.abc import Iterator

import pytest

from kproxy.cli import wiring
from kproxy.cli.logs import configure_logging
from kproxy.cli.wiring import BindError, start_observability
from kproxy.tracker import Tracker


@pytest.fixture
def busy() -> Iterator[tuple[socket.socket, str]]:
    """A port some other program holds."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    try:
        yield sock, f"127.0.0.1:{sock.getsockname()[1]}"
    finally:
        sock.close()


@pytest.fixture
def quick(monkeypatch: pytest.MonkeyPatch) -> None:
    configure_logging()  # to stderr, as `kproxy run` logs
    monkeypatch.setattr(wiring, "BIND_RETRY_S", 0.05)
    monkeypatch.setattr(wiring, "BIND_GIVE_UP_S", 0.5)


def wait_for(condition, seconds: float = 5.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_hard_fail_names_the_server_and_address(busy):
    _sock, address = busy
    with pytest.raises(BindError, match=f"cannot serve healthz on {address}: Address already in use"):
        start_observability("nftables", Tracker(), 30.0, None, address, hard_fail=True)


def test_a_busy_address_is_retried_until_it_is_free(busy, quick, capsys):
    sock, address = busy
    obs = start_observability("nftables", Tracker(), 30.0, address, None)
    stop = threading.Event()
    reasons: list[str] = []
    try:
        assert obs.servers == [] and [w.name for w in obs.unbound] == ["metrics"]
        err = capsys.readouterr().err
        assert "cannot serve; retrying every" in err and "server=metrics" in err and address in err
        obs.keep_binding(stop, reasons.append)
        time.sleep(0.15)
        assert obs.servers == []  # still busy: retried, not given up yet
        sock.close()  # the other program lets go (a kube-proxy being replaced, say)
        assert wait_for(lambda: len(obs.servers) == 1)
        with urllib.request.urlopen(f"http://{address}/proxyMode", timeout=5) as resp:
            assert resp.read() == b"nftables"
        assert obs.unbound == [] and reasons == []
    finally:
        stop.set()
        obs.close()


def test_an_address_that_never_binds_is_given_up_with_why(busy, quick, capsys):
    _sock, address = busy
    obs = start_observability("nftables", Tracker(), 30.0, None, address)
    stop = threading.Event()
    reasons: list[str] = []
    try:
        obs.keep_binding(stop, reasons.append)
        assert wait_for(lambda: bool(reasons))
        assert reasons == [f"cannot serve healthz on {address}: Address already in use (retried for 0.5s)"]
        err = capsys.readouterr().err
        assert "cannot serve yet; retrying" in err and address in err
    finally:
        stop.set()
        obs.close()
