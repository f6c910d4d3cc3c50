"""`kproxy trace` reads the kernel's rules and says what traffic would do; checked against
where real requests land and the source address the endpoint saw, for both backends."""

from __future__ import annotations

import json

import pytest
import traffic
from kproxy_lab import PROXY_MODES, Kproxy
from topology import (
    CLIENT_IP,
    CLIENT_IP6,
    CLIENT_OTHER_IP,
    CLUSTER_CIDR,
    CLUSTER_CIDR6,
    NODE1_IP,
    NODE1_IP6,
    SERVICE_CIDR,
    SERVICE_CIDR6,
    Cluster,
)

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("kproxy", PROXY_MODES, indirect=True)]

EXTERNAL_MASQ = "external traffic (externalTrafficPolicy Cluster): replies must return through this node"
HAIRPIN = "hairpin: if it lands on the source pod itself"
SHORT_CIRCUIT = "short-circuit: pods and the node itself use every endpoint (externalTrafficPolicy Local)"


def trace(kproxy: Kproxy, src: str, to: str) -> dict:
    return json.loads(kproxy.cli("trace", "--from", src, "--to", to, "--json").stdout)


def endpoints_of(cluster: Cluster, *pods: str) -> set[str]:
    return {f"{cluster.pods[p].ip}:8080" for p in pods}


def objects(cluster: Cluster) -> list[dict]:
    p = cluster.pods
    web = service("web", "10.96.0.50", [port(80, 8080, node_port=30500)], type="NodePort")
    local = service("loc", "10.96.0.51", [port(80, 8080, node_port=30501)], type="LoadBalancer",
                    lb_ips=["203.0.113.51"])
    local["spec"]["externalTrafficPolicy"] = "Local"
    away = service("away", "10.96.0.55", [port(80, 8080, node_port=30505)], type="LoadBalancer",
                   lb_ips=["203.0.113.55"])  # Local, but its only endpoint is on node2
    away["spec"]["externalTrafficPolicy"] = "Local"
    ranged = service("ranged", "10.96.0.54", [port(80, 8080, node_port=30504)], type="LoadBalancer",
                     lb_ips=["203.0.113.54"])
    ranged["spec"]["loadBalancerSourceRanges"] = [f"{CLIENT_IP}/32"]
    sticky = service("sticky", "10.96.0.56", [port(80, 8080)])
    sticky["spec"].update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}})
    return [
        web, endpoint_slice("web", [endpoint(p["pod2"]), endpoint(p["pod4"])], [slice_port(8080)]),
        local, endpoint_slice("loc", [endpoint(p["pod3"])], [slice_port(8080)]),
        service("empty", "10.96.0.52", [port(80, 8080)]),
        service("ext", "10.96.0.53", [port(80, 8080)], external_ips=["203.0.113.53"]),
        endpoint_slice("ext", [endpoint(p["pod4"])], [slice_port(8080)]),
        ranged, endpoint_slice("ranged", [endpoint(p["pod5"])], [slice_port(8080)]),
        away, endpoint_slice("away", [endpoint(p["pod4"])], [slice_port(8080)]),
        sticky, endpoint_slice("sticky", [endpoint(p[n]) for n in ("pod2", "pod4", "pod5")], [slice_port(8080)]),
    ]


def test_cluster_ip_node_port_and_local_policy(cluster, kproxy):
    kproxy.sync(objects(cluster))
    pod1 = cluster.pods["pod1"].ip
    t = trace(kproxy, pod1, "10.96.0.50:80")
    assert (t["verdict"], t["frontend"], t["service_port"], t["masquerade"]) == (
        "dnat", "ClusterIP", "default/web", False)
    real = traffic.tcp(cluster.ns("pod1"), "10.96.0.50", 80, count=30)
    assert endpoints_of(cluster, *real.pods) == set(t["endpoints"]) == endpoints_of(cluster, "pod2", "pod4")
    assert set(t["local_endpoints"]) == endpoints_of(cluster, "pod2")  # pod4 is on node2
    assert set(real.sources) == {pod1}  # not masqueraded, as trace said

    t = trace(kproxy, CLIENT_IP, "10.96.0.50:80")
    assert t["masquerade_reasons"] == ["ClusterIP traffic from outside the cluster CIDR"]
    real = traffic.tcp(cluster.ns("client"), "10.96.0.50", 80, count=20)
    assert real.pods and CLIENT_IP not in real.sources, real

    t = trace(kproxy, CLIENT_IP, f"{NODE1_IP}:30500")
    assert (t["verdict"], t["frontend"], t["masquerade_reasons"]) == ("dnat", "NodePort", [EXTERNAL_MASQ])
    real = traffic.tcp(cluster.ns("client"), NODE1_IP, 30500, count=20)
    assert CLIENT_IP not in real.sources and real.pods, real

    t = trace(kproxy, CLIENT_IP, "203.0.113.51:80")  # externalTrafficPolicy Local
    assert (t["frontend"], t["masquerade"], t["endpoints"]) == (
        "LoadBalancer", False, [f"{cluster.pods['pod3'].ip}:8080"])
    real = traffic.tcp(cluster.ns("client"), "203.0.113.51", 80, count=5)
    assert real.pairs() == {("pod3", CLIENT_IP)}


