"""Set elements as one nf_tables transaction of netlink messages, without nft. Pure.

`nft -f` of kproxy's 10,000-Service table spends 1.5 s of CPU parsing 200,000 elements
into expression trees, and its cost grows faster than the table (27 s at 50,000 Services);
the kernel's own share is a fraction of that. A full sync therefore sends the elements
itself: the skeleton (chains, rules, set definitions) still goes through nft, and the
elements follow as NEWSETELEM messages encoded here from the text render writes.

The encoding is nft 1.0.6's, as the kernel stores it (read back by wire.ElementDecoder):
fields padded to 4 bytes, ports and addresses in network order, `numgen` results in host
order; a one-field interval set as start elements and end elements (the first address
past the range, flagged INTERVAL_END; none for a range open to the top, whose start is
flagged open instead), with an end element at zero when no range starts there; a
concatenation with an interval as a key and an end key; a comment as element userdata.
"""

from __future__ import annotations

import socket
import struct
from bisect import bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from functools import partial
from ipaddress import IPv4Address, IPv6Address, ip_network
from itertools import accumulate, islice, pairwise
from typing import Protocol

from kproxy.backends.nft import wire
from kproxy.backends.nft.objects import COMMENT_MAX, Element
from kproxy.backends.nft.wire import attr as _attr

NFNL_MSG_BATCH_BEGIN, NFNL_MSG_BATCH_END = 0x10, 0x11
NLM_F_CREATE = 0x400
LIST_ELEM = 1  # NFTA_LIST_ELEM
UDATA_FLAGS = 1  # NFTNL_UDATA_SET_ELEM_FLAGS
UDATA_INTERVAL_OPEN = 1  # NFTNL_SET_ELEM_F_INTERVAL_OPEN
# An element list is one netlink attribute, whose length is 16 bits.
MESSAGE_ELEMENTS_BYTES = 60_000
# Elements per transaction when a load need not be atomic (a table just created): the
# kernel's cost grows faster than a transaction's size (10,000 Services' 204,000 elements:
# 1.7 s as one transaction, 0.5 s as transactions of 20,000 on kernel 6.18).
TRANSACTION_ELEMENTS = 20_000
VERDICT_CODES = {"drop": 0, "accept": 1, "continue": -1, "return": -5, "jump": -3, "goto": -4}

_ATTR = struct.Struct("=HH")
_HEADER = struct.Struct("=IHHII")
_BE32 = struct.Struct(">I")
_BE32_SIGNED = struct.Struct(">i")
_HOST32 = struct.Struct("=I")
_PROTOCOLS = {"tcp": 6, "udp": 17, "sctp": 132, "icmp": 1, "ipv6-icmp": 58}

Encoder = Callable[[str], bytes]


# partials, not functions: called from C, for each of 100,000s of addresses
_addr4: Encoder = partial(socket.inet_pton, socket.AF_INET)
_addr6: Encoder = partial(socket.inet_pton, socket.AF_INET6)


def _proto(text: str) -> bytes:
    number = _PROTOCOLS.get(text)
    return bytes([number if number is not None else int(text), 0, 0, 0])


def _port(text: str) -> bytes:
    return int(text).to_bytes(2, "big") + b"\0\0"


def _host32(text: str) -> bytes:
    return _HOST32.pack(int(text))


_ENCODERS: dict[str, Encoder] = {wire.ADDR4: _addr4, wire.ADDR6: _addr6, wire.PROTO: _proto, wire.PORT: _port,
                                 wire.HOST32: _host32}


def _memo(encode: Encoder) -> Encoder:
    """Ports, protocols and indexes repeat across 100,000s of elements: encode each once."""
    cache: dict[str, bytes] = {}

    def encoded(text: str) -> bytes:
        found = cache.get(text)
        if found is None:
            found = cache[text] = encode(text)
        return found

    return encoded


