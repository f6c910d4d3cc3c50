"""nf_tables netlink messages, as bytes, read without libnftables. Pure.

What the drift check and the commit watch need and no more: message headers and
attributes, and kproxy's own set elements turned back into the text render writes
("10.96.0.10 . tcp . 80 . 1" -> "10.128.0.2 . 8080"), so a set of 100,000 elements is
compared as it streams in instead of being listed whole (nft 1.0.6 takes 5 s and 200 MB to
list such a map; its netlink dump, decoded here, well under a second and a few MB).

The layouts (uapi linux/netfilter/nf_tables.h): every message is a netlink header, a
4-byte nfgenmsg (family, version, resource id) and attributes; the table name is attribute 1
of every object message. A set element's key and data are `nft_data`: the concatenated
fields, each padded to 4 bytes (an IPv6 address is 16), ports and addresses in network
order, `numgen` results in host order.
"""

from __future__ import annotations

import struct
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from ipaddress import IPv6Address

NLMSG_ERROR = 2
NLMSG_DONE = 3
# Message.kind of netlink's own messages: below every nf_tables message type
ERROR = -1
DONE = -2
NLM_F_REQUEST = 0x1
NLM_F_ACK = 0x4
NLM_F_DUMP = 0x300
NLM_F_DUMP_INTR = 0x10
NFNL_SUBSYS_NFTABLES = 10

# enum nf_tables_msg_types
NEWTABLE, GETTABLE, DELTABLE = 0, 1, 2
NEWCHAIN, GETCHAIN, DELCHAIN = 3, 4, 5
NEWRULE, GETRULE, DELRULE = 6, 7, 8
NEWSET, GETSET, DELSET = 9, 10, 11
NEWSETELEM, GETSETELEM, DELSETELEM = 12, 13, 14
NEWGEN, GETGEN = 15, 16
NEWOBJ, DELOBJ, NEWFLOWTABLE, DELFLOWTABLE = 18, 20, 22, 24

# attribute numbers
TABLE = 1  # NFTA_{TABLE_NAME,CHAIN_TABLE,RULE_TABLE,SET_TABLE,SET_ELEM_LIST_TABLE,...}
CHAIN_NAME = 3  # NFTA_CHAIN_NAME
RULE_CHAIN = 2  # NFTA_RULE_CHAIN
SET_NAME = 2  # NFTA_SET_NAME
SET_FLAGS = 3  # NFTA_SET_FLAGS
ELEM_LIST_SET = 2  # NFTA_SET_ELEM_LIST_SET
ELEM_LIST_ELEMENTS = 3  # NFTA_SET_ELEM_LIST_ELEMENTS
GEN_ID = 1  # NFTA_GEN_ID
ELEM_KEY, ELEM_DATA, ELEM_FLAGS, ELEM_KEY_END = 1, 2, 3, 10  # NFTA_SET_ELEM_*
DATA_VALUE, DATA_VERDICT = 1, 2  # NFTA_DATA_*
VERDICT_CODE, VERDICT_CHAIN = 1, 2  # NFTA_VERDICT_*
ELEM_INTERVAL_END = 1  # NFT_SET_ELEM_INTERVAL_END

NFPROTO = {"inet": 1, "ip": 2, "arp": 3, "netdev": 5, "bridge": 7, "ip6": 10}
FAMILY_NAMES = {code: name for name, code in NFPROTO.items()}

_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, seq, portid
_ATTR = struct.Struct("=HH")  # nlattr: length, type
_BE32 = struct.Struct(">I")
_BE32_SIGNED = struct.Struct(">i")
_ERRNO = struct.Struct("=i")


@dataclass(frozen=True, slots=True)
class Message:
    kind: int  # the nf_tables message type (NEWSETELEM, ...), or ERROR / DONE
    flags: int
    family: int  # nfgen_family
    body: bytes  # the attributes (for NLMSG_ERROR: the error code and the request)
    portid: int = 0


def messages(data: bytes) -> Iterator[Message]:
    """The netlink messages of one datagram; messages of other subsystems are skipped."""
    offset = 0
    while offset + _HEADER.size <= len(data):
        length, kind, flags, _seq, portid = _HEADER.unpack_from(data, offset)
        if length < _HEADER.size:
            return
        end = min(offset + length, len(data))
        if kind in (NLMSG_ERROR, NLMSG_DONE):
            yield Message(ERROR if kind == NLMSG_ERROR else DONE, flags, 0, data[offset + _HEADER.size:end], portid)
        elif kind >> 8 == NFNL_SUBSYS_NFTABLES and end >= offset + _HEADER.size + 4:
            yield Message(kind & 0xFF, flags, data[offset + _HEADER.size], data[offset + _HEADER.size + 4:end], portid)
        offset += (length + 3) & ~3


