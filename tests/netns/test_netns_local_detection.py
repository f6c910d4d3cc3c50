"""--detect-local-mode with real packets, in both backends: traffic from a pod interface
is local (a ClusterIP keeps its source; an externalTrafficPolicy: Local frontend
short-circuits to every endpoint), traffic from elsewhere is external (masqueraded).

Besides the lab's bridged pods (pod1 on node1's br0), this module adds a routed pod as
Calico makes them: `rpod` 10.244.9.200/32 behind node1's veth `calirpod` (proxy ARP, a
/32 route; routed to node1 by node2 and the lan), so "which interface did it come in on"
has two answers on node1. Its address is in the cluster CIDR but outside br0's subnet, so
pods on br0 answer it through node1 (where conntrack undoes the DNAT). The
endpoint is pod4 on node2: it answers with the source address it saw, the pod's own
(local) or node1's (masqueraded).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import traffic
from topology import NODE1_IP, Cluster, sh

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = pytest.mark.netns

ROUTED = "rpod"
ROUTED_IP = "10.244.9.200"
ROUTED_VETH = "calirpod"
CLUSTER_IP = "10.96.0.40"
LB_IP = "203.0.113.40"
COUNT = 6


@pytest.fixture(scope="module")
def routed_pod(cluster: Cluster) -> Iterator[str]:
    """A pod on node1 reached by a /32 route over its own veth, not over br0."""
    cluster._add_ns(ROUTED)
    name = cluster.ns(ROUTED)
    try:
        cluster._veth("node1", ROUTED_VETH, ROUTED, "eth0")
        cluster.ip(ROUTED, "addr", "add", f"{ROUTED_IP}/32", "dev", "eth0")
        cluster.ip(ROUTED, "route", "add", "default", "dev", "eth0")
        cluster.sysctl("node1", f"net.ipv4.conf.{ROUTED_VETH}.proxy_arp", "1")
        cluster.ip("node1", "route", "add", f"{ROUTED_IP}/32", "dev", ROUTED_VETH)
        for other in ("node2", "lan"):
            cluster.ip(other, "route", "add", f"{ROUTED_IP}/32", "via", NODE1_IP)
        yield name
    finally:
        for other in ("node2", "lan"):
            sh("ip", "-n", cluster.ns(other), "route", "del", f"{ROUTED_IP}/32", check=False)
        sh("ip", "netns", "del", name, check=False)  # takes the veth pair and node1's route with it
        cluster.namespaces.remove(name)


def clusterip_to_pod4(cluster: Cluster) -> list[dict]:
    return [service("det", CLUSTER_IP, [port(80, 8080)]),
            endpoint_slice("det", [endpoint(cluster.pods["pod4"])], [slice_port(8080)])]


def lb_local(cluster: Cluster) -> list[dict]:
    svc = service("detlb", "10.96.0.41", [port(80, 8080, node_port=30140)], type="LoadBalancer", lb_ips=[LB_IP])
    svc["spec"]["externalTrafficPolicy"] = "Local"
    eps = [endpoint(cluster.pods["pod2"]), endpoint(cluster.pods["pod4"])]
    return [svc, endpoint_slice("detlb", eps, [slice_port(8080)])]


def node_object(*pod_cidrs: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": "node1"}, "spec": {"podCIDRs": list(pod_cidrs)}}


def seen_by_pod4(ns: str, host: str = CLUSTER_IP, dport: int = 80) -> set[tuple[str, str]]:
    r = traffic.tcp(ns, host, dport, count=COUNT)
    assert not r.failures, r
    return r.pairs()


def test_cluster_cidr_mode_source_in_the_cluster_cidr_is_local(cluster, kproxy, routed_pod):
    kproxy.sync(clusterip_to_pod4(cluster))  # --cluster-cidr 10.244.0.0/16, the default mode
    assert seen_by_pod4(cluster.ns("pod1")) == {("pod4", cluster.pods["pod1"].ip)}
    assert seen_by_pod4(routed_pod) == {("pod4", ROUTED_IP)}
    assert seen_by_pod4(cluster.ns("client")) == {("pod4", NODE1_IP)}


def test_bridge_interface_mode_only_traffic_from_the_bridge_is_local(cluster, kproxy, routed_pod):
    kproxy.sync([*clusterip_to_pod4(cluster), *lb_local(cluster)],
                "--detect-local-mode", "BridgeInterface", "--pod-bridge-interface", "br0")
    assert seen_by_pod4(cluster.ns("pod1")) == {("pod4", cluster.pods["pod1"].ip)}
    assert seen_by_pod4(routed_pod) == {("pod4", NODE1_IP)}  # in the cluster CIDR, but not on br0
    assert seen_by_pod4(cluster.ns("client")) == {("pod4", NODE1_IP)}
    # externalTrafficPolicy Local: the routed pod is outside traffic, so only node1's endpoint
    r = traffic.tcp(routed_pod, LB_IP, 80, count=COUNT)
    assert r.pairs() == {("pod2", ROUTED_IP)} and not r.failures, r
    # kproxy trace knows addresses, not interfaces: a traced source is not local
    traced = json.loads(kproxy.cli("trace", "--from", ROUTED_IP, "--to", f"{CLUSTER_IP}:80", "--json").stdout)
    assert (traced["masquerade"], traced["masquerade_reasons"]) == (
        True, ["ClusterIP traffic from outside the cluster CIDR"]), traced


def test_interface_name_prefix_mode_only_traffic_from_matching_interfaces_is_local(cluster, kproxy, routed_pod):
    kproxy.sync([*clusterip_to_pod4(cluster), *lb_local(cluster)],
                "--detect-local-mode", "InterfaceNamePrefix", "--pod-interface-name-prefix", "cali")
    assert seen_by_pod4(routed_pod) == {("pod4", ROUTED_IP)}
    assert seen_by_pod4(cluster.ns("pod1")) == {("pod4", NODE1_IP)}  # br0 is not cali*
    assert seen_by_pod4(cluster.ns("client")) == {("pod4", NODE1_IP)}
    # a local pod short-circuits an externalTrafficPolicy: Local frontend to every endpoint
    r = traffic.tcp(routed_pod, LB_IP, 80, count=30)
    assert r.pairs() == {("pod2", ROUTED_IP), ("pod4", ROUTED_IP)} and not r.failures, r


def test_node_cidr_mode_follows_the_nodes_pod_cidrs(cluster, kproxy, routed_pod):
    """node1's Node object says 10.244.1.0/24 (pod1 inside, the routed pod outside), then
    10.244.9.0/24: the running agent follows without a restart."""
    agent = kproxy.start([*clusterip_to_pod4(cluster), node_object("10.244.1.0/24", "fd00:244:1::/64")],
                         "--detect-local-mode", "NodeCIDR")
    kproxy.wait_synced(agent)
    pod1 = cluster.pods["pod1"].ip
    assert seen_by_pod4(cluster.ns("pod1")) == {("pod4", pod1)}
    assert seen_by_pod4(routed_pod) == {("pod4", NODE1_IP)}
    kproxy.write([*clusterip_to_pod4(cluster), node_object("10.244.9.0/24")])
    traffic.wait_until(lambda: traffic.tcp(routed_pod, CLUSTER_IP, 80, count=2),
                       lambda r: r.pairs() == {("pod4", ROUTED_IP)} and not r.failures,
                       what="the routed pod is local once the Node's podCIDRs hold it")
    assert seen_by_pod4(cluster.ns("pod1")) == {("pod4", NODE1_IP)}
    assert seen_by_pod4(cluster.ns("client")) == {("pod4", NODE1_IP)}
    assert agent.poll() is None