def joined_encoder(fields: tuple[str, ...]) -> Encoder:
    """The inverse of wire.joined(): "10.96.0.10 . tcp . 80 . 1" -> the kernel's bytes."""
    if len(fields) == 1:
        # only the fields of a concatenation are padded: alone, a port is 2 bytes, a protocol 1
        width = {wire.PORT: 2, wire.PROTO: 1}.get(fields[0])
        encode = _ENCODERS[fields[0]]
        return _field(fields[0]) if width is None else _memo(lambda text: encode(text)[:width])
    return _padded_encoder(fields)


def _field(kind: str) -> Encoder:
    # addresses are nearly all different; ports, protocols and indexes repeat
    return _ENCODERS[kind] if kind in (wire.ADDR4, wire.ADDR6) else _memo(_ENCODERS[kind])


def _padded_encoder(fields: tuple[str, ...]) -> Encoder:
    """Fields joined by " . " -> each encoded and padded to 4 bytes, as in a concatenation.
    Unrolled for 2-4 fields: this runs for each of 200,000 elements."""
    parts = [_field(f) for f in fields]
    count = len(parts)

    def wrong(text: str) -> ValueError:
        return ValueError(f"{text!r} does not have {count} fields")

    if count == 2:
        f0, f1 = parts

        def encode2(text: str) -> bytes:
            try:
                a, b = text.split(" . ")
            except ValueError:
                raise wrong(text) from None
            return f0(a) + f1(b)

        return encode2
    if count == 3:
        f0, f1, f2 = parts

        def encode3(text: str) -> bytes:
            try:
                a, b, c = text.split(" . ")
            except ValueError:
                raise wrong(text) from None
            return f0(a) + f1(b) + f2(c)

        return encode3
    if count == 4:
        f0, f1, f2, f3 = parts

        def encode4(text: str) -> bytes:
            try:
                a, b, c, d = text.split(" . ")
            except ValueError:
                raise wrong(text) from None
            return f0(a) + f1(b) + f2(c) + f3(d)

        return encode4

    def encode(text: str) -> bytes:
        values = text.split(" . ")
        if len(values) != count:
            raise wrong(text)
        return b"".join([part(value) for part, value in zip(parts, values, strict=True)])

    return encode


def _range(kind: str, text: str) -> tuple[int, int]:
    """An address field's inclusive range: "10.0.0.0/8", "10.0.0.1-10.0.0.9" or one address."""
    if "-" in text:
        first, last = text.split("-", 1)
        return int.from_bytes(_ENCODERS[kind](first), "big"), int.from_bytes(_ENCODERS[kind](last), "big")
    network = ip_network(text, strict=False)
    return int(network.network_address), int(network.broadcast_address)


def _width(kind: str) -> int:
    return 16 if kind == wire.ADDR6 else 4


def _value(raw: bytes) -> bytes:
    return _attr(wire.DATA_VALUE, raw)


def verdict_data(text: str) -> bytes:
    """NFTA_SET_ELEM_DATA of a verdict: "goto dnat-10", "jump x", "drop"."""
    word, _, chain = text.partition(" ")
    if word not in VERDICT_CODES or bool(chain) != (word in ("jump", "goto")):
        raise ValueError(f"{text!r} is not a verdict")
    inner = _attr(wire.VERDICT_CODE, _BE32_SIGNED.pack(VERDICT_CODES[word]))
    if chain:
        inner += _attr(wire.VERDICT_CHAIN, chain.encode() + b"\0")
    return _attr(wire.ELEM_DATA, _attr(wire.DATA_VERDICT, inner))


def _userdata(comment: str | None, open_interval: bool = False) -> bytes:
    udata = b""
    if comment:
        text = comment[:COMMENT_MAX].encode()[:254] + b"\0"
        udata += bytes([wire.UDATA_COMMENT, len(text)]) + text
    if open_interval:
        udata += bytes([UDATA_FLAGS, 4]) + struct.pack("=I", UDATA_INTERVAL_OPEN)
    return _attr(wire.ELEM_USERDATA, udata) if udata else b""


