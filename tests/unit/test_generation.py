"""The ruleset generation reader: one socket kept open, opened again once when it broke."""

from __future__ import annotations

from typing import Any, ClassVar

import pytest

import kproxy.backends.generation as generation


class Reply:
    def __init__(self, value: int) -> None:
        self.value = value

    def get_attr(self, name: str) -> int | None:
        return self.value if name == "NFTA_GEN_ID" else None


class FakeSocket:
    opened: ClassVar[list[FakeSocket]] = []

    def __init__(self) -> None:
        self.closed = False
        self.requests = 0
        FakeSocket.opened.append(self)

    def request_get(self, *_args: Any) -> list[Reply]:
        self.requests += 1
        if len(FakeSocket.opened) == 1 and self.requests == 2:
            raise OSError("socket broke")
        return [Reply(40 + self.requests)]

    def close(self) -> None:
        self.closed = True


def test_one_socket_serves_every_read_and_a_broken_one_is_replaced(monkeypatch: pytest.MonkeyPatch) -> None:
    FakeSocket.opened = []
    monkeypatch.setattr(generation, "NFTSocket", FakeSocket)
    read = generation.RulesetGeneration()
    assert read() == 41
    assert read() == 41  # the first socket broke on its second request: a new one answered
    assert len(FakeSocket.opened) == 2 and FakeSocket.opened[0].closed
    assert read() == 42 and len(FakeSocket.opened) == 2  # and stays open


def test_no_nf_tables_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise OSError("protocol not supported")

    monkeypatch.setattr(generation, "NFTSocket", refuse)
    assert generation.RulesetGeneration()() is None
