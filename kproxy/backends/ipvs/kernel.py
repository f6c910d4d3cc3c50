"""The only place IPVS mode talks to the kernel: IPVS virtual and real servers, the dummy
link kube-ipvs0 and its addresses (pyroute2, netlink), the IPVS sysctls, and the auxiliary
nftables table (libnftables, through the nft backend's kernel)."""

from __future__ import annotations

import errno
import os
import select
import socket
import typing
from collections.abc import Callable, Iterable
from functools import partial
from itertools import groupby
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from kproxy.backends.ipvs import netlink
from kproxy.backends.ipvs.diff import AddAddress, DelAddress, DelVirtual, Operation
from kproxy.backends.ipvs.objects import DUMMY_LINK, ListedVirtual, RealKey, RealStats, VirtualKey, aux_table_of
from kproxy.backends.nft.kernel import LibNftKernel
from kproxy.model import IPAddress

if TYPE_CHECKING:
    from pyroute2 import IPRoute

log = structlog.get_logger(__name__)

FAMILY_NUMBERS = {4: socket.AF_INET, 6: socket.AF_INET6}

NETLINK_GENERIC = 16  # linux/netlink.h (not in Python's socket module)
SOL_NETLINK = 270
NETLINK_CAP_ACK = 10
SO_RCVBUFFORCE = 33
RECEIVE_BUFFER = 8 << 20  # room for a batch's acks
RECEIVE_SIZE = 64 << 10  # a dump's datagrams are at most 32 KiB
BATCH_BYTES = 64 << 10  # requests per sendmsg (the socket's send buffer is ~200 KiB)
REPLY_TIMEOUT = 30.0  # seconds; replies are queued before sendmsg returns, so only a lost one waits
STALE_REPLIES = 64  # replies of another request a read may skip (a failed call drains its own)
MAX_DUMP_PARTS = 1 << 20

# Upstream's IPVS-mode sysctls (per network namespace): conntrack for IPVS connections, so
# the masquerade rules see them; new connections never reuse a draining server's entry;
# connections to a deleted server end at their next packet; persistence templates of a
# weight-0 server expire.
IPVS_SYSCTLS = {
    "net/ipv4/vs/conntrack": 1,
    "net/ipv4/vs/conn_reuse_mode": 0,
    "net/ipv4/vs/expire_nodest_conn": 1,
    "net/ipv4/vs/expire_quiescent_template": 1,
    "net/ipv4/ip_forward": 1,
}
STRICT_ARP_SYSCTLS = {"net/ipv4/conf/all/arp_ignore": 1, "net/ipv4/conf/all/arp_announce": 2}


class IpvsError(RuntimeError):
    """A request the kernel refused; the operations before it stay applied."""


class IpvsKernel(typing.Protocol):
    def list_virtuals(self) -> dict[VirtualKey, ListedVirtual]: ...

    def list_reals(self, key: VirtualKey) -> dict[RealKey, RealStats]: ...

    def addresses(self) -> set[IPAddress]: ...

    def local_addresses(self) -> tuple[IPAddress, ...]: ...

    def apply(self, ops: Iterable[Operation]) -> int: ...

    def apply_aux(self, script: str) -> None: ...

    def aux_table(self) -> dict[str, Any] | None: ...

    def cleanup(self) -> bool: ...


def ipvs_available() -> str | None:
    """None when this kernel has IPVS (loading ip_vs if needed); else why not, in a few words."""
    from pyroute2 import IPVS  # imported when used: ~10 MB, which other modes never need

    try:
        with IPVS() as ipvs:
            ipvs.service("dump")
    except Exception as err:  # noqa: BLE001 - any failure means the same to the user
        return f"the kernel has no IPVS ({err})"
    return None


def scheduler_available(name: str) -> bool:
    """Whether the kernel has this scheduler (modprobe ip_vs_NAME, as ipvsadm does via the kernel)."""
    if Path(f"/sys/module/ip_vs_{name}").exists():
        return True
    import subprocess

    return subprocess.run(["modprobe", "-q", f"ip_vs_{name}"], check=False, capture_output=True).returncode == 0


def write_sysctls(values: dict[str, int]) -> dict[str, str]:
    """Write each value that differs; the ones that failed, with why."""
    failed = {}
    for name, value in values.items():
        path = Path("/proc/sys") / name
        try:
            if path.read_text().strip() != str(value):
                path.write_text(f"{value}\n")
                log.info("set sysctl", sysctl=name.replace("/", "."), value=value)
        except OSError as err:
            failed[name] = err.strerror or str(err)
            log.warning("cannot set sysctl", sysctl=name.replace("/", "."), value=value, error=failed[name])
    return failed


