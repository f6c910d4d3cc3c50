"""trace() on a crafted kernel listing: every verdict kind and masquerade reason."""

from __future__ import annotations

from ipaddress import ip_address

import pytest

from kproxy.trace import Ruleset, parse_target, trace


def elem(key, comment=None):
    val = {"concat": key} if isinstance(key, list) else key
    return {"elem": {"val": val, "comment": comment}} if comment else val


LISTING = {"nftables": [
    {"set": {"name": "nodeport-ips", "elem": ["192.168.50.10"]}},
    {"set": {"name": "cluster-ips", "elem": ["10.96.0.10", "10.96.0.11"]}},
    {"set": {"name": "masq-nodeports", "elem": [elem(["tcp", 30080])]}},
    {"set": {"name": "masq-frontends", "elem": []}},
    {"set": {"name": "affinity-frontends-600", "elem": [elem(["10.96.0.10", "tcp", 80])]}},
    {"set": {"name": "firewall-frontends", "elem": [elem(["198.51.100.1", "tcp", 80])]}},
    {"set": {"name": "firewall-allow", "elem": [
        elem(["198.51.100.1", "tcp", 80, {"prefix": {"addr": "192.168.50.0", "len": 24}}]),
        elem(["198.51.100.1", "tcp", 80, {"prefix": {"addr": "10.244.0.0", "len": 16}}])]}},
    {"map": {"name": "frontends", "elem": [
        [elem(["10.96.0.10", "tcp", 80], "default/web:http ClusterIP"), {"goto": {"target": "dnat-2"}}]]}},
    {"map": {"name": "nodeport-frontends", "elem": [
        [elem(["tcp", 30080], "default/web:http NodePort"), {"goto": {"target": "dnat-nodeport-2"}}]]}},
    {"map": {"name": "sc-frontends", "elem": [
        [elem(["198.51.100.1", "tcp", 80], "default/lb LoadBalancer"), {"goto": {"target": "sc-dnat-2"}}]]}},
    {"map": {"name": "no-endpoint-frontends", "elem": [
        [elem(["10.96.0.11", "udp", 53], "kube-system/dns:dns ClusterIP"), {"goto": {"target": "reject-chain"}}],
        [elem(["198.51.100.1", "tcp", 80], "default/lb LoadBalancer"), "drop"]]}},
    {"map": {"name": "endpoints-2", "elem": [
        [elem(["10.96.0.10", "tcp", 80, 0]), elem(["10.244.1.2", 8080])],
        [elem(["10.96.0.10", "tcp", 80, 1]), elem(["10.244.2.2", 8080])]]}},
    {"map": {"name": "nodeport-endpoints-2", "elem": [
        [elem(["tcp", 30080, 0]), elem(["10.244.1.2", 8080])],
        [elem(["tcp", 30080, 1]), elem(["10.244.2.2", 8080])]]}},
    {"map": {"name": "sc-endpoints-2", "elem": [
        [elem(["198.51.100.1", "tcp", 80, 0]), elem(["10.244.1.5", 8080])],
        [elem(["198.51.100.1", "tcp", 80, 1]), elem(["10.244.2.5", 8080])]]}},
]}
TEXT = """
    ip daddr . meta l4proto . th dport @cluster-frontends ip saddr != 10.244.0.0/16 jump mark-for-masquerade
    ip daddr 10.96.0.0/16 drop
"""
RULES = Ruleset(LISTING, TEXT)


def run(src: str, dst: str):
    ip, port, proto = parse_target(dst)
    return trace(RULES, ip_address(src), ip, port, proto)


def test_cluster_ip_from_a_pod_and_from_outside():
    pod = run("10.244.1.9", "10.96.0.10:80")
    assert (pod.verdict, pod.frontend, pod.masquerade, pod.affinity_seconds) == ("dnat", "ClusterIP", False, 600)
    assert pod.endpoints == ("10.244.1.2:8080", "10.244.2.2:8080")
    outside = run("192.168.50.100", "10.96.0.10:80")
    assert outside.masquerade and "outside the cluster CIDR" in outside.masquerade_reasons[0]


def test_node_port_is_masqueraded():
    t = run("192.168.50.100", "192.168.50.10:30080")
    assert (t.verdict, t.frontend, t.masquerade) == ("dnat", "NodePort", True)


def test_hairpin_is_named():
    t = run("10.244.1.2", "10.96.0.10:80")
    assert any("hairpin" in r for r in t.masquerade_reasons)


def test_local_policy_short_circuit_drop_and_source_ranges():
    pod = run("10.244.1.9", "198.51.100.1:80")
    assert firewall_free(pod) and pod.verdict == "dnat" and pod.endpoints == ("10.244.1.5:8080", "10.244.2.5:8080")
    outside = run("192.168.50.100", "198.51.100.1:80")
    assert (outside.verdict, outside.reason) == ("drop", "no endpoint on this node (traffic policy Local)")
    blocked = run("203.0.113.7", "198.51.100.1:80")
    assert (blocked.verdict, blocked.reason) == ("drop", "source not in loadBalancerSourceRanges")


def firewall_free(t) -> bool:
    return "loadBalancerSourceRanges" not in t.reason


@pytest.mark.parametrize(("dst", "verdict", "reason"), [
    ("10.96.0.11:53/udp", "reject", "no ready endpoints"),
    ("10.96.0.10:81", "reject", "a ClusterIP, but not on this port"),
    ("10.96.0.99:80", "drop", "an unallocated address in the service CIDR"),
    ("192.0.2.1:80", "none", "not a Service address: kproxy's rules let it pass"),
])
def test_verdicts_without_dnat(dst, verdict, reason):
    t = run("10.244.1.9", dst)
    assert (t.verdict, t.reason) == (verdict, reason)


def test_nothing_programmed():
    assert trace(Ruleset(None), ip_address("10.0.0.1"), ip_address("10.96.0.1"), 80, "tcp").verdict == "none"


def test_parse_target():
    assert parse_target("[fd00::1]:443/udp") == (ip_address("fd00::1"), 443, "udp")
    with pytest.raises(ValueError):
        parse_target("10.0.0.1")