def test_external_ip_hairpin_and_affinity(cluster, kproxy):
    kproxy.sync(objects(cluster))
    t = trace(kproxy, CLIENT_IP, "203.0.113.53:80")
    assert (t["verdict"], t["frontend"], t["service_port"], t["masquerade_reasons"]) == (
        "dnat", "ExternalIP", "default/ext", [EXTERNAL_MASQ])
    real = traffic.tcp(cluster.ns("client"), "203.0.113.53", 80, count=5)
    assert set(real.pods) == {"pod4"} and CLIENT_IP not in real.sources, real

    pod2 = cluster.pods["pod2"].ip
    t = trace(kproxy, pod2, "10.96.0.50:80")
    assert t["masquerade_reasons"] == [HAIRPIN]
    real = traffic.tcp(cluster.ns("pod2"), "10.96.0.50", 80, count=30)
    assert set(real.pods) == {"pod2", "pod4"}, real
    # landing on itself it saw another source; landing elsewhere its own
    assert pod2 not in {a.source for a in real.answers if a.pod == "pod2"}
    assert {a.source for a in real.answers if a.pod == "pod4"} == {pod2}

    t = trace(kproxy, cluster.pods["pod1"].ip, "10.96.0.56:80")
    assert (t["affinity_seconds"], len(t["endpoints"])) == (300, 3)
    real = traffic.tcp(cluster.ns("pod1"), "10.96.0.56", 80, count=10)
    assert len(real.pods) == 1 and not real.failures, real  # one client keeps its endpoint


def test_short_circuit_and_local_policy_drop(cluster, kproxy):
    kproxy.sync(objects(cluster))
    t = trace(kproxy, cluster.pods["pod1"].ip, "203.0.113.55:80")
    assert (t["verdict"], t["masquerade"], t["endpoints"]) == ("dnat", False, [f"{cluster.pods['pod4'].ip}:8080"])
    assert SHORT_CIRCUIT in t["steps"]
    real = traffic.tcp(cluster.ns("pod1"), "203.0.113.55", 80, count=5)
    assert real.pairs() == {("pod4", cluster.pods["pod1"].ip)}, real

    # (a Local frontend with an endpoint here: without one, the nftables backend drops the
    # node's own connections before nat output, as upstream's nftables mode does)
    t = trace(kproxy, NODE1_IP, "203.0.113.51:80")
    assert (t["verdict"], t["source_kind"], t["masquerade_reasons"]) == (
        "dnat", "node", ["the node's own traffic to an externalTrafficPolicy Local frontend"])
    assert SHORT_CIRCUIT in t["steps"]
    real = traffic.tcp(cluster.node1, "203.0.113.51", 80, count=3)
    assert set(real.pods) == {"pod3"} and not real.failures, real
    assert NODE1_IP not in real.sources, real  # masqueraded (to the bridge address)

    # a Local frontend without an endpoint here, from the node itself: nftables checks for
    # endpoints in filter output, before nat output's short-circuit, and drops (upstream's
    # nftables mode too); iptables checks in INPUT/FORWARD only, so the short-circuit wins
    t = trace(kproxy, NODE1_IP, "203.0.113.55:80")
    real = traffic.tcp(cluster.node1, "203.0.113.55", 80, count=1, timeout=1.5)
    if kproxy.mode == "nftables":
        assert (t["verdict"], t["reason"]) == ("drop", "no endpoint on this node (traffic policy Local)")
        assert not real.pods and real.failures, real
    else:
        assert (t["verdict"], t["endpoints"]) == ("dnat", [f"{cluster.pods['pod4'].ip}:8080"])
        assert set(real.pods) == {"pod4"}, real

    t = trace(kproxy, CLIENT_IP, "203.0.113.55:80")
    assert (t["verdict"], t["reason"], t["frontend"]) == (
        "drop", "no endpoint on this node (traffic policy Local)", "LoadBalancer")
    real = traffic.tcp(cluster.ns("client"), "203.0.113.55", 80, count=1, timeout=1.5)
    assert real.failures == {"TIMEOUT": 1}, real