ElementsEncoder = Callable[[Iterable[tuple[str, Element]]], Iterator[bytes]]


def elements_encoder(spec: str) -> ElementsEncoder:
    """For the set a render spec defines ("typeof ip daddr . th dport : verdict;"): its
    elements -> the NFTA_LIST_ELEM attributes that add them. ValueError for a field or an
    element it cannot encode."""
    shape = wire.layout(spec)
    if shape.interval and len(shape.key) == 1:
        return _single_intervals(shape.key[0])
    key_of = joined_encoder(shape.key)
    data_of = joined_encoder(shape.data) if isinstance(shape.data, tuple) else None
    # Keys and data of a set have one length: their attribute headers are built once.
    data_head, data_pad = _value_head(wire.ELEM_DATA, _length(shape.data)) if data_of is not None else (b"", b"")
    # verdicts repeat 1000s of times in a map: each is encoded once. Endpoints are not kept:
    # nearly each is its map's only use of it, and 100,000 of them held 16 MB at 10k Services.
    encoded_data: dict[str, bytes] = {}

    def data(element: Element) -> bytes:
        if shape.data is None:
            return b""
        if element.data is None:
            raise ValueError("a map element needs data")
        if data_of is not None:
            return data_head + data_of(element.data) + data_pad
        found = encoded_data.get(element.data)
        if found is None:
            found = encoded_data[element.data] = verdict_data(element.data)
        return found

    if shape.interval:  # a concatenation whose last field is an interval (pipapo)
        *fixed, ranged = shape.key
        head = joined_encoder(tuple(fixed))
        width = _width(ranged)

        def interval_elements(items: Iterable[tuple[str, Element]]) -> Iterator[bytes]:
            for key, element in items:
                prefix_text, _, range_text = key.rpartition(" . ")
                prefix = head(prefix_text)
                first, last = _range(ranged, range_text)
                body = (_attr(wire.ELEM_KEY, _value(prefix + first.to_bytes(width, "big")))
                        + _attr(wire.ELEM_KEY_END, _value(prefix + last.to_bytes(width, "big"))))
                yield _attr(LIST_ELEM, body + data(element) + _userdata(element.comment))

        return interval_elements

    key_head, key_pad = _value_head(wire.ELEM_KEY, _length(shape.key))
    pack = _ATTR.pack
    is_set = shape.data is None
    # a set's element without a comment (nearly all of them) has one length: one header
    bare_head = pack(4 + len(key_head) + _length(shape.key) + len(key_pad), LIST_ELEM) + key_head

    def plain_elements(items: Iterable[tuple[str, Element]]) -> Iterator[bytes]:
        for key, element in items:
            if is_set and not element.comment:
                yield bare_head + key_of(key) + key_pad
                continue
            body = key_head + key_of(key) + key_pad + data(element)
            if element.comment:
                body += _userdata(element.comment)
            yield pack(4 + len(body), LIST_ELEM) + body

    return plain_elements


class Endpoint(Protocol):
    """What an endpoint map's element holds: an address and a port (plan.Target)."""

    @property
    def ip(self) -> IPv4Address | IPv6Address: ...

    @property
    def port(self) -> int: ...


EndpointRow = tuple[str, Sequence[Endpoint]]  # a frontend key, its endpoints by index


