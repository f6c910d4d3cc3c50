"""What only the iptables backend has: variant detection (nft vs legacy, per namespace),
NodePorts on 127.0.0.1, and the clean switch between proxy modes (both directions)."""

from __future__ import annotations

import json

import pytest
import traffic
from kproxy_lab import Kproxy
from topology import NODE1_BRIDGE_IP, NODE1_IP, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("kproxy", ["iptables"], indirect=True)]

WEB_IP = "10.96.0.10"


def web(cluster: Cluster) -> list[dict]:
    p = cluster.pods
    return [
        service("web", WEB_IP, [port(80, 8080, node_port=30080)], type="NodePort"),
        endpoint_slice("web", [endpoint(p["pod2"]), endpoint(p["pod4"])], [slice_port(8080)]),
    ]


def serves(cluster: Cluster) -> None:
    r = traffic.tcp(cluster.ns("pod1"), WEB_IP, 80, count=30)
    assert set(r.pods) == {"pod2", "pod4"} and not r.failures, r


def holds_rules(kproxy: Kproxy, variant: str) -> bool:
    return ":KUBE-SERVICES" in kproxy.iptables_save(variant)


def test_variant_follows_the_node_and_the_flag(cluster: Cluster, kproxy: Kproxy) -> None:
    # Nothing on the node: iptables-nft.
    out = kproxy.sync(web(cluster))
    assert "variant=nft" in out.stderr, out.stderr
    assert holds_rules(kproxy, "nft") and not holds_rules(kproxy, "legacy")
    serves(cluster)
    kproxy.cli("cleanup")
    assert not holds_rules(kproxy, "nft")

    # kubelet's hint chain in legacy mangle: iptables-legacy, data plane and dump included.
    kproxy.cluster.run("node1", "iptables-legacy", "-t", "mangle", "-N", "KUBE-IPTABLES-HINT")
    out = kproxy.sync(web(cluster))
    assert "variant=legacy" in out.stderr, out.stderr
    assert holds_rules(kproxy, "legacy") and not holds_rules(kproxy, "nft")
    serves(cluster)
    view = json.loads(kproxy.cli("dump", "--json").stdout)
    (web_port,) = [sp for sp in view["service_ports"] if sp["name"] == "default/web"]
    cluster_ip = next(fe for fe in web_port["frontends"] if fe["kind"] == "ClusterIP")
    assert sorted(cluster_ip["endpoints"]) == sorted(f"{cluster.pods[p].ip}:8080" for p in ("pod2", "pod4"))

    # The flag wins over detection; the legacy rules of the earlier run are removed
    # by cleanup, which covers both variants.
    kproxy.cli("cleanup")
    assert not holds_rules(kproxy, "legacy")
    out = kproxy.sync(web(cluster), "--iptables-variant", "nft")
    assert "variant=nft" in out.stderr, out.stderr
    assert holds_rules(kproxy, "nft") and not holds_rules(kproxy, "legacy")
    serves(cluster)


def switch_line(stderr: str) -> str:
    (line,) = [line for line in stderr.splitlines() if "removed the rules of" in line]
    return line.split("] ", 1)[1]


def test_switching_modes_removes_the_other_modes_rules(cluster: Cluster, kproxy: Kproxy) -> None:
    out = kproxy.sync(web(cluster), "--proxy-mode", "nftables")
    assert "table ip kproxy" in kproxy.tables() and "removed the rules of" not in out.stderr
    serves(cluster)
    out = kproxy.sync(web(cluster), "--proxy-mode", "iptables")
    assert "table ip kproxy" not in kproxy.tables() and holds_rules(kproxy, "nft")
    # the log names the mode whose rules went, then the one now programmed
    assert switch_line(out.stderr) == ("removed the rules of the nftables mode after programming iptables "
                                       "removed_mode=nftables proxy_mode=iptables")
    serves(cluster)
    out = kproxy.sync(web(cluster), "--proxy-mode", "nftables")
    assert "table ip kproxy" in kproxy.tables()
    assert switch_line(out.stderr) == ("removed the rules of the iptables mode after programming nftables "
                                       "removed_mode=iptables proxy_mode=nftables")
    assert not holds_rules(kproxy, "nft") and not holds_rules(kproxy, "legacy")
    serves(cluster)
    kproxy.cli("cleanup")
    assert "table ip kproxy" not in kproxy.tables() and not holds_rules(kproxy, "nft")
    assert json.loads(kproxy.cli("dump", "--json").stdout)["present"] is False


