"""IPVS mode's own netlink messages (kproxy/backends/ipvs/netlink.py), checked against
pyroute2's decoders and encoders: every request kproxy encodes decodes with pyroute2's
ipvsmsg/ifaddrmsg/ifinfmsg/ctrlmsg to the fields the kernel needs, and replies built by
pyroute2 (as the kernel sends them) decode to kproxy's values. Then NetlinkIpvs's batching
over a fake kernel end of the sockets (no root, no kernel)."""

from __future__ import annotations

import errno
import os
import struct
from collections import deque
from collections.abc import Callable
from ipaddress import IPv4Address, IPv6Address, ip_address

import pytest
from pyroute2.netlink.generic import ctrlmsg
from pyroute2.netlink.generic.ipvs import ipvsmsg
from pyroute2.netlink.rtnl.ifaddrmsg import ifaddrmsg
from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

from kproxy.backends.ipvs import kernel as kernel_module
from kproxy.backends.ipvs import netlink as nl
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
from kproxy.backends.ipvs.kernel import IpvsError, NetlinkIpvs, NetlinkSocket
from kproxy.backends.ipvs.objects import RealKey, RealStats, VirtualKey
from kproxy.model import Protocol

FID = 0x23  # the IPVS family's id in these tests

TCP4 = VirtualKey(ip=ip_address("10.96.0.10"), protocol=Protocol.TCP, port=80)
UDP6 = VirtualKey(ip=ip_address("fd00:96::a"), protocol=Protocol.UDP, port=53)
SCTP4 = VirtualKey(ip=ip_address("192.168.50.10"), protocol=Protocol.SCTP, port=30080)
FWM4 = VirtualKey(ip=ip_address("0.0.0.0"), protocol=Protocol.TCP, port=0, fwmark=0x10000123)
FWM6 = VirtualKey(ip=ip_address("::"), protocol=Protocol.TCP, port=0, fwmark=0x10000456)
REAL4 = RealKey(ip=ip_address("10.244.1.2"), port=8080)
REAL6 = RealKey(ip=ip_address("fd00:244::2"), port=5353)


def decode_ipvs(data: bytes) -> tuple[ipvsmsg, dict, dict]:
    msg = ipvsmsg(data)
    msg.decode()
    svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
    dest = msg.get_attr("IPVS_CMD_ATTR_DEST")
    return (msg, dict(svc["attrs"]) if svc else {}, dict(dest["attrs"]) if dest else {})


def key_attrs(key: VirtualKey) -> dict:
    af = 2 if key.ip.version == 4 else 10
    if key.fwmark:
        return {"IPVS_SVC_ATTR_AF": af, "IPVS_SVC_ATTR_FWMARK": key.fwmark}
    return {"IPVS_SVC_ATTR_AF": af, "IPVS_SVC_ATTR_PROTOCOL": nl.PROTOCOL_NUMBERS[key.protocol],
            "IPVS_SVC_ATTR_ADDR": str(key.ip), "IPVS_SVC_ATTR_PORT": key.port}


# --- requests, decoded by pyroute2 --------------------------------------------------------------

@pytest.mark.parametrize("key", [TCP4, UDP6, SCTP4, FWM4, FWM6], ids=str)
@pytest.mark.parametrize("persistence", [0, 10800])
@pytest.mark.parametrize("kind", [AddVirtual, EditVirtual])
def test_new_and_set_service_carry_the_full_entry(key: VirtualKey, persistence: int, kind: type) -> None:
    msg, svc, dest = decode_ipvs(nl.ipvs_request(kind(key=key, scheduler="wrr", persistence=persistence), FID, 77))
    header = msg["header"]
    assert (header["type"], header["sequence_number"], header["length"]) == (FID, 77, len(msg.data))
    assert header["flags"] == (nl.CREATE_FLAGS if kind is AddVirtual else nl.CHANGE_FLAGS)
    assert header["flags"] & nl.NLM_F_ACK and header["flags"] & nl.NLM_F_REQUEST
    assert (msg["cmd"], msg["version"]) == ((1 if kind is AddVirtual else 2), 1)
    assert not dest
    assert svc == {
        **key_attrs(key), "IPVS_SVC_ATTR_SCHED_NAME": "wrr", "IPVS_SVC_ATTR_TIMEOUT": persistence,
        "IPVS_SVC_ATTR_FLAGS": {"flags": 1 if persistence else 0, "mask": 0xFFFFFFFF},
        # pyroute2 types the netmask as an IPv4 address; the kernel reads a host-order u32:
        # all ones for IPv4, the prefix length 128 for IPv6 (on this little-endian host)
        "IPVS_SVC_ATTR_NETMASK": "255.255.255.255" if key.ip.version == 4 else "128.0.0.0",
    }


