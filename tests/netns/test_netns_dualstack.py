"""Dual-stack and IPv6 Services with real IPv6 packets (nftables: table ip6 kproxy beside ip
kproxy; iptables: ip6tables beside iptables)."""

from __future__ import annotations

import json

import pytest
import traffic
from kproxy_lab import Kproxy
from topology import (
    CLIENT_IP6,
    CLUSTER_CIDR,
    CLUSTER_CIDR6,
    NODE1_BRIDGE_IP6,
    NODE1_IP6,
    SERVICE_CIDR,
    SERVICE_CIDR6,
    Cluster,
)

from manifests import endpoint_slice, port, service, slice_port

# both backends (the kproxy fixture is parametrized over the proxy modes)
pytestmark = pytest.mark.netns

V4, V6 = "10.96.0.40", "fd00:96::40"
DUAL_FLAGS = ("--node-ip", NODE1_IP6, "--cluster-cidr", f"{CLUSTER_CIDR},{CLUSTER_CIDR6}",
              "--service-cluster-ip-range", f"{SERVICE_CIDR},{SERVICE_CIDR6}")
CONNECTS = 30


def endpoint6(cluster: Cluster, pod: str) -> dict:
    p = cluster.pods[pod]
    return {"addresses": [p.ip6], "conditions": {"ready": True, "serving": True, "terminating": False},
            "nodeName": p.node}


def dual_stack(cluster: Cluster, pods: list[str]) -> list[dict]:
    svc = service("dual", V4, [port(80, 8080, node_port=30400)], type="NodePort")
    svc["spec"].update(clusterIPs=[V4, V6], ipFamilies=["IPv4", "IPv6"], ipFamilyPolicy="RequireDualStack")
    v4 = endpoint_slice("dual", [{"addresses": [cluster.pods[p].ip], "nodeName": cluster.pods[p].node,
                                  "conditions": {"ready": True}} for p in pods], [slice_port(8080)])
    v6 = endpoint_slice("dual", [endpoint6(cluster, p) for p in pods], [slice_port(8080)], suffix="v6")
    v6["addressType"] = "IPv6"
    return [svc, v4, v6]


def test_ipv6_cluster_ip_from_a_pod_is_not_masqueraded(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(dual_stack(cluster, ["pod2", "pod4"]), *DUAL_FLAGS)
    pod1 = cluster.pods["pod1"].ip6
    r = traffic.tcp(cluster.ns("pod1"), V6, 80, count=CONNECTS)
    assert r.pairs() == {("pod2", pod1), ("pod4", pod1)} and not r.failures, r
    r = traffic.tcp(cluster.ns("pod1"), V4, 80, count=CONNECTS)  # the IPv4 side of the same Service
    assert set(r.pods) == {"pod2", "pod4"} and not r.failures, r


def test_ipv6_from_off_cluster_and_node_port_are_masqueraded(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(dual_stack(cluster, ["pod2", "pod4"]), *DUAL_FLAGS)
    want = {("pod2", NODE1_BRIDGE_IP6), ("pod4", NODE1_IP6)}
    r = traffic.tcp(cluster.ns("client"), V6, 80, count=CONNECTS)
    assert r.pairs() == want and not r.failures, r
    r = traffic.tcp(cluster.ns("client"), NODE1_IP6, 30400, count=CONNECTS)
    assert r.pairs() == want and not r.failures, r


def test_ipv6_reject_and_drop(cluster: Cluster, kproxy: Kproxy) -> None:
    empty = service("empty6", "fd00:96::41", [port(80, 8080)])
    empty["spec"].update(clusterIPs=["fd00:96::41"], ipFamilies=["IPv6"])
    kproxy.sync([*dual_stack(cluster, ["pod2"]), empty], *DUAL_FLAGS)
    r = traffic.tcp(cluster.ns("pod1"), "fd00:96::41", 80, count=2)
    assert set(r.failures) == {"REFUSED"}, r
    r = traffic.tcp(cluster.ns("pod1"), "fd00:96::99", 80, count=2, timeout=1.5)  # unallocated
    assert set(r.failures) == {"TIMEOUT"}, r


def test_dump_shows_both_families(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(dual_stack(cluster, ["pod2"]), *DUAL_FLAGS)
    view = json.loads(kproxy.cli("dump", "--json").stdout)
    (sp,) = [p for p in view["service_ports"] if p["name"] == "default/dual"]
    got = {(fe["kind"], fe["address"]): fe["endpoints"] for fe in sp["frontends"] if fe["kind"] == "ClusterIP"}
    # IPv6 bracketed, as trace prints it
    assert got == {("ClusterIP", f"{V4}:80"): [f"{cluster.pods['pod2'].ip}:8080"],
                   ("ClusterIP", f"[{V6}]:80"): [f"[{cluster.pods['pod2'].ip6}]:8080"]}
    assert CLIENT_IP6  # the client's IPv6 address exists in the lab (used above as the source)
