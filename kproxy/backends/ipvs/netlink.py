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
_U16 = struct.Struct("=H")
_BE16 = struct.Struct("!H")
_U32 = struct.Struct("=I")
_I32 = struct.Struct("=i")
_FLAGS = struct.Struct("=II")  # struct ip_vs_flags: flags, mask


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


def _service_key(key: VirtualKey) -> bytes:
    af = _attr(IPVS_SVC_ATTR_AF, _U16.pack(AF_BY_VERSION[key.ip.version]))
    if key.fwmark:
        return af + _attr(IPVS_SVC_ATTR_FWMARK, _U32.pack(key.fwmark))
    return (af + _attr(IPVS_SVC_ATTR_PROTOCOL, _U16.pack(PROTOCOL_NUMBERS[key.protocol]))
            + _attr(IPVS_SVC_ATTR_ADDR, key.ip.packed) + _attr(IPVS_SVC_ATTR_PORT, _BE16.pack(key.port)))


def _service_full(key: VirtualKey, scheduler: str, persistence: int) -> bytes:
    # the kernel reads the netmask as a host-order u32: all ones for IPv4, the prefix
    # length for IPv6 (it checks 1..128 there)
    netmask = 0xFFFFFFFF if key.ip.version == 4 else 128
    return (_service_key(key) + _attr(IPVS_SVC_ATTR_SCHED_NAME, scheduler.encode() + b"\0")
            + _attr(IPVS_SVC_ATTR_FLAGS, _FLAGS.pack(PERSISTENT if persistence else 0, 0xFFFFFFFF))
            + _attr(IPVS_SVC_ATTR_TIMEOUT, _U32.pack(persistence))
            + _attr(IPVS_SVC_ATTR_NETMASK, _U32.pack(netmask)))


def _dest(real: RealKey, weight: int) -> bytes:
    return (_attr(IPVS_DEST_ATTR_ADDR, real.ip.packed) + _attr(IPVS_DEST_ATTR_PORT, _BE16.pack(real.port))
            + _attr(IPVS_DEST_ATTR_FWD_METHOD, _U32.pack(FWD_MASQ)) + _attr(IPVS_DEST_ATTR_WEIGHT, _U32.pack(weight))
            + _attr(IPVS_DEST_ATTR_U_THRESH, _U32.pack(0)) + _attr(IPVS_DEST_ATTR_L_THRESH, _U32.pack(0))
            + _attr(IPVS_DEST_ATTR_ADDR_FAMILY, _U16.pack(AF_BY_VERSION[real.ip.version])))


def is_address_op(op: Operation) -> bool:
    """Whether the operation goes to rtnetlink (kube-ipvs0's addresses) rather than IPVS."""
    return isinstance(op, AddAddress | DelAddress)


def ipvs_request(op: Operation, family_id: int, seq: int) -> bytes:
    """One IPVS operation as a generic netlink request with NLM_F_ACK."""
    match op:
        case AddVirtual(key=key, scheduler=scheduler, persistence=persistence):
            return _genl(family_id, IPVS_CMD_NEW_SERVICE, CREATE_FLAGS, seq,
                         _attr(IPVS_CMD_ATTR_SERVICE, _service_full(key, scheduler, persistence)))
        case EditVirtual(key=key, scheduler=scheduler, persistence=persistence):
            return _genl(family_id, IPVS_CMD_SET_SERVICE, CHANGE_FLAGS, seq,
                         _attr(IPVS_CMD_ATTR_SERVICE, _service_full(key, scheduler, persistence)))
        case DelVirtual(key=key):
            return _genl(family_id, IPVS_CMD_DEL_SERVICE, REQUEST_FLAGS, seq,
                         _attr(IPVS_CMD_ATTR_SERVICE, _service_key(key)))
        case AddReal(virtual=key, real=real, weight=weight):
            command, flags = IPVS_CMD_NEW_DEST, CREATE_FLAGS
        case SetWeight(virtual=key, real=real, weight=weight):
            command, flags = IPVS_CMD_SET_DEST, CHANGE_FLAGS
        case DelReal(virtual=key, real=real):
            command, flags, weight = IPVS_CMD_DEL_DEST, REQUEST_FLAGS, 0
        case _:
            raise ValueError(f"not an IPVS operation: {op}")
    return _genl(family_id, command, flags, seq,
                 _attr(IPVS_CMD_ATTR_SERVICE, _service_key(key)) + _attr(IPVS_CMD_ATTR_DEST, _dest(real, weight)))


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
                 _attr(IPVS_CMD_ATTR_SERVICE, _service_key(key)))