def attributes(data: bytes) -> dict[int, bytes]:
    """type -> payload of one level of attributes (the last of a repeated type)."""
    found: dict[int, bytes] = {}
    for kind, payload in attribute_list(data):
        found[kind] = payload
    return found


def attribute_list(data: bytes) -> Iterator[tuple[int, bytes]]:
    offset = 0
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            return
        yield kind & 0x7FFF, data[offset + _ATTR.size:offset + length]
        offset += (length + 3) & ~3


def string(payload: bytes | None) -> str | None:
    return None if payload is None else payload.split(b"\0", 1)[0].decode(errors="replace")


def error_code(message: Message) -> int:
    """An ERROR message's code: 0 for an acknowledgement, else a negative errno."""
    return int(_ERRNO.unpack_from(message.body)[0]) if len(message.body) >= 4 else 0


def error_seq(message: Message) -> int:
    """The sequence number of the request an ERROR message answers."""
    return int(_HEADER.unpack_from(message.body, 4)[3]) if len(message.body) >= 4 + _HEADER.size else -1


ELEM_USERDATA = 6  # NFTA_SET_ELEM_USERDATA
UDATA_COMMENT = 0  # NFTNL_UDATA_SET_ELEM_COMMENT


def element_comment(message: Message) -> str | None:
    """The comment of the first element of a NEWSETELEM message (nftnl userdata: type,
    length, value)."""
    for _kind, element in attribute_list(attributes(message.body).get(ELEM_LIST_ELEMENTS, b"")):
        udata = attributes(element).get(ELEM_USERDATA, b"")
        at = 0
        while at + 2 <= len(udata):
            kind, length = udata[at], udata[at + 1]
            if kind == UDATA_COMMENT:
                return string(udata[at + 2:at + 2 + length])
            at += 2 + length
        return None
    return None


def attr(kind: int, payload: bytes) -> bytes:
    length = _ATTR.size + len(payload)
    return _ATTR.pack(length, kind) + payload + b"\0" * (-length % 4)


def request(kind: int, family: int, flags: int, *attrs: bytes, seq: int = 1) -> bytes:
    """One nf_tables request (a dump with NLM_F_DUMP in `flags`)."""
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    header = _HEADER.pack(_HEADER.size + len(body), NFNL_SUBSYS_NFTABLES << 8 | kind, NLM_F_REQUEST | flags, seq, 0)
    return header + body


def event(kind: int, family: int, *attrs: bytes) -> bytes:
    """One message as the kernel sends it to the NFNLGRP_NFTABLES group (for fakes and tests)."""
    body = struct.pack("=BBH", family, 0, 0) + b"".join(attrs)
    return _HEADER.pack(_HEADER.size + len(body), NFNL_SUBSYS_NFTABLES << 8 | kind, 0, 0, 0) + body


def generation_event(generation: int) -> bytes:
    return event(NEWGEN, 0, attr(GEN_ID, _BE32.pack(generation)))


def name_attr(kind: int, name: str) -> bytes:
    return attr(kind, name.encode() + b"\0")


def generation(message: Message) -> int | None:
    """NFTA_GEN_ID of a NEWGEN message."""
    payload = attributes(message.body).get(GEN_ID)
    return None if payload is None or len(payload) < 4 else int(_BE32.unpack(payload[:4])[0])


# --- set elements ------------------------------------------------------------------------------

ADDR4, ADDR6, PROTO, PORT, HOST32 = "addr4", "addr6", "proto", "port", "host32"
_FIELDS = {
    "ip daddr": ADDR4, "ip saddr": ADDR4, "ipv4_addr": ADDR4,
    "ip6 daddr": ADDR6, "ip6 saddr": ADDR6, "ipv6_addr": ADDR6,
    "meta l4proto": PROTO, "inet_proto": PROTO,
    "th dport": PORT, "th sport": PORT, "inet_service": PORT,
}
_WIDTH = {ADDR4: 4, ADDR6: 16, PROTO: 4, PORT: 4, HOST32: 4}
_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp", 1: "icmp", 58: "ipv6-icmp"}
_VERDICTS = {0: "drop", 1: "accept", -1: "continue", -2: "break", -3: "jump", -4: "goto", -5: "return"}
VERDICT = "verdict"


@dataclass(frozen=True, slots=True)
class Layout:
    """How one set's elements are laid out: key fields, data fields (or VERDICT, or none
    for a plain set), and whether it holds intervals."""

    key: tuple[str, ...]
    data: tuple[str, ...] | str | None = None
    interval: bool = False


