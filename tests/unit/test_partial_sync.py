"""Partial syncs (only what changed is planned, rendered and applied) end exactly where a
full sync of the same state would, through many kinds of change, in both backends."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from kproxy.agent import Agent
from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.iptables.render import HAIRPIN_CHAINS
from kproxy.backends.iptables.save import parse_save_all
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.tracker import Tracker
from tests.builders import endpoint, endpoint_slice, port, service
from tests.unit.test_planner import NODE

WEB = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)
API = service("api", cluster_ip="10.96.0.11", ports=[port(80, name="http"), port(53, name="dns", protocol="UDP")])


def node(name: str, zone: str) -> dict[str, Any]:
    return {"kind": "Node", "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}}


def hinted(ip: str, zone: str, node_name: str) -> dict[str, Any]:
    ep = endpoint(ip, node=node_name, zone=zone)
    ep["hints"] = {"forZones": [{"name": zone}]}
    return ep


# Each step: a function changing the tracker, as a source would.
STEPS: list[tuple[str, Callable[[Tracker], None]]] = [
    ("add a Service", lambda t: t.upsert("Service", WEB)),
    ("its slice", lambda t: t.upsert("EndpointSlice", endpoint_slice("web", ["10.244.1.2", "10.244.2.2"]))),
    ("add an endpoint", lambda t: t.upsert("EndpointSlice", endpoint_slice(
        "web", ["10.244.1.2", "10.244.2.2", endpoint("10.244.1.3", node="node1")]))),
    ("a second slice", lambda t: t.upsert("EndpointSlice", endpoint_slice(
        "web", ["10.244.3.3"], name="web-second"))),
    ("remove an endpoint", lambda t: t.upsert("EndpointSlice", endpoint_slice("web", ["10.244.1.2"]))),
    ("a Service with two ports", lambda t: t.upsert("Service", API)),
    ("its slice", lambda t: t.upsert("EndpointSlice", endpoint_slice(
        "api", ["10.244.2.9"], ports=[{"name": "http", "port": 8080, "protocol": "TCP"},
                                      {"name": "dns", "port": 5353, "protocol": "UDP"}]))),
    ("remove a port", lambda t: t.upsert("Service", service(
        "api", cluster_ip="10.96.0.11", ports=[port(80, name="http")]))),
    ("policy flip to Local", lambda t: t.upsert("Service", service(
        "web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080, externalTrafficPolicy="Local"))),
    ("affinity on", lambda t: t.upsert("Service", service(
        "web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080, externalTrafficPolicy="Local",
        sessionAffinity="ClientIP"))),
    ("topology hints", lambda t: t.upsert("EndpointSlice", endpoint_slice(
        "web", [hinted("10.244.1.2", "a", "node1"), hinted("10.244.2.2", "b", "node2")]))),
    ("this node's zone", lambda t: t.upsert("Node", node("node1", "a"))),
    ("zone changes", lambda t: t.upsert("Node", node("node1", "b"))),
    ("no endpoints", lambda t: t.delete("EndpointSlice", endpoint_slice("web", []))),
    ("delete a slice", lambda t: t.delete("EndpointSlice", endpoint_slice("web", [], name="web-second"))),
    ("delete a Service", lambda t: t.delete("Service", API)),
    ("and re-add it", lambda t: t.upsert("Service", API)),
]


@pytest.mark.parametrize("mode", ["nftables", "iptables"])
def test_partial_syncs_end_where_a_full_sync_would(mode):
    tracker = Tracker()
    kernel, backend = kernel_and_backend(mode)
    agent = Agent(NODE, {4: backend}, tracker)
    agent.sync()  # the first sync is full; every later one is partial
    for what, step in STEPS:
        step(tracker)
        report = agent.sync()
        assert not report.full, what
        fresh_kernel, fresh = kernel_and_backend(mode)
        Agent(NODE, {4: fresh}, tracker).sync()  # a full sync of the same state
        assert state_of(kernel) == state_of(fresh_kernel), what
    assert "10.96.0.11" in repr(state_of(kernel))  # what the steps left is there


def kernel_and_backend(mode: str) -> tuple[Any, Any]:
    if mode == "nftables":
        nft = FakeNft()
        return nft, NftBackend(nft)
    ipt = FakeIptables()
    return ipt, IptablesBackend(ipt, route_localnet=lambda: None)


def state_of(kernel: Any) -> Any:
    """What the kernel holds, order aside where order carries no meaning."""
    if isinstance(kernel, FakeNft):
        listing = kernel.list_table()
        chains = [item["chain"]["name"] for item in listing["nftables"] if "chain" in item]
        sets = {(kind, item[kind]["name"]): sorted(map(repr, item[kind].get("elem", ())))
                for item in listing["nftables"] for kind in ("set", "map") if kind in item}
        return {"rules": {c: kernel.chain_rules(c) for c in chains}, "sets": sets}
    tables = parse_save_all(kernel.save_all())
    # rules in chains shared by Service ports match disjoint packets: compare them as sets
    return {table: {chain: sorted(rules) if chain in SHARED else list(rules) for chain, rules in chains.items()}
            for table, chains in tables.items()}


SHARED = {"KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-HAIRPIN", *HAIRPIN_CHAINS}