def endpoint_rows_encoder(spec: str) -> Callable[[Iterable[EndpointRow]], Iterator[bytes]]:
    """For an endpoint map ("typeof <frontend> . numgen random mod N : ip daddr . th dport;"):
    rows -> the same attributes elements_encoder makes of the elements
    "<frontend> . <index>" : "<address> . <port>". Each frontend is encoded once per row
    and each address from its bytes, not its text: 100,000 endpoints in 0.14 s, not 0.67.
    ValueError for a map of another layout."""
    shape = wire.layout(spec)
    if shape.interval or shape.key[-1:] != (wire.HOST32,) or shape.data not in ((wire.ADDR4, wire.PORT),
                                                                                 (wire.ADDR6, wire.PORT)):
        raise ValueError(f"{spec!r} is not an endpoint map")
    frontend_of = _padded_encoder(shape.key[:-1])  # a lone field too: it is part of the key
    key_head, key_pad = _value_head(wire.ELEM_KEY, _length(shape.key))
    data_head, data_pad = _value_head(wire.ELEM_DATA, _length(shape.data))
    width = _width(shape.data[0])
    family = IPv6Address if width == 16 else IPv4Address
    # Every element of the map has one length, so one header; an element is then its
    # row's part, its index's part and its endpoint's part, each made once.
    size = len(key_head) + _length(shape.key) + len(key_pad) + len(data_head) + _length(shape.data) + len(data_pad)
    element_head = _ATTR.pack(4 + size, LIST_ELEM) + key_head
    after_index = key_pad + data_head
    indexes = [_HOST32.pack(i) + after_index for i in range(256)]  # numgen results, in host order
    ports: dict[int, bytes] = {}

    def port_of(port: int) -> bytes:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"{port} is not a port")
        found = ports[port] = port.to_bytes(2, "big") + b"\0\0" + data_pad
        return found

    def encode(rows: Iterable[EndpointRow]) -> Iterator[bytes]:
        for prefix, endpoints in rows:
            head = element_head + frontend_of(prefix)
            while len(indexes) < len(endpoints):
                indexes.append(_HOST32.pack(len(indexes)) + after_index)
            for index, endpoint in enumerate(endpoints):
                ip = endpoint.ip
                if type(ip) is not family:
                    raise ValueError(f"{ip} is not of the map's family")
                port = ports.get(endpoint.port) or port_of(endpoint.port)
                yield head + indexes[index] + int(ip).to_bytes(width, "big") + port

    return encode


def _length(fields: tuple[str, ...] | str | None) -> int:
    """The bytes of a key or data: its fields padded to 4 bytes, unless it has one field."""
    assert isinstance(fields, tuple)
    if len(fields) == 1:
        return {wire.PORT: 2, wire.PROTO: 1}.get(fields[0], _width(fields[0]))
    return sum(_width(f) for f in fields)


def _value_head(kind: int, length: int) -> tuple[bytes, bytes]:
    """The headers of `kind` { NFTA_DATA_VALUE { length bytes } }, and the padding after."""
    pad = -length % 4
    return _ATTR.pack(8 + length + pad, kind) + _ATTR.pack(4 + length, wire.DATA_VALUE), b"\0" * pad


def _single_intervals(kind: str) -> ElementsEncoder:
    width = _width(kind)
    top = (1 << (width * 8)) - 1
    end_flag = _attr(wire.ELEM_FLAGS, _BE32.pack(wire.ELEM_INTERVAL_END))

    def encode(items: Iterable[tuple[str, Element]]) -> Iterator[bytes]:
        ranges = sorted(_range(kind, key) + (element.comment,) for key, element in items)
        for (_, last, _), (first, _, _) in pairwise(ranges):
            if first <= last + 1:
                raise ValueError("interval set elements overlap or touch")
        if ranges and ranges[0][0] != 0:
            yield _attr(LIST_ELEM, _attr(wire.ELEM_KEY, _value(bytes(width))) + end_flag)
        for first, last, comment in ranges:
            yield _attr(LIST_ELEM, _attr(wire.ELEM_KEY, _value(first.to_bytes(width, "big")))
                        + _userdata(comment, open_interval=last == top))
            if last != top:
                yield _attr(LIST_ELEM, _attr(wire.ELEM_KEY, _value((last + 1).to_bytes(width, "big"))) + end_flag)

    return encode