@pytest.mark.parametrize("key", [TCP4, UDP6, FWM4], ids=str)
def test_delete_service_names_it_by_its_key_only(key: VirtualKey) -> None:
    msg, svc, dest = decode_ipvs(nl.ipvs_request(DelVirtual(key=key), FID, 5))
    assert (msg["cmd"], msg["header"]["flags"]) == (3, nl.NLM_F_REQUEST | nl.NLM_F_ACK)
    assert svc == key_attrs(key) and not dest


@pytest.mark.parametrize(("key", "real"), [(TCP4, REAL4), (UDP6, REAL6), (FWM4, REAL4), (FWM6, REAL6)],
                         ids=lambda v: str(v))
@pytest.mark.parametrize("kind", [AddReal, SetWeight, DelReal])
def test_dest_commands_name_the_service_by_key_and_carry_a_masquerading_dest(
        key: VirtualKey, real: RealKey, kind: type) -> None:
    op: Operation = kind(virtual=key, real=real) if kind is DelReal else kind(virtual=key, real=real, weight=7)
    msg, svc, dest = decode_ipvs(nl.ipvs_request(op, FID, 2**32 - 1))
    assert msg["header"]["sequence_number"] == 2**32 - 1
    assert msg["cmd"] == {AddReal: 5, SetWeight: 6, DelReal: 7}[kind]
    assert msg["header"]["flags"] == {AddReal: nl.CREATE_FLAGS, SetWeight: nl.CHANGE_FLAGS,
                                      DelReal: nl.REQUEST_FLAGS}[kind]
    assert svc == key_attrs(key)
    assert dest == {
        "IPVS_DEST_ATTR_ADDR": str(real.ip), "IPVS_DEST_ATTR_PORT": real.port,
        "IPVS_DEST_ATTR_ADDR_FAMILY": 2 if real.ip.version == 4 else 10,
        "IPVS_DEST_ATTR_FWD_METHOD": 0,  # masquerading (pyroute2's default would be 3, routing)
        "IPVS_DEST_ATTR_WEIGHT": 0 if kind is DelReal else 7,
        "IPVS_DEST_ATTR_U_THRESH": 0, "IPVS_DEST_ATTR_L_THRESH": 0,
    }


@pytest.mark.parametrize("ip", ["10.96.0.10", "fd00:96::a"])
@pytest.mark.parametrize("kind", [AddAddress, DelAddress])
def test_address_requests_are_host_addresses_on_the_link(ip: str, kind: type) -> None:
    data = nl.address_request(kind(ip=ip_address(ip)), 42, 9)
    msg = ifaddrmsg(data)
    msg.decode()
    header = msg["header"]
    assert (header["type"], header["sequence_number"], header["length"]) == (
        20 if kind is AddAddress else 21, 9, len(data))
    assert header["flags"] == (nl.CREATE_FLAGS if kind is AddAddress else nl.REQUEST_FLAGS)
    v4 = ":" not in ip
    assert (msg["family"], msg["prefixlen"], msg["index"], msg["scope"], msg["flags"]) == (
        2 if v4 else 10, 32 if v4 else 128, 42, 0, 0)
    assert dict(msg["attrs"]) == {"IFA_LOCAL": ip, "IFA_ADDRESS": ip}


def test_an_operation_goes_to_its_own_protocol() -> None:
    with pytest.raises(ValueError, match="not an IPVS operation"):
        nl.ipvs_request(AddAddress(ip=ip_address("10.0.0.1")), FID, 1)
    with pytest.raises(ValueError, match="not an address operation"):
        nl.address_request(DelVirtual(key=TCP4), 1, 1)
    assert nl.is_address_op(DelAddress(ip=ip_address("10.0.0.1")))
    assert not nl.is_address_op(DelVirtual(key=TCP4))


def test_lookups_and_dumps_requests() -> None:
    msg = ctrlmsg(nl.get_family_request("IPVS", 3))
    msg.decode()
    assert (msg["header"]["type"], msg["cmd"], msg.get_attr("CTRL_ATTR_FAMILY_NAME")) == (0x10, 3, "IPVS")
    link = ifinfmsg(nl.link_request("kube-ipvs0", 4))
    link.decode()
    assert (link["header"]["type"], link.get_attr("IFLA_IFNAME")) == (18, "kube-ipvs0")
    dump = ipvsmsg(nl.dump_services_request(FID, 5))
    dump.decode()
    assert (dump["cmd"], dump["header"]["flags"], dump["attrs"]) == (4, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, [])
    msg, svc, _ = decode_ipvs(nl.dump_dests_request(UDP6, FID, 6))
    assert (msg["cmd"], msg["header"]["flags"], svc) == (8, nl.NLM_F_REQUEST | nl.NLM_F_DUMP, key_attrs(UDP6))
    addrs = ifaddrmsg(nl.dump_addresses_request(6, 7))
    addrs.decode()
    assert (addrs["header"]["type"], addrs["family"], addrs["header"]["flags"]) == (22, 10, 0x301)


