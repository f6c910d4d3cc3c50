"""trace_iptables() on iptables-save text of rulesets the real renderer produced (through
FakeIptables, an in-memory iptables-restore/-save): every verdict kind, masquerade reason,
and the same wording as the nftables trace."""

from __future__ import annotations

import shlex
from dataclasses import replace
from ipaddress import IPv6Address, IPv6Network, ip_address

import pytest

from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.iptables.save import programmed, tokens
from kproxy.backends.iptables.trace import trace_iptables
from kproxy.backends.trace import TraceResult
from kproxy.cli.trace import parse_target
from kproxy.model import NodeConfig
from kproxy.planner import compute_plan
from tests.builders import endpoint, endpoint_slice, service
from tests.unit.test_planner import NODE, state

OUTSIDE, BLOCKED, NODE_IP = "192.168.50.100", "203.0.113.7", "192.168.50.10"
EXTERNAL_MASQ = "external traffic (externalTrafficPolicy Cluster): replies must return through this node"


def local(ip: str) -> dict:
    return endpoint(ip, node="node1")


def remote(ip: str) -> dict:
    return endpoint(ip, node="node2")


def objects() -> list[dict]:
    ranges = {"loadBalancerSourceRanges": ["192.168.50.0/24", "10.244.0.0/16"]}
    return [
        service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080, sessionAffinity="ClientIP",
                sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}}),
        endpoint_slice("web", [local("10.244.1.2"), remote("10.244.2.2")], port=8080),
        service("ext", cluster_ip="10.96.0.12", external_ips=["203.0.113.1"]),
        endpoint_slice("ext", [remote("10.244.2.3")], port=8080),
        service("lbc", cluster_ip="10.96.0.13", type="LoadBalancer", node_port=30082, lb_ips=["198.51.100.2"],
                **ranges),
        endpoint_slice("lbc", [remote("10.244.2.4")], port=8080),
        # externalTrafficPolicy Local, no endpoint on this node
        service("loc", cluster_ip="10.96.0.11", type="LoadBalancer", node_port=30081, lb_ips=["198.51.100.1"],
                externalTrafficPolicy="Local", **ranges),
        endpoint_slice("loc", [remote("10.244.2.5")], port=8080),
        # externalTrafficPolicy Local, one endpoint here and one elsewhere
        service("loc2", cluster_ip="10.96.0.14", type="NodePort", node_port=30083, externalTrafficPolicy="Local"),
        endpoint_slice("loc2", [local("10.244.1.6"), remote("10.244.2.6")], port=8080),
        service("dns", cluster_ip="10.96.0.15", ports=[{"port": 53, "protocol": "UDP", "targetPort": 53}]),
        service("gone", cluster_ip="10.96.0.16", type="NodePort", node_port=30084),
    ]


def saved(node: NodeConfig = NODE, objs: list[dict] | None = None, family: int = 4) -> str:
    """What iptables-save prints after kproxy's backend applied the plan."""
    kernel = FakeIptables()
    plan = compute_plan(node, state(*(objects() if objs is None else objs)), family=family)
    IptablesBackend(kernel, route_localnet=lambda: None, family=family).sync(plan)
    return kernel.save_all()


TEXT = saved()


def run(src: str, dst: str, text: str = TEXT, node: NodeConfig = NODE) -> TraceResult:
    ip, port, proto = parse_target(dst)
    return trace_iptables(text, ip_address(src), ip, port, proto, node.local_ips)


def test_cluster_ip_from_a_pod_and_from_outside():
    pod = run("10.244.1.9", "10.96.0.10:80")
    assert (pod.verdict, pod.frontend, pod.service_port, pod.source_kind) == ("dnat", "ClusterIP", "default/web", "pod")
    assert (pod.masquerade, pod.masquerade_reasons, pod.affinity_seconds) == (False, (), 600)
    assert pod.endpoints == ("10.244.1.2:8080", "10.244.2.2:8080")
    assert pod.local_endpoints == ("10.244.1.2:8080",)  # from KUBE-HAIRPIN: the one on node1
    assert "DNAT to one of 2 endpoint(s) at random" in pod.steps
    outside = run(OUTSIDE, "10.96.0.10:80")
    assert (outside.verdict, outside.source_kind, outside.masquerade) == ("dnat", "external", True)
    assert outside.masquerade_reasons == ("ClusterIP traffic from outside the cluster CIDR",)


