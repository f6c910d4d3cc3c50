"""IPVS's and kube-ipvs0's netlink messages as bytes, and the kernel's replies as values. Pure
(struct only): kernel.py sends these many to a sendmsg and reads the acks.

Requests carry what the kernel's ip_vs_genl_parse_service/parse_dest ask of a "full entry"
(net/netfilter/ipvs/ip_vs_ctl.c): a new or edited virtual server its af and key (protocol,
address, port; or firewall mark), scheduler, flags, timeout and netmask; a real server its
address, port, forwarding method, weight and thresholds. Deletions and real-server commands
name the virtual server by its key only. kube-ipvs0's addresses are RTM_NEWADDR/RTM_DELADDR
with IFA_LOCAL and IFA_ADDRESS, /32 or /128, as `ip addr add` sends them.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass
from ipaddress import IPv4Address, IPv6Address

from kproxy.backends.ipvs.diff import (
    AddAddress,
    AddReal,
    AddVirtual,
    DelAddress,
    DelReal,
    DelVirtual,
    EditVirtual,
    Operation,
    SetWeight,
)
from kproxy.backends.ipvs.objects import FWD_MASQ, PERSISTENT, RealKey, RealStats, VirtualKey
from kproxy.model import IPAddress, Protocol

# linux/netlink.h
NLMSG_ERROR = 2
NLMSG_DONE = 3
NLM_F_REQUEST = 0x1
NLM_F_MULTI = 0x2
NLM_F_ACK = 0x4
NLM_F_REPLACE = 0x100
NLM_F_EXCL = 0x200
NLM_F_CREATE = 0x400
NLM_F_DUMP = 0x300
NLA_TYPE_MASK = 0x3FFF  # without NLA_F_NESTED and NLA_F_NET_BYTEORDER
# what pyroute2 sends (the kernel's IPVS and address handlers ignore them; `ip` sends the same)
CREATE_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL
CHANGE_FLAGS = NLM_F_REQUEST | NLM_F_ACK | NLM_F_REPLACE
REQUEST_FLAGS = NLM_F_REQUEST | NLM_F_ACK

AF_INET = 2
AF_INET6 = 10
AF_BY_VERSION = {4: AF_INET, 6: AF_INET6}
PROTOCOL_NUMBERS = {Protocol.TCP: 6, Protocol.UDP: 17, Protocol.SCTP: 132}
PROTOCOLS_BY_NUMBER = {n: p for p, n in PROTOCOL_NUMBERS.items()}

# linux/genetlink.h: the controller that maps a family's name to its id
GENL_ID_CTRL = 0x10
CTRL_CMD_GETFAMILY = 3
CTRL_ATTR_FAMILY_ID = 1
CTRL_ATTR_FAMILY_NAME = 2
IPVS_GENL_NAME = "IPVS"
IPVS_GENL_VERSION = 1

# linux/ip_vs.h
IPVS_CMD_NEW_SERVICE = 1
IPVS_CMD_SET_SERVICE = 2
IPVS_CMD_DEL_SERVICE = 3
IPVS_CMD_GET_SERVICE = 4
IPVS_CMD_NEW_DEST = 5
IPVS_CMD_SET_DEST = 6
IPVS_CMD_DEL_DEST = 7
IPVS_CMD_GET_DEST = 8
IPVS_CMD_ATTR_SERVICE = 1
IPVS_CMD_ATTR_DEST = 2
IPVS_SVC_ATTR_AF = 1
IPVS_SVC_ATTR_PROTOCOL = 2
IPVS_SVC_ATTR_ADDR = 3
IPVS_SVC_ATTR_PORT = 4
IPVS_SVC_ATTR_FWMARK = 5
IPVS_SVC_ATTR_SCHED_NAME = 6
IPVS_SVC_ATTR_FLAGS = 7
IPVS_SVC_ATTR_TIMEOUT = 8
IPVS_SVC_ATTR_NETMASK = 9
IPVS_DEST_ATTR_ADDR = 1
IPVS_DEST_ATTR_PORT = 2
IPVS_DEST_ATTR_FWD_METHOD = 3
IPVS_DEST_ATTR_WEIGHT = 4
IPVS_DEST_ATTR_U_THRESH = 5
IPVS_DEST_ATTR_L_THRESH = 6
IPVS_DEST_ATTR_ACTIVE_CONNS = 7
IPVS_DEST_ATTR_INACT_CONNS = 8
IPVS_DEST_ATTR_ADDR_FAMILY = 11
IP_VS_CONN_F_FWD_MASK = 0x7
DEST_NUMBERS = (IPVS_DEST_ATTR_WEIGHT, IPVS_DEST_ATTR_ACTIVE_CONNS, IPVS_DEST_ATTR_INACT_CONNS,
                IPVS_DEST_ATTR_FWD_METHOD)

# linux/rtnetlink.h, linux/if_addr.h, linux/if_link.h
RTM_NEWLINK = 16
RTM_GETLINK = 18
RTM_NEWADDR = 20
RTM_DELADDR = 21
RTM_GETADDR = 22
IFA_ADDRESS = 1
IFA_LOCAL = 2
IFLA_IFNAME = 3

HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port id
GENL = struct.Struct("=BBH")  # genlmsghdr: command, version, reserved
IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change mask
_NLA = struct.Struct("=HH")
_I32 = struct.Struct("=i")


def _attr(kind: int, value: bytes) -> bytes:
    size = _NLA.size + len(value)
    return _NLA.pack(size, kind) + value + b"\0" * (-size & 3)


def _message(kind: int, flags: int, seq: int, body: bytes) -> bytes:
    # every attribute is padded to 4 bytes, so the message is too
    return HEADER.pack(HEADER.size + len(body), kind, flags, seq, 0) + body


def _genl(family_id: int, command: int, flags: int, seq: int, attrs: bytes) -> bytes:
    return _message(family_id, flags, seq, GENL.pack(command, IPVS_GENL_VERSION, 0) + attrs)


# --- requests --------------------------------------------------------------------------------

def get_family_request(name: str, seq: int) -> bytes:
    """CTRL_CMD_GETFAMILY: which id the kernel gave a generic netlink family (the reply's
    CTRL_ATTR_FAMILY_ID; the kernel loads the family's module when it is missing)."""
    return _message(GENL_ID_CTRL, REQUEST_FLAGS, seq, GENL.pack(CTRL_CMD_GETFAMILY, 1, 0)
                    + _attr(CTRL_ATTR_FAMILY_NAME, name.encode() + b"\0"))


# Attribute groups as struct formats (an attribute: u16 length, u16 type, the value, padding to
# 4 bytes), so that a request is one or a few pack calls rather than one per attribute: the
# VMs that test IPVS run Python ~15 times slower than a host, and a cold sync of 10,000
# Services encodes 120,000 requests, 100,000 of them real servers.
_KEY_FORMATS = {  # (family, by firewall mark): af, protocol, address, port (network order); or af, mark
    (4, False): "HHH2xHHH2xHH4sHH2s2x", (6, False): "HHH2xHHH2xHH16sHH2s2x",
    (4, True): "HHH2xHHI", (6, True): "HHH2xHHI",
}
_DEST_FORMATS = {  # family: address, port, forwarding method, weight, thresholds, address family
    4: "HH4sHH2s2xHHIHHIHHIHHIHHH2x", 6: "HH16sHH2s2xHHIHHIHHIHHIHHH2x",
}
_KEYS = {shape: struct.Struct("=" + fmt) for shape, fmt in _KEY_FORMATS.items()}
_SETTINGS = struct.Struct("=HHIIHHIHHI")  # flags {flags, mask}, timeout, netmask
# a whole real-server request (header, genl header, the service's key, the real server), with
# the lengths of its two nested attributes
_DEST_REQUESTS = {
    (*shape, family): (struct.Struct(f"=IHHIIBBHHH{key}HH{_DEST_FORMATS[family]}"),
                       _NLA.size + struct.calcsize("=" + key), _NLA.size + struct.calcsize("=" + _DEST_FORMATS[family]))
    for shape, key in _KEY_FORMATS.items() for family in _DEST_FORMATS}


def _key_values(key: VirtualKey) -> tuple[int | bytes, ...]:
    if key.fwmark:
        return (6, IPVS_SVC_ATTR_AF, AF_BY_VERSION[key.ip.version], 8, IPVS_SVC_ATTR_FWMARK, key.fwmark)
    v4, protocol = key.ip.version == 4, key.protocol
    # identity, not PROTOCOL_NUMBERS[protocol]: an Enum's hash is Python code
    number = 6 if protocol is Protocol.TCP else 17 if protocol is Protocol.UDP else PROTOCOL_NUMBERS[protocol]
    return (6, IPVS_SVC_ATTR_AF, AF_INET if v4 else AF_INET6, 6, IPVS_SVC_ATTR_PROTOCOL, number,
            8 if v4 else 20, IPVS_SVC_ATTR_ADDR, key.ip.packed,
            6, IPVS_SVC_ATTR_PORT, key.port.to_bytes(2, "big"))


def _service_key(key: VirtualKey) -> bytes:
    return _KEYS[(key.ip.version, key.fwmark != 0)].pack(*_key_values(key))


def _nest(kind: int, inner: bytes) -> bytes:
    return _NLA.pack(_NLA.size + len(inner), kind) + inner


def _service_full(key: VirtualKey, scheduler: str, persistence: int) -> bytes:
    # the kernel reads the netmask as a host-order u32: all ones for IPv4, the prefix
    # length for IPv6 (it checks 1..128 there)
    netmask = 0xFFFFFFFF if key.ip.version == 4 else 128
    return (_service_key(key) + _attr(IPVS_SVC_ATTR_SCHED_NAME, scheduler.encode() + b"\0")
            + _SETTINGS.pack(12, IPVS_SVC_ATTR_FLAGS, PERSISTENT if persistence else 0, 0xFFFFFFFF,
                             8, IPVS_SVC_ATTR_TIMEOUT, persistence, 8, IPVS_SVC_ATTR_NETMASK, netmask))


def _dest_request(family_id: int, command: int, flags: int, seq: int, key: VirtualKey, real: RealKey,
                  weight: int) -> bytes:
    v4 = real.ip.version == 4
    shape, key_size, dest_size = _DEST_REQUESTS[(key.ip.version, key.fwmark != 0, 4 if v4 else 6)]
    return shape.pack(
        shape.size, family_id, flags, seq, 0, command, IPVS_GENL_VERSION, 0,
        key_size, IPVS_CMD_ATTR_SERVICE, *_key_values(key), dest_size, IPVS_CMD_ATTR_DEST,
        8 if v4 else 20, IPVS_DEST_ATTR_ADDR, real.ip.packed, 6, IPVS_DEST_ATTR_PORT, real.port.to_bytes(2, "big"),
        8, IPVS_DEST_ATTR_FWD_METHOD, FWD_MASQ, 8, IPVS_DEST_ATTR_WEIGHT, weight,
        8, IPVS_DEST_ATTR_U_THRESH, 0, 8, IPVS_DEST_ATTR_L_THRESH, 0,
        6, IPVS_DEST_ATTR_ADDR_FAMILY, AF_INET if v4 else AF_INET6)


def is_address_op(op: Operation) -> bool:
    """Whether the operation goes to rtnetlink (kube-ipvs0's addresses) rather than IPVS."""
    return isinstance(op, AddAddress | DelAddress)


def ipvs_request(op: Operation, family_id: int, seq: int) -> bytes:
    """One IPVS operation as a generic netlink request with NLM_F_ACK."""
    match op:
        case AddReal(virtual=key, real=real, weight=weight):  # the most frequent first
            return _dest_request(family_id, IPVS_CMD_NEW_DEST, CREATE_FLAGS, seq, key, real, weight)
        case AddVirtual(key=key, scheduler=scheduler, persistence=persistence):
            return _genl(family_id, IPVS_CMD_NEW_SERVICE, CREATE_FLAGS, seq,
                         _nest(IPVS_CMD_ATTR_SERVICE, _service_full(key, scheduler, persistence)))
        case EditVirtual(key=key, scheduler=scheduler, persistence=persistence):
            return _genl(family_id, IPVS_CMD_SET_SERVICE, CHANGE_FLAGS, seq,
                         _nest(IPVS_CMD_ATTR_SERVICE, _service_full(key, scheduler, persistence)))
        case DelVirtual(key=key):
            return _genl(family_id, IPVS_CMD_DEL_SERVICE, REQUEST_FLAGS, seq,
                         _nest(IPVS_CMD_ATTR_SERVICE, _service_key(key)))
        case SetWeight(virtual=key, real=real, weight=weight):
            return _dest_request(family_id, IPVS_CMD_SET_DEST, CHANGE_FLAGS, seq, key, real, weight)
        case DelReal(virtual=key, real=real):
            return _dest_request(family_id, IPVS_CMD_DEL_DEST, REQUEST_FLAGS, seq, key, real, 0)
    raise ValueError(f"not an IPVS operation: {op}")


def address_request(op: Operation, ifindex: int, seq: int) -> bytes:
    """AddAddress/DelAddress as RTM_NEWADDR/RTM_DELADDR on link `ifindex`, with NLM_F_ACK."""
    match op:
        case AddAddress(ip=ip):
            kind, flags = RTM_NEWADDR, CREATE_FLAGS
        case DelAddress(ip=ip):
            kind, flags = RTM_DELADDR, REQUEST_FLAGS
        case _:
            raise ValueError(f"not an address operation: {op}")
    family, prefix = (AF_INET, 32) if ip.version == 4 else (AF_INET6, 128)
    return _message(kind, flags, seq, IFADDR.pack(family, prefix, 0, 0, ifindex)
                    + _attr(IFA_LOCAL, ip.packed) + _attr(IFA_ADDRESS, ip.packed))


def dump_services_request(family_id: int, seq: int) -> bytes:
    return _genl(family_id, IPVS_CMD_GET_SERVICE, NLM_F_REQUEST | NLM_F_DUMP, seq, b"")


def dump_dests_request(key: VirtualKey, family_id: int, seq: int) -> bytes:
    return _genl(family_id, IPVS_CMD_GET_DEST, NLM_F_REQUEST | NLM_F_DUMP, seq,
                 _nest(IPVS_CMD_ATTR_SERVICE, _service_key(key)))


def link_request(name: str, seq: int) -> bytes:
    """RTM_GETLINK of one link by name (the reply: RTM_NEWLINK; ENODEV when there is none)."""
    return _message(RTM_GETLINK, REQUEST_FLAGS, seq, IFINFO.pack(0, 0, 0, 0, 0)
                    + _attr(IFLA_IFNAME, name.encode() + b"\0"))


def dump_addresses_request(version: int, seq: int) -> bytes:
    return _message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, IFADDR.pack(AF_BY_VERSION[version], 0, 0, 0, 0))


