"""The ruleset generation reader: one socket kept open, opened again once when it broke."""

from __future__ import annotations

import socket
from typing import ClassVar

from kproxy.backends import generation
from kproxy.backends.nft import wire


class FakeSocket:
    """Answers GETGEN with a NEWGEN of 40 + the requests it has seen; the first socket
    breaks on its second request."""

    opened: ClassVar[list[FakeSocket]] = []

    def __init__(self) -> None:
        self.closed = False
        self.requests = 0
        FakeSocket.opened.append(self)

    def send(self, data: bytes) -> int:
        (request,) = wire.messages(data)
        assert request.kind == wire.GETGEN
        self.requests += 1
        if len(FakeSocket.opened) == 1 and self.requests == 2:
            raise OSError("socket broke")
        return len(data)

    def recv(self, _size: int) -> bytes:
        return wire.generation_event(40 + self.requests)

    def close(self) -> None:
        self.closed = True


def fake() -> socket.socket:
    return FakeSocket()  # type: ignore[return-value]


def test_one_socket_serves_every_read_and_a_broken_one_is_replaced() -> None:
    FakeSocket.opened = []
    read = generation.RulesetGeneration(fake)
    assert read() == 41
    assert read() == 41  # the first socket broke on its second request: a new one answered
    assert len(FakeSocket.opened) == 2 and FakeSocket.opened[0].closed
    assert read() == 42 and len(FakeSocket.opened) == 2  # and stays open


def test_no_nf_tables_is_none() -> None:
    def refuse() -> socket.socket:
        raise OSError("protocol not supported")

    assert generation.RulesetGeneration(refuse)() is None
