"""Every name in kproxy's nftables tables, spelled once: render writes them, readback,
trace and affinity read them. Pure."""

from __future__ import annotations

from dataclasses import dataclass

TABLE_NAME = "kproxy"


def table_of(family: int) -> str:
    """"ip kproxy" for IPv4, "ip6 kproxy" for IPv6: the tables differ only in such words."""
    return f"ip {TABLE_NAME}" if family == 4 else f"ip6 {TABLE_NAME}"


TABLE = table_of(4)

# Keys: "{ip}" is "ip" or "ip6".
FRONTEND_KEY = "{ip} daddr . meta l4proto . th dport"
NODEPORT_KEY = "meta l4proto . th dport"
# loadBalancerSourceRanges, one set per protocol: 6.12.115+ kernels refuse `meta l4proto`
# in the key of a concatenated interval set (docs/kernels.md, g2)
FIREWALL_ALLOW_KEY = "{ip} daddr . th dport . {ip} saddr"

# Sets and maps that hold one kind of element each
CLUSTER_IPS = "cluster-ips"  # every ClusterIP (an unserved port is rejected)
NODEPORT_IPS = "nodeport-ips"  # addresses NodePorts answer on
CLUSTER_FRONTENDS = "cluster-frontends"  # ClusterIP . proto . port
MASQ_FRONTENDS = "masq-frontends"  # external frontends masqueraded (ETP Cluster)
MASQ_NODEPORTS = "masq-nodeports"
# one element, whose comment names the skeleton the table holds (Skeleton.digest): a full
# sync that finds it there refills the sets instead of replacing the table
SKELETON = "skeleton"
HAIRPIN = "hairpin"  # local endpoint . itself
FIREWALL_FRONTENDS = "firewall-frontends"  # LB frontends with loadBalancerSourceRanges
FIREWALL_ALLOW_PREFIX = "firewall-allow-"  # firewall-allow-tcp: LB ip . port . allowed source range
# externalTrafficPolicy Local frontends with endpoints (the keys of sc-frontends and
# sc-nodeport-frontends), whose traffic from the node itself is masqueraded: 5.10 and 6.1
# refuse a verdict map looked up as a set (docs/kernels.md, a)
SC_MASQ_FRONTENDS = "sc-masq-frontends"
SC_MASQ_NODEPORTS = "sc-masq-nodeports"
NO_ENDPOINT_FRONTENDS = "no-endpoint-frontends"  # frontend -> drop | goto reject-chain
NO_ENDPOINT_NODEPORTS = "no-endpoint-nodeports"
# Node settings as intervals, so the rules that use them never change
CLUSTER_CIDRS = "cluster-cidrs"  # pods: short-circuit for ETP Local
SERVICE_CIDRS = "service-cidrs"  # unallocated addresses in them are dropped
NO_MASQ_SOURCES = "no-masq-sources"  # ClusterIP traffic from these keeps its source



def firewall_allow(protocol: str) -> str:
    """The allowed-sources set of one protocol ("tcp" -> "firewall-allow-tcp")."""
    return f"{FIREWALL_ALLOW_PREFIX}{protocol}"


# Chains
REJECT_CHAIN = "reject-chain"
MARK_FOR_MASQUERADE = "mark-for-masquerade"
MASQUERADING = "masquerading"
SERVICES = "services"


@dataclass(frozen=True, slots=True)
class Dispatch:
    """One way of choosing an endpoint: a verdict map from frontend to `goto <chain>-N`,
    and per endpoint count N a chain and a map of frontend . index -> endpoint."""

    vmap: str
    chain: str
    endpoints: str
    key: str

    def chain_name(self, n: int) -> str:
        return f"{self.chain}-{n}"

    def map_name(self, n: int) -> str:
        return f"{self.endpoints}-{n}"

    def count_of(self, name: str) -> int | None:
        """N of one of this dispatch's endpoint maps or chains (endpoints-3 -> 3), else None."""
        for prefix in (f"{self.endpoints}-", f"{self.chain}-"):
            if name.startswith(prefix) and name[len(prefix):].isdigit():
                return int(name[len(prefix):])
        return None


IPS = Dispatch("frontends", "dnat", "endpoints", FRONTEND_KEY)
NODEPORTS = Dispatch("nodeport-frontends", "dnat-nodeport", "nodeport-endpoints", NODEPORT_KEY)
# externalTrafficPolicy Local: traffic from pods and from the node itself to an external
# frontend goes to every endpoint (upstream's "short-circuit"), through these.
SC_IPS = Dispatch("sc-frontends", "sc-dnat", "sc-endpoints", FRONTEND_KEY)
SC_NODEPORTS = Dispatch("sc-nodeport-frontends", "sc-dnat-nodeport", "sc-nodeport-endpoints", NODEPORT_KEY)
DISPATCHES = (IPS, NODEPORTS, SC_IPS, SC_NODEPORTS)
_ENDPOINT_MAP_PREFIXES = tuple(f"{d.endpoints}-" for d in DISPATCHES)


def is_endpoint_map(name: str) -> bool:
    """An endpoint map ("endpoints-3"): keys "<frontend> . <index>", indexes 0..N-1."""
    return name.startswith(_ENDPOINT_MAP_PREFIXES) and name.rpartition("-")[2].isdigit()

AFFINITY_PREFIX = "affinity-"
AFFINITY_FRONTENDS_PREFIX = "affinity-frontends-"
AFFINITY_NODEPORTS_PREFIX = "affinity-nodeports-"


def affinity_names(timeout: int) -> tuple[str, str, str]:
    """(map, ip frontends set, nodeport frontends set) for one affinity timeout."""
    return (f"{AFFINITY_PREFIX}{timeout}", f"{AFFINITY_FRONTENDS_PREFIX}{timeout}",
            f"{AFFINITY_NODEPORTS_PREFIX}{timeout}")


def is_affinity_map(name: str) -> bool:
    """An affinity map (affinity-30): the kernel fills it, kproxy only creates it."""
    return name.startswith(AFFINITY_PREFIX) and name[len(AFFINITY_PREFIX):].isdigit()


def affinity_timeout_of(name: str) -> int | None:
    """The timeout of an affinity frontends set (affinity-frontends-30 -> 30), else None."""
    for prefix in (AFFINITY_FRONTENDS_PREFIX, AFFINITY_NODEPORTS_PREFIX):
        if name.startswith(prefix) and name[len(prefix):].isdigit():
            return int(name[len(prefix):])
    return None