# --- replies ---------------------------------------------------------------------------------

@dataclass(slots=True)  # not frozen: a full read makes one per real server, and frozen ones cost more
class Message:
    """One netlink message of a received datagram: its header and where its payload is. The
    kernel aligns every message and attribute to 4 bytes, so the datagram is also read as
    u16 and u32 arrays (an attribute's header and a number: one index, not an unpack)."""

    kind: int
    flags: int
    seq: int
    data: bytes  # the whole datagram (no copies); the payload is data[start:end]
    start: int
    end: int
    u16: memoryview
    u32: memoryview


def messages(data: bytes) -> Iterator[Message]:
    """The netlink messages in one received datagram."""
    offset, size = 0, len(data)
    view = memoryview(data)[:size & ~3]
    u16, u32 = view.cast("H"), view.cast("I")
    while offset + HEADER.size <= size:
        length, kind, flags, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > size:
            raise ValueError(f"truncated netlink message at {offset} ({length} of {size - offset} bytes)")
        yield Message(kind, flags, seq, data, offset + HEADER.size, offset + length, u16, u32)
        offset += (length + 3) & ~3


_ACK = struct.Struct("=IHHIIiIHHII")  # nlmsghdr, nlmsgerr: error, the request's nlmsghdr


def acks(data: bytes | bytearray, size: int) -> list[tuple[int, int]]:
    """The NLMSG_ERRORs among the first `size` bytes of a datagram, as (errno, the answered
    request's sequence number); 0 is an ack. Straight from the receive buffer: a batch's
    replies are one datagram per request."""
    out = []
    offset = 0
    while offset + HEADER.size <= size:
        length, kind = HEADER.unpack_from(data, offset)[:2]
        if length < HEADER.size or offset + length > size:
            raise ValueError(f"truncated netlink message at {offset} ({length} of {size - offset} bytes)")
        if kind == NLMSG_ERROR:
            if length >= _ACK.size:
                fields = _ACK.unpack_from(data, offset)
                out.append((-fields[5], fields[9]))
            else:
                out.append((-int(_I32.unpack_from(data, offset + HEADER.size)[0]),
                            int(HEADER.unpack_from(data, offset)[3])))
        offset += (length + 3) & ~3
    return out