def layout(spec: str) -> Layout:
    """The layout of a set render defines ("typeof ip daddr . th dport : verdict;",
    "type ipv4_addr; flags interval;"). ValueError for a field it does not know."""
    statements = [s.strip() for s in spec.split(";") if s.strip()]
    interval = any(s.startswith("flags") and "interval" in s for s in statements)
    (declaration,) = [s for s in statements if s.startswith(("type ", "typeof "))]
    _word, _, rest = declaration.partition(" ")
    key_text, _, data_text = rest.partition(" : ")
    data: tuple[str, ...] | str | None = None
    if data_text.strip() == VERDICT:
        data = VERDICT
    elif data_text:
        data = _fields(data_text)
    return Layout(key=_fields(key_text), data=data, interval=interval)


def _fields(text: str) -> tuple[str, ...]:
    found = []
    for part in (p.strip() for p in text.split(" . ")):
        if part.startswith("numgen "):
            found.append(HOST32)
        elif part in _FIELDS:
            found.append(_FIELDS[part])
        else:
            raise ValueError(f"no layout for set field {part!r}")
    return tuple(found)


def _field_values(fields: tuple[str, ...], raw: bytes) -> list[int]:
    """Each field of a key or data as an integer (addresses and ports as numbers)."""
    values = []
    offset = 0
    for kind in fields:
        width = _WIDTH[kind]
        chunk = raw[offset:offset + width]
        if kind == PROTO:
            values.append(chunk[0] if chunk else 0)
        elif kind == PORT:
            values.append(int.from_bytes(chunk[:2], "big"))
        elif kind == HOST32:
            values.append(int.from_bytes(chunk, sys.byteorder))
        else:
            values.append(int.from_bytes(chunk, "big"))
        offset += width
    return values


def _text(kind: str, value: int) -> str:
    if kind == ADDR4:
        return f"{value >> 24}.{(value >> 16) & 255}.{(value >> 8) & 255}.{value & 255}"
    if kind == ADDR6:
        return str(IPv6Address(value))
    if kind == PROTO:
        return _PROTOCOLS.get(value, str(value))
    return str(value)


def _range_text(kind: str, first: int, last: int) -> str:
    """An inclusive range of one field as nft writes it: a value, a prefix, or first-last."""
    if first == last:
        return _text(kind, first)
    bits = {ADDR4: 32, ADDR6: 128}.get(kind)
    size = last - first + 1
    if bits is not None and size & (size - 1) == 0 and first % size == 0:
        return f"{_text(kind, first)}/{bits - size.bit_length() + 1}"
    return f"{_text(kind, first)}-{_text(kind, last)}"


Formatter = Callable[[bytes], str]


def _formatter(kind: str, offset: int) -> Formatter:
    """One field's text from a raw key or data (built once per set: 100,000s of elements)."""
    o = offset
    if kind == ADDR4:
        return lambda r: f"{r[o]}.{r[o + 1]}.{r[o + 2]}.{r[o + 3]}"
    if kind == ADDR6:
        return lambda r: str(IPv6Address(r[o:o + 16]))
    if kind == PROTO:
        return lambda r: _PROTOCOLS.get(r[o]) or str(r[o])
    if kind == PORT:
        return lambda r: str(r[o] << 8 | r[o + 1])
    return lambda r: str(int.from_bytes(r[o:o + 4], sys.byteorder))


def joined(fields: tuple[str, ...]) -> Formatter:
    """The text of a whole key or data ("10.96.0.10 . tcp . 80 . 1") from its bytes."""
    parts = []
    offset = 0
    for kind in fields:
        parts.append(_formatter(kind, offset))
        offset += _WIDTH[kind]
    if len(parts) == 1:
        return parts[0]
    return lambda r: " . ".join([part(r) for part in parts])


def element_keys(message: Message) -> list[bytes] | None:
    """The raw keys of a NEWSETELEM / DELSETELEM message's elements; None for an interval
    (an end key) or a message without elements: the set is read whole instead."""
    keys = []
    for _kind, element in attribute_list(attributes(message.body).get(ELEM_LIST_ELEMENTS, b"")):
        found = attributes(element)
        if ELEM_KEY_END in found or ELEM_INTERVAL_END & int.from_bytes(found.get(ELEM_FLAGS, b"")[:4] or b"\0", "big"):
            return None
        keys.append(attributes(found.get(ELEM_KEY, b"")).get(DATA_VALUE, b""))
    return keys or None


