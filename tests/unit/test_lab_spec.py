"""The lab's pure part: scheduling, addresses, the objects the control plane would write."""

from __future__ import annotations

from ipaddress import IPv4Address
from pathlib import Path

import pytest

from kproxy.lab.build import load_objects
from kproxy.lab.spec import (
    CLUSTER_CIDR,
    ROLE_DNS,
    ROLE_INGRESS,
    ROLE_WEB,
    SERVICE_CIDR,
    LabError,
    cluster_ip_endpoints,
    complete_services,
    dns_records,
    endpoint_slices,
    lab_nodes,
    lb_forwards,
    lb_ruleset,
    nginx_config,
    place,
    pod_mac,
    public_hosts,
    read_manifests,
)
from kproxy.model import NodeConfig
from kproxy.parse import parse_endpoint_slice, parse_service
from kproxy.planner import compute_plan
from kproxy.tracker import Tracker

DEFAULTS = Path(__file__).resolve().parents[2] / "kproxy" / "lab" / "default"


def default_lab():
    m = read_manifests(load_objects(DEFAULTS))
    nodes = lab_nodes(3)
    pods = place(m.workloads, (), nodes)
    return m, nodes, pods, complete_services(m.services)


def deployment(name: str, replicas: int, image: str = "web:1", ports=None, namespace: str = "default") -> dict:
    return {"kind": "Deployment", "metadata": {"name": name, "namespace": namespace},
            "spec": {"replicas": replicas, "template": {
                "metadata": {"labels": {"app": name}},
                "spec": {"containers": [{"image": image, "ports": ports or [{"containerPort": 8080}]}]}}}}


def test_default_lab_spreads_replicas_over_nodes():
    m, _nodes, pods, _services = default_lab()
    assert not m.warnings
    roles = {p.name: p.role for p in pods}
    assert roles["coredns-1"] == ROLE_DNS and roles["ingress-nginx-controller-1"] == ROLE_INGRESS
    for site in ("website1fe", "website2fe"):
        mine = [p for p in pods if p.name.startswith(site)]
        assert len(mine) == 3 and {p.node for p in mine} == {"node1", "node2", "node3"}
        assert {p.role for p in mine} == {ROLE_WEB}
    # every pod has its own address inside its node's pod subnet, and its own veth index
    assert len({p.ip for p in pods}) == len(pods) == len({p.index for p in pods})
    for p in pods:
        assert p.ip in lab_nodes(3)[int(p.node[-1]) - 1].pod_cidr


def test_scaling_keeps_pods_and_removes_the_newest():
    m = read_manifests([deployment("web", 2)])
    nodes = lab_nodes(2)
    two = place(m.workloads, (), nodes)
    four = place([_with_replicas(m.workloads[0], 4)], two, nodes)
    assert four[:2] == two and [p.name for p in four] == ["web-1", "web-2", "web-3", "web-4"]
    assert [p.node for p in four].count("node1") == 2
    one = place([_with_replicas(m.workloads[0], 1)], four, nodes)
    assert one == (two[0],)
    again = place([_with_replicas(m.workloads[0], 2)], one, nodes)
    assert again[1].name == "web-2" and again[1].node != one[0].node  # the name is free again; spread


def _with_replicas(workload, n):
    from dataclasses import replace
    return replace(workload, replicas=n)


def test_pod_names_are_unique_across_namespaces():
    m = read_manifests([deployment("web", 1), deployment("web", 1, namespace="other")])
    pods = place(m.workloads, (), lab_nodes(1))
    assert sorted(p.name for p in pods) == ["web-1", "web-2"]