def error_code(msg: Message) -> tuple[int, int]:
    """An NLMSG_ERROR's errno (0: an ack) and the sequence number of the request it answers."""
    error = int(_I32.unpack_from(msg.data, msg.start)[0])
    if msg.end - msg.start >= _I32.size + HEADER.size:
        seq = HEADER.unpack_from(msg.data, msg.start + _I32.size)[3]
    else:
        seq = msg.seq
    return -error, seq


def done_code(msg: Message) -> int:
    """An NLMSG_DONE's errno (0: the dump is complete; some kernels end a failed dump with it)."""
    if msg.end - msg.start < _I32.size:
        return 0
    return -int(_I32.unpack_from(msg.data, msg.start)[0])


def _attrs(msg: Message, start: int, end: int) -> dict[int, int]:
    """Attribute type -> where its value starts, of the attributes in data[start:end] (a
    malformed tail is left out). The hottest loop of a full read: locals and literals only."""
    u16 = msg.u16
    out = {}
    while start + 4 <= end:  # 4: an attribute's header
        length = u16[start >> 1]
        if length < 4 or start + length > end:
            break
        out[u16[(start >> 1) + 1] & 0x3FFF] = start + 4  # the type without NLA_F_NESTED/NET_BYTEORDER
        start += (length + 3) & ~3
    return out


