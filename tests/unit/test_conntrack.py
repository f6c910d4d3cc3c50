"""Which UDP conntrack flows are stale after a sync (pure part of the reconciler)."""

from __future__ import annotations

from ipaddress import IPv4Address as A

from kproxy.conntrack import Flow, changed_udp_ports, stale_flows
from kproxy.planner import compute_plan
from tests.builders import endpoint_slice, port, service
from tests.unit.test_planner import NODE, state

DNS = service("dns", cluster_ip="10.96.0.53", type="NodePort",
              ports=[port(53, name="dns", protocol="UDP", node_port=30053)])


def plan_with(*ips: str):
    return compute_plan(NODE, state(DNS, endpoint_slice("dns", list(ips), port=5353, port_name="dns",
                                                        protocol="UDP")))


def test_flows_answered_by_a_gone_endpoint_or_by_nobody_are_stale():
    plan = plan_with("10.244.1.2")
    flows = [
        Flow(A("10.96.0.53"), 53, A("10.244.1.2"), 5353),  # current endpoint: keep
        Flow(A("10.96.0.53"), 53, A("10.244.1.9"), 5353),  # endpoint that left
        Flow(A("10.96.0.53"), 53, A("10.96.0.53"), 53),  # never DNATed (began without endpoints)
        Flow(A("192.168.50.10"), 30053, A("10.244.1.9"), 5353),  # via the NodePort
        Flow(A("192.168.50.99"), 30053, A("10.244.1.9"), 5353),  # not a NodePort address
        Flow(A("8.8.8.8"), 53, A("8.8.8.8"), 53),  # not a Service at all
    ]
    assert stale_flows(plan, plan.service_ports, flows) == [flows[1], flows[2], flows[3]]


def test_no_endpoints_means_nothing_to_clean():
    plan = plan_with()
    assert stale_flows(plan, plan.service_ports, [Flow(A("10.96.0.53"), 53, A("10.244.1.9"), 5353)]) == []


def test_only_changed_udp_ports_are_considered():
    first = plan_with("10.244.1.2")
    before = {sp.name: sp for sp in first.service_ports}
    assert changed_udp_ports(before, first) == []
    assert [str(sp.name) for sp in changed_udp_ports(before, plan_with("10.244.1.3"))] == ["default/dns:dns"]
