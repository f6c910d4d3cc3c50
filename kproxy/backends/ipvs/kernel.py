"""The only place IPVS mode talks to the kernel: IPVS virtual and real servers, the dummy
link kube-ipvs0 and its addresses (pyroute2, netlink), the IPVS sysctls, and the auxiliary
nftables table (libnftables, through the nft backend's kernel)."""

from __future__ import annotations

import socket
import typing
from collections.abc import Iterable
from ipaddress import ip_address
from pathlib import Path
from typing import Any

import structlog
from pyroute2 import IPVS, IPRoute, IPVSDest, IPVSService

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
from kproxy.backends.ipvs.objects import (
    DUMMY_LINK,
    FWD_MASQ,
    PERSISTENT,
    ListedVirtual,
    RealKey,
    RealStats,
    VirtualKey,
    aux_table_of,
)
from kproxy.backends.nft.kernel import LibNftKernel
from kproxy.model import IPAddress, Protocol

log = structlog.get_logger(__name__)

PROTOCOL_NUMBERS = {Protocol.TCP: socket.IPPROTO_TCP, Protocol.UDP: socket.IPPROTO_UDP,
                    Protocol.SCTP: socket.IPPROTO_SCTP}
PROTOCOLS_BY_NUMBER = {n: p for p, n in PROTOCOL_NUMBERS.items()}
FAMILY_NUMBERS = {4: socket.AF_INET, 6: socket.AF_INET6}

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


class NetlinkIpvs:
    """IpvsKernel over pyroute2, for one IP family of the current network namespace."""

    def __init__(self, family: int = 4) -> None:
        self.family = family
        self._af = FAMILY_NUMBERS[family]
        self._ipvs = IPVS()
        self._ipr = IPRoute()
        self._aux = LibNftKernel(aux_table_of(family))

    # --- reading ----------------------------------------------------------------------------

    def list_virtuals(self) -> dict[VirtualKey, ListedVirtual]:
        out = {}
        for msg in self._ipvs.service("dump"):
            svc = IPVSService.from_message(msg)
            key = self._virtual_key(svc)
            if key is None:
                continue
            flags = svc.get("flags") or {}
            persistent = bool(flags.get("flags", 0) & PERSISTENT) if isinstance(flags, dict) else False
            out[key] = ListedVirtual(scheduler=str(svc.get("sched_name")),
                                     persistence=int(svc.get("timeout") or 0) if persistent else 0,
                                     reals=self.list_reals(key))
        return out

    def list_reals(self, key: VirtualKey) -> dict[RealKey, RealStats]:
        out = {}
        for msg in self._ipvs.dest("dump", service=self._service(key)):
            attrs = dict(msg.get("IPVS_CMD_ATTR_DEST")["attrs"])
            real = RealKey(ip=ip_address(attrs["IPVS_DEST_ATTR_ADDR"]), port=int(attrs["IPVS_DEST_ATTR_PORT"]))
            out[real] = RealStats(weight=int(attrs.get("IPVS_DEST_ATTR_WEIGHT", 0)),
                                  active=int(attrs.get("IPVS_DEST_ATTR_ACTIVE_CONNS", 0)),
                                  inactive=int(attrs.get("IPVS_DEST_ATTR_INACT_CONNS", 0)),
                                  forward=int(attrs.get("IPVS_DEST_ATTR_FWD_METHOD", 0)) & 0x7)
        return out

    def _virtual_key(self, svc: Any) -> VirtualKey | None:
        if svc.get("af") != self._af:
            return None
        if svc.get("fwmark"):
            unspecified = ip_address("0.0.0.0" if self.family == 4 else "::")
            return VirtualKey(ip=unspecified, protocol=Protocol.TCP, port=0, fwmark=int(svc["fwmark"]))
        if "addr" not in svc:
            return None
        proto = PROTOCOLS_BY_NUMBER.get(int(svc.get("protocol") or 0))
        if proto is None:
            return None
        return VirtualKey(ip=ip_address(svc["addr"]), protocol=proto, port=int(svc["port"]))

    def _link_index(self, create: bool = False) -> int | None:
        found = self._ipr.link_lookup(ifname=DUMMY_LINK)
        if found:
            return int(found[0])
        if not create:
            return None
        # Left down, as upstream: its addresses are local (IPVS takes their packets) but the
        # node neither answers ARP for them through it nor routes out of it.
        self._ipr.link("add", ifname=DUMMY_LINK, kind="dummy")
        return int(self._ipr.link_lookup(ifname=DUMMY_LINK)[0])

    def addresses(self) -> set[IPAddress]:
        index = self._link_index()
        if index is None:
            return set()
        return {ip_address(a.get_attr("IFA_ADDRESS")) for a in self._ipr.get_addr(index=index, family=self._af)}

    def local_addresses(self) -> tuple[IPAddress, ...]:
        skip = self._link_index()
        found = {ip_address(a.get_attr("IFA_ADDRESS")) for a in self._ipr.get_addr(family=self._af)
                 if a["index"] != skip}
        return tuple(sorted(ip for ip in found if not ip.is_loopback and not ip.is_link_local))

    # --- writing ----------------------------------------------------------------------------

    def apply(self, ops: Iterable[Operation]) -> int:
        """Each operation as one netlink request, in order; how many were sent."""
        count = 0
        for op in ops:
            try:
                self._apply_one(op)
            except Exception as err:  # noqa: BLE001 - netlink errors come in several types
                raise IpvsError(f"{_describe(op)}: {err}") from None
            count += 1
        return count

    def _apply_one(self, op: Operation) -> None:
        match op:
            case AddAddress(ip=ip):
                index = self._link_index(create=True)
                self._ipr.addr("add", index=index, address=str(ip), prefixlen=32 if ip.version == 4 else 128)
            case DelAddress(ip=ip):
                index = self._link_index()
                if index is not None:
                    self._ipr.addr("del", index=index, address=str(ip), prefixlen=32 if ip.version == 4 else 128)
            case AddVirtual(key=key):
                self._ipvs.service("add", service=self._service(key, op.scheduler, op.persistence))
            case EditVirtual(key=key):
                self._ipvs.service("set", service=self._service(key, op.scheduler, op.persistence))
            case DelVirtual(key=key):
                self._ipvs.service("del", service=self._service(key))
            case AddReal(virtual=key, real=real, weight=weight):
                self._ipvs.dest("add", service=self._service(key), dest=self._dest(real, weight))
            case SetWeight(virtual=key, real=real, weight=weight):
                self._ipvs.dest("set", service=self._service(key), dest=self._dest(real, weight))
            case DelReal(virtual=key, real=real):
                self._ipvs.dest("del", service=self._service(key), dest=self._dest(real, 0))

    def _service(self, key: VirtualKey, scheduler: str = "rr", persistence: int = 0) -> Any:
        where: dict[str, Any] = ({"fwmark": key.fwmark} if key.fwmark else
                                 {"protocol": PROTOCOL_NUMBERS[key.protocol], "addr": str(key.ip), "port": key.port})
        fields: dict[str, Any] = {
            "af": self._af, **where, "sched_name": scheduler, "timeout": persistence,
            "flags": {"flags": PERSISTENT if persistence else 0, "mask": 0xFFFFFFFF},
            # the kernel reads the netmask as a host-order u32: all ones for IPv4, the
            # prefix length for IPv6 (pyroute2 types the attribute as an IPv4 address)
            "netmask": "255.255.255.255" if key.ip.version == 4 else "128.0.0.0",
        }
        return IPVSService(**fields)

    def _dest(self, real: RealKey, weight: int) -> Any:
        return IPVSDest(addr=str(real.ip), port=real.port, weight=weight, fwd_method=FWD_MASQ)

    def apply_aux(self, script: str) -> None:
        self._aux.apply(script)

    def aux_table(self) -> dict[str, Any] | None:
        return self._aux.list_table()

    def cleanup(self) -> bool:
        """Remove this family's virtual servers, kube-ipvs0 (when no family uses it any
        more) and the auxiliary table; True if there was any of it."""
        virtuals = self.list_virtuals()
        for key in virtuals:
            self._ipvs.service("del", service=self._service(key))
        had_table = self._aux.delete_table()
        index = self._link_index()
        addresses = self.addresses()
        for ip in addresses:
            self._ipr.addr("del", index=index, address=str(ip), prefixlen=32 if ip.version == 4 else 128)
        if index is not None and not self._ipr.get_addr(index=index):
            self._ipr.link("del", index=index)
        return bool(virtuals or addresses or had_table)