@dataclass(frozen=True, slots=True)
class _Layout:
    """Where the attributes of a nested attribute are, as the kernel lays out every entry of a
    dump the same way: checked per entry by one unpack of all the attribute headers, instead
    of a walk from one to the next (a full read walks ~15 attributes per real server)."""

    headers: struct.Struct
    expected: tuple[int, ...]
    offsets: dict[int, int]  # attribute type -> its value's offset from the first attribute


_LAYOUTS: dict[int, _Layout] = {}  # by the nested attribute's length; a cache, so bounded
_MAX_LAYOUTS = 64


def _layout_of(msg: Message, start: int, end: int) -> _Layout:
    fmt, expected, offsets, pos = "=", [], {}, start
    for kind, value in sorted(_attrs(msg, start, end).items(), key=lambda item: item[1]):
        header = value - _NLA.size
        fmt += f"{header - pos}xHH"
        expected += [msg.u16[header >> 1], msg.u16[(header >> 1) + 1]]
        offsets[kind] = value - start
        pos = value
    return _Layout(struct.Struct(fmt), tuple(expected), offsets)


def _nested(msg: Message, where: int) -> tuple[int, dict[int, int]]:
    """The attributes inside the nested attribute whose value starts at `where`: a base offset
    and attribute type -> its value's offset from the base."""
    size = msg.u16[(where - _NLA.size) >> 1] - _NLA.size
    layout = _LAYOUTS.get(size)
    if layout is not None and layout.headers.unpack_from(msg.data, where) == layout.expected:
        return where, layout.offsets
    layout = _layout_of(msg, where, where + size)
    if len(_LAYOUTS) >= _MAX_LAYOUTS:
        _LAYOUTS.clear()
    _LAYOUTS[size] = layout
    return where, layout.offsets


