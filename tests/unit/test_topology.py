"""Endpoint categorization, case by case as upstream's topology.go decides it."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Address, IPv4Network

import pytest

from kproxy.model import NodeConfig, Protocol, ServiceName, ServicePort, ServicePortName, SliceEndpoint
from kproxy.plan import Target
from kproxy.planner import plan_service_port
from kproxy.topology import categorize_endpoints

NODE = NodeConfig(hostname="node1", node_ips=(IPv4Address("192.168.50.10"),), zone="zone-a")
PORT = ServicePort(name=ServicePortName(ServiceName("default", "web"), ""), protocol=Protocol.TCP, port=80,
                   cluster_ip=IPv4Address("10.96.0.10"), node_port=30080)


def ep(last: int, node: str = "node2", ready: bool = True, serving: bool | None = None,
       terminating: bool = False, zones: tuple[str, ...] = (), nodes: tuple[str, ...] = ()):
    ip = IPv4Address(f"10.244.0.{last}")
    target = Target(ip=ip, port=8080, node_name=node, is_local=node == NODE.hostname)
    return target, SliceEndpoint(ip=ip, ready=ready, serving=ready if serving is None else serving,
                                 terminating=terminating, node_name=node, zone_hints=zones, node_hints=nodes)


def names(targets) -> list[int]:
    return [int(str(t.ip).rsplit(".", 1)[1]) for t in targets]


def categorize(port: ServicePort, *eps, node: NodeConfig = NODE):
    got = categorize_endpoints(node, port, dict(eps))
    return names(got.cluster), names(got.local), got.has_any


CASES = {
    "cluster policy: every ready endpoint": (
        PORT, [ep(1, "node1"), ep(2), ep(3, ready=False)], ([1, 2], [], True)),
    "internal Local: only this node's": (
        replace(PORT, internal_policy_local=True, node_port=None), [ep(1, "node1"), ep(2)], ([], [1], True)),
    "internal Local, none here: endpoints exist elsewhere": (
        replace(PORT, internal_policy_local=True, node_port=None), [ep(2)], ([], [], True)),
    "external Local keeps cluster endpoints for short-circuit": (
        replace(PORT, external_policy_local=True), [ep(1, "node1"), ep(2)], ([1, 2], [1], True)),
    "local falls back to serving-terminating separately": (
        replace(PORT, external_policy_local=True),
        [ep(1, "node1", ready=False, serving=True, terminating=True), ep(2)], ([2], [1], True)),
    "cluster falls back to serving-terminating, not to non-serving": (
        PORT, [ep(1, ready=False, serving=True, terminating=True),
               ep(2, ready=False, serving=False, terminating=True)], ([1], [], True)),
    "no usable endpoint anywhere": (
        PORT, [ep(1, ready=False, serving=False)], ([], [], False)),
    "zone hints for this zone": (
        PORT, [ep(1, zones=("zone-a",)), ep(2, zones=("zone-b",)), ep(3, zones=("zone-a", "zone-b"))],
        ([1, 3], [], True)),
    "zone hints missing on one ready endpoint: ignored": (
        PORT, [ep(1, zones=("zone-a",)), ep(2)], ([1, 2], [], True)),
    "zone hints for other zones only: ignored": (
        PORT, [ep(1, zones=("zone-b",)), ep(2, zones=("zone-c",))], ([1, 2], [], True)),
    "unready endpoints' hints do not count": (
        PORT, [ep(1, zones=("zone-a",)), ep(2, ready=False)], ([1], [], True)),
    "node hints for this node win over zone hints": (
        PORT, [ep(1, nodes=("node1",), zones=("zone-b",)), ep(2, nodes=("node2",), zones=("zone-a",))],
        ([1], [], True)),
    "node hints for other nodes: zone hints decide": (
        PORT, [ep(1, nodes=("node3",), zones=("zone-b",)), ep(2, nodes=("node2",), zones=("zone-a",))],
        ([2], [], True)),
    "topology does not narrow Local endpoints": (
        replace(PORT, external_policy_local=True),
        [ep(1, "node1", zones=("zone-b",)), ep(2, zones=("zone-a",))], ([2], [1], True)),
}


@pytest.mark.parametrize("case", CASES, ids=list(CASES))
def test_categorization(case):
    port, eps, want = CASES[case]
    assert categorize(port, *eps) == want


def test_zone_hints_need_the_nodes_zone():
    no_zone = replace(NODE, zone=None)
    assert categorize(PORT, ep(1, zones=("zone-a",)), ep(2, zones=("zone-b",)), node=no_zone) == ([1, 2], [], True)


def plan(port: ServicePort, *eps):
    return plan_service_port(NODE, port, dict(eps))


def test_plan_routes_each_traffic_class():
    etp = plan(replace(PORT, external_policy_local=True), ep(1, "node1"), ep(2))
    assert (names(etp.internal_targets), names(etp.external_targets), names(etp.short_circuit_targets)) == (
        [1, 2], [1], [1, 2])
    assert not etp.masquerade_external and etp.local_ready_endpoints == 1
    itp = plan(replace(PORT, internal_policy_local=True), ep(2))
    assert (names(itp.internal_targets), itp.empty_verdict()) == ([], "drop")
    none = plan(PORT)
    assert (none.has_endpoints, none.empty_verdict()) == (False, "reject")


def test_source_ranges_allow_lb_ips_when_they_hold_a_node_ip():
    lb = replace(PORT, load_balancer_ips=(IPv4Address("198.51.100.10"),),
                 source_ranges=(IPv4Network("192.168.50.0/24"),))
    assert plan(lb, ep(1)).source_ranges == (IPv4Network("192.168.50.0/24"), IPv4Network("198.51.100.10/32"))
    elsewhere = replace(lb, source_ranges=(IPv4Network("10.0.0.0/8"),))
    assert plan(elsewhere, ep(1)).source_ranges == (IPv4Network("10.0.0.0/8"),)
    assert plan(replace(lb, load_balancer_ips=()), ep(1)).source_ranges == ()
