"""compute_plan: pure policy decisions, no root needed."""

from __future__ import annotations

from ipaddress import IPv4Address, IPv4Network

import pytest

from kproxy.model import ClusterDelta, ClusterState, NodeConfig, ServiceName, ServicePortName
from kproxy.parse import parse_endpoint_slice, parse_service
from kproxy.plan import Frontend, FrontendKind, LocalDetector, Plan
from kproxy.planner import FamilyPlanner, compute_plan
from tests.builders import endpoint, endpoint_slice, port, service

NODE = NodeConfig(
    hostname="node1",
    node_ips=(IPv4Address("192.168.50.10"),),
    local_ips=(IPv4Address("192.168.50.10"), IPv4Address("172.16.0.5")),
    cluster_cidrs=(IPv4Network("10.244.0.0/16"),),
    service_cidrs=(IPv4Network("10.96.0.0/16"),),
)


def state(*objects: dict) -> ClusterState:
    services, slices = {}, {}
    for obj in objects:
        if obj["kind"] == "Service":
            svc = parse_service(obj)
            if svc is not None:
                services[svc.name] = svc
        else:
            sl = parse_endpoint_slice(obj)
            if sl is not None:
                slices[(sl.namespace, sl.name)] = sl
    return ClusterState(services=services, slices=slices)


def plan(*objects: dict, node: NodeConfig = NODE) -> Plan:
    return compute_plan(node, state(*objects))


def targets(p: Plan, index: int = 0) -> list[str]:
    return [str(t) for t in p.service_ports[index].internal_targets]


def test_ready_endpoints_serve_and_unready_do_not():
    p = plan(
        service("web", cluster_ip="10.96.0.10"),
        endpoint_slice("web", ["10.244.1.2", endpoint("10.244.1.3", ready=False), "10.244.2.2"], port=8080),
    )
    assert targets(p) == ["10.244.1.2:8080", "10.244.2.2:8080"]


def test_terminating_serving_endpoints_only_when_none_ready():
    terminating = endpoint("10.244.1.9", ready=False, serving=True, terminating=True)
    not_serving = endpoint("10.244.1.8", ready=False, serving=False, terminating=True)
    p = plan(service("web"), endpoint_slice("web", [terminating, not_serving]))
    assert targets(p) == ["10.244.1.9:80"]
    p = plan(service("web"), endpoint_slice("web", [terminating, "10.244.1.2"]))
    assert targets(p) == ["10.244.1.2:80"]


def test_no_endpoints_gives_empty_targets_so_backends_reject():
    p = plan(service("web", cluster_ip="10.96.0.10"))
    assert p.service_ports[0].internal_targets == ()
    assert p.service_ports[0].external_targets == ()
    assert p.cluster_ips == (IPv4Address("10.96.0.10"),)


def test_slice_ports_match_service_ports_by_name_and_protocol():
    p = plan(
        service("dns", cluster_ip="10.96.0.53",
                ports=[port(53, name="dns", protocol="UDP"), port(53, name="dns-tcp", protocol="TCP")]),
        endpoint_slice("dns", ["10.244.1.5"], ports=[
            {"name": "dns", "port": 5353, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 5354, "protocol": "TCP"},
            {"name": "metrics", "port": 9153, "protocol": "TCP"},
        ]),
    )
    by_name = {str(sp.name): (sp.protocol.value, [str(t) for t in sp.internal_targets]) for sp in p.service_ports}
    assert by_name == {
        "default/dns:dns": ("UDP", ["10.244.1.5:5353"]),
        "default/dns:dns-tcp": ("TCP", ["10.244.1.5:5354"]),
    }


def test_endpoints_merge_across_slices_and_duplicates_count_once():
    p = plan(
        service("web"),
        endpoint_slice("web", ["10.244.1.2", "10.244.1.3"], name="web-a"),
        endpoint_slice("web", ["10.244.1.3", "10.244.2.7"], name="web-b"),
    )
    assert targets(p) == ["10.244.1.2:80", "10.244.1.3:80", "10.244.2.7:80"]


def test_slices_of_other_services_or_namespaces_do_not_leak():
    p = plan(
        service("web"),
        endpoint_slice("web", ["10.244.1.2"], ns="other"),
        endpoint_slice("api", ["10.244.1.3"]),
    )
    assert targets(p) == []


def test_frontends_of_every_kind():
    p = plan(
        service("edge", type="LoadBalancer", cluster_ip="10.96.0.30", node_port=30443,
                external_ips=["203.0.113.10", "203.0.113.10"], lb_ips=["198.51.100.10"]),
        endpoint_slice("edge", ["10.244.1.2"]),
    )
    assert p.service_ports[0].frontends == (
        Frontend(kind=FrontendKind.CLUSTER_IP, ip=IPv4Address("10.96.0.30"), port=80),
        Frontend(kind=FrontendKind.NODE_PORT, ip=None, port=30443),
        Frontend(kind=FrontendKind.EXTERNAL_IP, ip=IPv4Address("203.0.113.10"), port=80),
        Frontend(kind=FrontendKind.LOAD_BALANCER, ip=IPv4Address("198.51.100.10"), port=80),
    )
    assert p.service_ports[0].masquerade_external