def test_node_port_is_masqueraded_also_on_localhost():
    t = run(OUTSIDE, f"{NODE_IP}:30080")
    assert (t.verdict, t.frontend, t.service_port, t.masquerade) == ("dnat", "NodePort", "default/web", True)
    assert t.masquerade_reasons == (EXTERNAL_MASQ,) and t.endpoints == ("10.244.1.2:8080", "10.244.2.2:8080")
    node = run("127.0.0.1", "127.0.0.1:30080")  # localhost NodePorts: the node's own, from OUTPUT
    assert (node.verdict, node.frontend, node.source_kind) == ("dnat", "NodePort", "node")
    assert any(step.startswith("nat OUTPUT → KUBE-SERVICES → KUBE-NODEPORTS") for step in node.steps)


def test_external_ip_and_load_balancer_ip_are_masqueraded():
    ext = run(OUTSIDE, "203.0.113.1:80")
    assert (ext.verdict, ext.frontend, ext.service_port, ext.endpoints) == (
        "dnat", "ExternalIP", "default/ext", ("10.244.2.3:8080",))
    assert ext.masquerade_reasons == (EXTERNAL_MASQ,)
    lb = run(OUTSIDE, "198.51.100.2:80")
    assert (lb.verdict, lb.frontend, lb.service_port, lb.endpoints) == (
        "dnat", "LoadBalancer", "default/lbc", ("10.244.2.4:8080",))
    assert lb.masquerade_reasons == (EXTERNAL_MASQ,)
    assert "source allowed by loadBalancerSourceRanges" in lb.steps


def test_load_balancer_source_ranges():
    blocked = run(BLOCKED, "198.51.100.2:80")
    assert (blocked.verdict, blocked.reason) == ("drop", "source not in loadBalancerSourceRanges")
    assert run(BLOCKED, "10.96.0.13:80").verdict == "dnat"  # the ClusterIP is not filtered
    assert run(BLOCKED, f"{NODE_IP}:30082").verdict == "dnat"  # nor the NodePort, as upstream


def test_local_policy_short_circuits_pods_and_the_node_and_drops_the_rest():
    pod = run("10.244.1.9", "198.51.100.1:80")
    assert (pod.verdict, pod.frontend, pod.endpoints, pod.masquerade) == (
        "dnat", "LoadBalancer", ("10.244.2.5:8080",), False)
    assert "short-circuit: pods and the node itself use every endpoint (externalTrafficPolicy Local)" in pod.steps
    node = run(NODE_IP, "198.51.100.1:80")
    assert (node.verdict, node.source_kind, node.endpoints) == ("dnat", "node", ("10.244.2.5:8080",))
    assert node.masquerade_reasons == ("the node's own traffic to an externalTrafficPolicy Local frontend",)
    outside = run(OUTSIDE, "198.51.100.1:80")  # allowed by the source ranges, but no endpoint here
    assert (outside.verdict, outside.reason, outside.frontend, outside.service_port) == (
        "drop", "no endpoint on this node (traffic policy Local)", "LoadBalancer", "default/loc")
    nodeport = run(OUTSIDE, f"{NODE_IP}:30081")
    assert (nodeport.verdict, nodeport.reason, nodeport.frontend) == (
        "drop", "no endpoint on this node (traffic policy Local)", "NodePort")
    blocked = run(BLOCKED, "198.51.100.1:80")
    assert (blocked.verdict, blocked.reason) == ("drop", "source not in loadBalancerSourceRanges")


def test_local_policy_keeps_external_traffic_on_local_endpoints_unmasqueraded():
    outside = run(OUTSIDE, f"{NODE_IP}:30083")
    assert (outside.verdict, outside.endpoints, outside.masquerade) == ("dnat", ("10.244.1.6:8080",), False)
    pod = run("10.244.1.9", f"{NODE_IP}:30083")
    assert pod.endpoints == ("10.244.1.6:8080", "10.244.2.6:8080")


def test_hairpin_is_named_only_for_the_pod_that_can_land_on_itself():
    t = run("10.244.1.2", "10.96.0.10:80")
    assert t.masquerade_reasons == ("hairpin: if it lands on the source pod itself",)
    assert run("10.244.1.3", "10.96.0.10:80").masquerade_reasons == ()
    both = run("10.244.1.2", f"{NODE_IP}:30080")  # external masquerade first, hairpin last
    assert both.masquerade_reasons == (EXTERNAL_MASQ, "hairpin: if it lands on the source pod itself")


