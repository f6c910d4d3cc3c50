"""trace() on a crafted kernel listing: every verdict kind and masquerade reason."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from kproxy.trace import format_trace, Ruleset, parse_target, trace


def elem(key, comment=None):
    val = {"concat": key} if isinstance(key, list) else key
    return {"elem": {"val": val, "comment": comment}} if comment else val


LISTING = {"nftables": [
    {"set": {"name": "nodeport-ips", "elem": ["192.168.50.10"]}},
    {"set": {"name": "cluster-ips", "elem": ["10.96.0.10", "10.96.0.11"]}},
    {"set": {"name": "hairpin", "elem": [elem([ip, ip]) for ip in ("10.244.1.2", "10.244.1.5", "10.244.1.6")]}},
    {"set": {"name": "masq-nodeports", "elem": [elem(["tcp", 30080])]}},
    {"set": {"name": "masq-frontends", "elem": [elem(["203.0.113.1", "tcp", 80]), elem(["198.51.100.2", "tcp", 80])]}},
    {"set": {"name": "affinity-frontends-600", "elem": [elem(["10.96.0.10", "tcp", 80])]}},
    {"set": {"name": "firewall-frontends", "elem": [elem(["198.51.100.1", "tcp", 80]),
                                                    elem(["198.51.100.2", "tcp", 80])]}},
    {"set": {"name": "firewall-allow", "elem": [
        elem(["198.51.100.2", "tcp", 80, {"prefix": {"addr": "192.168.50.0", "len": 24}}]),
        elem(["198.51.100.1", "tcp", 80, {"prefix": {"addr": "192.168.50.0", "len": 24}}]),
        elem(["198.51.100.1", "tcp", 80, {"prefix": {"addr": "10.244.0.0", "len": 16}}])]}},
    {"map": {"name": "frontends", "elem": [
        [elem(["10.96.0.10", "tcp", 80], "default/web:http ClusterIP"), {"goto": {"target": "dnat-2"}}],
        [elem(["203.0.113.1", "tcp", 80], "default/ext ExternalIP"), {"goto": {"target": "dnat-1"}}],
        [elem(["198.51.100.2", "tcp", 80], "default/lbc LoadBalancer"), {"goto": {"target": "dnat-1"}}],
        [elem(["198.51.100.3", "tcp", 80], "default/loc2 LoadBalancer"), {"goto": {"target": "dnat-1"}}]]}},
    {"map": {"name": "nodeport-frontends", "elem": [
        [elem(["tcp", 30080], "default/web:http NodePort"), {"goto": {"target": "dnat-nodeport-2"}}]]}},
    {"map": {"name": "sc-frontends", "elem": [
        [elem(["198.51.100.1", "tcp", 80], "default/lb LoadBalancer"), {"goto": {"target": "sc-dnat-2"}}],
        [elem(["198.51.100.3", "tcp", 80], "default/loc2 LoadBalancer"), {"goto": {"target": "sc-dnat-2"}}]]}},
    {"map": {"name": "no-endpoint-nodeports", "elem": [
        [elem(["tcp", 30084], "default/gone NodePort"), {"goto": {"target": "reject-chain"}}]]}},
    {"map": {"name": "no-endpoint-frontends", "elem": [
        [elem(["10.96.0.11", "udp", 53], "kube-system/dns:dns ClusterIP"), {"goto": {"target": "reject-chain"}}],
        [elem(["198.51.100.1", "tcp", 80], "default/lb LoadBalancer"), "drop"]]}},
    {"map": {"name": "endpoints-1", "elem": [
        [elem(["203.0.113.1", "tcp", 80, 0]), elem(["10.244.2.3", 8080])],
        [elem(["198.51.100.2", "tcp", 80, 0]), elem(["10.244.2.4", 8080])],
        [elem(["198.51.100.3", "tcp", 80, 0]), elem(["10.244.1.6", 8080])]]}},
    {"map": {"name": "endpoints-2", "elem": [
        [elem(["10.96.0.10", "tcp", 80, 0]), elem(["10.244.1.2", 8080])],
        [elem(["10.96.0.10", "tcp", 80, 1]), elem(["10.244.2.2", 8080])]]}},
    {"map": {"name": "nodeport-endpoints-2", "elem": [
        [elem(["tcp", 30080, 0]), elem(["10.244.1.2", 8080])],
        [elem(["tcp", 30080, 1]), elem(["10.244.2.2", 8080])]]}},
    {"map": {"name": "sc-endpoints-2", "elem": [
        [elem(["198.51.100.1", "tcp", 80, 0]), elem(["10.244.1.5", 8080])],
        [elem(["198.51.100.1", "tcp", 80, 1]), elem(["10.244.2.5", 8080])],
        [elem(["198.51.100.3", "tcp", 80, 0]), elem(["10.244.1.6", 8080])],
        [elem(["198.51.100.3", "tcp", 80, 1]), elem(["10.244.2.6", 8080])]]}},
]}
TEXT = """
    ip daddr . meta l4proto . th dport @cluster-frontends ip saddr != 10.244.0.0/16 jump mark-for-masquerade
    ip daddr 10.96.0.0/16 drop
"""
RULES = Ruleset(LISTING, TEXT)


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
    rules = Ruleset(LISTING, "ip daddr . meta l4proto . th dport @cluster-frontends jump mark-for-masquerade")
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
    assert firewall_free(pod) and pod.verdict == "dnat" and pod.endpoints == ("10.244.1.5:8080", "10.244.2.5:8080")
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


LISTING6 = {"nftables": [
    {"set": {"name": "nodeport-ips", "elem": ["fd00:50::10"]}},
    {"set": {"name": "cluster-ips", "elem": ["fd00:96::10"]}},
    {"set": {"name": "masq-nodeports", "elem": [elem(["tcp", 30080])]}},
    {"map": {"name": "frontends", "elem": [
        [elem(["fd00:96::10", "tcp", 80], "default/web ClusterIP"), {"goto": {"target": "dnat-2"}}]]}},
    {"map": {"name": "nodeport-frontends", "elem": [
        [elem(["tcp", 30080], "default/web NodePort"), {"goto": {"target": "dnat-nodeport-2"}}]]}},
    {"map": {"name": "endpoints-2", "elem": [
        [elem(["fd00:96::10", "tcp", 80, 0]), elem(["fd00:244::2", 8080])],
        [elem(["fd00:96::10", "tcp", 80, 1]), elem(["fd00:244::3", 8080])]]}},
    {"map": {"name": "nodeport-endpoints-2", "elem": [
        [elem(["tcp", 30080, 0]), elem(["fd00:244::2", 8080])],
        [elem(["tcp", 30080, 1]), elem(["fd00:244::3", 8080])]]}},
]}
TEXT6 = """
    ip6 daddr . meta l4proto . th dport @cluster-frontends ip6 saddr != fd00:244::/56 jump mark-for-masquerade
    ip6 daddr fd00:96::/112 drop
"""


def test_ipv6():
    rules = Ruleset(LISTING6, TEXT6)
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