def _length(msg: Message, where: int) -> int:
    return int(msg.u16[(where - _NLA.size) >> 1]) - _NLA.size


def _address(msg: Message, family: int, where: int) -> IPAddress:
    # the kernel sends IPVS addresses as a 16-byte union nf_inet_addr whatever the family
    if family == AF_INET:
        return IPv4Address(msg.data[where:where + 4])
    return IPv6Address(msg.data[where:where + 16])


def _be16(msg: Message, where: int) -> int:
    return int.from_bytes(msg.data[where:where + 2], "big")


def link_index(msg: Message) -> int:
    """An RTM_NEWLINK's link index."""
    return int(IFINFO.unpack_from(msg.data, msg.start)[2])


def family_id(msg: Message) -> int:
    """CTRL_CMD_GETFAMILY's reply: the family's id."""
    return int(msg.u16[_attrs(msg, msg.start + GENL.size, msg.end)[CTRL_ATTR_FAMILY_ID] >> 1])


@dataclass(frozen=True, slots=True)
class ListedService:
    key: VirtualKey
    scheduler: str
    persistence: int  # the timeout, where the PERSISTENT flag is set; else 0


def service(msg: Message, family: int) -> ListedService | None:
    """A GET_SERVICE dump entry of IP family `family` (4 or 6); None for another family or a
    protocol kproxy does not program."""
    outer = _attrs(msg, msg.start + GENL.size, msg.end)
    if IPVS_CMD_ATTR_SERVICE not in outer:
        return None
    base, attrs = _nested(msg, outer[IPVS_CMD_ATTR_SERVICE])
    u16, u32 = msg.u16, msg.u32
    af = AF_BY_VERSION[family]
    if IPVS_SVC_ATTR_AF not in attrs or u16[(base + attrs[IPVS_SVC_ATTR_AF]) >> 1] != af:
        return None
    fwmark = u32[(base + attrs[IPVS_SVC_ATTR_FWMARK]) >> 2] if IPVS_SVC_ATTR_FWMARK in attrs else 0
    if fwmark:
        key = VirtualKey(ip=IPv4Address(0) if af == AF_INET else IPv6Address(0), protocol=Protocol.TCP, port=0,
                         fwmark=fwmark)
    else:
        if not {IPVS_SVC_ATTR_ADDR, IPVS_SVC_ATTR_PROTOCOL, IPVS_SVC_ATTR_PORT} <= attrs.keys():
            return None
        protocol = PROTOCOLS_BY_NUMBER.get(u16[(base + attrs[IPVS_SVC_ATTR_PROTOCOL]) >> 1])
        if protocol is None:
            return None
        key = VirtualKey(ip=_address(msg, af, base + attrs[IPVS_SVC_ATTR_ADDR]), protocol=protocol,
                         port=_be16(msg, base + attrs[IPVS_SVC_ATTR_PORT]))
    scheduler = ""
    if IPVS_SVC_ATTR_SCHED_NAME in attrs:
        where = base + attrs[IPVS_SVC_ATTR_SCHED_NAME]
        scheduler = msg.data[where:where + _length(msg, where)].split(b"\0", 1)[0].decode(errors="replace")
    flags = u32[(base + attrs[IPVS_SVC_ATTR_FLAGS]) >> 2] if IPVS_SVC_ATTR_FLAGS in attrs else 0
    timeout = u32[(base + attrs[IPVS_SVC_ATTR_TIMEOUT]) >> 2] if IPVS_SVC_ATTR_TIMEOUT in attrs else 0
    return ListedService(key=key, scheduler=scheduler, persistence=timeout if flags & PERSISTENT else 0)