@pytest.mark.parametrize(("src", "dst", "verdict", "reason", "frontend"), [
    ("10.244.1.9", "10.96.0.15:53/udp", "reject", "no ready endpoints", "ClusterIP"),
    (OUTSIDE, f"{NODE_IP}:30084", "reject", "no ready endpoints", "NodePort"),
    (NODE_IP, f"{NODE_IP}:30084", "reject", "no ready endpoints", "NodePort"),
    ("10.244.1.9", "10.96.0.10:81", "reject", "a ClusterIP, but not on this port", None),
    (NODE_IP, "10.96.0.10:81", "reject", "a ClusterIP, but not on this port", None),
    ("10.244.1.9", "10.96.0.15:53/tcp", "reject", "a ClusterIP, but not on this port", None),
    ("10.244.1.9", "10.96.0.99:80", "drop", "an unallocated address in the service CIDR", None),
    ("10.244.1.9", "192.0.2.1:80", "none", "not a Service address: kproxy's rules let it pass", None),
    (OUTSIDE, f"{NODE_IP}:22", "none", "not a Service address: kproxy's rules let it pass", None),
])
def test_verdicts_without_dnat(src, dst, verdict, reason, frontend):
    t = run(src, dst)
    assert (t.verdict, t.reason, t.frontend, t.endpoints) == (verdict, reason, frontend, ())


def test_nothing_programmed():
    assert not programmed("") and programmed(TEXT)
    t = trace_iptables("*nat\n:PREROUTING ACCEPT [0:0]\nCOMMIT\n", ip_address("10.0.0.1"), ip_address("10.96.0.1"),
                       80, "tcp")
    assert (t.verdict, t.reason) == ("none", "kproxy has programmed nothing on this node")


def test_masquerade_all():
    text = saved(replace(NODE, masquerade_all=True))
    t = run("10.244.1.9", "10.96.0.10:80", text)
    assert (t.verdict, t.masquerade_reasons) == ("dnat", ("--masquerade-all",))


def test_probabilities_become_shares():
    three = [service("web", cluster_ip="10.96.0.10"),
             endpoint_slice("web", [remote("10.244.2.2"), remote("10.244.2.3"), remote("10.244.2.4")])]
    text = saved(objs=three)
    t = run("10.244.1.9", "10.96.0.10:80", text)
    assert len(t.endpoints) == 3 and "DNAT to one of 3 endpoint(s) at random" in t.steps
    # the shares come from the probabilities in the rules, not from counting DNAT rules
    skewed = text.replace("--probability 0.3333333333", "--probability 0.9000000000")
    t = run("10.244.1.9", "10.96.0.10:80", skewed)
    assert "DNAT at random, shares: 10.244.2.2:80 90%, 10.244.2.3:80 5%, 10.244.2.4:80 5%" in t.steps


NODE6 = replace(NODE, node_ips=(*NODE.node_ips, IPv6Address("fd00:50::10")),
                local_ips=(*NODE.local_ips, IPv6Address("fd00:50::10")),
                cluster_cidrs=(*NODE.cluster_cidrs, IPv6Network("fd00:244::/56")),
                service_cidrs=(*NODE.service_cidrs, IPv6Network("fd00:96::/112")))


def v6(obj: dict, ip: str) -> dict:
    obj["spec"].update(clusterIP=ip, clusterIPs=[ip], ipFamilies=["IPv6"])
    return obj


def test_ipv6():
    objs = [v6(service("web", type="NodePort", node_port=30080), "fd00:96::10"),
            endpoint_slice("web", [remote("fd00:244::2"), local("fd00:244::3")], address_type="IPv6", port=8080),
            v6(service("empty"), "fd00:96::11")]
    text = saved(NODE6, objs, family=6)
    pod = run("fd00:244::9", "[fd00:96::10]:80", text, NODE6)
    assert (pod.verdict, pod.frontend, pod.source_kind, pod.masquerade) == ("dnat", "ClusterIP", "pod", False)
    assert pod.endpoints == ("[fd00:244::2]:8080", "[fd00:244::3]:8080")
    outside = run("fd00:50::100", "[fd00:50::10]:30080", text, NODE6)
    assert (outside.verdict, outside.frontend, outside.masquerade_reasons) == ("dnat", "NodePort", (EXTERNAL_MASQ,))
    assert run("fd00:244::3", "[fd00:96::10]:80", text, NODE6).masquerade_reasons == (
        "hairpin: if it lands on the source pod itself",)
    assert (run("fd00:244::9", "[fd00:96::11]:80", text, NODE6).reason) == "no ready endpoints"
    assert run("fd00:244::9", "[fd00:96::10]:81", text, NODE6).reason == "a ClusterIP, but not on this port"
    assert run("fd00:244::9", "[fd00:96::99]:80", text, NODE6).verdict == "drop"
    assert run("fd00:244::9", "[fd00:99::1]:80", text, NODE6).verdict == "none"


