"""trace() on what render produced, applied to FakeNft and listed back as `nft -j` does:
every verdict kind and masquerade reason."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv6Address, IPv6Network, ip_address

import pytest

from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.backends.nft.names import table_of
from kproxy.backends.nft.trace import Ruleset, trace
from kproxy.backends.trace import format_trace
from kproxy.cli.trace import parse_target
from kproxy.model import NodeConfig
from kproxy.planner import compute_plan
from tests.builders import endpoint, endpoint_slice, port, service
from tests.unit.test_planner import NODE, state

HTTP = [port(80, name="http", target_port=8080)]


def on(node: str, *ips: str) -> list[dict]:
    return [endpoint(ip, node=node) for ip in ips]


CLUSTER = (
    # ClusterIP + NodePort with affinity; one endpoint here, one on node2
    service("web", cluster_ip="10.96.0.10", ports=HTTP, type="NodePort", node_port=30080,
            sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}),
    endpoint_slice("web", on("node1", "10.244.1.2") + on("node2", "10.244.2.2"), port=8080, port_name="http"),
    # no endpoints at all: rejected
    service("dns", "kube-system", cluster_ip="10.96.0.11", ports=[port(53, name="dns", protocol="UDP")]),
    service("gone", cluster_ip="10.96.0.14", type="NodePort", node_port=30084),
    # an externalIP
    service("ext", cluster_ip="10.96.0.12", external_ips=["203.0.113.1"], ports=[port(80, target_port=8080)]),
    endpoint_slice("ext", on("node2", "10.244.2.3"), port=8080),
    # a load balancer with source ranges (externalTrafficPolicy Cluster)
    service("lbc", cluster_ip="10.96.0.13", type="LoadBalancer", lb_ips=["198.51.100.2"],
            ports=[port(80, target_port=8080)], loadBalancerSourceRanges=["192.168.50.0/24"]),
    endpoint_slice("lbc", on("node2", "10.244.2.4"), port=8080),
    # Local policy without an endpoint here, with source ranges
    service("lb", cluster_ip="10.96.0.15", type="LoadBalancer", lb_ips=["198.51.100.1"],
            ports=[port(80, target_port=8080)], externalTrafficPolicy="Local",
            loadBalancerSourceRanges=["192.168.50.0/24", "10.244.0.0/16"]),
    endpoint_slice("lb", on("node2", "10.244.2.5") + on("node3", "10.244.3.5"), port=8080),
    # Local policy with one endpoint here
    service("loc2", cluster_ip="10.96.0.16", type="LoadBalancer", lb_ips=["198.51.100.3"],
            ports=[port(80, target_port=8080)], externalTrafficPolicy="Local"),
    endpoint_slice("loc2", on("node1", "10.244.1.6") + on("node2", "10.244.2.6"), port=8080),
)


def programmed(node: NodeConfig, *objects: dict, family: int = 4) -> Ruleset:
    """What the kernel would list after kproxy programmed `objects` on `node`."""
    kernel = FakeNft(table_of(family))
    NftBackend(kernel, family).sync(compute_plan(node, state(*objects), family=family))
    return Ruleset(kernel.list_table())


RULES = programmed(NODE, *CLUSTER)


EXTERNAL_MASQ = "external traffic (externalTrafficPolicy Cluster): replies must return through this node"


def run(src: str, dst: str, rules: Ruleset = RULES):
    ip, port, proto = parse_target(dst)
    return trace(rules, ip_address(src), ip, port, proto)


def test_cluster_ip_from_a_pod_and_from_outside():
    pod = run("10.244.1.9", "10.96.0.10:80")
    assert (pod.verdict, pod.frontend, pod.masquerade, pod.affinity_seconds) == ("dnat", "ClusterIP", False, 600)
    assert pod.endpoints == ("10.244.1.2:8080", "10.244.2.2:8080")
    outside = run("192.168.50.100", "10.96.0.10:80")
    assert outside.masquerade and "outside the cluster CIDR" in outside.masquerade_reasons[0]


def test_node_port_is_masqueraded():
    t = run("192.168.50.100", "192.168.50.10:30080")
    assert (t.verdict, t.frontend, t.masquerade) == ("dnat", "NodePort", True)


def test_external_ip_and_load_balancer_ip_are_masqueraded():
    ext = run("192.168.50.100", "203.0.113.1:80")
    assert (ext.verdict, ext.frontend, ext.service_port, ext.endpoints) == (
        "dnat", "ExternalIP", "default/ext", ("10.244.2.3:8080",))
    assert ext.masquerade_reasons == (EXTERNAL_MASQ,)
    lb = run("192.168.50.100", "198.51.100.2:80")
    assert (lb.verdict, lb.frontend, lb.service_port, lb.endpoints) == (
        "dnat", "LoadBalancer", "default/lbc", ("10.244.2.4:8080",))
    assert lb.masquerade_reasons == (EXTERNAL_MASQ,)
    assert "source allowed by loadBalancerSourceRanges" in lb.steps


def test_load_balancer_source_ranges_drop_and_allow():
    blocked = run("203.0.113.7", "198.51.100.2:80")
    assert (blocked.verdict, blocked.reason) == ("drop", "source not in loadBalancerSourceRanges")
    allowed = run("192.168.50.100", "198.51.100.2:80")
    assert allowed.verdict == "dnat" and "source allowed by loadBalancerSourceRanges" in allowed.steps


def test_local_policy_short_circuits_the_node_masqueraded_and_keeps_outside_traffic_local():
    node = run("192.168.50.10", "198.51.100.3:80")
    assert (node.verdict, node.source_kind, node.endpoints) == ("dnat", "node", ("10.244.1.6:8080", "10.244.2.6:8080"))
    assert node.masquerade_reasons == ("the node's own traffic to an externalTrafficPolicy Local frontend",)
    assert "short-circuit: pods and the node itself use every endpoint (externalTrafficPolicy Local)" in node.steps
    outside = run("192.168.50.100", "198.51.100.3:80")
    assert (outside.verdict, outside.endpoints, outside.masquerade) == ("dnat", ("10.244.1.6:8080",), False)


def test_masquerade_all():
    rules = programmed(replace(NODE, masquerade_all=True), *CLUSTER)
    t = run("10.244.1.9", "10.96.0.10:80", rules)
    assert (t.verdict, t.masquerade_reasons) == ("dnat", ("--masquerade-all",))


def test_hairpin_is_named_and_local_endpoints_are_told_apart():
    t = run("10.244.1.2", "10.96.0.10:80")
    assert any("hairpin" in r for r in t.masquerade_reasons)
    # the hairpin set lists the endpoints on this node
    assert t.local_endpoints and set(t.local_endpoints) < set(t.endpoints)
    assert "(this node)" in format_trace("10.244.1.2", "10.96.0.10:80", t)


def test_local_policy_short_circuit_drop_and_source_ranges():
    pod = run("10.244.1.9", "198.51.100.1:80")
    assert firewall_free(pod) and pod.verdict == "dnat" and pod.endpoints == ("10.244.2.5:8080", "10.244.3.5:8080")
    outside = run("192.168.50.100", "198.51.100.1:80")
    assert (outside.verdict, outside.reason) == ("drop", "no endpoint on this node (traffic policy Local)")
    # the node's own connection meets filter output's no-endpoint check before nat output
    node = run("192.168.50.10", "198.51.100.1:80")
    assert (node.verdict, node.source_kind) == ("drop", "node") and not node.endpoints
    blocked = run("203.0.113.7", "198.51.100.1:80")
    assert (blocked.verdict, blocked.reason) == ("drop", "source not in loadBalancerSourceRanges")


def firewall_free(t) -> bool:
    return "loadBalancerSourceRanges" not in t.reason


@pytest.mark.parametrize(("dst", "verdict", "reason"), [
    ("10.96.0.11:53/udp", "reject", "no ready endpoints"),
    ("192.168.50.10:30084", "reject", "no ready endpoints"),
    ("10.96.0.10:81", "reject", "a ClusterIP, but not on this port"),
    ("10.96.0.99:80", "drop", "an unallocated address in the service CIDR"),
    ("192.0.2.1:80", "none", "not a Service address: kproxy's rules let it pass"),
])
def test_verdicts_without_dnat(dst, verdict, reason):
    t = run("10.244.1.9", dst)
    assert (t.verdict, t.reason) == (verdict, reason)


NODE6 = NodeConfig(hostname="node1", node_ips=(IPv6Address("fd00:50::10"),),
                   cluster_cidrs=(IPv6Network("fd00:244::/56"),), service_cidrs=(IPv6Network("fd00:96::/112"),))
CLUSTER6 = (
    service("web", cluster_ip="fd00:96::10", ports=[port(80, target_port=8080)], type="NodePort", node_port=30080),
    endpoint_slice("web", on("node1", "fd00:244::2") + on("node2", "fd00:244::3"), port=8080,
                   address_type="IPv6"),
)


def test_ipv6():
    rules = programmed(NODE6, *CLUSTER6, family=6)
    pod = run("fd00:244::9", "[fd00:96::10]:80", rules)
    assert (pod.verdict, pod.frontend, pod.source_kind, pod.masquerade) == ("dnat", "ClusterIP", "pod", False)
    assert pod.endpoints == ("[fd00:244::2]:8080", "[fd00:244::3]:8080")
    outside = run("fd00:50::100", "[fd00:50::10]:30080", rules)
    assert (outside.verdict, outside.frontend, outside.masquerade_reasons) == ("dnat", "NodePort", (EXTERNAL_MASQ,))
    assert run("fd00:244::9", "[fd00:96::10]:81", rules).reason == "a ClusterIP, but not on this port"
    assert run("fd00:244::9", "[fd00:96::99]:80", rules).verdict == "drop"
    assert run("fd00:244::9", "[fd00:99::1]:80", rules).verdict == "none"
    hairpin = run("fd00:244::2", "[fd00:96::10]:80", rules)  # a pod reaching itself
    assert any("hairpin" in r for r in hairpin.masquerade_reasons)


def test_nothing_programmed():
    assert trace(Ruleset(None), ip_address("10.0.0.1"), ip_address("10.96.0.1"), 80, "tcp").verdict == "none"


def test_parse_target():
    assert parse_target("[fd00::1]:443/udp") == (ip_address("fd00::1"), 443, "udp")
    with pytest.raises(ValueError):
        parse_target("10.0.0.1")