def dest(msg: Message, family: int) -> tuple[RealKey, RealStats] | None:
    """A GET_DEST dump entry of a virtual server of IP family `family`: the real server and its
    weight, connections and forwarding method."""
    outer = _attrs(msg, msg.start + GENL.size, msg.end)
    if IPVS_CMD_ATTR_DEST not in outer:
        return None
    base, attrs = _nested(msg, outer[IPVS_CMD_ATTR_DEST])
    if IPVS_DEST_ATTR_ADDR not in attrs or IPVS_DEST_ATTR_PORT not in attrs:
        return None
    u32 = msg.u32
    # ADDR_FAMILY since 4.18 (mixed-family tunnels); before, the virtual server's
    af = (msg.u16[(base + attrs[IPVS_DEST_ATTR_ADDR_FAMILY]) >> 1] if IPVS_DEST_ATTR_ADDR_FAMILY in attrs
          else AF_BY_VERSION[family])
    real = RealKey(ip=_address(msg, af, base + attrs[IPVS_DEST_ATTR_ADDR]),
                   port=_be16(msg, base + attrs[IPVS_DEST_ATTR_PORT]))
    weight, active, inactive, forward = (u32[(base + attrs[kind]) >> 2] if kind in attrs else 0
                                         for kind in DEST_NUMBERS)
    return real, RealStats(weight=weight, active=active, inactive=inactive, forward=forward & IP_VS_CONN_F_FWD_MASK)


def address(msg: Message) -> tuple[int, IPAddress] | None:
    """An RTM_NEWADDR dump entry: the link's index and the address (IFA_ADDRESS)."""
    family, _, _, _, index = IFADDR.unpack_from(msg.data, msg.start)
    attrs = _attrs(msg, msg.start + IFADDR.size, msg.end)
    where = attrs.get(IFA_ADDRESS, attrs.get(IFA_LOCAL))
    if where is None or family not in (AF_INET, AF_INET6):
        return None
    return int(index), _address(msg, family, where)