# --- replies built by pyroute2 --------------------------------------------------------------

STATS = {"attrs": [("IPVS_STATS_ATTR_CONNS", 9), ("IPVS_STATS_ATTR_INBYTES", 1 << 40)]}


def service_entry(key: VirtualKey, scheduler: str = "rr", flags: int = 0x2, timeout: int = 0, seq: int = 1) -> bytes:
    """A GET_SERVICE dump entry as the kernel sends it (IP_VS_SVC_F_HASHED is always set)."""
    attrs = [(k, v) for k, v in key_attrs(key).items()]
    if key.fwmark:  # the kernel fills in the rest of a fwmark service's key too
        attrs += [("IPVS_SVC_ATTR_PROTOCOL", 6), ("IPVS_SVC_ATTR_ADDR", str(key.ip)), ("IPVS_SVC_ATTR_PORT", 0)]
    attrs += [("IPVS_SVC_ATTR_SCHED_NAME", scheduler), ("IPVS_SVC_ATTR_FLAGS", {"flags": flags, "mask": 0xFFFFFFFF}),
              ("IPVS_SVC_ATTR_TIMEOUT", timeout), ("IPVS_SVC_ATTR_NETMASK", "255.255.255.255"),
              ("IPVS_SVC_ATTR_STATS", STATS), ("IPVS_SVC_ATTR_STATS64", STATS)]
    return encode_ipvs(nl.IPVS_CMD_NEW_SERVICE, [("IPVS_CMD_ATTR_SERVICE", {"attrs": attrs})], seq)


def dest_entry(real: RealKey, weight: int = 1, fwd: int = 0, active: int = 0, inactive: int = 0,
               seq: int = 1) -> bytes:
    attrs = [("IPVS_DEST_ATTR_ADDR", str(real.ip)), ("IPVS_DEST_ATTR_PORT", real.port),
             ("IPVS_DEST_ATTR_FWD_METHOD", fwd), ("IPVS_DEST_ATTR_WEIGHT", weight),
             ("IPVS_DEST_ATTR_TUN_TYPE", 0), ("IPVS_DEST_ATTR_U_THRESH", 0), ("IPVS_DEST_ATTR_L_THRESH", 0),
             ("IPVS_DEST_ATTR_ACTIVE_CONNS", active), ("IPVS_DEST_ATTR_INACT_CONNS", inactive),
             ("IPVS_DEST_ATTR_PERSIST_CONNS", 0), ("IPVS_DEST_ATTR_STATS", STATS),
             ("IPVS_DEST_ATTR_ADDR_FAMILY", 2 if real.ip.version == 4 else 10)]
    return encode_ipvs(nl.IPVS_CMD_NEW_DEST, [("IPVS_CMD_ATTR_DEST", {"attrs": attrs})], seq)


def encode_ipvs(cmd: int, attrs: list, seq: int) -> bytes:
    msg = ipvsmsg()
    msg["cmd"], msg["version"], msg["attrs"] = cmd, 1, attrs
    msg["header"].update({"type": FID, "flags": nl.NLM_F_MULTI, "sequence_number": seq, "pid": 0})
    msg.encode()
    return bytes(msg.data)


def one(data: bytes) -> nl.Message:
    (msg,) = nl.messages(data)
    return msg


def test_service_entries_decode_to_keys_schedulers_and_persistence() -> None:
    assert nl.service(one(service_entry(TCP4, "wrr", flags=0x3, timeout=300)), 4) == nl.ListedService(
        key=TCP4, scheduler="wrr", persistence=300)
    # a timeout without the PERSISTENT flag is no persistence
    assert nl.service(one(service_entry(SCTP4, timeout=300)), 4) == nl.ListedService(
        key=SCTP4, scheduler="rr", persistence=0)
    assert nl.service(one(service_entry(UDP6, "sh", flags=0x1, timeout=60)), 6) == nl.ListedService(
        key=UDP6, scheduler="sh", persistence=60)
    # a firewall-mark service: the family's unspecified address, TCP, port 0
    assert nl.service(one(service_entry(FWM4)), 4) == nl.ListedService(key=FWM4, scheduler="rr", persistence=0)
    assert nl.service(one(service_entry(FWM6)), 6).key == FWM6
    # the other family's services, and protocols kproxy never programs, are not kproxy's
    assert nl.service(one(service_entry(UDP6)), 4) is None
    assert nl.service(one(service_entry(TCP4)), 6) is None
    icmp = service_entry(TCP4).replace(struct.pack("=HHH", 6, 2, 6), struct.pack("=HHH", 6, 2, 1), 1)
    assert nl.service(one(icmp), 4) is None


