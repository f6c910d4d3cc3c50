"""kproxy's core data plane (nftables, IPv4, TCP/UDP) checked with real packets.

Each test programs node1 with `kproxy sync --once` and asserts, per connection, which
pod answered and which source address it saw (masquerade or not), or refused vs
timed out. Pods (see topology.py): pod1..pod3 on node1 (10.244.1.2-4), pod4, pod5
on node2 (10.244.2.2-3); each answers "<name> <peer ip>".
"""

from __future__ import annotations

import json

import pytest
import traffic
from kproxy_lab import Kproxy
from topology import (
    NODE1_BRIDGE_IP,
    NODE1_IP,
    NODE1_OTHER_IP,
    Cluster,
)

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = pytest.mark.netns

WEB_IP = "10.96.0.10"
CONNECTS = 40  # enough to see each of 3 endpoints: P(miss one) ~ 3 * (2/3)^40 ~ 3e-7


def web(cluster: Cluster) -> list[dict]:
    """ClusterIP 10.96.0.10:80 -> 8080 on pod2 (node1), pod4, pod5 (node2); pod3 unready."""
    p = cluster.pods
    return [
        service("web", WEB_IP, [port(80, 8080)]),
        endpoint_slice(
            "web",
            [endpoint(p["pod2"]), endpoint(p["pod4"]), endpoint(p["pod5"]), endpoint(p["pod3"], ready=False)],
            [slice_port(8080)],
        ),
    ]


def masqueraded_web_pairs() -> set[tuple[str, str]]:
    # Masquerade picks the address of the interface the DNATed packet leaves by.
    return {("pod2", NODE1_BRIDGE_IP), ("pod4", NODE1_IP), ("pod5", NODE1_IP)}