def element_list(keys: Iterable[bytes]) -> bytes:
    """NFTA_SET_ELEM_LIST_ELEMENTS holding elements with these keys."""
    return attr(ELEM_LIST_ELEMENTS, b"".join(attr(1, attr(ELEM_KEY, attr(DATA_VALUE, key))) for key in keys))


def element_request(family: int, table: str, set_name: str, key: bytes) -> bytes:
    """GETSETELEM of one element by its key: the kernel answers it, or ENOENT."""
    return request(GETSETELEM, family, NLM_F_ACK, name_attr(TABLE, table), name_attr(ELEM_LIST_SET, set_name),
                   element_list([key]))


def _verdict(payload: bytes) -> str:
    verdict = attributes(attributes(payload).get(DATA_VERDICT, b""))
    code = _BE32_SIGNED.unpack(verdict.get(VERDICT_CODE, b"\0\0\0\0")[:4])[0]
    word = _VERDICTS.get(code, str(code))
    chain = string(verdict.get(VERDICT_CHAIN))
    return f"{word} {chain}" if chain else word


def _nested(body: bytes, start: int, end: int) -> bytes:
    """The payload of the first attribute inside [start, end) (NFTA_DATA_VALUE of a key)."""
    if start + _ATTR.size > end:
        return b""
    length = _ATTR.unpack_from(body, start)[0]
    return body[start + _ATTR.size:min(start + length, end)]


class ElementDecoder:
    """Elements of one set from its GETSETELEM dump, as (key, data) text. Intervals of a
    one-field interval set come as start and end (exclusive, flagged) elements in any order,
    so those are gathered and paired at the end (node settings: a few elements); every
    other element is decoded as it comes, with the attributes walked in place (a dump of
    the 100,000-endpoint map decodes in about half a second)."""

    def __init__(self, shape: Layout) -> None:
        self.layout = shape
        self._key = joined(shape.key)
        self._data = joined(shape.data) if isinstance(shape.data, tuple) else None
        self._bounds: list[tuple[int, int]] = []  # (value, 0 for an end, 1 for a start)

    def feed(self, message: Message) -> Iterator[tuple[str, str | None]]:
        body = message.body
        unpack = _ATTR.unpack_from
        top = 0
        while top + 4 <= len(body):  # find NFTA_SET_ELEM_LIST_ELEMENTS
            length, kind = unpack(body, top)
            if length < 4:
                return
            if kind & 0x7FFF == ELEM_LIST_ELEMENTS:
                break
            top += (length + 3) & ~3
        else:
            return
        position, end = top + 4, top + length
        shape, key_text, data_text = self.layout, self._key, self._data
        plain = not shape.interval
        while position + 4 <= end:
            element_length = unpack(body, position)[0]
            if element_length < 4:
                return
            element_end = position + element_length
            at = position + 4
            key = key_end = b""
            data_at = data_end = flags = 0
            while at + 4 <= element_end:
                length, kind = unpack(body, at)
                if length < 4:
                    break
                kind &= 0x7FFF
                if kind == ELEM_KEY:
                    key = _nested(body, at + 4, at + length)
                elif kind == ELEM_DATA:
                    data_at, data_end = at + 4, at + length
                elif kind == ELEM_FLAGS:
                    flags = _BE32.unpack_from(body, at + 4)[0]
                elif kind == ELEM_KEY_END:
                    key_end = _nested(body, at + 4, at + length)
                at += (length + 3) & ~3
            position += (element_length + 3) & ~3
            if plain:
                text = key_text(key)
            elif len(shape.key) == 1:
                (value,) = _field_values(shape.key, key)
                self._bounds.append((value, 0 if flags & ELEM_INTERVAL_END else 1))
                continue
            else:
                text = " . ".join(_range_text(kind, first, last) for kind, first, last in zip(
                    shape.key, _field_values(shape.key, key), _field_values(shape.key, key_end or key), strict=True))
            if shape.data is None:
                yield text, None
            elif data_text is not None:
                yield text, data_text(_nested(body, data_at, data_end))
            else:
                yield text, _verdict(body[data_at:data_end])

    def finish(self) -> Iterator[tuple[str, str | None]]:
        """The intervals of a one-field interval set, once every element has been fed."""
        if not self._bounds:
            return
        (kind,) = self.layout.key
        top = (1 << {ADDR4: 32, ADDR6: 128}.get(kind, 32)) - 1
        start: int | None = None
        for value, is_start in sorted(self._bounds):
            if is_start:
                start = value
            elif start is not None:
                yield _range_text(kind, start, value - 1), None
                start = None
        if start is not None:  # open to the top (nft sends no end element for it)
            yield _range_text(kind, start, top), None
        self._bounds = []