def kernel_service_entry(key: VirtualKey) -> bytes:
    """As the kernel really encodes IPVS_SVC_ATTR_ADDR: a 16-byte union nf_inet_addr."""
    af = 2 if key.ip.version == 4 else 10
    attrs = (nl._attr(nl.IPVS_SVC_ATTR_AF, struct.pack("=H", af))
             + nl._attr(nl.IPVS_SVC_ATTR_PROTOCOL, struct.pack("=H", 6))
             + nl._attr(nl.IPVS_SVC_ATTR_ADDR, key.ip.packed.ljust(16, b"\0"))
             + nl._attr(nl.IPVS_SVC_ATTR_PORT, struct.pack("!H", key.port))
             + nl._attr(nl.IPVS_SVC_ATTR_FWMARK, struct.pack("=I", 0))
             + nl._attr(nl.IPVS_SVC_ATTR_SCHED_NAME, b"rr\0"))
    return nl._genl(FID, nl.IPVS_CMD_NEW_SERVICE, nl.NLM_F_MULTI, 1, nl._attr(nl.IPVS_CMD_ATTR_SERVICE, attrs))


def test_sixteen_byte_addresses_and_a_zero_fwmark_as_the_kernel_sends_them() -> None:
    assert nl.service(one(kernel_service_entry(TCP4)), 4).key == TCP4
    pyroute = ipvsmsg(kernel_service_entry(TCP4))
    pyroute.decode()
    assert pyroute.get_attr("IPVS_CMD_ATTR_SERVICE").get_attr("IPVS_SVC_ATTR_ADDR") == "10.96.0.10"


def test_dest_entries_decode_to_real_servers_with_weights_connections_and_forwarding() -> None:
    assert nl.dest(one(dest_entry(REAL4, weight=3, active=2, inactive=5)), 4) == (
        REAL4, RealStats(weight=3, active=2, inactive=5, forward=0))
    # the forwarding method without the kernel's other connection flags
    assert nl.dest(one(dest_entry(REAL6, weight=0, fwd=0x3 | 0x100)), 6) == (
        REAL6, RealStats(weight=0, forward=3))
    # kernels before 4.18 send no ADDR_FAMILY: the virtual server's (and a 16-byte address)
    old = (nl._attr(nl.IPVS_DEST_ATTR_ADDR, REAL4.ip.packed.ljust(16, b"\0"))
           + nl._attr(nl.IPVS_DEST_ATTR_PORT, struct.pack("!H", REAL4.port))
           + nl._attr(nl.IPVS_DEST_ATTR_WEIGHT, struct.pack("=I", 4)))
    entry = nl._genl(FID, nl.IPVS_CMD_NEW_DEST, nl.NLM_F_MULTI, 1, nl._attr(nl.IPVS_CMD_ATTR_DEST, old))
    assert nl.dest(one(entry), 4) == (REAL4, RealStats(weight=4))
    assert nl.dest(one(service_entry(TCP4)), 4) is None


def test_acks_errors_and_done() -> None:
    request = nl.ipvs_request(AddVirtual(key=TCP4, scheduler="rr", persistence=0), FID, 12)
    # the kernel's error: the outer header answers the request's sequence number, and the
    # payload is the error and the request's header (NETLINK_CAP_ACK), or the whole request
    for payload in (request[:16], request):
        err = nl._message(nl.NLMSG_ERROR, 0x100, 12, struct.pack("=i", -errno.EEXIST) + payload)
        assert nl.error_code(one(err)) == (errno.EEXIST, 12)
    ack = nl._message(nl.NLMSG_ERROR, 0x100, 12, struct.pack("=i", 0) + request[:16])
    assert nl.error_code(one(ack)) == (0, 12)
    assert nl.error_code(one(nl._message(nl.NLMSG_ERROR, 0, 13, struct.pack("=i", -1)))) == (1, 13)
    assert nl.done_code(one(nl._message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 3, struct.pack("=i", 0)))) == 0
    assert nl.done_code(one(nl._message(nl.NLMSG_DONE, nl.NLM_F_MULTI, 3, struct.pack("=i", -errno.EINTR)))) \
        == errno.EINTR


def test_a_datagram_of_many_messages_and_a_truncated_one() -> None:
    data = b"".join(service_entry(k, seq=i) for i, k in enumerate((TCP4, SCTP4, FWM4)))
    assert [nl.service(m, 4).key for m in nl.messages(data)] == [TCP4, SCTP4, FWM4]
    assert [m.seq for m in nl.messages(data)] == [0, 1, 2]
    with pytest.raises(ValueError, match="truncated"):
        list(nl.messages(data[:-4]))