class Batch:
    """One transaction: messages between BATCH_BEGIN and BATCH_END, each with its sequence
    number, so a refusal names the set it was about."""

    def __init__(self, family: int, table: str) -> None:
        self.family = family
        self.table = table
        self._parts: list[bytes] = []
        self._seq = 1  # the batch begin's
        self.sets: dict[int, str] = {}  # sequence number -> the set a message was about
        self.elements = 0
        self._control(NFNL_MSG_BATCH_BEGIN)

    def _message(self, kind: int, flags: int, body: bytes) -> int:
        seq = self._seq
        self._seq += 1
        self._parts.append(_HEADER.pack(_HEADER.size + len(body), kind, wire.NLM_F_REQUEST | flags, seq, 0) + body)
        return seq

    def _control(self, kind: int) -> None:
        # the batch messages' resource id names the subsystem, in network order
        self._message(kind, 0, struct.pack("=BBH", 0, 0, socket.htons(wire.NFNL_SUBSYS_NFTABLES)))

    def _set_message(self, kind: int, set_name: str, elements: bytes | None) -> None:
        body = struct.pack("=BBH", self.family, 0, 0) + _attr(wire.TABLE, self.table.encode() + b"\0")
        body += _attr(wire.ELEM_LIST_SET, set_name.encode() + b"\0")
        if elements is not None:
            body += _attr(wire.ELEM_LIST_ELEMENTS, elements)
        seq = self._message(wire.NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_CREATE if kind == wire.NEWSETELEM else 0,
                            body)
        self.sets[seq] = set_name

    def flush(self, set_name: str) -> None:
        """Empty one set (a DELSETELEM without elements)."""
        self._set_message(wire.DELSETELEM, set_name, None)

    def add(self, set_name: str, elements: Iterable[bytes]) -> None:
        """Add encoded elements (elements_encoder's), as many messages as their size needs:
        each as full as MESSAGE_ELEMENTS_BYTES allows (one element at least). Where each
        message ends is found from the elements' running sizes, without a Python step per
        element."""
        elements = elements if isinstance(elements, list) else list(elements)
        ends = list(accumulate(map(len, elements)))
        start = done = 0  # first element of the next message; bytes in the messages before
        while start < len(elements):
            stop = max(bisect_right(ends, done + MESSAGE_ELEMENTS_BYTES, lo=start), start + 1)
            self._set_message(wire.NEWSETELEM, set_name, b"".join(elements[start:stop]))
            start, done = stop, ends[stop - 1]
        self.elements += len(elements)

    def finish(self) -> tuple[bytes, int | None]:
        """The whole transaction, and the sequence number of its last message (None: the
        batch holds no message). That message asks for an ack, which the kernel sends once
        the whole transaction is committed or aborted."""
        if len(self._parts) == 1:
            return b"", None
        last = self._parts[-1]
        length, kind, flags, seq, portid = _HEADER.unpack_from(last)
        self._parts[-1] = _HEADER.pack(length, kind, flags | wire.NLM_F_ACK, seq, portid) + last[_HEADER.size:]
        self._control(NFNL_MSG_BATCH_END)
        data = b"".join(self._parts)
        self._parts = []
        return data, seq


def transactions(family: int, table: str, flush: Iterable[str], sets: Iterable[tuple[str, Iterable[bytes]]],
                 limit: int | None = None) -> Iterator[Batch]:
    """Batches that empty the `flush` sets and add these encoded elements: one (atomic), or
    with `limit`, each as soon as it holds that many elements, so that a large load is never
    held encoded whole."""
    current = Batch(family, table)
    for name in flush:
        current.flush(name)
    for name, elements in sets:
        if limit is None:
            current.add(name, elements)
            continue
        remaining = iter(elements)
        while True:
            room = limit - current.elements
            chunk = list(islice(remaining, room))
            current.add(name, chunk)
            if len(chunk) < room:
                break  # this set is done; the transaction has room for the next
            yield current
            current = Batch(family, table)
    yield current