class NetlinkSocket:
    """One netlink socket, open for its owner's life: batches of requests read back by their
    acks, single requests, and dumps. The kernel handles what a sendmsg carries before the call
    returns, so every reply is already queued when it is read (a wait means a lost reply)."""

    def __init__(self, protocol: int, sock: socket.socket | None = None) -> None:
        self.sock = sock or socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, protocol)
        try:
            # a batch's acks wait here all at once: SO_RCVBUFFORCE (root) goes past rmem_max
            self.sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, RECEIVE_BUFFER)
        except OSError:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, RECEIVE_BUFFER)
        # a refused request's error reply without a copy of the request
        self.sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)
        self.sock.bind((0, 0))
        # the kernel doubles what was set; an ack takes up to ~1 KiB of it (skb overhead)
        self.max_batch = max(16, self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2048)
        self._seq = 0
        self._buffer = bytearray(RECEIVE_SIZE)

    def close(self) -> None:
        self.sock.close()

    def next_seq(self) -> int:
        self._seq = self._seq % 0xFFFFFFFF + 1
        return self._seq

    def _receive_into(self) -> int:
        """One datagram into the receive buffer; its size."""
        try:
            return self.sock.recv_into(self._buffer, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        # a wait only if a kernel ever queued a reply late (none does: see the class)
        select.select([self.sock], [], [], REPLY_TIMEOUT)
        try:
            return self.sock.recv_into(self._buffer, 0, socket.MSG_DONTWAIT)
        except BlockingIOError:
            raise TimeoutError(errno.ETIMEDOUT, "no netlink reply") from None

    def _receive(self) -> bytes:
        return bytes(memoryview(self._buffer)[:self._receive_into()])

    def _drain(self) -> None:
        """Drop the replies a failed call left unread (ENOBUFS: some were lost), so that the
        next call reads only its own."""
        for _ in range(MAX_DUMP_PARTS):
            try:
                self.sock.recv_into(self._buffer, 0, socket.MSG_DONTWAIT)
            except BlockingIOError:
                return
            except OSError:
                continue

    def batch(self, requests: bytes, seqs: list[int]) -> dict[int, int]:
        """Send requests, each with NLM_F_ACK and one of `seqs` (in order), in one datagram;
        errno by sequence number of the refused ones."""
        self.sock.send(requests)
        refused: dict[int, int] = {}
        mine, last, acked = set(seqs), seqs[-1], 0
        try:
            # bounded: one datagram per ack, and a few stale replies
            for _ in range(len(seqs) + STALE_REPLIES):
                for code, seq in netlink.acks(self._buffer, self._receive_into()):
                    if seq not in mine:
                        continue
                    acked += 1
                    if code:
                        refused[seq] = code
                    if seq == last:
                        if acked != len(seqs):  # the kernel acks every request, in order
                            raise OSError(errno.EPROTO, f"{len(seqs) - acked} netlink acks missing")
                        return refused
            raise TimeoutError(errno.ETIMEDOUT, "netlink acks missing")
        except BaseException:
            self._drain()
            raise

    def request(self, build: Callable[[int], bytes]) -> list[netlink.Message]:
        """One request with NLM_F_ACK (built for a sequence number): its replies before the ack."""
        seq = self.next_seq()
        self.sock.send(build(seq))
        out: list[netlink.Message] = []
        try:
            for _ in range(STALE_REPLIES):
                for msg in netlink.messages(self._receive()):
                    if msg.seq != seq:
                        continue
                    if msg.kind == netlink.NLMSG_ERROR:
                        code = netlink.error_code(msg)[0]
                        if code:
                            raise OSError(code, os.strerror(code))
                        return out
                    out.append(msg)
            raise TimeoutError(errno.ETIMEDOUT, "no netlink ack")
        except BaseException:
            self._drain()
            raise

    def dump(self, build: Callable[[int], bytes]) -> list[netlink.Message]:
        """A dump request (built for a sequence number): every entry until NLMSG_DONE. One at a
        time: the kernel runs one dump per socket."""
        seq = self.next_seq()
        self.sock.send(build(seq))
        out: list[netlink.Message] = []
        try:
            for _ in range(MAX_DUMP_PARTS):
                for msg in netlink.messages(self._receive()):
                    if msg.seq != seq:
                        continue
                    if msg.kind in (netlink.NLMSG_DONE, netlink.NLMSG_ERROR):
                        code = (netlink.done_code(msg) if msg.kind == netlink.NLMSG_DONE
                                else netlink.error_code(msg)[0])
                        if code:
                            raise OSError(code, os.strerror(code))
                        return out
                    out.append(msg)
            raise TimeoutError(errno.ETIMEDOUT, "netlink dump did not end")
        except BaseException:
            self._drain()
            raise


class NetlinkIpvs:
    """IpvsKernel over netlink, for one IP family of the current network namespace: requests
    encoded by netlink.py, many to a sendmsg, on two sockets kept open (IPVS's generic netlink
    and rtnetlink); pyroute2 only creates and deletes kube-ipvs0."""

    def __init__(self, family: int = 4, *, genl: NetlinkSocket | None = None,
                 rtnl: NetlinkSocket | None = None) -> None:
        self.family = family
        self._genl = genl or NetlinkSocket(NETLINK_GENERIC)
        self._rtnl = rtnl or NetlinkSocket(socket.NETLINK_ROUTE)
        self._ipr_socket: IPRoute | None = None
        self._aux_kernel: LibNftKernel | None = None
        self._family_id: int | None = None  # IPVS's generic netlink id, asked once
        self._ifindex: int | None = None  # kube-ipvs0's, cached; forgotten when a request fails

    def close(self) -> None:
        self._genl.close()
        self._rtnl.close()
        if self._ipr_socket is not None:
            self._ipr_socket.close()

    @property
    def _aux(self) -> LibNftKernel:
        if self._aux_kernel is None:
            self._aux_kernel = LibNftKernel(aux_table_of(self.family))
        return self._aux_kernel

    @property
    def _ipr(self) -> IPRoute:
        """pyroute2, for creating and deleting kube-ipvs0 (rare: opened when first needed)."""
        if self._ipr_socket is None:
            from pyroute2 import IPRoute

            self._ipr_socket = IPRoute()
        return self._ipr_socket

    def _ipvs_id(self) -> int:
        if self._family_id is None:
            try:
                (reply,) = self._genl.request(partial(netlink.get_family_request, netlink.IPVS_GENL_NAME))
            except OSError as err:
                raise IpvsError(f"the kernel has no IPVS ({err.strerror or err})") from None
            self._family_id = netlink.family_id(reply)
        return self._family_id

    # --- reading ----------------------------------------------------------------------------

    def list_virtuals(self) -> dict[VirtualKey, ListedVirtual]:
        family_id = self._ipvs_id()
        try:
            services = [s for msg in self._genl.dump(partial(netlink.dump_services_request, family_id))
                        if (s := netlink.service(msg, self.family)) is not None]
        except OSError as err:
            raise IpvsError(f"listing virtual servers: {err.strerror or err}") from None
        return {s.key: ListedVirtual(scheduler=s.scheduler, persistence=s.persistence, reals=self.list_reals(s.key))
                for s in services}

    def list_reals(self, key: VirtualKey) -> dict[RealKey, RealStats]:
        family_id = self._ipvs_id()
        # a missing virtual server dumps nothing
        try:
            return dict(entry for msg in self._genl.dump(partial(netlink.dump_dests_request, key, family_id))
                        if (entry := netlink.dest(msg, self.family)) is not None)
        except OSError as err:
            raise IpvsError(f"listing the real servers of {key}: {err.strerror or err}") from None

    def _link_index(self, create: bool = False) -> int | None:
        if self._ifindex is not None:
            return self._ifindex
        try:
            (reply,) = self._rtnl.request(partial(netlink.link_request, DUMMY_LINK))
            self._ifindex = netlink.link_index(reply)
        except OSError as err:
            if err.errno != errno.ENODEV:
                raise
            if not create:
                return None
            # Left down, as upstream: its addresses are local (IPVS takes their packets) but the
            # node neither answers ARP for them through it nor routes out of it.
            self._ipr.link("add", ifname=DUMMY_LINK, kind="dummy")
            self._ifindex = int(self._ipr.link_lookup(ifname=DUMMY_LINK)[0])
        return self._ifindex

    def _all_addresses(self) -> list[tuple[int, IPAddress]]:
        return [entry for msg in self._rtnl.dump(partial(netlink.dump_addresses_request, self.family))
                if (entry := netlink.address(msg)) is not None and entry[1].version == self.family]

    def addresses(self) -> set[IPAddress]:
        self._ifindex = None  # a full read looks the link up again
        index = self._link_index()
        if index is None:
            return set()
        return {ip for link, ip in self._all_addresses() if link == index}

    def local_addresses(self) -> tuple[IPAddress, ...]:
        skip = self._link_index()
        found = {ip for link, ip in self._all_addresses() if link != skip}
        return tuple(sorted(ip for ip in found if not ip.is_loopback and not ip.is_link_local))

    # --- writing ----------------------------------------------------------------------------

    def apply(self, ops: Iterable[Operation]) -> int:
        """The operations in order, many to a sendmsg (batches of IPVS or of address operations,
        each at most BATCH_BYTES long and with room for its acks); how many were sent. The first
        refused one raises IpvsError and no later batch is sent (the kernel went on with the
        rest of that batch: IPVS has no transactions, and the backend reads the kernel back)."""
        todo = list(ops)
        done = 0
        for addresses, run in groupby(netlink.is_address_op(op) for op in todo):
            end = done + sum(1 for _ in run)
            for _ in range(end - done):  # bounded: every batch sends at least one operation
                if done >= end:
                    break
                try:
                    done += self._send_addresses(todo, done, end) if addresses else self._send_ipvs(todo, done, end)
                except OSError as err:
                    if addresses:
                        self._ifindex = None
                    raise IpvsError(f"{_describe(todo[done])}: {err.strerror or err}") from None
        return done

    def _send_ipvs(self, ops: list[Operation], start: int, end: int) -> int:
        family_id = self._ipvs_id()
        return self._send(self._genl, ops, start, end, lambda op, seq: netlink.ipvs_request(op, family_id, seq))

    def _send_addresses(self, ops: list[Operation], start: int, end: int) -> int:
        end = min(end, start + self._rtnl.max_batch)
        index = self._link_index(create=any(isinstance(op, AddAddress) for op in ops[start:end]))
        if index is None:  # deleting addresses of a link that is gone
            return end - start
        return self._send(self._rtnl, ops, start, end, lambda op, seq: netlink.address_request(op, index, seq))

    def _send(self, sock: NetlinkSocket, ops: list[Operation], start: int, end: int,
              encode: Callable[[Operation, int], bytes]) -> int:
        """As many of ops[start:end] as fit one batch; how many. A refused one raises IpvsError."""
        parts: list[bytes] = []
        seqs: list[int] = []
        size = 0
        for i in range(start, min(end, start + sock.max_batch)):
            seq = sock.next_seq()
            part = encode(ops[i], seq)
            if parts and size + len(part) > BATCH_BYTES:
                break
            parts.append(part)
            seqs.append(seq)
            size += len(part)
        refused = sock.batch(b"".join(parts), seqs)
        if refused:
            index, code = min((seqs.index(seq), code) for seq, code in refused.items())
            if sock is self._rtnl:
                self._ifindex = None
            raise IpvsError(f"{_describe(ops[start + index])}: {os.strerror(code)}")
        return len(parts)

    def apply_aux(self, script: str) -> None:
        self._aux.apply(script)

    def aux_table(self) -> dict[str, Any] | None:
        return self._aux.list_table()

    def cleanup(self) -> bool:
        """Remove this family's virtual servers, kube-ipvs0 (when no family uses it any
        more) and the auxiliary table; True if there was any of it."""
        virtuals = self.list_virtuals()
        self.apply([DelVirtual(key=key) for key in sorted(virtuals)])
        had_table = self._aux.delete_table()
        addresses = self.addresses()
        self.apply([DelAddress(ip=ip) for ip in sorted(addresses)])
        index = self._link_index()
        if index is not None and not any(link == index for link, _ in self._all_addresses_any()):
            self._ipr.link("del", index=index)
            self._ifindex = None
        return bool(virtuals or addresses or had_table)

    def _all_addresses_any(self) -> list[tuple[int, IPAddress]]:
        """Every address of both families (whether another family still uses kube-ipvs0)."""
        return [entry for version in FAMILY_NUMBERS
                for msg in self._rtnl.dump(partial(netlink.dump_addresses_request, version))
                if (entry := netlink.address(msg)) is not None]


def _describe(op: Operation) -> str:
    return f"{type(op).__name__} {' '.join(str(v) for v in vars_of(op))}"


def vars_of(op: Operation) -> list[object]:
    return [getattr(op, name) for name in op.__slots__]


def ipvs_leftovers() -> bool:
    """Whether IPVS mode has programmed this namespace: kube-ipvs0 or an auxiliary table. Cheap,
    and loads no module."""
    if link_index(DUMMY_LINK):
        return True
    return any(LibNftKernel(aux_table_of(family)).exists() for family in FAMILY_NUMBERS)


def remove_ipvs_leftovers() -> bool:
    """`cleanup`, and switching to another mode: the auxiliary tables, kube-ipvs0 and, where
    kube-ipvs0 says IPVS mode ran here, every virtual server (as upstream's cleanup flushes
    IPVS). The ip_vs module is not loaded for this: without it there is nothing to remove."""
    removed = False
    for family in FAMILY_NUMBERS:
        removed = LibNftKernel(aux_table_of(family)).delete_table() or removed
    link = link_index(DUMMY_LINK)
    if not link:
        return removed
    if IPVS_PROC.exists():
        for family in FAMILY_NUMBERS:
            kernel = NetlinkIpvs(family)
            kernel.apply([DelVirtual(key=key) for key in sorted(kernel.list_virtuals())])
            kernel.close()
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        ipr.link("del", index=link)
    return True


def link_index(name: str) -> int | None:
    """The index of this network namespace's interface of that name; None when there is none."""
    try:
        return socket.if_nametoindex(name)
    except OSError:
        return None


IPVS_PROC = Path("/proc/net/ip_vs")  # there while the ip_vs module is loaded


def set_timeouts(tcp: int, tcpfin: int, udp: int) -> None:
    """IPVS's connection timeouts (0 leaves one as it is), as `ipvsadm --set` does."""
    from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST, genlmsg
    from pyroute2.netlink.generic import GenericNetlinkSocket
    from pyroute2.netlink.generic.ipvs import GENL_NAME, GENL_VERSION, IPVS_CMD_SET_CONFIG

    class ConfigMsg(genlmsg):  # type: ignore[misc]  # pyroute2 types the timeouts as hex strings; the kernel wants u32
        nla_map = (
            ("IPVS_CMD_ATTR_UNSPEC", "none"),
            ("IPVS_CMD_ATTR_SERVICE", "none"),
            ("IPVS_CMD_ATTR_DEST", "none"),
            ("IPVS_CMD_ATTR_DAEMON", "none"),
            ("IPVS_CMD_ATTR_TIMEOUT_TCP", "uint32"),
            ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", "uint32"),
            ("IPVS_CMD_ATTR_TIMEOUT_UDP", "uint32"),
        )

    msg = ConfigMsg()
    msg["cmd"] = IPVS_CMD_SET_CONFIG
    msg["version"] = GENL_VERSION
    msg["attrs"] = [(name, value) for name, value in (
        ("IPVS_CMD_ATTR_TIMEOUT_TCP", tcp), ("IPVS_CMD_ATTR_TIMEOUT_TCP_FIN", tcpfin),
        ("IPVS_CMD_ATTR_TIMEOUT_UDP", udp)) if value]
    with GenericNetlinkSocket() as sock:
        sock.bind(GENL_NAME, ConfigMsg)
        sock.nlm_request(msg, msg_type=sock.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK)


def read_ipvs() -> dict[VirtualKey, ListedVirtual]:
    """Every virtual server of both families with its real servers and their connections
    (nothing, without loading ip_vs, where the module is not loaded)."""
    if not IPVS_PROC.exists():
        return {}
    found: dict[VirtualKey, ListedVirtual] = {}
    for family in FAMILY_NUMBERS:
        kernel = NetlinkIpvs(family)
        try:
            found.update(kernel.list_virtuals())
        finally:
            kernel.close()
    return found


def aux_tables() -> list[dict[str, Any] | None]:
    """The auxiliary tables' JSON listings (None for a missing one)."""
    return [LibNftKernel(aux_table_of(family)).list_table() for family in FAMILY_NUMBERS]


def aux_listing() -> str:
    """The auxiliary tables as nft lists them."""
    kernels = [LibNftKernel(aux_table_of(family)) for family in FAMILY_NUMBERS]
    return "".join(kernel.list_ruleset_text() for kernel in kernels if kernel.exists())
