"""Taking a node over from upstream kube-proxy: node1 starts with upstream's rules (its
iptables or nftables mode, shaped as upstream's own tests expect them; upstream_rules.py),
connections are held open and new TCP and UDP flows keep arriving through a ClusterIP and a
NodePort while `kproxy run` starts, programs its rules and removes upstream's. No held
connection may break and no new one may fail; upstream's rules must be gone, kubelet's kept."""

from __future__ import annotations

import subprocess
import time

import pytest
import traffic
from kproxy_lab import Kproxy
from topology import CLUSTER_CIDR, NODE1_IP, TIME_SCALE, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port
from tests.upstream_rules import UpstreamPort, iptables_restore, nft_script

pytestmark = pytest.mark.netns

CLUSTER_IP = "10.96.0.90"
TCP_NODEPORT, UDP_NODEPORT = 30090, 30091
PODS = ("pod2", "pod4")  # one on node1, one on node2
CONNECTS = 30  # random 50/50 choice: P(one pod never seen) = 2 * 2**-30


def objects(cluster: Cluster) -> list[dict]:
    return [
        service("web", CLUSTER_IP, [port(80, 8080, name="http", node_port=TCP_NODEPORT),
                                    port(53, 8080, name="dns", protocol="UDP", node_port=UDP_NODEPORT)],
                type="NodePort"),
        endpoint_slice("web", [endpoint(cluster.pods[p]) for p in PODS],
                       [slice_port(8080, name="http"), slice_port(8080, name="dns", protocol="UDP")]),
    ]


def upstream_ports(cluster: Cluster) -> list[UpstreamPort]:
    endpoints = tuple(f"{cluster.pods[p].ip}:8080" for p in PODS)
    return [UpstreamPort("default/web:http", "tcp", CLUSTER_IP, 80, TCP_NODEPORT, endpoints),
            UpstreamPort("default/web:dns", "udp", CLUSTER_IP, 53, UDP_NODEPORT, endpoints)]


def load_upstream(cluster: Cluster, mode: str) -> None:
    if mode.startswith("iptables"):  # iptables-nft or iptables-legacy
        text, argv = iptables_restore(upstream_ports(cluster), CLUSTER_CIDR), [f"{mode}-restore"]
    else:  # a dual-stack node has table ip6 kube-proxy too
        text, argv = nft_script(upstream_ports(cluster), CLUSTER_CIDR), ["nft", "-f", "-"]
        text += ("add table ip6 kube-proxy\n"
                 "add chain ip6 kube-proxy nat-prerouting { type nat hook prerouting priority -100 ; }\n")
    done = subprocess.run(["ip", "netns", "exec", cluster.node1, *argv], input=text,
                                        capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, f"{done.stderr}\n{text}"


def upstream_left(kproxy: Kproxy) -> list[str]:
    tables = kproxy.cluster.run("node1", "nft", "list", "tables").stdout
    found = [t for t in ("table ip kube-proxy", "table ip6 kube-proxy") if t in tables]
    saved = kproxy.iptables_save()
    found += [c for c in ("KUBE-PROXY-CANARY", "KUBE-SEP-", "KUBE-FORWARD", "KUBE-PROXY-FIREWALL") if c in saved]
    return found


@pytest.mark.parametrize("upstream_mode", ["iptables-nft", "iptables-legacy", "nftables"])
def test_takeover_from_kube_proxy_drops_no_connection(cluster: Cluster, kproxy: Kproxy, upstream_mode: str) -> None:
    pod1, client = cluster.ns("pod1"), cluster.client
    load_upstream(cluster, upstream_mode)
    # upstream's rules serve: the scenario is real before kproxy starts
    assert set(traffic.tcp(pod1, CLUSTER_IP, 80, count=CONNECTS).pods) == set(PODS)
    assert not traffic.udp(client, NODE1_IP, UDP_NODEPORT, count=3).failures

    held = [traffic.Holder(pod1, CLUSTER_IP, 80), traffic.Holder(client, NODE1_IP, TCP_NODEPORT)]
    loops = {
        f"{what} {proto}": traffic.Loop(ns, ip, p, kproxy.workdir / f"{what}-{proto}.stop", max_seconds=45 * TIME_SCALE,
                                        mode="loop" if proto == "tcp" else "udp-loop")
        for what, ns, ip, tcp_port, udp_port in (("clusterip", pod1, CLUSTER_IP, 80, 53),
                                                   ("nodeport", client, NODE1_IP, TCP_NODEPORT, UDP_NODEPORT))
        for proto, p in (("tcp", tcp_port), ("udp", udp_port))
    }
    try:
        time.sleep(0.5)  # the loops run on upstream's rules first
        agent = kproxy.start(objects(cluster))
        log = kproxy.agents[-1][1]
        traffic.wait_until(lambda: log.read_text(), lambda text: "took over from kube-proxy" in text,
                           seconds=20 * TIME_SCALE, what="the takeover line")
        time.sleep(1.0)  # and on kproxy's alone afterwards
        results = {name: loop.stop() for name, loop in loops.items()}
        for name, result in results.items():
            assert result["ok"] > 5 and result["failures"] == [], (name, result)
        for holder in held:
            pod = holder.greeting.split()[0]
            answer = holder.send("still-there")
            assert answer.split()[0] == pod and answer.endswith("still-there"), (holder.greeting, answer)
        assert upstream_left(kproxy) == []
        saved = kproxy.iptables_save()
        if upstream_mode != "nftables":  # kubelet's stay
            assert ":KUBE-FIREWALL" in saved and ":KUBE-KUBELET-CANARY" in saved, saved
        (line,) = [x for x in log.read_text().splitlines() if "took over from kube-proxy" in x]
        assert ("table ip kube-proxy; nftables table ip6 kube-proxy" in line) == (upstream_mode == "nftables"), line
        assert ("iptables" in line) == (upstream_mode != "nftables") and (upstream_mode in line), line
        # and kproxy serves on its own
        assert set(traffic.tcp(client, NODE1_IP, TCP_NODEPORT, count=CONNECTS).pods) == set(PODS)
        assert agent.poll() is None
    finally:
        for loop in loops.values():
            loop.kill()
        for holder in held:
            holder.close()
