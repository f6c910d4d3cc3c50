"""The lab's IPv6 side, without kproxy: pods, nodes and the client route IPv6 like IPv4."""

from __future__ import annotations

import pytest
import traffic
from topology import (
    CLIENT_IP6,
    CLIENT_OTHER_IP6,
    EXTERNAL_RANGE6,
    NODE1_BRIDGE_IP6,
    NODE1_IP6,
    NODE1_POD_CIDR6,
    NODE2_IP6,
    SERVICE_CIDR6,
    Cluster,
)

pytestmark = pytest.mark.netns


def test_every_pod_has_an_ipv6_address(cluster: Cluster) -> None:
    for pod in cluster.pods.values():
        assert pod.ip6 and pod.addr(6) == pod.ip6 and pod.addr(4) == pod.ip
        out = cluster.run(pod.name, "ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global").stdout
        assert f"{pod.ip6}/64" in out and "tentative" not in out, out


def test_pods_reach_each_other_across_nodes_over_ipv6(cluster: Cluster) -> None:
    p = cluster.pods
    r = traffic.tcp(p["pod1"].ns, p["pod4"].ip6, 8080, count=3)
    assert r.pairs() == {("pod4", p["pod1"].ip6)}, r
    r = traffic.tcp(p["pod5"].ns, p["pod2"].ip6, 8081, count=3)
    assert r.pairs() == {("pod2", p["pod5"].ip6)}, r
    r = traffic.udp(p["pod1"].ns, p["pod5"].ip6, 8080, count=3)
    assert r.pairs() == {("pod5", p["pod1"].ip6)}, r
    r = traffic.udp(p["pod4"].ns, p["pod3"].ip6, 8081, count=3)
    assert r.pairs() == {("pod3", p["pod4"].ip6)}, r


def test_same_node_pods_and_ipv4_still_answer(cluster: Cluster) -> None:
    p = cluster.pods
    r = traffic.tcp(p["pod1"].ns, p["pod2"].ip6, 8080, count=2)
    assert r.pairs() == {("pod2", p["pod1"].ip6)}, r
    # The IPv4 sockets answer with plain IPv4 text (no ::ffff: prefix).
    r = traffic.udp(p["pod1"].ns, p["pod4"].ip, 8080, count=2)
    assert r.pairs() == {("pod4", p["pod1"].ip)}, r


def test_nodes_reach_pods_over_ipv6(cluster: Cluster) -> None:
    p = cluster.pods
    r = traffic.tcp(cluster.node1, p["pod2"].ip6, 8080, count=2)
    assert r.pairs() == {("pod2", NODE1_BRIDGE_IP6)}, r
    r = traffic.tcp(cluster.node1, p["pod4"].ip6, 8080, count=2)
    assert r.pairs() == {("pod4", NODE1_IP6)}, r
    r = traffic.udp(cluster.node2, p["pod1"].ip6, 8081, count=2)
    assert r.pairs() == {("pod1", NODE2_IP6)}, r


def test_client_routes_service_and_external_ranges6_via_node1(cluster: Cluster) -> None:
    for cidr in (SERVICE_CIDR6, EXTERNAL_RANGE6):
        first = cidr.split("/")[0] + "1"
        out = cluster.run("client", "ip", "-6", "route", "get", first).stdout
        assert f"via {NODE1_IP6} " in out, out
        assert f"src {CLIENT_IP6} " in out, out  # the secondary address is never the default
    # Nothing listens on the node: refused, fast.
    r = traffic.tcp(cluster.client, NODE1_IP6, 8080, count=2)
    assert r.failures == {"REFUSED": 2}, r
    # The client is off-cluster: no route to pod IPv6 addresses.
    r = traffic.tcp(cluster.client, cluster.pods["pod2"].ip6, 8080, count=1)
    assert not r.pods, r


def test_client_reaches_a_pod_over_ipv6_through_node1(cluster: Cluster) -> None:
    """node1 forwards IPv6 from the lan into its pod bridge and back (what a Service
    DNAT to a local endpoint will need), for both client addresses, TCP and UDP."""
    p = cluster.pods
    cluster.ip("client", "-6", "route", "add", NODE1_POD_CIDR6, "via", NODE1_IP6)
    try:
        r = traffic.tcp(cluster.client, p["pod2"].ip6, 8080, count=3)
        assert r.pairs() == {("pod2", CLIENT_IP6)}, r
        r = traffic.udp(cluster.client, p["pod3"].ip6, 8081, count=3)
        assert r.pairs() == {("pod3", CLIENT_IP6)}, r
        r = traffic.tcp(cluster.client, p["pod1"].ip6, 8081, count=2, source=CLIENT_OTHER_IP6)
        assert r.pairs() == {("pod1", CLIENT_OTHER_IP6)}, r
        r = traffic.udp(cluster.client, p["pod1"].ip6, 8080, count=2, source=CLIENT_OTHER_IP6)
        assert r.pairs() == {("pod1", CLIENT_OTHER_IP6)}, r
    finally:
        cluster.ip("client", "-6", "route", "del", NODE1_POD_CIDR6, "via", NODE1_IP6)


def test_held_connections_over_ipv6(cluster: Cluster) -> None:
    p = cluster.pods
    held = traffic.Holder(p["pod1"].ns, p["pod5"].ip6, 8080)
    try:
        assert held.greeting == f"pod5 {p['pod1'].ip6}"
        assert held.send("hi") == f"pod5 {p['pod1'].ip6} hi"
    finally:
        held.close()
    sender = traffic.UdpSender(p["pod4"].ns, p["pod2"].ip6, 8080)
    try:
        assert sender.send() == f"pod2 {p['pod4'].ip6}"
    finally:
        sender.close()


def test_without_kproxy_service6_addresses_are_not_silently_dropped(cluster: Cluster) -> None:
    """So that a timeout in dual-stack data-plane tests is kproxy's drop, not the lab's."""
    service_ip = SERVICE_CIDR6.split("/")[0] + "99"
    for ns in (cluster.client, cluster.ns("pod1")):
        for _ in range(3):  # repeatedly: no rate limit swallows the "unreachable"
            r = traffic.tcp(ns, service_ip, 80, count=1, timeout=3)
            assert r.failures.keys() <= {"UNREACHABLE", "REFUSED"} and not r.pods, r