def test_node_ports_on_localhost_and_their_flag(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(web(cluster))
    assert kproxy.cluster.run("node1", "sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip() == "1"
    r = traffic.tcp(cluster.node1, "127.0.0.1", 30080, count=30)
    assert not r.failures, r
    # masqueraded: a pod cannot answer 127.0.0.1
    assert r.pairs() == {("pod2", NODE1_BRIDGE_IP), ("pod4", NODE1_IP)}, r
    # upstream's CVE-2020-8558 rule: route_localnet exposes no other localhost service
    (rule,) = [r for r in kproxy.iptables_save("nft").splitlines() if r.startswith("-A KUBE-FIREWALL")]
    assert "! -s 127.0.0.0/8 -d 127.0.0.0/8" in rule and "! --ctstate RELATED,ESTABLISHED,DNAT -j DROP" in rule

    kproxy.sync(web(cluster), "--iptables-localhost-nodeports=false")
    r = traffic.tcp(cluster.node1, "127.0.0.1", 30080, count=2, timeout=1.0)
    assert not r.pods, r
    r = traffic.tcp(cluster.client, NODE1_IP, 30080, count=30)  # both pods seen: P(miss) = 2 * 2**-30
    assert set(r.pods) == {"pod2", "pod4"} and not r.failures, r


def route_localnet(kproxy: Kproxy) -> str:
    return kproxy.cluster.run("node1", "sysctl", "-n", "net.ipv4.conf.all.route_localnet").stdout.strip()


def test_route_localnet_is_set_back_only_when_kproxy_changed_it(cluster: Cluster, kproxy: Kproxy) -> None:
    assert route_localnet(kproxy) == "0"
    kproxy.sync(web(cluster))
    kproxy.sync(web(cluster))  # a second agent start keeps the first record (the value before kproxy)
    assert route_localnet(kproxy) == "1"
    kproxy.cli("cleanup")
    assert route_localnet(kproxy) == "0"
    # switching to nftables mode removes the rules that needed it: set back too
    kproxy.sync(web(cluster))
    kproxy.sync(web(cluster), "--proxy-mode", "nftables")
    assert route_localnet(kproxy) == "0"
    serves(cluster)
    kproxy.cli("cleanup")
    # someone else's setting: kproxy found 1, so it leaves 1
    kproxy.cluster.sysctl("node1", "net.ipv4.conf.all.route_localnet", "1")
    kproxy.sync(web(cluster))
    kproxy.cli("cleanup")
    assert route_localnet(kproxy) == "1"


def test_dump_text_and_raw(cluster: Cluster, kproxy: Kproxy) -> None:
    # nothing programmed yet: said, in every form, exit 0
    for args in (("dump",), ("dump", "--raw"), ("dump", "--raw", "--proxy-mode", "iptables"),
                 ("dump", "--raw", "--proxy-mode", "nftables")):
        assert kproxy.cli(*args).stdout == "kproxy has programmed nothing on this node (no kproxy table)\n", args
    kproxy.sync(web(cluster))
    text = kproxy.cli("dump").stdout
    assert "default/web (TCP)" in text and f"{WEB_IP}:80" in text, text
    assert f"{NODE1_IP}:30080" in text, text
    raw = kproxy.cli("dump", "--raw").stdout
    assert ":KUBE-SERVICES" in raw and "--to-destination" in raw, raw
