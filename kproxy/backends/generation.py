"""The nftables ruleset generation of this network namespace: a counter the kernel bumps
on every committed transaction, of any table, iptables-nft's included. Reading it costs
about 10 µs over an open netlink socket, so each sync can tell cheaply whether anyone
touched the rules."""

from __future__ import annotations

import socket
from collections.abc import Callable

import structlog

from kproxy.backends.nft import wire
from kproxy.backends.nft.netlink import open_socket

log = structlog.get_logger(__name__)

READ_TIMEOUT_S = 5.0


def _open() -> socket.socket:
    sock = open_socket()
    sock.settimeout(READ_TIMEOUT_S)
    return sock


class RulesetGeneration:
    """Reads the generation over one raw netlink socket kept open (pyroute2 took ~0.5 ms
    a read, three reads a sync: more than the kernel's share of a one-endpoint sync). Not
    thread-safe: the agent reads it under its sync lock. Returns None when the kernel
    cannot tell (no nf_tables)."""

    def __init__(self, open_socket: Callable[[], socket.socket] = _open) -> None:
        self._open = open_socket
        self._sock: socket.socket | None = None

    def __call__(self) -> int | None:
        error: Exception | None = None
        for _attempt in range(2):  # a socket that broke is opened again once
            try:
                if self._sock is None:
                    self._sock = self._open()
                return _read(self._sock)
            except OSError as err:  # no nf_tables, no permission, a broken socket
                self.close()
                error = err
        log.debug("no nftables generation", error=str(error))
        return None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _read(sock: socket.socket) -> int | None:
    sock.send(wire.request(wire.GETGEN, 0, 0))
    for reply in wire.messages(sock.recv(1 << 16)):
        if reply.kind == wire.NEWGEN:
            return wire.generation(reply)
        if reply.kind == wire.ERROR and wire.error_code(reply):
            raise OSError(-wire.error_code(reply), "GETGEN refused")
    raise OSError("no answer to GETGEN")