def test_cluster_ip_from_pod_reaches_ready_endpoints_unmasqueraded(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(web(cluster))
    r = traffic.tcp(cluster.ns("pod1"), WEB_IP, 80, count=CONNECTS)
    assert set(r.pods) == {"pod2", "pod4", "pod5"}, r
    assert not r.failures, r
    assert set(r.sources) == {cluster.pods["pod1"].ip}, r


@pytest.mark.parametrize("source", ["node1", "client"])
def test_cluster_ip_from_node_and_off_cluster_is_masqueraded(
    cluster: Cluster, kproxy: Kproxy, source: str
) -> None:
    kproxy.sync(web(cluster))
    r = traffic.tcp(cluster.ns(source), WEB_IP, 80, count=CONNECTS)
    assert not r.failures, r
    assert r.pairs() == masqueraded_web_pairs(), r


@pytest.mark.parametrize(
    "flags", [("--nodeport-addresses", "192.168.50.0/24"), ()], ids=["nodeport-addresses", "default"]
)
def test_node_port_is_masqueraded_and_only_on_nodeport_addresses(
    cluster: Cluster, kproxy: Kproxy, flags: tuple[str, ...]
) -> None:
    """With 192.168.50.0/24, or by default (the --node-ip), NodePorts answer on
    192.168.50.10 only: not on node1's other addresses."""
    p = cluster.pods
    kproxy.sync(
        [
            service("np", "10.96.0.20", [port(80, 8080, node_port=30080)], type="NodePort"),
            endpoint_slice("np", [endpoint(p["pod2"]), endpoint(p["pod4"])], [slice_port(8080)]),
        ],
        *flags,
    )
    expected = {("pod2", NODE1_BRIDGE_IP), ("pod4", NODE1_IP)}
    r = traffic.tcp(cluster.client, NODE1_IP, 30080, count=30)
    assert not r.failures, r
    assert r.pairs() == expected, r
    # External frontends masquerade whoever the source is: a pod, or the node itself.
    r = traffic.tcp(cluster.ns("pod1"), NODE1_IP, 30080, count=30)
    assert not r.failures, r
    assert r.pairs() == expected, r
    r = traffic.tcp(cluster.node1, NODE1_IP, 30080, count=30)
    assert not r.failures, r
    assert r.pairs() == expected, r

    # 192.168.60.10 is node1's too, but not a NodePort address: not DNATed, so
    # nothing listens there.
    r = traffic.tcp(cluster.client, NODE1_OTHER_IP, 30080, count=3, timeout=1.0)
    assert not r.pods, r
    # Nor on the pod-facing bridge address, from a pod.
    r = traffic.tcp(cluster.ns("pod1"), NODE1_BRIDGE_IP, 30080, count=3, timeout=1.0)
    assert not r.pods, r


@pytest.mark.parametrize("address", ["203.0.113.10", "203.0.113.20"], ids=["externalIP", "loadBalancerIP"])
def test_external_ip_and_load_balancer_ip_from_client_are_masqueraded(
    cluster: Cluster, kproxy: Kproxy, address: str
) -> None:
    p = cluster.pods
    kproxy.sync(
        [
            service(
                "ext", "10.96.0.30", [port(80, 8080, node_port=30090)], type="LoadBalancer",
                external_ips=["203.0.113.10"], lb_ips=["203.0.113.20"],
            ),
            endpoint_slice("ext", [endpoint(p["pod3"]), endpoint(p["pod5"])], [slice_port(8080)]),
        ]
    )
    r = traffic.tcp(cluster.client, address, 80, count=30)
    assert not r.failures, r
    assert r.pairs() == {("pod3", NODE1_BRIDGE_IP), ("pod5", NODE1_IP)}, r


def test_hairpin_pod_reaches_itself_masqueraded(cluster: Cluster, kproxy: Kproxy) -> None:
    p = cluster.pods
    kproxy.sync(
        [
            service("hp", "10.96.0.40", [port(80, 8080)]),
            endpoint_slice("hp", [endpoint(p["pod1"]), endpoint(p["pod2"])], [slice_port(8080)]),
        ]
    )
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.40", 80, count=30)
    assert not r.failures, r
    assert set(r.pods) == {"pod1", "pod2"}, r
    own = {src for pod, src in r.pairs() if pod == "pod1"}
    assert p["pod1"].ip not in own, f"hairpin not masqueraded: {r}"
    assert own == {NODE1_BRIDGE_IP}, r
    # The other endpoint still sees the pod's own address.
    assert {src for pod, src in r.pairs() if pod == "pod2"} == {p["pod1"].ip}, r


@pytest.mark.parametrize("source", ["pod1", "client"])
def test_reject_and_drop(cluster: Cluster, kproxy: Kproxy, source: str) -> None:
    p = cluster.pods
    kproxy.sync(
        web(cluster)
        + [
            service("empty", "10.96.0.50", [port(80, 8080)]),
            endpoint_slice("empty", [endpoint(p["pod2"], ready=False)], [slice_port(8080)]),
        ]
    )
    ns = cluster.ns(source)
    # Sanity: the ClusterIP works from here at all.
    assert traffic.tcp(ns, WEB_IP, 80, count=3).pods, "web unreachable"

    no_endpoints = traffic.tcp(ns, "10.96.0.50", 80, count=3, timeout=3)
    assert no_endpoints.failures == {"REFUSED": 3}, no_endpoints
    assert all(a.seconds < 1 for a in no_endpoints.answers), no_endpoints.answers

    wrong_port = traffic.tcp(ns, WEB_IP, 81, count=2, timeout=3)
    assert wrong_port.failures == {"REFUSED": 2}, wrong_port
    assert all(a.seconds < 1 for a in wrong_port.answers), wrong_port.answers

    unallocated = traffic.tcp(ns, "10.96.0.99", 80, count=1, timeout=1.5)
    assert unallocated.failures == {"TIMEOUT": 1}, unallocated


def test_masquerade_all_masquerades_pod_traffic(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(web(cluster), "--masquerade-all")
    r = traffic.tcp(cluster.ns("pod1"), WEB_IP, 80, count=CONNECTS)
    assert not r.failures, r
    assert r.pairs() == masqueraded_web_pairs(), r


def test_udp_cluster_ip(cluster: Cluster, kproxy: Kproxy) -> None:
    p = cluster.pods
    kproxy.sync(
        [
            service("dns", "10.96.0.60", [port(53, 8080, protocol="UDP", name="dns")]),
            endpoint_slice(
                "dns", [endpoint(p["pod2"]), endpoint(p["pod4"])], [slice_port(8080, name="dns", protocol="UDP")]
            ),
        ]
    )
    r = traffic.udp(cluster.ns("pod1"), "10.96.0.60", 53, count=30)
    assert not r.failures, r
    assert r.pairs() == {("pod2", p["pod1"].ip), ("pod4", p["pod1"].ip)}, r
    # TCP on the same port is not a Service port.
    t = traffic.tcp(cluster.ns("pod1"), "10.96.0.60", 53, count=1, timeout=3)
    assert t.failures == {"REFUSED": 1}, t


def test_dump_json_lists_frontends_and_endpoints(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(web(cluster))
    out = kproxy.cli("dump", "--json").stdout
    view = json.loads(out)
    assert view["present"] is True, view
    ports = [sp for sp in view["service_ports"] if sp["name"].startswith("default/web")]
    assert len(ports) == 1, view
    sp = ports[0]
    assert sp["protocol"] == "TCP"
    cluster_ip = [fe for fe in sp["frontends"] if fe["kind"] == "ClusterIP"]
    assert len(cluster_ip) == 1, sp
    assert cluster_ip[0]["address"] == f"{WEB_IP}:80"
    assert cluster_ip[0]["verdict"] == "dnat"
    assert sorted(cluster_ip[0]["endpoints"]) == sorted(
        f"{cluster.pods[n].ip}:8080" for n in ("pod2", "pod4", "pod5")
    ), sp


def test_terminating_serving_endpoints_used_only_without_ready_ones(cluster: Cluster, kproxy: Kproxy) -> None:
    p = cluster.pods
    draining = [
        endpoint(p["pod2"], ready=False, serving=True, terminating=True),
        endpoint(p["pod4"], ready=False, serving=False, terminating=True),
    ]
    kproxy.sync(
        [
            service("drain", "10.96.0.90", [port(80, 8080)]),
            endpoint_slice("drain", draining, [slice_port(8080)]),
            service("mixed", "10.96.0.91", [port(80, 8080)]),
            endpoint_slice("mixed", [*draining, endpoint(p["pod5"])], [slice_port(8080)]),
        ]
    )
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.90", 80, count=10)
    assert set(r.pods) == {"pod2"} and not r.failures, r
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.91", 80, count=10)
    assert set(r.pods) == {"pod5"} and not r.failures, r


def test_one_bad_object_is_skipped_with_a_warning_and_the_rest_programmed(
    cluster: Cluster, kproxy: Kproxy
) -> None:
    p = cluster.pods
    bad_port = service("badport", "10.96.0.40", [port(80, 8080)])
    bad_port["spec"]["ports"][0]["port"] = 70000
    bad_ip = endpoint_slice("web", [endpoint(p["pod4"])], [slice_port(8080)], suffix="bad")
    bad_ip["endpoints"][0]["addresses"] = ["10.244.2.999"]
    result = kproxy.sync([*web(cluster), bad_port, bad_ip])
    warnings = [line for line in result.stderr.splitlines() if "skipping invalid object" in line]
    assert len(warnings) == 2, result.stderr
    assert any("default/badport" in w and "spec.ports[0].port" in w for w in warnings), warnings
    assert any("default/web-bad" in w and "endpoints[0].addresses[0]" in w for w in warnings), warnings
    r = traffic.tcp(cluster.ns("pod1"), WEB_IP, 80, count=CONNECTS)
    assert set(r.pods) == {"pod2", "pod4", "pod5"} and not r.failures, r