def test_family_link_and_address_replies() -> None:
    reply = ctrlmsg()
    reply["cmd"], reply["version"] = 1, 2
    reply["attrs"] = [("CTRL_ATTR_FAMILY_NAME", "IPVS"), ("CTRL_ATTR_FAMILY_ID", FID), ("CTRL_ATTR_VERSION", 1)]
    reply.encode()
    assert nl.family_id(one(bytes(reply.data))) == FID
    link = ifinfmsg()
    link["index"] = 17
    link["attrs"] = [("IFLA_IFNAME", "kube-ipvs0")]
    link.encode()
    assert nl.link_index(one(bytes(link.data))) == 17
    assert nl.address(one(address_entry(17, "10.96.0.10"))) == (17, IPv4Address("10.96.0.10"))
    assert nl.address(one(address_entry(3, "fd00::5"))) == (3, IPv6Address("fd00::5"))


def address_entry(index: int, ip: str, seq: int = 1) -> bytes:
    msg = ifaddrmsg()
    v4 = ":" not in ip
    msg.update({"family": 2 if v4 else 10, "prefixlen": 32 if v4 else 64, "index": index, "scope": 0})
    msg["attrs"] = [("IFA_ADDRESS", ip), ("IFA_LOCAL", ip), ("IFA_LABEL", "x")] if v4 else [("IFA_ADDRESS", ip)]
    msg["header"].update({"type": nl.RTM_NEWADDR, "flags": nl.NLM_F_MULTI, "sequence_number": seq})
    msg.encode()
    return bytes(msg.data)


# --- NetlinkIpvs over a fake kernel ------------------------------------------------------------

def ack(request: nl.Message, code: int = 0) -> bytes:
    header = request.data[request.start - 16:request.start]
    return nl._message(nl.NLMSG_ERROR, 0x100, request.seq, struct.pack("=i", -code) + header)


NEVER_READABLE = os.pipe()[0]  # what select() waits on when a read finds nothing queued


@pytest.fixture(autouse=True)
def _short_waits(monkeypatch: pytest.MonkeyPatch) -> None:
    # a read with nothing queued is a missing reply: fail in a moment, not after 30 s
    monkeypatch.setattr(kernel_module, "REPLY_TIMEOUT", 0.01)


class FakeKernelEnd:
    """The kernel's end of one netlink socket: each sendmsg's messages handled in order, each
    reply a datagram of its own (as the kernel queues them), read back with MSG_DONTWAIT."""

    def __init__(self, answer: Callable[[nl.Message], list[bytes]], rcvbuf: int = 1 << 20) -> None:
        self.answer = answer
        self.rcvbuf = rcvbuf
        self.datagrams: list[list[nl.Message]] = []
        self.queue: deque[bytes] = deque()

    def setsockopt(self, *args: object) -> None:
        pass

    def getsockopt(self, level: int, option: int) -> int:
        return self.rcvbuf

    def bind(self, address: object) -> None:
        pass

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return NEVER_READABLE

    def send(self, data: bytes) -> int:
        msgs = list(nl.messages(bytes(data)))
        self.datagrams.append(msgs)
        for msg in msgs:
            self.queue.extend(self.answer(msg))
        return len(data)

    def recv_into(self, buffer: bytearray, size: int, flags: int) -> int:
        if not self.queue:
            raise BlockingIOError(errno.EAGAIN, "nothing queued")  # (MSG_DONTWAIT)
        data = self.queue.popleft()
        buffer[:len(data)] = data
        return len(data)

    def requests(self) -> list[nl.Message]:
        return [m for d in self.datagrams for m in d]