def test_services_get_cluster_ips_node_ports_and_lb_ips_but_keep_explicit_ones():
    _m, _nodes, _pods, services = default_lab()
    by_name = {s["metadata"]["name"]: s for s in services}
    assert by_name["kube-dns"]["spec"]["clusterIP"] == "10.96.0.10"
    ips = [s["spec"]["clusterIP"] for s in services]
    assert len(set(ips)) == len(ips)
    ingress = by_name["ingress-nginx-controller"]
    assert [p["nodePort"] for p in ingress["spec"]["ports"]] == [30080, 30443]
    assert ingress["status"]["loadBalancer"]["ingress"] == [{"ip": "203.0.113.10", "ipMode": "VIP"}]
    for svc in services:  # what kproxy itself reads: parses cleanly
        assert parse_service(svc) is not None
    free = complete_services([{"kind": "Service", "metadata": {"name": "np"},
                               "spec": {"type": "NodePort", "ports": [{"port": 80}]}}])
    assert free[0]["spec"]["ports"][0]["nodePort"] == 30000


def test_endpoint_slices_resolve_named_ports_and_mark_terminating_pods():
    _m, nodes, pods, services = default_lab()
    slices = {s["metadata"]["name"]: s for s in endpoint_slices(services, pods, nodes)}
    web = slices["website1fe-0"]
    assert web["ports"] == [{"name": "http", "port": 8080, "protocol": "TCP"}]
    assert {e["targetRef"]["name"] for e in web["endpoints"]} == {"website1fe-1", "website1fe-2", "website1fe-3"}
    assert all(e["zone"].startswith("zone-") and e["conditions"]["ready"] for e in web["endpoints"])
    dns = slices["kube-dns-0"]
    assert {(p["name"], p["port"], p["protocol"]) for p in dns["ports"]} == {("dns", 53, "UDP"), ("dns-tcp", 53, "TCP")}
    for s in slices.values():
        assert parse_endpoint_slice(s) is not None
    leaving = tuple(p for p in pods if p.name == "website1fe-3")
    staying = tuple(p for p in pods if p not in leaving)
    after = {s["metadata"]["name"]: s for s in endpoint_slices(services, staying, nodes, leaving)}
    states = {e["targetRef"]["name"]: e["conditions"] for e in after["website1fe-0"]["endpoints"]}
    assert states["website1fe-3"] == {"ready": False, "serving": True, "terminating": True}
    assert states["website1fe-1"]["ready"]


@pytest.mark.parametrize("leaving_names", [(), ("website1fe-3",), ("website1fe-1", "website1fe-2", "website1fe-3")],
                         ids=["steady", "scale-down", "scale-to-zero"])
def test_the_endpoints_the_lab_waits_for_are_what_kproxys_planner_programs(leaving_names):
    """`lab scale` waits until every node's ClusterIP rules hold cluster_ip_endpoints(slices):
    with every pod of a Service terminating, that is the terminating ones (upstream's
    fallback), so scaling to 0 no longer waits for rules that never come."""
    _m, nodes, pods, services = default_lab()
    leaving = tuple(p for p in pods if p.name in leaving_names)
    staying = tuple(p for p in pods if p not in leaving)
    slices = endpoint_slices(services, staying, nodes, leaving)
    tracker = Tracker(on_change=lambda: None)
    tracker.replace("Service", services)
    tracker.replace("EndpointSlice", slices)
    node = NodeConfig(hostname="node1", node_ips=(nodes[0].ip,), cluster_cidrs=(CLUSTER_CIDR,),
                      service_cidrs=(SERVICE_CIDR,))
    plan = compute_plan(node, tracker.snapshot())
    programmed = {str(t) for sp in plan.service_ports for t in sp.internal_targets}
    expected = cluster_ip_endpoints(slices)
    assert expected == programmed
    website1 = {e for e in expected if e.endswith(":8080") and e.split(":")[0] in
                {str(p.ip) for p in pods if p.name.startswith("website1fe-")}}
    assert website1 == ({f"{p.ip}:8080" for p in leaving} if len(leaving) == 3 else
                        {f"{p.ip}:8080" for p in staying if p.name.startswith("website1fe-")})