def test_lb_ip_mode_proxy_is_not_a_frontend():
    p = plan(service("edge", type="LoadBalancer", lb_ips=["198.51.100.10"], lb_ip_mode="Proxy"))
    kinds = [f.kind for f in p.service_ports[0].frontends]
    assert FrontendKind.LOAD_BALANCER not in kinds


def test_local_endpoints_are_marked():
    p = plan(service("web"), endpoint_slice("web", [endpoint("10.244.1.2", node="node1"),
                                                     endpoint("10.244.2.2", node="node2")]))
    assert [(str(t.ip), t.is_local) for t in p.service_ports[0].internal_targets] == [
        ("10.244.1.2", True), ("10.244.2.2", False)]


def test_nodeport_addresses_default_to_node_ips():
    p = plan(service("web"))
    assert (p.nodeport_all_local, p.nodeport_ips) == (False, (IPv4Address("192.168.50.10"),))


def test_nodeport_addresses_cidrs_select_local_addresses():
    node = NodeConfig(hostname="node1", node_ips=NODE.node_ips, local_ips=NODE.local_ips,
                      nodeport_cidrs=(IPv4Network("172.16.0.0/12"),))
    p = plan(service("web"), node=node)
    assert (p.nodeport_all_local, p.nodeport_ips) == (False, (IPv4Address("172.16.0.5"),))


def test_nodeport_addresses_all_means_every_local_address():
    node = NodeConfig(hostname="node1", nodeport_cidrs=(IPv4Network("0.0.0.0/0"),))
    assert plan(service("web"), node=node).nodeport_all_local


def test_skipped_services_are_not_planned():
    p = plan(
        service("headless", cluster_ip="None"),
        service("ext", type="ExternalName", cluster_ip=None, externalName="example.com"),
        service("other-proxy", labels={"service.kubernetes.io/service-proxy-name": "x"}),
        service("web", cluster_ip="10.96.0.10"),
    )
    assert [str(sp.name) for sp in p.service_ports] == ["default/web"]


def test_plan_is_deterministic_and_sorted():
    objs = [service(n, cluster_ip=f"10.96.0.{i + 10}") for i, n in enumerate(["b", "a", "c"])]
    assert plan(*objs) == plan(*reversed(objs))
    assert [str(sp.name) for sp in plan(*objs).service_ports] == ["default/a", "default/b", "default/c"]


def test_a_delta_replans_only_the_services_it_names_and_gives_the_full_plan():
    web, api = ServiceName("default", "web"), ServiceName("default", "api")
    before = state(service("web"), endpoint_slice("web", ["10.244.1.2"]),
                   service("api", cluster_ip="10.96.0.2"), endpoint_slice("api", ["10.244.1.9"]))
    planner = FamilyPlanner()
    first = planner.plan(NODE, ClusterDelta.of(before))
    assert first.changed is None  # a full plan
    after = state(service("web"), endpoint_slice("web", ["10.244.1.3"]),
                  service("api", cluster_ip="10.96.0.2"), endpoint_slice("api", ["10.244.1.9"]))
    p = planner.plan(NODE, ClusterDelta(full=False, services={web: after.services[web]},
                                        slices={web: tuple(after.slices.values())[:1]}))
    assert p.changed == {ServicePortName(web, "")}
    assert p.service_ports.get(ServicePortName(api, "")) is first.service_ports.get(ServicePortName(api, ""))
    assert [str(t) for t in p.service_ports.get(ServicePortName(web, "")).internal_targets] == ["10.244.1.3:80"]
    assert p == compute_plan(NODE, after)
    assert p.endpoints == 2
    gone = planner.plan(NODE, ClusterDelta(full=False, services={api: None}))
    assert gone.changed == {ServicePortName(api, "")} and [sp.name.service for sp in gone.service_ports] == [web]
    assert gone.cluster_ips == (IPv4Address("10.96.0.1"),) and gone.endpoints == 1


def test_a_new_node_config_needs_a_full_delta():
    planner = FamilyPlanner()
    assert planner.needs_full(NODE)
    planner.plan(NODE, ClusterDelta.of(state(service("web"))))
    assert not planner.needs_full(NODE)
    assert planner.needs_full(NodeConfig(hostname="node1", zone="a"))
    with pytest.raises(ValueError):
        planner.plan(NodeConfig(hostname="node1", zone="a"), ClusterDelta(full=False))


def test_masquerade_settings_pass_through():
    node = NodeConfig(hostname="n", masquerade_all=True, cluster_cidrs=NODE.cluster_cidrs)
    p = plan(service("web"), node=node)
    assert p.masquerade_all and p.local == LocalDetector(cidrs=NODE.cluster_cidrs)