def _describe(op: Operation) -> str:
    return f"{type(op).__name__} {' '.join(str(v) for v in vars_of(op))}"


def vars_of(op: Operation) -> list[object]:
    return [getattr(op, name) for name in op.__slots__]


def ipvs_leftovers() -> bool:
    """Whether IPVS mode has programmed this namespace: kube-ipvs0 or an auxiliary table. Cheap,
    and loads no module."""
    with IPRoute() as ipr:
        if ipr.link_lookup(ifname=DUMMY_LINK):
            return True
    return any(LibNftKernel(aux_table_of(family)).exists() for family in FAMILY_NUMBERS)


def remove_ipvs_leftovers() -> bool:
    """`cleanup`, and switching to another mode: the auxiliary tables, kube-ipvs0 and, where
    kube-ipvs0 says IPVS mode ran here, every virtual server (as upstream's cleanup flushes
    IPVS). The ip_vs module is not loaded for this: without it there is nothing to remove."""
    removed = False
    for family in FAMILY_NUMBERS:
        removed = LibNftKernel(aux_table_of(family)).delete_table() or removed
    with IPRoute() as ipr:
        link = ipr.link_lookup(ifname=DUMMY_LINK)
    if not link:
        return removed
    if IPVS_PROC.exists():
        for family in FAMILY_NUMBERS:
            kernel = NetlinkIpvs(family)
            for key in kernel.list_virtuals():
                kernel.apply([DelVirtual(key=key)])
    with IPRoute() as ipr:
        ipr.link("del", index=link[0])
    return True


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
        found.update(NetlinkIpvs(family).list_virtuals())
    return found


def aux_tables() -> list[dict[str, Any] | None]:
    """The auxiliary tables' JSON listings (None for a missing one)."""
    return [LibNftKernel(aux_table_of(family)).list_table() for family in FAMILY_NUMBERS]


def aux_listing() -> str:
    """The auxiliary tables as nft lists them."""
    kernels = [LibNftKernel(aux_table_of(family)) for family in FAMILY_NUMBERS]
    return "".join(kernel.list_ruleset_text() for kernel in kernels if kernel.exists())