def test_a_pod_that_comes_back_with_an_ip_comes_back_with_its_mac():
    _m, nodes, pods, _services = default_lab()
    gone = tuple(p for p in pods if not p.name.startswith("website2fe-"))
    back = place(default_lab()[0].workloads, gone, nodes)
    again = {p.name: p.ip for p in back if p.name.startswith("website2fe-")}
    assert again == {p.name: p.ip for p in pods if p.name.startswith("website2fe-")}  # the same IPs
    assert pod_mac(IPv4Address("10.244.2.10")) == "02:42:0a:f4:02:0a"
    assert len({pod_mac(p.ip) for p in pods}) == len(pods)


def test_dns_records_and_public_hosts():
    m, _nodes, pods, services = default_lab()
    records = dict(dns_records(services, pods))
    assert records["kube-dns.kube-system.svc.cluster.local"] == "10.96.0.10"
    assert records["website2fe.default.svc.cluster.local"] in {s["spec"]["clusterIP"] for s in services}
    assert public_hosts(m.ingresses, services, pods) == [("website1.com", "203.0.113.10"),
                                                          ("website2.com", "203.0.113.10")]
    headless = complete_services([{"kind": "Service", "metadata": {"name": "db"},
                                   "spec": {"clusterIP": "None", "selector": {"app": "website1fe"}}}])
    assert sorted(dict.fromkeys(a for _n, a in dns_records(headless, pods))) == sorted(
        str(p.ip) for p in pods if p.name.startswith("website1fe"))


def test_nginx_config_routes_each_host_with_its_certificate():
    m, _nodes, pods, services = default_lab()
    controller = next(p for p in pods if p.role == ROLE_INGRESS)
    conf = nginx_config(m.ingresses, services, controller, "/c", "/r")
    for site in ("website1", "website2"):
        assert f"server_name {site}.com;" in conf
        assert f"ssl_certificate /c/{site}.com.crt;" in conf
        assert f"set $upstream {site}fe.default.svc.cluster.local:80;" in conf
    assert "resolver 10.96.0.10" in conf


def test_load_balancer_spreads_over_node_ports_and_only_local_nodes_for_local_policy():
    _m, nodes, pods, services = default_lab()
    forwards = lb_forwards(services, nodes, pods)
    https = next(f for f in forwards if f.port == 443)
    assert https.vip == IPv4Address("203.0.113.10")
    assert https.targets == tuple((n.ip, 30443) for n in nodes)
    assert "dnat ip to numgen inc mod 3 map { 0 : 10.1.1.10 . 30443" in lb_ruleset(forwards)
    ingress = next(s for s in services if s["metadata"]["name"] == "ingress-nginx-controller")
    ingress["spec"]["externalTrafficPolicy"] = "Local"
    local = next(f for f in lb_forwards(services, nodes, pods) if f.port == 443)
    controller = next(p for p in pods if p.role == ROLE_INGRESS)
    assert [ip for ip, _ in local.targets] == [n.ip for n in nodes if n.name == controller.node]


def test_malformed_objects_are_left_out_with_a_warning_naming_them():
    m = read_manifests([deployment("ok", 1), deployment("bad", -1),
                        {"kind": "Deployment", "metadata": {"name": "empty"}, "spec": {}},
                        {"kind": "Ingress", "metadata": {"name": "nohost"},
                         "spec": {"rules": [{"http": {"paths": []}}]}},
                        {"kind": "ConfigMap", "metadata": {"name": "cm"}}])
    assert [w.key for w in m.workloads] == ["default/ok"]
    assert any("Deployment default/bad: spec.replicas" in w for w in m.warnings)
    assert any("Deployment default/empty" in w for w in m.warnings)
    assert any("Ingress default/nohost" in w for w in m.warnings)
    assert any(w.startswith("ConfigMap default/cm") for w in m.warnings)


def test_node_count_is_bounded():
    with pytest.raises(LabError, match="--nodes"):
        lab_nodes(0)
    assert [n.ip for n in lab_nodes(3)] == [IPv4Address(f"10.1.1.{i}") for i in (10, 11, 12)]