class FakeIpvsKernel:
    """Both sockets' kernel ends: IPVS's family id, kube-ipvs0 (index 9 when `link`), dumps
    of `services` {key bytes: dest entries} and `addresses`, and acks; `refuse(msg)` gives an
    errno for a request."""

    def __init__(self, rcvbuf: int = 1 << 20) -> None:
        self.link = True
        self.services: list[tuple[bytes, list[bytes]]] = []
        self.addresses: list[bytes] = []
        self.refuse: Callable[[nl.Message], int] = lambda msg: 0
        self.lose: Callable[[nl.Message], bool] = lambda msg: False  # an ack that never comes
        self.genl = FakeKernelEnd(self._genl, rcvbuf)
        self.rtnl = FakeKernelEnd(self._rtnl, rcvbuf)

    def done(self, msg: nl.Message, entries: list[bytes]) -> list[bytes]:
        # a dump's entries come several to a datagram, with the request's sequence number,
        # then NLMSG_DONE
        entries = [e[:8] + struct.pack("=I", msg.seq) + e[12:] for e in entries]
        return [b"".join(entries), nl._message(nl.NLMSG_DONE, nl.NLM_F_MULTI, msg.seq, struct.pack("=i", 0))]

    def _genl(self, msg: nl.Message) -> list[bytes]:
        if msg.kind == nl.GENL_ID_CTRL:
            reply = ctrlmsg()
            reply["cmd"], reply["attrs"] = 1, [("CTRL_ATTR_FAMILY_ID", FID)]
            reply["header"]["sequence_number"] = msg.seq
            reply.encode()
            return [bytes(reply.data), ack(msg)]
        assert msg.kind == FID
        command = msg.data[msg.start]
        if command == nl.IPVS_CMD_GET_SERVICE:
            return self.done(msg, [s for s, _ in self.services])
        if command == nl.IPVS_CMD_GET_DEST:
            key = msg.data[msg.start + 4:msg.end]
            return self.done(msg, next((d for s, d in self.services if key_of(s) == key), []))
        return [] if self.lose(msg) else [ack(msg, self.refuse(msg))]

    def _rtnl(self, msg: nl.Message) -> list[bytes]:
        if msg.kind == nl.RTM_GETLINK:
            if not self.link:
                return [ack(msg, errno.ENODEV)]
            link = ifinfmsg()
            link["index"] = 9
            link["header"].update({"type": nl.RTM_NEWLINK, "sequence_number": msg.seq})
            link.encode()
            return [bytes(link.data), ack(msg)]
        if msg.kind == nl.RTM_GETADDR:
            return self.done(msg, self.addresses)
        return [ack(msg, self.refuse(msg))]

    def netlink_ipvs(self, family: int = 4) -> NetlinkIpvs:
        return NetlinkIpvs(family, genl=NetlinkSocket(16, sock=self.genl), rtnl=NetlinkSocket(0, sock=self.rtnl))


def key_of(entry: bytes) -> bytes:
    """The IPVS_CMD_ATTR_SERVICE a dest dump request would carry for a service entry."""
    svc = ipvsmsg(entry)
    svc.decode()
    attrs = dict(svc.get_attr("IPVS_CMD_ATTR_SERVICE")["attrs"])
    af = attrs["IPVS_SVC_ATTR_AF"]
    unspecified = "0.0.0.0" if af == 2 else "::"
    if attrs.get("IPVS_SVC_ATTR_FWMARK"):
        key = VirtualKey(ip=ip_address(unspecified), protocol=Protocol.TCP, port=0,
                         fwmark=attrs["IPVS_SVC_ATTR_FWMARK"])
    else:
        key = VirtualKey(ip=ip_address(attrs["IPVS_SVC_ATTR_ADDR"]),
                         protocol=nl.PROTOCOLS_BY_NUMBER[attrs["IPVS_SVC_ATTR_PROTOCOL"]],
                         port=attrs["IPVS_SVC_ATTR_PORT"])
    return nl.dump_dests_request(key, FID, 0)[20:]


def sync_ops(n: int) -> list[Operation]:
    """A cold sync's shape: addresses first, then servers with their real servers, then
    deletions of servers and addresses."""
    ops: list[Operation] = [AddAddress(ip=ip_address(f"10.96.{i // 250}.{i % 250 + 1}")) for i in range(n)]
    for i in range(n):
        key = VirtualKey(ip=ip_address(f"10.96.{i // 250}.{i % 250 + 1}"), protocol=Protocol.TCP, port=80)
        ops.append(AddVirtual(key=key, scheduler="rr", persistence=0))
        ops.extend(AddReal(virtual=key, real=RealKey(ip=ip_address(f"10.244.{i // 250}.{j}"), port=8080), weight=1)
                   for j in range(1, 4))
    ops += [DelVirtual(key=TCP4), DelAddress(ip=ip_address("10.96.0.200"))]
    return ops


def test_apply_sends_runs_of_operations_in_batches_in_order_each_acked() -> None:
    fake = FakeIpvsKernel(rcvbuf=64 * 2048)  # 64 acks to a batch
    kernel = fake.netlink_ipvs()
    ops = sync_ops(100)
    assert kernel.apply(ops) == len(ops)
    genl = [m for m in fake.genl.requests() if m.kind == FID]
    rtnl = [m for m in fake.rtnl.requests() if m.kind in (nl.RTM_NEWADDR, nl.RTM_DELADDR)]
    assert len(genl) == 401 and len(rtnl) == 101
    # every request wants its ack and has its own sequence number
    assert all(m.flags & nl.NLM_F_ACK for m in genl + rtnl)
    assert len({m.seq for m in genl}) == len(genl)
    # batches: the IPVS ones of at most 64 requests, and the operations' order kept
    sizes = [len(d) for d in fake.genl.datagrams if d[0].kind == FID]
    assert sizes == [64] * 6 + [17]
    decoded = [decode_ipvs(m.data[m.start - 16:m.end])[0]["cmd"] for m in genl]
    assert decoded == [op_cmd(op) for op in ops if not nl.is_address_op(op)]
    # kube-ipvs0 looked up once; its index on every address request
    assert [m.kind for m in fake.rtnl.requests()].count(nl.RTM_GETLINK) == 1
    assert {struct.unpack_from("=I", m.data, m.start + 4)[0] for m in rtnl} == {9}