def test_load_balancer_source_ranges(cluster, kproxy):
    kproxy.sync(objects(cluster))
    t = trace(kproxy, CLIENT_IP, "203.0.113.54:80")
    assert t["verdict"] == "dnat" and "source allowed by loadBalancerSourceRanges" in t["steps"]
    real = traffic.tcp(cluster.ns("client"), "203.0.113.54", 80, count=3, source=CLIENT_IP)
    assert set(real.pods) == {"pod5"} and not real.failures, real
    t = trace(kproxy, CLIENT_OTHER_IP, "203.0.113.54:80")
    assert (t["verdict"], t["reason"]) == ("drop", "source not in loadBalancerSourceRanges")
    real = traffic.tcp(cluster.ns("client"), "203.0.113.54", 80, count=1, timeout=1.5, source=CLIENT_OTHER_IP)
    assert real.failures == {"TIMEOUT": 1}, real


@pytest.mark.parametrize(("to", "verdict", "reason", "failure"), [
    ("10.96.0.52:80", "reject", "no ready endpoints", "REFUSED"),
    ("10.96.0.50:81", "reject", "a ClusterIP, but not on this port", "REFUSED"),
    ("10.96.0.99:80", "drop", "an unallocated address in the service CIDR", "TIMEOUT"),
])
def test_trace_verdicts_without_dnat(cluster, kproxy, to, verdict, reason, failure):
    kproxy.sync(objects(cluster))
    pod1 = cluster.pods["pod1"].ip
    t = trace(kproxy, pod1, to)
    assert (t["verdict"], t["reason"]) == (verdict, reason)
    text = kproxy.cli("trace", "--from", pod1, "--to", to).stdout
    assert f"verdict: {verdict.upper()}" in text
    host, _, number = to.partition(":")
    real = traffic.tcp(cluster.ns("pod1"), host, int(number), count=1, timeout=1.5)
    assert real.failures == {failure: 1}, real


def test_not_a_service_and_nothing_programmed(cluster, kproxy):
    t = trace(kproxy, cluster.pods["pod1"].ip, "10.96.0.50:80")
    assert (t["verdict"], t["reason"]) == ("none", "kproxy has programmed nothing on this node")
    kproxy.sync(objects(cluster))
    t = trace(kproxy, cluster.pods["pod1"].ip, "192.0.2.1:80")
    assert (t["verdict"], t["reason"]) == ("none", "not a Service address: kproxy's rules let it pass")


def test_ipv6(cluster, kproxy):
    p = cluster.pods
    svc = service("web6", "fd00:96::50", [port(80, 8080, node_port=30506)], type="NodePort")
    svc["spec"]["ipFamilies"] = ["IPv6"]
    eps = endpoint_slice("web6", [{"addresses": [p[n].ip6], "nodeName": p[n].node, "conditions": {"ready": True}}
                                  for n in ("pod2", "pod4")], [slice_port(8080)])
    eps["addressType"] = "IPv6"
    kproxy.sync([svc, eps], "--node-ip", NODE1_IP6, "--cluster-cidr", f"{CLUSTER_CIDR},{CLUSTER_CIDR6}",
                "--service-cluster-ip-range", f"{SERVICE_CIDR},{SERVICE_CIDR6}")
    pod1 = p["pod1"].ip6
    t = trace(kproxy, pod1, "[fd00:96::50]:80")
    assert (t["verdict"], t["frontend"], t["masquerade"]) == ("dnat", "ClusterIP", False)
    assert set(t["endpoints"]) == {f"[{p[n].ip6}]:8080" for n in ("pod2", "pod4")}
    real = traffic.tcp(cluster.ns("pod1"), "fd00:96::50", 80, count=30)
    assert real.pairs() == {("pod2", pod1), ("pod4", pod1)}, real

    t = trace(kproxy, CLIENT_IP6, f"[{NODE1_IP6}]:30506")
    assert (t["verdict"], t["frontend"], t["masquerade_reasons"]) == ("dnat", "NodePort", [EXTERNAL_MASQ])
    real = traffic.tcp(cluster.ns("client"), NODE1_IP6, 30506, count=10)
    assert real.pods and CLIENT_IP6 not in real.sources, real
    assert trace(kproxy, pod1, "[fd00:96::50]:81")["reason"] == "a ClusterIP, but not on this port"
