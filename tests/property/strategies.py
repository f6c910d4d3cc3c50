"""Hypothesis strategies: valid random clusters (Services and EndpointSlices as the API
serves them, both families), node settings, and arbitrary JSON-ish objects.

Budget: each property test runs `examples(n)` examples, n chosen to keep the whole
property suite well under a minute; KPROXY_HYPOTHESIS_EXAMPLES=N runs N for each instead.
"""

from __future__ import annotations

import copy
import os
from ipaddress import ip_address, ip_network
from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from kproxy.model import LocalMode, NodeConfig
from tests.builders import endpoint, endpoint_slice, port, service

# --- budget ------------------------------------------------------------------------------


def examples(default: int) -> settings:
    """Settings for one property test: `default` examples unless the environment says."""
    override = os.environ.get("KPROXY_HYPOTHESIS_EXAMPLES")
    return settings(max_examples=int(override) if override else default, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


# --- valid clusters ------------------------------------------------------------------------

NAMES = [f"svc{i}" for i in range(5)]
NAMESPACES = ["default", "shop"]
SLOTS = [(ns, name) for ns in NAMESPACES for name in NAMES]  # index -> unique ClusterIP, NodePorts
PORT_NUMBERS = [53, 80, 443, 8080, 9000]
PROTOCOLS = ["TCP", "UDP", "SCTP"]
EXTERNAL_IPS = ["203.0.113.1", "203.0.113.2", "fd00:203::1"]  # shared pool: collisions happen
LB_IPS = ["198.51.100.1", "198.51.100.2", "fd00:198::1"]
SOURCE_RANGES = ["10.0.0.0/8", "192.168.0.0/16", "fd00::/8", "0.0.0.0/0"]
POD_IPS = {"IPv4": [f"10.244.{n}.{h}" for n in (1, 2) for h in range(2, 7)],
           "IPv6": [f"fd00:244:{n}::{h}" for n in (1, 2) for h in range(2, 7)]}
TARGET_PORTS = [53, 8080, 8081]
NODE_NAMES = ["node1", "node2", None]
ZONES = ["zone-a", "zone-b"]
maybe_bool = st.sampled_from([True, False, None])


def _cluster_ips(index: int, families: str) -> list[str]:
    by_family = {"4": f"10.96.0.{10 + index}", "6": f"fd00:96::{10 + index:x}"}
    return [by_family[f] for f in families]


@st.composite
def service_with_slices(draw: st.DrawFn, index: int) -> list[dict[str, Any]]:
    """One valid Service in slot `index` and 0-3 EndpointSlices for it."""
    ns, name = SLOTS[index]
    families = draw(st.sampled_from(["4", "6", "46", "64"]))
    kind = draw(st.sampled_from(["ClusterIP", "NodePort", "LoadBalancer"]))
    numbers = draw(st.lists(st.tuples(st.sampled_from(PORT_NUMBERS), st.sampled_from(PROTOCOLS)),
                            min_size=1, max_size=3, unique=True))
    ports = [port(number, name=None if len(numbers) == 1 else f"p{i}", protocol=protocol,
                  node_port=30000 + index * 4 + i if kind != "ClusterIP" else None)
             for i, (number, protocol) in enumerate(numbers)]
    extra: dict[str, Any] = {}
    if draw(st.booleans()):
        extra["sessionAffinity"] = "ClientIP"
        extra["sessionAffinityConfig"] = {"clientIP": {"timeoutSeconds": draw(st.sampled_from([1, 60, 10800]))}}
    if kind != "ClusterIP" and draw(st.booleans()):
        extra["externalTrafficPolicy"] = "Local"
        if kind == "LoadBalancer":
            extra["healthCheckNodePort"] = 32000 + index
    if draw(st.booleans()):
        extra["internalTrafficPolicy"] = "Local"
    if kind == "LoadBalancer" and draw(st.booleans()):
        extra["loadBalancerSourceRanges"] = draw(st.lists(st.sampled_from(SOURCE_RANGES), max_size=2, unique=True))
    ips = _cluster_ips(index, families)
    svc = service(name, ns, cluster_ip=ips[0], ports=ports, type=kind,
                  external_ips=draw(st.lists(st.sampled_from(EXTERNAL_IPS), max_size=2, unique=True)),
                  lb_ips=draw(st.lists(st.sampled_from(LB_IPS), max_size=2, unique=True)) if kind == "LoadBalancer"
                  else (), lb_ip_mode=draw(st.sampled_from([None, "VIP", "Proxy"])), **extra)
    svc["spec"]["clusterIPs"] = ips
    objects = [svc]
    for s in range(draw(st.integers(0, 3))):
        address_type = draw(st.sampled_from(["IPv4", "IPv6"]))
        endpoints = []
        for ip in draw(st.lists(st.sampled_from(POD_IPS[address_type]), max_size=4, unique=True)):
            ep = endpoint(ip, ready=draw(maybe_bool), serving=draw(maybe_bool), terminating=draw(maybe_bool),
                          node=draw(st.sampled_from(NODE_NAMES)), zone=draw(st.sampled_from([None, *ZONES])))
            if draw(st.booleans()):
                ep["hints"] = {"forZones": [{"name": z} for z in draw(st.lists(st.sampled_from(ZONES), max_size=2))]}
            endpoints.append(ep)
        slice_ports = [{"name": p.get("name", ""), "port": draw(st.sampled_from(TARGET_PORTS)),
                        "protocol": p["protocol"]} for p in ports if draw(st.booleans())]
        objects.append(endpoint_slice(name, endpoints, ns=ns, ports=slice_ports, name=f"{name}-{s}",
                                      address_type=address_type))
    return objects


@st.composite
def clusters(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Services (with their slices) in a random subset of the slots, as raw API objects."""
    indexes = draw(st.lists(st.integers(0, len(SLOTS) - 1), max_size=6, unique=True))
    return [obj for i in indexes for obj in draw(service_with_slices(i))]


# --detect-local-mode settings: every mode, NodeCIDR with and without the Node's podCIDRs
LOCAL_DETECTION: list[dict[str, Any]] = [
    {},
    {"local_mode": LocalMode.NODE_CIDR},
    {"local_mode": LocalMode.NODE_CIDR, "pod_cidrs": (ip_network("10.244.1.0/24"), ip_network("fd00:244:1::/64"))},
    {"local_mode": LocalMode.BRIDGE_INTERFACE, "pod_bridge_interface": "cbr0"},
    {"local_mode": LocalMode.INTERFACE_NAME_PREFIX, "pod_interface_prefix": "cali"},
]


@st.composite
def nodes(draw: st.DrawFn) -> NodeConfig:
    """This node, dual-stack, with or without --nodeport-addresses and --masquerade-all,
    in every --detect-local-mode."""
    nodeport = draw(st.sampled_from([(), ("0.0.0.0/0", "::/0"), ("192.168.50.0/24", "fd00:50::/64")]))
    return NodeConfig(
        hostname="node1",
        node_ips=(ip_address("192.168.50.10"), ip_address("fd00:50::10")),
        local_ips=(ip_address("192.168.50.10"), ip_address("192.168.60.10"), ip_address("fd00:50::10")),
        cluster_cidrs=(ip_network("10.244.0.0/16"), ip_network("fd00:244::/32")),
        service_cidrs=(ip_network("10.96.0.0/16"), ip_network("fd00:96::/112")),
        nodeport_cidrs=tuple(ip_network(c) for c in nodeport),
        masquerade_all=draw(st.booleans()),
        zone=draw(st.sampled_from([None, *ZONES])),
        **draw(st.sampled_from(LOCAL_DETECTION)),
    )


# --- arbitrary JSON-ish objects -----------------------------------------------------------------

# The schema's own words, so random objects reach deep into the parsers.
FIELDS = ["metadata", "name", "namespace", "labels", "annotations", "spec", "type", "clusterIP", "clusterIPs",
          "ports", "port", "nodePort", "protocol", "externalIPs", "sessionAffinity", "sessionAffinityConfig",
          "clientIP", "timeoutSeconds", "externalTrafficPolicy", "internalTrafficPolicy", "healthCheckNodePort",
          "loadBalancerSourceRanges", "status", "loadBalancer", "ingress", "ip", "ipMode", "addressType",
          "endpoints", "addresses", "conditions", "ready", "serving", "terminating", "hints", "forZones",
          "forNodes", "nodeName", "zone", "kubernetes.io/service-name", "topology.kubernetes.io/zone",
          "service.beta.kubernetes.io/load-balancer-source-ranges",
          "endpoints.kubernetes.io/last-change-trigger-time"]
WORDS = ["10.96.0.1", "fd00:96::1", "10.244.1.2", "None", "", "TCP", "UDP", "ICMP", "ClusterIP", "NodePort",
         "LoadBalancer", "ExternalName", "ClientIP", "Local", "Cluster", "IPv4", "IPv6", "FQDN", "Proxy",
         "10.0.0.0/8", "1.2.3.0/33", "2024-01-01T00:00:00Z", "99999-01-01", "web", "default", "\x00"]
scalars = (st.none() | st.booleans() | st.integers(-70000, 70000) | st.floats(allow_nan=True)
           | st.sampled_from(WORDS) | st.text(max_size=8))
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4)
    | st.dictionaries(st.sampled_from(FIELDS) | st.text(max_size=4), children, max_size=5),
    max_leaves=25,
)


def _paths(value: Any, prefix: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Every path (keys and indexes) inside a JSON value."""
    found = [prefix]
    if isinstance(value, dict):
        for key, item in value.items():
            found += _paths(item, (*prefix, key))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            found += _paths(item, (*prefix, i))
    return found


@st.composite
def mutated(draw: st.DrawFn, objects: st.SearchStrategy[list[dict[str, Any]]]) -> list[tuple[str, Any]]:
    """(kind, object) pairs: valid objects with 1-3 values anywhere inside (the object
    itself included) replaced by arbitrary JSON."""
    valid = copy.deepcopy(draw(objects))
    kinds = [obj["kind"] for obj in valid]
    out: list[Any] = list(valid)
    for _ in range(draw(st.integers(1, 3)) if out else 0):
        i = draw(st.integers(0, len(out) - 1))
        path = draw(st.sampled_from(_paths(out[i])))
        value = draw(json_values)
        if not path:
            out[i] = value
            continue
        parent = out[i]
        for step in path[:-1]:
            parent = parent[step]
        parent[path[-1]] = value
    return list(zip(kinds, out, strict=True))


KINDS = ["Service", "EndpointSlice"]
arbitrary = st.lists(st.tuples(st.sampled_from(KINDS), json_values), max_size=6)  # (kind, object) pairs
