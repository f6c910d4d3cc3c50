"""The commit watch over a fake netlink socket: events read until none is left, an
overflow (ENOBUFS) makes what was touched unknown, no socket means no knowledge, and
kproxy's own full rewrites go unheard."""

from __future__ import annotations

import errno
from typing import Any

import pytest

import kproxy.backends.nft.netlink as netlink
from kproxy.backends.base import Touched
from kproxy.backends.nft import wire


def touching(set_name: str, generation: int) -> bytes:
    return (wire.event(wire.NEWSETELEM, 2, wire.name_attr(wire.TABLE, "kproxy"),
                       wire.name_attr(wire.ELEM_LIST_SET, set_name))
            + wire.generation_event(generation))


class FakeSocket:
    def __init__(self) -> None:
        self.queue: list[bytes | OSError] = []
        self.options: list[tuple[int, int, int]] = []

    def bind(self, _address: Any) -> None:
        pass

    def setsockopt(self, level: int, option: int, value: int) -> None:
        self.options.append((level, option, value))

    def setblocking(self, _flag: bool) -> None:
        pass

    def recv(self, _size: int) -> bytes:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "no more")
        item = self.queue.pop(0)
        if isinstance(item, OSError):
            raise item
        return item

    def close(self) -> None:
        pass


@pytest.fixture
def sock(monkeypatch: pytest.MonkeyPatch) -> FakeSocket:
    fake = FakeSocket()
    monkeypatch.setattr(netlink, "open_socket", lambda: fake)
    return fake


def test_events_are_read_until_none_is_left(sock: FakeSocket) -> None:
    watch = netlink.CommitWatch(["ip kproxy"])
    sock.queue += [touching("frontends", 5), touching("hairpin", 6)]
    assert watch.take() == {"ip kproxy": Touched(sets=frozenset({"frontends", "hairpin"}))}
    assert watch.seen(6) and not watch.seen(7)
    assert watch.take() == {}


def test_an_overflow_makes_the_next_take_unknown(sock: FakeSocket) -> None:
    watch = netlink.CommitWatch(["ip kproxy"])
    sock.queue += [OSError(errno.ENOBUFS, "No buffer space available"), touching("frontends", 5)]
    assert watch.take() is None
    assert watch.take() == {}


def test_kproxys_own_full_rewrite_goes_unheard_until_its_generations_are_owned(sock: FakeSocket) -> None:
    watch = netlink.CommitWatch(["ip kproxy"])
    membership = (netlink.SOL_NETLINK, netlink.NETLINK_ADD_MEMBERSHIP, netlink.NFNLGRP_NFTABLES)
    assert membership in sock.options
    watch.pause()
    assert sock.options[-1] == (netlink.SOL_NETLINK, netlink.NETLINK_DROP_MEMBERSHIP, netlink.NFNLGRP_NFTABLES)
    watch.resume()
    assert sock.options[-1] == membership
    watch.own(10, 11)  # the generation moved by kproxy's one transaction alone
    assert watch.take() == {}
    watch.pause()
    watch.resume()
    assert watch.take() is None  # others may have committed meanwhile


def test_without_nf_tables_the_watch_knows_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> None:
        raise OSError(errno.EPROTONOSUPPORT, "Protocol not supported")

    monkeypatch.setattr(netlink, "open_socket", refuse)
    watch = netlink.CommitWatch(["ip kproxy"])
    watch.drain()
    watch.pause()
    assert watch.take() is None and watch.seen(1)