def link_request(name: str, seq: int) -> bytes:
    """RTM_GETLINK of one link by name (the reply: RTM_NEWLINK; ENODEV when there is none)."""
    return _message(RTM_GETLINK, REQUEST_FLAGS, seq, IFINFO.pack(0, 0, 0, 0, 0)
                    + _attr(IFLA_IFNAME, name.encode() + b"\0"))


def dump_addresses_request(version: int, seq: int) -> bytes:
    return _message(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, seq, IFADDR.pack(AF_BY_VERSION[version], 0, 0, 0, 0))


# --- replies ---------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Message:
    """One netlink message of a received buffer: its header and where its payload is."""

    kind: int
    flags: int
    seq: int
    data: bytes  # the whole buffer (no copies); the payload is data[start:end]
    start: int
    end: int


def messages(data: bytes) -> Iterator[Message]:
    """The netlink messages in one received datagram."""
    offset, size = 0, len(data)
    while offset + HEADER.size <= size:
        length, kind, flags, seq, _ = HEADER.unpack_from(data, offset)
        if length < HEADER.size or offset + length > size:
            raise ValueError(f"truncated netlink message at {offset} ({length} of {size - offset} bytes)")
        yield Message(kind, flags, seq, data, offset + HEADER.size, offset + length)
        offset += (length + 3) & ~3


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


