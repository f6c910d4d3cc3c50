"""The lab itself, without kproxy: plain routing between pods, nodes and the client."""

from __future__ import annotations

import pytest
import traffic
from topology import NODE1_IP, Cluster

pytestmark = pytest.mark.netns


def test_pods_reach_each_other_across_nodes(cluster: Cluster) -> None:
    r = traffic.tcp(cluster.ns("pod1"), cluster.pods["pod4"].ip, 8080, count=3)
    assert r.pairs() == {("pod4", cluster.pods["pod1"].ip)}, r
    r = traffic.tcp(cluster.ns("pod5"), cluster.pods["pod2"].ip, 8081, count=3)
    assert r.pairs() == {("pod2", cluster.pods["pod5"].ip)}, r
    r = traffic.udp(cluster.ns("pod1"), cluster.pods["pod5"].ip, 8080, count=3)
    assert r.pairs() == {("pod5", cluster.pods["pod1"].ip)}, r


def test_node_reaches_its_pods(cluster: Cluster) -> None:
    r = traffic.tcp(cluster.node1, cluster.pods["pod2"].ip, 8080, count=2)
    assert r.pairs() == {("pod2", "10.244.1.1")}, r
    r = traffic.tcp(cluster.node1, cluster.pods["pod4"].ip, 8080, count=2)
    assert r.pairs() == {("pod4", NODE1_IP)}, r


def test_client_reaches_node_but_not_pods(cluster: Cluster) -> None:
    # Nothing listens on the node: refused, fast.
    r = traffic.tcp(cluster.client, NODE1_IP, 8080, count=2)
    assert r.failures == {"REFUSED": 2}, r
    # The client is off-cluster: it has no route to pod IPs.
    r = traffic.tcp(cluster.client, cluster.pods["pod2"].ip, 8080, count=1)
    assert not r.pods, r


def test_without_kproxy_service_addresses_are_not_silently_dropped(cluster: Cluster) -> None:
    """So that a timeout in the data-plane tests is kproxy's drop, not the lab's."""
    for ns in (cluster.client, cluster.ns("pod1")):
        r = traffic.tcp(ns, "10.96.0.99", 80, count=1, timeout=3)
        assert r.failures.keys() <= {"UNREACHABLE", "REFUSED"} and not r.pods, r
