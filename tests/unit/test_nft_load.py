"""kernel.load_elements: a load that need not be atomic goes as several transactions, each
committed (by a thread of its own) while the next is encoded. They must reach the kernel in
order, and a refused one must stop the load there, named by its set. The kernel's own
agreement is in tests/netns/test_netns_nft_load.py."""

from __future__ import annotations

from typing import Any

import pytest

from kproxy.backends.nft import kernel, wire
from kproxy.backends.nft.netlink import NetlinkError
from kproxy.backends.nft.objects import SetSpec
from kproxy.backends.nft.render import PRESENT

SPEC = "type ipv4_addr;"


def keys(data: bytes) -> list[str]:
    decoder = wire.ElementDecoder(wire.layout(SPEC))
    found = []
    for message in wire.messages(data):
        if message.kind == wire.NEWSETELEM:
            found += [key for key, _ in decoder.feed(message)]
    return found


def load(monkeypatch: pytest.MonkeyPatch, refuse: int | None) -> tuple[list[list[str]], Any]:
    """Nine elements in transactions of three; the commit numbered `refuse` is refused."""
    sent: list[list[str]] = []

    def commit(data: bytes, last: int, about: Any) -> None:
        sent.append(keys(data))
        if len(sent) - 1 == refuse:
            raise NetlinkError(f"{about(last)}: Invalid argument")

    monkeypatch.setattr(kernel, "commit", commit)
    monkeypatch.setattr(kernel, "TRANSACTION_ELEMENTS", 3)
    elements = [(f"10.0.0.{i}", PRESENT) for i in range(9)]
    outcome: Any
    try:
        outcome = kernel.LibNftKernel().load_elements("ip kproxy", [(SetSpec(name="pods", spec=SPEC), elements)],
                                                      atomic=False)
    except kernel.NftError as err:
        outcome = err
    return sent, outcome


def test_a_load_in_several_transactions_commits_them_in_order(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, committed = load(monkeypatch, refuse=None)
    assert committed == 3
    assert sent == [[f"10.0.0.{i}" for i in range(n, n + 3)] for n in (0, 3, 6)]


def test_a_refused_transaction_stops_the_load_and_names_its_set(monkeypatch: pytest.MonkeyPatch) -> None:
    sent, error = load(monkeypatch, refuse=1)
    assert isinstance(error, kernel.NftError) and "set pods" in str(error)
    assert len(sent) == 2  # the third was encoded, never sent