def op_cmd(op: Operation) -> int:
    return {AddVirtual: 1, EditVirtual: 2, DelVirtual: 3, AddReal: 5, SetWeight: 6, DelReal: 7}[type(op)]


def test_a_batch_stays_within_its_byte_budget() -> None:
    fake = FakeIpvsKernel(rcvbuf=1 << 24)  # acks are no limit here
    kernel = fake.netlink_ipvs()
    ops = sync_ops(1000)
    assert kernel.apply(ops) == len(ops)
    sizes = [sum(m.end - m.start + 16 for m in d) for d in fake.genl.datagrams if d[0].kind == FID]
    assert max(sizes) <= 64 << 10 and len(sizes) > 4


def test_the_first_refused_request_raises_naming_it_and_no_later_batch_is_sent() -> None:
    fake = FakeIpvsKernel(rcvbuf=32 * 2048)
    kernel = fake.netlink_ipvs()
    ops = sync_ops(30)
    bad = next(op for op in ops if isinstance(op, AddReal) and op.real.ip == ip_address("10.244.0.2")
               and op.virtual.ip == ip_address("10.96.0.5"))
    bad_cmd = nl.ipvs_request(bad, FID, 0)[16:]
    # the kernel refuses that one and, later in the same batch, another one
    later = next(op for op in ops if isinstance(op, AddVirtual) and op.key.ip == ip_address("10.96.0.7"))
    refused = {bad_cmd, nl.ipvs_request(later, FID, 0)[16:]}
    fake.refuse = lambda msg: errno.EEXIST if msg.data[msg.start:msg.end] in refused else 0
    with pytest.raises(IpvsError) as caught:
        kernel.apply(ops)
    assert str(caught.value) == "AddReal TCP 10.96.0.5:80 10.244.0.2:8080 1: File exists"
    batches = [d for d in fake.genl.datagrams if d[0].kind == FID]
    assert len(batches) == 1  # the refused op was in the first batch: nothing after it
    # a one-op apply afterwards is one request in one datagram
    sent = len(fake.genl.datagrams)
    fake.refuse = lambda msg: 0
    assert kernel.apply([SetWeight(virtual=TCP4, real=REAL4, weight=0)]) == 1
    assert [len(d) for d in fake.genl.datagrams[sent:]] == [1]


def test_a_refused_address_forgets_the_link_and_deleting_from_a_missing_link_sends_nothing() -> None:
    fake = FakeIpvsKernel()
    kernel = fake.netlink_ipvs()
    fake.refuse = lambda msg: errno.ENODEV
    with pytest.raises(IpvsError, match=r"^AddAddress 10\.96\.0\.1: No such device$"):
        kernel.apply([AddAddress(ip=ip_address("10.96.0.1"))])
    fake.link = False
    before = len(fake.rtnl.requests())
    assert kernel.apply([DelAddress(ip=ip_address("10.96.0.1")), DelAddress(ip=ip_address("10.96.0.2"))]) == 2
    assert [m.kind for m in fake.rtnl.requests()[before:]] == [nl.RTM_GETLINK]  # looked up again: gone


def test_list_virtuals_reads_services_then_each_ones_real_servers() -> None:
    fake = FakeIpvsKernel()
    fake.services = [
        (service_entry(TCP4, "wrr", flags=0x3, timeout=300), [dest_entry(REAL4, weight=2, active=1, inactive=4)]),
        (service_entry(FWM4), [dest_entry(REAL4), dest_entry(RealKey(ip=ip_address("10.244.1.3"), port=80))]),
        (service_entry(UDP6), [dest_entry(REAL6)]),
        (service_entry(SCTP4, "sh", timeout=60), []),
    ]
    listed = fake.netlink_ipvs(4).list_virtuals()
    assert set(listed) == {TCP4, FWM4, SCTP4}
    assert (listed[TCP4].scheduler, listed[TCP4].persistence) == ("wrr", 300)
    assert listed[TCP4].reals == {REAL4: RealStats(weight=2, active=1, inactive=4)}
    assert set(listed[FWM4].reals) == {REAL4, RealKey(ip=ip_address("10.244.1.3"), port=80)}
    assert (listed[SCTP4].scheduler, listed[SCTP4].persistence, listed[SCTP4].reals) == ("sh", 0, {})
    six = fake.netlink_ipvs(6).list_virtuals()
    assert list(six) == [UDP6] and six[UDP6].reals == {REAL6: RealStats(weight=1)}
    # a virtual server that is gone lists no real servers
    assert fake.netlink_ipvs(4).list_reals(VirtualKey(ip=ip_address("10.1.1.1"), protocol=Protocol.TCP, port=1)) == {}


