"""`kproxy trace --probe`: one real packet through node1's kernel, traced by the kernel.

Checked: the DNAT target it reports is a real endpoint, masquerade as the rules say, the
reject of an endpoint-less Service; and that the probe leaves nothing behind: no probe
table, no conntrack entry, and no packet at any endpoint (counted in the pods).
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import traffic
from topology import CLIENT_IP, NODE1_BRIDGE_IP, NODE1_IP, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = [pytest.mark.netns, pytest.mark.parametrize("kproxy", ["nftables"], indirect=True)]

ENDPOINT_PODS = ("pod2", "pod4")
COUNTER_TABLE = "inet probe-test-counter"


def objects(cluster: Cluster) -> list[dict]:
    p = cluster.pods
    return [
        service("web", "10.96.0.60", [port(80, 8080, name="http", node_port=30600),
                                         port(53, 8080, name="dns", protocol="UDP")],
                type="NodePort"),
        endpoint_slice("web", [endpoint(p[name]) for name in ENDPOINT_PODS],
                       [slice_port(8080, name="http"), slice_port(8080, name="dns", protocol="UDP")]),
        service("empty", "10.96.0.62", [port(80, 8080)]),
    ]


@pytest.fixture
def arrivals(cluster: Cluster) -> Iterator[dict[str, int]]:
    """Packets to port 8080 seen in each endpoint pod (a counter table in the pod's own
    namespace, read when the test asks)."""
    rule = "meta l4proto { tcp, udp } th dport 8080 counter"
    for pod in ENDPOINT_PODS:
        cluster.run(pod, "nft", f"add table {COUNTER_TABLE}; add chain {COUNTER_TABLE} in "
                                "{ type filter hook prerouting priority -400; }; "
                                f"add rule {COUNTER_TABLE} in {rule}")

    class Counts(dict):
        def __getitem__(self, pod: str) -> int:
            out = cluster.run(pod, "nft", "list", "table", *COUNTER_TABLE.split()).stdout
            return int(out.split("counter packets ")[1].split()[0])

    try:
        yield Counts()
    finally:
        for pod in ENDPOINT_PODS:
            cluster.run(pod, "nft", "delete", "table", *COUNTER_TABLE.split(), check=False)


def probe(kproxy, src: str, to: str) -> dict:
    return json.loads(kproxy.cli("trace", "--probe", "--from", src, "--to", to, "--json").stdout)


def left_behind(cluster: Cluster, result: dict) -> list[str]:
    """What the probe left in node1: its table, a conntrack entry of its tuple."""
    sport = result["steps"][0]["packet"]["sport"]
    found = [line for line in cluster.run("node1", "nft", "list", "tables").stdout.splitlines()
             if "kproxy-probe" in line]
    flows = cluster.run("node1", "conntrack", "-L", check=False).stdout.splitlines()
    return found + [flow for flow in flows if f"sport={sport} " in flow]


def endpoints(cluster: Cluster) -> set[str]:
    return {f"{cluster.pods[name].ip}:8080" for name in ENDPOINT_PODS}


def test_probe_clusterip_and_nodeport(cluster: Cluster, kproxy, arrivals) -> None:
    kproxy.sync(objects(cluster))
    pod1 = cluster.pods["pod1"].ip

    r = probe(kproxy, pod1, "10.96.0.60:80")
    assert (r["verdict"], r["path"], r["masquerade"]) == ("dnat", "receive", False), r["reason"]
    assert r["dnat"] in endpoints(cluster) and r["source_after"].startswith(f"{pod1}:")
    assert any(s["rule"].startswith("dnat ip to") for s in r["steps"])  # kproxy's own rule, as the kernel ran it
    assert left_behind(cluster, r) == []

    r = probe(kproxy, CLIENT_IP, f"{NODE1_IP}:30600")
    assert (r["verdict"], r["masquerade"]) == ("dnat", True), r["reason"]
    assert r["dnat"] in endpoints(cluster)
    assert r["source_after"].split(":")[0] in (NODE1_IP, NODE1_BRIDGE_IP)  # the way out's address
    assert left_behind(cluster, r) == []

    r = probe(kproxy, NODE1_IP, "10.96.0.60:53/udp")  # the node itself: the output path
    assert (r["verdict"], r["path"], r["masquerade"]) == ("dnat", "output", True), r["reason"]
    assert r["dnat"] in endpoints(cluster)
    assert left_behind(cluster, r) == []

    assert [arrivals[pod] for pod in ENDPOINT_PODS] == [0, 0]  # no probe reached an endpoint
    real = traffic.tcp(cluster.ns("pod1"), "10.96.0.60", 80, count=30)  # the counters do count
    assert sum(arrivals[pod] for pod in ENDPOINT_PODS) > 0 and set(real.pods) == set(ENDPOINT_PODS)


def test_probe_reject_and_text_form(cluster: Cluster, kproxy) -> None:
    kproxy.sync(objects(cluster))
    pod1 = cluster.pods["pod1"].ip
    r = probe(kproxy, pod1, "10.96.0.62:80")
    assert (r["verdict"], r["dnat"]) == ("reject", None)
    assert r["reason"] == "ip kproxy reject-chain: rule 'reject with tcp reset'"
    assert left_behind(cluster, r) == []
    text = kproxy.cli("trace", "--probe", "--from", pod1, "--to", "10.96.0.62:80").stdout
    assert "service-endpoints-check: ip daddr . meta l4proto . th dport vmap @no-endpoint-frontends" in text
    assert "verdict: REJECT" in text and "kproxy-probe" not in text


def test_probe_needs_the_nftables_backend(cluster: Cluster, kproxy) -> None:
    proc = kproxy.cli("trace", "--probe", "--from", CLIENT_IP, "--to", f"{NODE1_IP}:30600", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert "needs the nftables backend" in proc.stderr and len(proc.stderr.splitlines()) == 1


def test_probe_without_a_trace_says_so(cluster: Cluster, kproxy) -> None:
    """A packet dropped before the probe's trace chain leaves no trace: a one-line error,
    exit 1, and the probe's table is gone all the same."""
    kproxy.sync(objects(cluster))
    pod1 = cluster.pods["pod1"].ip
    cluster.run("node1", "nft", "add table inet early; add chain inet early pre "
                                "{ type filter hook prerouting priority -400; }; "
                                f"add rule inet early pre ip saddr {pod1} drop")
    proc = kproxy.cli("trace", "--probe", "--from", pod1, "--to", "10.96.0.60:80", "--timeout", "1s", check=False)
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.startswith("kproxy: error: trace --probe: no kernel trace of the probe within 1s")
    assert len(proc.stderr.splitlines()) == 1
    assert "kproxy-probe" not in cluster.run("node1", "nft", "list", "tables").stdout


def test_probe_says_when_strict_rp_filter_stops_it_at_routing(cluster: Cluster, kproxy) -> None:
    kproxy.sync(objects(cluster))
    cluster.sysctl("node1", "net.ipv4.conf.all.rp_filter", "1")
    try:
        r = probe(kproxy, cluster.pods["pod1"].ip, "10.96.0.60:80")
    finally:
        cluster.sysctl("node1", "net.ipv4.conf.all.rp_filter", "0")
    assert r["verdict"] == "lost" and "strict rp_filter" in r["reason"]
    assert r["steps"][-1]["rule"].startswith("dnat ip to")  # kproxy's rules ran up to routing
