"""batch.py: set elements encoded as nf_tables messages decode back (wire.ElementDecoder,
which reads what the kernel stores) to the very text render wrote; transactions split and
acknowledge as the kernel needs. The kernel's own agreement is in
tests/netns/test_netns_nft_load.py."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from kproxy.backends.nft import batch, wire
from kproxy.backends.nft.objects import Element
from kproxy.backends.nft.render import endpoint_element
from kproxy.plan import Target

CASES = [
    ("type ipv4_addr;", [("10.96.0.10", None), ("10.96.0.11", None)]),
    ("type inet_service;", [("0", None)]),
    ("typeof ip daddr . meta l4proto . th dport;", [("10.96.0.10 . tcp . 80", None), ("10.96.0.10 . sctp . 9", None)]),
    ("typeof meta l4proto . th dport : verdict;", [("udp . 30053", "goto dnat-nodeport-3"), ("tcp . 1", "drop")]),
    ("typeof ip daddr . meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport;",
     [("10.96.0.10 . tcp . 80 . 2", "10.244.1.2 . 8080")]),
    ("typeof ip6 daddr . meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport;",
     [("fd00:96::10 . udp . 53 . 1", "fd00:244::2 . 5353")]),
    ("typeof ip saddr . ip daddr;", [("10.244.1.2 . 10.244.1.2", None)]),
    ("typeof ip daddr . th dport . ip saddr; flags interval;",
     [("192.0.2.10 . 80 . 10.0.0.0/8", None), ("192.0.2.10 . 443 . 203.0.113.7", None)]),
    ("type ipv4_addr; flags interval;",
     [("0.0.0.0/8", None), ("10.128.0.0/9", None), ("192.168.0.1-192.168.0.9", None)]),
    ("type ipv4_addr; flags interval;", [("10.96.0.0/12", None), ("255.255.255.0/24", None)]),
    ("type ipv6_addr; flags interval;", [("fd00:96::/112", None)]),
]


def decoded(spec: str, data: bytes) -> list[tuple[str, str | None]]:
    decoder = wire.ElementDecoder(wire.layout(spec))
    out = []
    for message in wire.messages(data):
        if message.kind == wire.NEWSETELEM:
            out += decoder.feed(message)
    return sorted(out + list(decoder.finish()))


@pytest.mark.parametrize(("spec", "elements"), CASES, ids=[c[0] for c in CASES])
def test_elements_decode_back_to_what_render_wrote(spec: str, elements: list[tuple[str, str | None]]) -> None:
    tx = batch.Batch(wire.NFPROTO["ip"], "kproxy")
    tx.add("s", batch.elements_encoder(spec)((key, Element(data, "default/web:http")) for key, data in elements))
    data, last = tx.finish()
    assert last is not None
    assert decoded(spec, data) == sorted(elements)


def test_a_comment_is_element_userdata_and_the_last_message_asks_for_the_ack() -> None:
    tx = batch.Batch(wire.NFPROTO["ip"], "kproxy")
    tx.add("skeleton", batch.elements_encoder("type inet_service;")([("0", Element(comment="0123abcd"))]))
    data, last = tx.finish()
    kinds = [(m.kind, bool(m.flags & wire.NLM_F_ACK)) for m in wire.messages(data)]
    assert kinds == [(wire.NEWSETELEM, True)]  # BATCH_BEGIN/END belong to no subsystem
    (message,) = wire.messages(data)
    assert wire.element_comment(message) == "0123abcd" and last == 2


def test_elements_that_cannot_be_encoded_are_refused() -> None:
    with pytest.raises(ValueError, match="does not have 3 fields"):
        list(batch.elements_encoder("typeof ip daddr . meta l4proto . th dport;")([("10.96.0.10 . tcp", Element())]))
    with pytest.raises(ValueError, match="not a verdict"):
        list(batch.elements_encoder("typeof meta l4proto . th dport : verdict;")([("tcp . 80", Element("goto"))]))
    with pytest.raises(ValueError, match="overlap"):
        list(batch.elements_encoder("type ipv4_addr; flags interval;")(
            [("10.0.0.0/8", Element()), ("10.1.0.0/16", Element())]))


ENDPOINT_MAPS = [
    ("typeof ip daddr . meta l4proto . th dport . numgen random mod 3 : ip daddr . th dport;",
     ["10.96.0.10 . tcp . 80", "10.96.0.11 . sctp . 9"], "10.244.{}.{}"),
    ("typeof meta l4proto . th dport . numgen random mod 2 : ip daddr . th dport;",
     ["udp . 30053", "tcp . 30080"], "10.244.{}.{}"),
    ("typeof ip6 daddr . meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport;",
     ["fd00:96::10 . udp . 53"], "fd00:244::{:x}:{:x}"),
]


@pytest.mark.parametrize(("spec", "prefixes", "address"), ENDPOINT_MAPS, ids=[m[0] for m in ENDPOINT_MAPS])
def test_endpoint_rows_encode_as_their_elements_do(spec: str, prefixes: list[str], address: str) -> None:
    # rows of 1, 3 and 300 endpoints (indexes past 255 too), ports from 1 to 65535
    sizes = [1, 3, 300]
    rows = [(prefix, [Target(ip_address(address.format(n, i % 250)), 1 + (i * 997) % 65535) for i in range(size)])
            for n, (prefix, size) in enumerate(zip(prefixes * 3, sizes, strict=False))]
    elements = [(f"{prefix} . {i}", endpoint_element(t)) for prefix, row in rows for i, t in enumerate(row)]
    by_rows = list(batch.endpoint_rows_encoder(spec)(rows))
    assert by_rows == list(batch.elements_encoder(spec)(elements))
    assert len(by_rows) == sum(len(row) for _, row in rows)


def test_endpoint_rows_of_another_layout_or_family_are_refused() -> None:
    with pytest.raises(ValueError, match="not an endpoint map"):
        batch.endpoint_rows_encoder("typeof meta l4proto . th dport : verdict;")
    encode = batch.endpoint_rows_encoder(ENDPOINT_MAPS[0][0])
    with pytest.raises(ValueError, match="not of the map's family"):
        list(encode([("10.96.0.10 . tcp . 80", [Target(ip_address("fd00::1"), 80)])]))
    with pytest.raises(ValueError, match="does not have 3 fields"):
        list(encode([("tcp . 80", [Target(ip_address("10.0.0.1"), 80)])]))


def test_a_load_splits_into_transactions_of_at_most_the_limit_and_keeps_every_element() -> None:
    encode = batch.elements_encoder("type ipv4_addr;")
    sets = [(name, list(encode((f"10.0.{i // 250}.{i % 250}", Element()) for i in range(count))))
            for name, count in (("a", 2500), ("b", 10), ("c", 1500))]
    split = list(batch.transactions(wire.NFPROTO["ip"], "kproxy", [], sets, limit=1000))
    assert [tx.elements for tx in split] == [1000, 1000, 1000, 1000, 10]
    whole = list(batch.transactions(wire.NFPROTO["ip"], "kproxy", ["a"], sets))
    assert [tx.elements for tx in whole] == [4010]
    # messages stay within one netlink attribute's 64 KiB
    data, _last = whole[0].finish()
    assert all(len(m.body) < 65536 for m in wire.messages(data))


def test_messages_are_filled_up_to_their_size_in_order() -> None:
    # comments of different lengths: elements of different sizes
    encode = batch.elements_encoder("type ipv4_addr;")
    elements = list(encode((f"10.1.{i // 250}.{i % 250}", Element(None, "c" * (i % 97))) for i in range(3000)))
    tx = batch.Batch(wire.NFPROTO["ip"], "kproxy")
    tx.add("s", iter(elements))
    data, _last = tx.finish()
    lists = [wire.attributes(m.body)[wire.ELEM_LIST_ELEMENTS] for m in wire.messages(data)
             if m.kind == wire.NEWSETELEM]
    assert b"".join(lists) == b"".join(elements) and tx.elements == 3000
    sizes = [len(chunk) for chunk in lists]
    assert all(size <= batch.MESSAGE_ELEMENTS_BYTES for size in sizes)
    # each message but the last is full: the next element would not have fit
    assert all(size + max(map(len, elements)) > batch.MESSAGE_ELEMENTS_BYTES for size in sizes[:-1])