def test_addresses_of_kube_ipvs0_and_the_nodes_other_addresses() -> None:
    fake = FakeIpvsKernel()
    fake.addresses = [address_entry(9, "10.96.0.10"), address_entry(9, "10.96.0.11"), address_entry(1, "127.0.0.1"),
                      address_entry(2, "192.168.50.10"), address_entry(2, "169.254.1.1")]
    kernel = fake.netlink_ipvs()
    assert kernel.addresses() == {ip_address("10.96.0.10"), ip_address("10.96.0.11")}
    assert kernel.local_addresses() == (ip_address("192.168.50.10"),)
    fake.link = False
    assert kernel.addresses() == set()  # a full read looks kube-ipvs0 up again


def test_entries_of_one_size_but_another_layout_are_walked_not_taken_from_the_cache() -> None:
    def entry(*attrs: bytes) -> bytes:
        return nl._genl(FID, nl.IPVS_CMD_NEW_DEST, nl.NLM_F_MULTI, 1, nl._attr(nl.IPVS_CMD_ATTR_DEST, b"".join(attrs)))

    addr = nl._attr(nl.IPVS_DEST_ATTR_ADDR, REAL4.ip.packed.ljust(16, b"\0"))
    port = nl._attr(nl.IPVS_DEST_ATTR_PORT, struct.pack("!H", REAL4.port))
    weight = nl._attr(nl.IPVS_DEST_ATTR_WEIGHT, struct.pack("=I", 5))
    active = nl._attr(nl.IPVS_DEST_ATTR_ACTIVE_CONNS, struct.pack("=I", 7))
    first = entry(addr, port, weight, active)
    second = entry(addr, port, active, weight)  # the same size, weight and connections swapped
    third = entry(addr, nl._attr(nl.IPVS_DEST_ATTR_PORT, struct.pack("!H", 99)), weight, active)
    assert nl.dest(one(first), 4) == (REAL4, RealStats(weight=5, active=7))
    assert nl.dest(one(second), 4) == (REAL4, RealStats(weight=5, active=7))
    assert nl.dest(one(first), 4) == (REAL4, RealStats(weight=5, active=7))
    assert nl.dest(one(third), 4) == (RealKey(ip=REAL4.ip, port=99), RealStats(weight=5, active=7))


def test_acks_are_read_straight_from_the_receive_buffer() -> None:
    requests = [nl.ipvs_request(DelVirtual(key=TCP4), FID, seq) for seq in (4, 5, 6)]
    replies = (nl._message(nl.NLMSG_ERROR, 0x100, 4, struct.pack("=i", 0) + requests[0][:16])
               + nl._message(nl.NLMSG_ERROR, 0, 5, struct.pack("=i", -errno.ESRCH) + requests[1])
               + nl._message(nl.NLMSG_ERROR, 0, 6, struct.pack("=i", -errno.ENOENT)))
    buffer = bytearray(replies) + bytearray(64)  # the rest of the buffer is stale bytes
    assert nl.acks(buffer, len(replies)) == [(0, 4), (errno.ESRCH, 5), (errno.ENOENT, 6)]
    with pytest.raises(ValueError, match="truncated"):
        nl.acks(buffer, len(replies) - 4)


def test_a_missing_ack_fails_the_apply_and_the_next_one_reads_only_its_own() -> None:
    fake = FakeIpvsKernel(rcvbuf=16 * 2048)
    kernel = fake.netlink_ipvs()
    ops = sync_ops(10)
    first, last = ops[10], ops[25]  # the first IPVS batch: 16 requests
    for lost, why in ((first, "1 netlink acks missing"), (last, "no netlink reply")):
        fake.lose = lambda msg, lost=lost: msg.data[msg.start - 16:msg.end][20:] == nl.ipvs_request(lost, FID, 0)[20:]
        with pytest.raises(IpvsError, match=rf"^AddVirtual TCP 10\.96\.0\.1:80 rr 0: {why}$"):
            kernel.apply(ops[10:])
        assert not fake.genl.queue  # what the failed batch left unread is gone
    fake.lose = lambda msg: False
    fake.refuse = lambda msg: errno.EEXIST if msg.data[msg.start] == nl.IPVS_CMD_NEW_SERVICE else 0
    with pytest.raises(IpvsError, match=r"^AddVirtual TCP 10\.96\.0\.1:80 rr 0: File exists$"):
        kernel.apply(ops[10:])
    fake.refuse = lambda msg: 0
    assert kernel.apply(ops) == len(ops)