# What iptables-nft-save v1.8.9 printed for REAL_OBJECTS (render, then iptables-nft-restore in
# a scratch namespace): its own option order, `--set-xmark` for --or-mark/--xor-mark,
# `--probability 0.50000000000`, `-m recent --rcheck` options reordered.
REAL_OBJECTS = [
    service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080, sessionAffinity="ClientIP"),
    endpoint_slice("web", [local("10.244.1.2"), "10.244.2.2"], port=8080),
    service("lb", cluster_ip="10.96.0.11", type="LoadBalancer", lb_ips=["198.51.100.1"],
            externalTrafficPolicy="Local", loadBalancerSourceRanges=["192.168.50.0/24"]),
    endpoint_slice("lb", ["10.244.2.5"]),
]
REAL_SAVE = """\
*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-CLUSTER-IPS - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FIREWALL - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-SERVICES - [0:0]
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A INPUT -j KUBE-FIREWALL
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes cluster IPs" -j KUBE-CLUSTER-IPS
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes cluster IPs" -j KUBE-CLUSTER-IPS
-A OUTPUT -j KUBE-FIREWALL
-A KUBE-CLUSTER-IPS -d 10.96.0.10/32 -m comment --comment "cluster IP, port not served" -j REJECT --reject-with icmp-port-unreachable
-A KUBE-CLUSTER-IPS -d 10.96.0.11/32 -m comment --comment "cluster IP, port not served" -j REJECT --reject-with icmp-port-unreachable
-A KUBE-CLUSTER-IPS -d 10.96.0.0/16 -m comment --comment "unallocated service IP" -j DROP
-A KUBE-EXTERNAL-SERVICES -d 192.168.50.10/32 -j KUBE-NODEPORTS
-A KUBE-EXTERNAL-SERVICES -d 127.0.0.1/32 -j KUBE-NODEPORTS
-A KUBE-FIREWALL ! -s 127.0.0.0/8 -d 127.0.0.0/8 -m comment --comment "block incoming localnet connections" -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP
-A KUBE-SERVICES -d 198.51.100.1/32 -p tcp -m comment --comment "default/lb LoadBalancer source ranges" -m tcp --dport 80 -j DROP
-A KUBE-SERVICES -d 198.51.100.1/32 -p tcp -m comment --comment "default/lb LoadBalancer" -m tcp --dport 80 -j DROP
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-EXT-7TVXROIT6UXCX2AG - [0:0]
:KUBE-EXT-LOLE4ISW44XBNF3G - [0:0]
:KUBE-FW-7TVXROIT6UXCX2AG - [0:0]
:KUBE-HAIRPIN - [0:0]
:KUBE-HAIRPIN-02 - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-MASQ-OFF-CLUSTER - [0:0]
:KUBE-NODEPORTS - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-SVC-7TVXROIT6UXCX2AG - [0:0]
:KUBE-SVC-LOLE4ISW44XBNF3G - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A KUBE-EXT-7TVXROIT6UXCX2AG -s 10.244.0.0/16 -m comment --comment "pod traffic for default/lb external destinations" -j KUBE-SVC-7TVXROIT6UXCX2AG
-A KUBE-EXT-7TVXROIT6UXCX2AG -m addrtype --src-type LOCAL -m comment --comment "masquerade LOCAL traffic for default/lb" -j KUBE-MARK-MASQ
-A KUBE-EXT-7TVXROIT6UXCX2AG -m addrtype --src-type LOCAL -m comment --comment "route LOCAL traffic for default/lb" -j KUBE-SVC-7TVXROIT6UXCX2AG
-A KUBE-EXT-LOLE4ISW44XBNF3G -m comment --comment "masquerade traffic for default/web external destinations" -j KUBE-MARK-MASQ
-A KUBE-EXT-LOLE4ISW44XBNF3G -j KUBE-SVC-LOLE4ISW44XBNF3G
-A KUBE-FW-7TVXROIT6UXCX2AG -s 192.168.50.0/24 -j KUBE-EXT-7TVXROIT6UXCX2AG
-A KUBE-FW-7TVXROIT6UXCX2AG -s 198.51.100.1/32 -j KUBE-EXT-7TVXROIT6UXCX2AG
-A KUBE-HAIRPIN -d 0.0.0.2/0.0.0.63 -j KUBE-HAIRPIN-02
-A KUBE-HAIRPIN-02 -s 10.244.1.2/32 -d 10.244.1.2/32 -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-MASQ-OFF-CLUSTER -s 10.244.0.0/16 -j RETURN
-A KUBE-MASQ-OFF-CLUSTER -j KUBE-MARK-MASQ
-A KUBE-NODEPORTS -p tcp -m comment --comment "default/web NodePort" -m tcp --dport 30080 -j KUBE-EXT-LOLE4ISW44XBNF3G
-A KUBE-POSTROUTING -m conntrack --ctstate DNAT -j KUBE-HAIRPIN
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment "kubernetes service traffic requiring SNAT" -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment "default/web ClusterIP" -m tcp --dport 80 -j KUBE-SVC-LOLE4ISW44XBNF3G
-A KUBE-SERVICES -d 10.96.0.11/32 -p tcp -m comment --comment "default/lb ClusterIP" -m tcp --dport 80 -j KUBE-SVC-7TVXROIT6UXCX2AG
-A KUBE-SERVICES -d 198.51.100.1/32 -p tcp -m comment --comment "default/lb LoadBalancer" -m tcp --dport 80 -j KUBE-FW-7TVXROIT6UXCX2AG
-A KUBE-SERVICES -d 192.168.50.10/32 -m comment --comment "kubernetes service nodeports" -j KUBE-NODEPORTS
-A KUBE-SERVICES -d 127.0.0.1/32 -m comment --comment "kubernetes service nodeports" -j KUBE-NODEPORTS
-A KUBE-SVC-7TVXROIT6UXCX2AG -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j KUBE-MASQ-OFF-CLUSTER
-A KUBE-SVC-7TVXROIT6UXCX2AG -p tcp -j DNAT --to-destination 10.244.2.5:80
-A KUBE-SVC-LOLE4ISW44XBNF3G -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-MASQ-OFF-CLUSTER
-A KUBE-SVC-LOLE4ISW44XBNF3G -p tcp -m recent --rcheck --seconds 10800 --reap --name KUBE-SVC-LOLE4ISW44XBNF3G-10.244.1.2-8080 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SVC-LOLE4ISW44XBNF3G -p tcp -m recent --rcheck --seconds 10800 --reap --name KUBE-SVC-LOLE4ISW44XBNF3G-10.244.2.2-8080 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.2.2:8080
-A KUBE-SVC-LOLE4ISW44XBNF3G -p tcp -m statistic --mode random --probability 0.50000000000 -m recent --set --name KUBE-SVC-LOLE4ISW44XBNF3G-10.244.1.2-8080 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.1.2:8080
-A KUBE-SVC-LOLE4ISW44XBNF3G -p tcp -m recent --set --name KUBE-SVC-LOLE4ISW44XBNF3G-10.244.2.2-8080 --mask 255.255.255.255 --rsource -j DNAT --to-destination 10.244.2.2:8080
COMMIT
"""