def _attrs(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Attribute type -> (value start, value end) of the attributes in data[start:end]."""
    out = {}
    while start + _NLA.size <= end:
        length, kind = _NLA.unpack_from(data, start)
        if length < _NLA.size:
            break
        out[kind & NLA_TYPE_MASK] = (start + _NLA.size, min(start + length, end))
        start += (length + 3) & ~3
    return out


def _u16(data: bytes, where: tuple[int, int]) -> int:
    return int(_U16.unpack_from(data, where[0])[0])


def _u32(data: bytes, where: tuple[int, int]) -> int:
    return int(_U32.unpack_from(data, where[0])[0])


def _address(family: int, data: bytes, where: tuple[int, int]) -> IPAddress:
    # the kernel sends IPVS addresses as a 16-byte union nf_inet_addr whatever the family
    if family == AF_INET:
        return IPv4Address(data[where[0]:where[0] + 4])
    return IPv6Address(data[where[0]:where[0] + 16])


def link_index(msg: Message) -> int:
    """An RTM_NEWLINK's link index."""
    return int(IFINFO.unpack_from(msg.data, msg.start)[2])


def family_id(msg: Message) -> int:
    """CTRL_CMD_GETFAMILY's reply: the family's id."""
    attrs = _attrs(msg.data, msg.start + GENL.size, msg.end)
    return _u16(msg.data, attrs[CTRL_ATTR_FAMILY_ID])


@dataclass(frozen=True, slots=True)
class ListedService:
    key: VirtualKey
    scheduler: str
    persistence: int  # the timeout, where the PERSISTENT flag is set; else 0


def service(msg: Message, family: int) -> ListedService | None:
    """A GET_SERVICE dump entry of IP family `family` (4 or 6); None for another family or a
    protocol kproxy does not program."""
    data = msg.data
    outer = _attrs(data, msg.start + GENL.size, msg.end)
    if IPVS_CMD_ATTR_SERVICE not in outer:
        return None
    attrs = _attrs(data, *outer[IPVS_CMD_ATTR_SERVICE])
    af = AF_BY_VERSION[family]
    if IPVS_SVC_ATTR_AF not in attrs or _u16(data, attrs[IPVS_SVC_ATTR_AF]) != af:
        return None
    fwmark = _u32(data, attrs[IPVS_SVC_ATTR_FWMARK]) if IPVS_SVC_ATTR_FWMARK in attrs else 0
    if fwmark:
        key = VirtualKey(ip=IPv4Address(0) if af == AF_INET else IPv6Address(0), protocol=Protocol.TCP, port=0,
                         fwmark=fwmark)
    else:
        if not {IPVS_SVC_ATTR_ADDR, IPVS_SVC_ATTR_PROTOCOL, IPVS_SVC_ATTR_PORT} <= attrs.keys():
            return None
        protocol = PROTOCOLS_BY_NUMBER.get(_u16(data, attrs[IPVS_SVC_ATTR_PROTOCOL]))
        if protocol is None:
            return None
        key = VirtualKey(ip=_address(af, data, attrs[IPVS_SVC_ATTR_ADDR]), protocol=protocol,
                         port=int(_BE16.unpack_from(data, attrs[IPVS_SVC_ATTR_PORT][0])[0]))
    start, end = attrs.get(IPVS_SVC_ATTR_SCHED_NAME, (0, 0))
    scheduler = data[start:end].split(b"\0", 1)[0].decode(errors="replace")
    flags = _u32(data, attrs[IPVS_SVC_ATTR_FLAGS]) if IPVS_SVC_ATTR_FLAGS in attrs else 0
    timeout = _u32(data, attrs[IPVS_SVC_ATTR_TIMEOUT]) if IPVS_SVC_ATTR_TIMEOUT in attrs else 0
    return ListedService(key=key, scheduler=scheduler, persistence=timeout if flags & PERSISTENT else 0)


def dest(msg: Message, family: int) -> tuple[RealKey, RealStats] | None:
    """A GET_DEST dump entry of a virtual server of IP family `family`: the real server and its
    weight, connections and forwarding method."""
    data = msg.data
    outer = _attrs(data, msg.start + GENL.size, msg.end)
    if IPVS_CMD_ATTR_DEST not in outer:
        return None
    attrs = _attrs(data, *outer[IPVS_CMD_ATTR_DEST])
    if IPVS_DEST_ATTR_ADDR not in attrs or IPVS_DEST_ATTR_PORT not in attrs:
        return None
    # ADDR_FAMILY since 4.18 (mixed-family tunnels); before, the virtual server's
    af = _u16(data, attrs[IPVS_DEST_ATTR_ADDR_FAMILY]) if IPVS_DEST_ATTR_ADDR_FAMILY in attrs else \
        AF_BY_VERSION[family]

    def u32(kind: int) -> int:
        return _u32(data, attrs[kind]) if kind in attrs else 0

    real = RealKey(ip=_address(af, data, attrs[IPVS_DEST_ATTR_ADDR]),
                   port=int(_BE16.unpack_from(data, attrs[IPVS_DEST_ATTR_PORT][0])[0]))
    return real, RealStats(weight=u32(IPVS_DEST_ATTR_WEIGHT), active=u32(IPVS_DEST_ATTR_ACTIVE_CONNS),
                           inactive=u32(IPVS_DEST_ATTR_INACT_CONNS),
                           forward=u32(IPVS_DEST_ATTR_FWD_METHOD) & IP_VS_CONN_F_FWD_MASK)


def address(msg: Message) -> tuple[int, IPAddress] | None:
    """An RTM_NEWADDR dump entry: the link's index and the address (IFA_ADDRESS)."""
    family, _, _, _, index = IFADDR.unpack_from(msg.data, msg.start)
    attrs = _attrs(msg.data, msg.start + IFADDR.size, msg.end)
    where = attrs.get(IFA_ADDRESS) or attrs.get(IFA_LOCAL)
    if where is None or family not in (AF_INET, AF_INET6):
        return None
    return int(index), _address(family, msg.data, where)
