"""Taking a node over from upstream kube-proxy without dropping connections.

Run once, after kproxy's own rules are in place (its first successful sync), so that every
new connection finds kproxy's rules while upstream's are removed; established ones keep
their NAT in conntrack, which nothing here touches. Removed, as upstream's
CleanupLeftovers of each mode does: the nftables tables `ip kube-proxy` and
`ip6 kube-proxy`; its iptables/ip6tables chains and the jumps into them in nat, filter and
mangle, in both iptables variants (kubelet's chains stay; see iptables/upstream.py); and,
where the kernel has IPVS, its virtual servers, its dummy link kube-ipvs0 and its KUBE-*
ipsets (best effort: a kernel without ip_vs has nothing to remove).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import structlog

from kproxy.backends.iptables.kernel import IptablesCommands, IptablesError, save_all
from kproxy.backends.iptables.render import CLUSTER_IPS
from kproxy.backends.iptables.restore import is_ours
from kproxy.backends.iptables.save import parse_save_all
from kproxy.backends.iptables.upstream import upstream_removal
from kproxy.backends.iptables.variant import VARIANTS
from kproxy.backends.nft.kernel import LibNftKernel, NftError

log = structlog.get_logger(__name__)

UPSTREAM_NFT_TABLES = ("ip kube-proxy", "ip6 kube-proxy")
IPVS_DUMMY = "kube-ipvs0"
IPSET_PREFIX = "KUBE-"
IP_PROTOCOLS = {6: "tcp", 17: "udp", 132: "sctp"}


def remove_upstream_nftables() -> list[str]:
    removed = []
    for table in UPSTREAM_NFT_TABLES:
        kernel = LibNftKernel(table)
        try:
            if kernel.exists():
                # add first, so that delete cannot fail on a table removed meanwhile
                kernel.apply(f"add table {table}\ndelete table {table}\n")
                removed.append(f"nftables table {table}")
        except NftError as err:
            log.warning("could not remove kube-proxy's nftables table", table=table, error=str(err))
    return removed


def remove_upstream_iptables(kproxy_variant: str | None) -> list[str]:
    """Upstream's chains in every variant and family. Where kproxy's iptables mode has
    programmed (`kproxy_variant`, or a variant holding KUBE-CLUSTER-IPS, which only kproxy
    makes) the chains kproxy programs under upstream's names stay: they are kproxy's, and
    removing another mode of kproxy's is remove_other_modes' job."""
    removed = []
    for family in (4, 6):
        stem = "iptables" if family == 4 else "ip6tables"
        for variant in VARIANTS:
            text = save_all(variant, family)
            if not text:
                continue
            tables = parse_save_all(text)
            kproxys = variant == kproxy_variant or CLUSTER_IPS in tables.get("filter", {})
            keep: Callable[[str, str], bool] = is_ours if kproxys else (lambda _t, _c: False)
            restore, chains = upstream_removal(tables, keep)
            if not restore:
                continue
            try:
                IptablesCommands(variant, family).restore(restore.text)
            except IptablesError as err:  # someone else's rule still jumps in: leave that table
                log.warning("could not remove kube-proxy's iptables chains", variant=variant,
                            family=family, error=str(err))
                continue
            removed.append(f"{stem}-{variant} {_chains_text(chains)}")
    return removed


def _chains_text(chains: list[str]) -> str:
    """'nat/KUBE-SEP-A' ... as 'nat: 12 chains, filter: 5 chains' (one log line stays short)."""
    counts: dict[str, int] = {}
    for chain in chains:
        table = chain.split("/", 1)[0]
        counts[table] = counts.get(table, 0) + 1
    return ", ".join(f"{table}: {n} chain{'s' if n != 1 else ''}" for table, n in counts.items())


# --- IPVS ------------------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class VirtualServer:
    protocol: str  # tcp, udp, sctp
    address: str
    port: int

    def __str__(self) -> str:
        return f"{self.protocol}/{self.address}:{self.port}"


class IpvsState(Protocol):
    """The IPVS side of a node, as far as taking over needs it."""

    def available(self) -> bool: ...  # the kernel has IPVS in this network namespace

    def virtual_servers(self) -> list[VirtualServer]: ...

    def delete_virtual_server(self, vs: VirtualServer) -> None: ...

    def has_link(self, name: str) -> bool: ...

    def delete_link(self, name: str) -> None: ...

    def ipsets(self) -> list[str]: ...

    def destroy_ipset(self, name: str) -> None: ...


def remove_upstream_ipvs(state: IpvsState) -> list[str]:
    """kube-proxy's IPVS mode leftovers. Its virtual servers are removed only when its dummy
    link kube-ipvs0 is there (upstream flushes every virtual server; without kube-ipvs0 they
    are someone else's, e.g. keepalived's). ipsets go after iptables, which references them."""
    if not state.available():
        return []
    removed: list[str] = []
    if state.has_link(IPVS_DUMMY):
        servers = state.virtual_servers()
        for vs in servers:
            _best_effort(partial(state.delete_virtual_server, vs), f"IPVS virtual server {vs}")
        if servers:
            removed.append(f"{len(servers)} IPVS virtual servers")
        if _best_effort(lambda: state.delete_link(IPVS_DUMMY), f"link {IPVS_DUMMY}"):
            removed.append(f"link {IPVS_DUMMY}")
    sets = [name for name in state.ipsets() if name.startswith(IPSET_PREFIX)]
    gone = [name for name in sets if _best_effort(partial(state.destroy_ipset, name), f"ipset {name}")]
    if gone:
        removed.append(f"ipsets {','.join(gone)}")
    return removed


def _best_effort(action: Callable[[], object], what: str) -> bool:
    try:
        action()
    except Exception as err:  # noqa: BLE001 - one leftover that cannot go must not stop the others
        log.warning(f"could not remove kube-proxy's {what}", error=str(err))
        return False
    return True


class KernelIpvs:
    """IpvsState over netlink (pyroute2). Without ip_vs loaded, available() is False and
    nothing else is called: the module is never loaded for this."""

    PROC = "/proc/net/ip_vs"

    def available(self) -> bool:
        return os.path.exists(self.PROC)

    def virtual_servers(self) -> list[VirtualServer]:
        from pyroute2 import IPVS

        with IPVS() as ipvs:
            dump: Iterable[Any] = ipvs.service("dump")
            found = []
            for msg in dump:
                svc = msg.get_attr("IPVS_CMD_ATTR_SERVICE")
                if svc is None or svc.get_attr("IPVS_SVC_ATTR_FWMARK"):
                    continue
                found.append(VirtualServer(IP_PROTOCOLS.get(svc.get_attr("IPVS_SVC_ATTR_PROTOCOL"), "?"),
                                           str(svc.get_attr("IPVS_SVC_ATTR_ADDR")),
                                           int(svc.get_attr("IPVS_SVC_ATTR_PORT"))))
            return found

    def delete_virtual_server(self, vs: VirtualServer) -> None:
        from pyroute2 import IPVS
        from pyroute2.ipvs import IPVSService

        protocol = {name: number for number, name in IP_PROTOCOLS.items()}[vs.protocol]
        with IPVS() as ipvs:
            ipvs.service("del", service=IPVSService(addr=vs.address, port=vs.port, protocol=protocol))

    def has_link(self, name: str) -> bool:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            return bool(ipr.link_lookup(ifname=name))

    def delete_link(self, name: str) -> None:
        from pyroute2 import IPRoute

        with IPRoute() as ipr:
            ipr.link("del", ifname=name)

    def ipsets(self) -> list[str]:
        from pyroute2.ipset import IPSet

        try:
            with IPSet() as ipset:
                return [str(msg.get_attr("IPSET_ATTR_SETNAME")) for msg in ipset.list()]
        except Exception:  # noqa: BLE001 - no ip_set in this kernel: no ipsets to remove
            return []

    def destroy_ipset(self, name: str) -> None:
        from pyroute2.ipset import IPSet

        with IPSet() as ipset:
            ipset.destroy(name)


def take_over(kproxy_variant: str | None, ipvs: IpvsState | None) -> list[str]:
    """Remove what upstream kube-proxy left (after kproxy's first sync); log one line of
    what was removed; return it. `kproxy_variant`: the iptables variant kproxy programs in
    iptables mode, else None. `ipvs`: None skips IPVS (kproxy's own IPVS mode owns it)."""
    removed = remove_upstream_nftables() + remove_upstream_iptables(kproxy_variant)
    if ipvs is not None:
        removed += remove_upstream_ipvs(ipvs)
    if removed:
        log.info(f"took over from kube-proxy: removed {'; '.join(removed)}")
    return removed