@pytest.mark.parametrize(("src", "dst"), [
    ("10.244.1.9", "10.96.0.10:80"), (OUTSIDE, "10.96.0.10:80"), (OUTSIDE, f"{NODE_IP}:30080"),
    ("10.244.1.2", "10.96.0.10:80"), ("10.244.1.9", "198.51.100.1:80"), (OUTSIDE, "198.51.100.1:80"),
    (NODE_IP, "198.51.100.1:80"), ("10.244.1.9", "10.96.0.10:81"), ("10.244.1.9", "10.96.0.99:80"),
    ("127.0.0.1", "127.0.0.1:30080"),
])
def test_real_iptables_save_output_reads_as_the_renderer_wrote_it(src, dst):
    real, rendered = run(src, dst, REAL_SAVE), run(src, dst, saved(objs=REAL_OBJECTS))
    assert real == rendered


def test_real_iptables_save_output_masquerades():
    assert run(OUTSIDE, f"{NODE_IP}:30080", REAL_SAVE).masquerade_reasons == (EXTERNAL_MASQ,)
    assert run("10.244.1.2", "10.96.0.10:80", REAL_SAVE).masquerade
    assert run("10.244.1.9", "10.96.0.10:80", REAL_SAVE).affinity_seconds == 10800


@pytest.mark.parametrize("rule", [
    '-A X -m comment --comment "a b" -j Y', '-A X --comment "" -j Y', '-A X --comment "a\\"b" -j Y',
    '-A X --comment a"b c" -j Y', "-A X --comment 'a b'", '-A X --comment "a  b"', '-A X -j Y --comment "end"',
    "-A X -d 10.96.0.10/32 -p tcp -j KUBE-SVC-A",
])
def test_tokens_split_as_shlex_does(rule):
    # save.tokens() skips shlex for iptables-save's plain quoting (a trace reads every rule)
    assert tokens(rule) == shlex.split(rule)
