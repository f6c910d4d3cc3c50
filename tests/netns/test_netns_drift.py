"""Rules changed behind kproxy's back (another agent, an admin) are repaired within one
--sync-period, with real packets through node1 before and after."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import traffic
from kproxy_lab import NODE_FLAGS, Kproxy
from topology import NODE1_IP, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = pytest.mark.netns

VIP = "10.96.0.80"
SYNC_PERIOD = "2s"

# What another agent does to kproxy's rules, per mode; each breaks ClusterIP traffic.
TAMPERING = {
    "nftables": [
        ("nft", "delete", "table", "ip", "kproxy"),
        ("nft", "flush", "chain", "ip", "kproxy", "services"),
        ("nft", "delete", "element", "ip", "kproxy", "frontends", "{", VIP, ".", "tcp", ".", "80", "}"),
        ("nft", "insert", "rule", "ip", "kproxy", "services", "ip", "daddr", VIP, "accept"),
    ],
    "iptables": [
        ("iptables-nft", "-t", "nat", "-F", "KUBE-SERVICES"),
        ("iptables-nft", "-t", "nat", "-D", "PREROUTING", "-m", "comment", "--comment",
         "kubernetes service portals", "-j", "KUBE-SERVICES"),
    ],
    # no ruleset generation to watch: found by reading the rules back each sync period
    "iptables-legacy": [
        ("iptables-legacy", "-t", "nat", "-F", "KUBE-SERVICES"),
    ],
}
CASES = [(mode, tamper) for mode, cases in TAMPERING.items() for tamper in cases]
FLAGS = {"iptables-legacy": ("--iptables-variant", "legacy")}
FLUSH = {"nftables": TAMPERING["nftables"][1], "iptables": TAMPERING["iptables"][0]}


@pytest.fixture
def node_agent(cluster: Cluster, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Kproxy]:
    """kproxy in node1 in the case's own mode (each case runs once, for its mode)."""
    with Kproxy.in_node1(cluster, tmp_path, request.param.split("-")[0]) as k:
        yield k


def web(cluster: Cluster) -> list[dict]:
    return [service("web", VIP, [port(80, 8080)]),
            endpoint_slice("web", [endpoint(cluster.pods["pod2"])], [slice_port(8080)])]


@pytest.mark.parametrize(("node_agent", "tamper"), CASES, indirect=["node_agent"],
                         ids=[f"{m}:{' '.join(t[1:6])}" for m, t in CASES])
def test_tampered_rules_are_repaired_within_the_sync_period(cluster: Cluster, node_agent: Kproxy,
                                                             tamper: tuple[str, ...]) -> None:
    kproxy = node_agent
    mode = next(m for m, cases in TAMPERING.items() if tamper in cases)
    agent = kproxy.start(web(cluster), "--sync-period", SYNC_PERIOD, *FLAGS.get(mode, ()))
    kproxy.wait_synced(agent)
    serves = lambda r: set(r.pods) == {"pod2"} and not r.failures  # noqa: E731
    traffic.wait_until(lambda: traffic.tcp(cluster.client, VIP, 80, count=3), serves, what="web serves")
    cluster.run("node1", *tamper)
    # broken now: a new connection is not DNATed to pod2 (reset, timeout or refused)
    assert not serves(traffic.tcp(cluster.client, VIP, 80, count=1, timeout=0.5))
    traffic.wait_until(lambda: traffic.tcp(cluster.client, VIP, 80, count=3, timeout=0.5), serves,
                       what="repaired", seconds=6)  # within one sync period (2 s), with slack
    log = kproxy.agents[-1][1].read_text()
    assert "drift repaired" in log, log


def test_flows_survive_a_repair_and_a_kill_during_a_big_sync(cluster: Cluster, kproxy: Kproxy) -> None:
    """A repair rewrites the whole table, a killed agent leaves what it had: established TCP
    (ClusterIP, NodePort) and UDP flows keep their endpoint through both."""
    pod1 = cluster.pods["pod1"]
    objects = [service("web", VIP, [port(80, 8080, node_port=30081)], type="NodePort"),
               endpoint_slice("web", [endpoint(cluster.pods["pod2"])], [slice_port(8080)]),
               service("dns", "10.96.0.81", [port(53, 8080, protocol="UDP")]),
               endpoint_slice("dns", [endpoint(cluster.pods["pod3"])], [slice_port(8080, protocol="UDP")])]
    # plus enough Services that a full sync takes a while
    filler = [service(f"f{i}", f"10.96.{10 + i // 250}.{i % 250 + 1}", [port(80, 8080)]) for i in range(2000)]
    agent = kproxy.start(objects + filler, "--sync-period", SYNC_PERIOD)
    kproxy.wait_synced(agent, seconds=60)
    held_vip = traffic.Holder(pod1.ns, VIP, 80)
    held_nodeport = traffic.Holder(cluster.client, NODE1_IP, 30081)
    udp = traffic.UdpSender(pod1.ns, "10.96.0.81", 53)
    try:
        assert held_vip.send("a") == f"pod2 {pod1.ip} a"
        assert held_nodeport.send("a").startswith("pod2 ")
        assert udp.send("a").startswith("pod3 ")
        # a full rewrite by the drift repair (after a flush: established flows keep their
        # NAT meanwhile; a deleted table would take the NAT hooks, and them, with it)...
        cluster.run("node1", *FLUSH[kproxy.mode])
        traffic.wait_until(lambda: traffic.tcp(cluster.client, VIP, 80, count=1, timeout=0.5),
                           lambda r: set(r.pods) == {"pod2"}, what="repaired", seconds=10)
        assert held_vip.send("b") == f"pod2 {pod1.ip} b"
        assert held_nodeport.send("b").startswith("pod2 ")
        assert udp.send("b").startswith("pod3 ")
        # ...and kill -9 in the middle of the next full sync (a restart starts with one)
        kproxy.stop(agent)
        agent = kproxy.start(None, "--sync-period", SYNC_PERIOD)
        time.sleep(0.3)
        agent.kill()
        agent.wait(timeout=10)
        assert held_vip.send("c") == f"pod2 {pod1.ip} c"
        agent = kproxy.start(None, "--sync-period", SYNC_PERIOD)
        kproxy.wait_synced(agent, seconds=60)
        assert held_vip.send("d") == f"pod2 {pod1.ip} d"
        assert held_nodeport.send("d").startswith("pod2 ")
        assert udp.send("d").startswith("pod3 ")
        r = traffic.tcp(pod1.ns, VIP, 80, count=3)
        assert r.pairs() == {("pod2", pod1.ip)}, r
    finally:
        held_vip.close()
        held_nodeport.close()
        udp.close()


@pytest.fixture
def nft_kproxy(cluster: Cluster, tmp_path: Path) -> Iterator[Kproxy]:
    with Kproxy.in_node1(cluster, tmp_path, "nftables") as k:
        yield k


def test_commits_to_other_tables_are_not_read_back_and_tampering_still_is(cluster: Cluster,
                                                                           nft_kproxy: Kproxy) -> None:
    """kubelet and CNIs commit to nftables all the time (iptables-nft included): kproxy's
    commit watch sees that those commits name other tables, so they cost no read of
    kproxy's table; a commit that does touch it is read back, only what it touched (the
    element, by the key its event carries)."""
    kproxy = nft_kproxy
    agent = kproxy.start(web(cluster), "--sync-period", SYNC_PERIOD)
    kproxy.wait_synced(agent)
    serves = lambda r: set(r.pods) == {"pod2"} and not r.failures  # noqa: E731
    traffic.wait_until(lambda: traffic.tcp(cluster.client, VIP, 80, count=3), serves, what="web serves")
    log = kproxy.agents[-1][1]
    cluster.run("node1", "nft", "add", "table", "ip", "other")
    cluster.run("node1", "nft", "add", "set", "ip", "other", "s", "{ type ipv4_addr ; }")
    cluster.run("node1", "iptables-nft", "-t", "filter", "-A", "INPUT", "-s", "192.0.2.1", "-j", "ACCEPT")
    syncs = log.read_text().count("synced")
    for n in range(5):  # one commit elsewhere, then a sync (at most one per --min-sync-period)
        cluster.run("node1", "nft", "add", "element", "ip", "other", "s", "{", f"192.0.2.{n + 1}", "}")
        kproxy.wait_synced(agent, count=syncs + n + 1, seconds=10)  # the periodic sync (2 s)
    text = log.read_text()
    assert "drift checked" not in text, text
    # a commit that touches kproxy's table is read back: that set only, and repaired
    cluster.run("node1", "nft", "delete", "element", "ip", "kproxy", "frontends", "{", VIP, ".", "tcp", ".", "80", "}")
    traffic.wait_until(lambda: traffic.tcp(cluster.client, VIP, 80, count=3, timeout=0.5), serves,
                       what="repaired", seconds=6)
    text = log.read_text()
    checks = [line for line in text.splitlines() if "drift checked" in line]
    assert len(checks) == 1 and "touched='set frontends (1 element)'" in checks[0], text
    assert "sets_read=1" in checks[0] and "elements_read=1 " in checks[0], text
    assert "drift repaired" in text and "frontends: 1 element(s) missing" in text, text


# Reads kproxy's tables back the way the drift check does (structure and every set's
# elements, decoded from netlink), after programming the same objects: each family's
# differences, as JSON.
WHOLE_CHECK = """
import json, sys, threading
from kproxy.agent import Agent
from kproxy.cli.parser import build_parser
from kproxy.cli.wiring import backends_for, node_config, start_source
from kproxy.sources.threads import SourceFailure
from kproxy.tracker import Tracker

args = build_parser().parse_args(["sync", *sys.argv[1:]])
stop, tracker = threading.Event(), Tracker()
source = start_source(args, tracker, stop, watch=False, on_fatal=SourceFailure(stop))
for _ in range(100):
    if source.wait_synced(0.2):
        break
backends = backends_for(args, node_config(args, source.node_ips))
Agent(node_config(args, source.node_ips), backends, tracker).sync()
print(json.dumps({family: backend.differences() for family, backend in backends.items()}))
stop.set()
"""


def test_a_whole_check_reads_every_kind_of_set_back_as_programmed(cluster: Cluster, nft_kproxy: Kproxy) -> None:
    """Every kind of set and map kproxy makes (intervals, concatenated intervals with source
    ranges, verdict maps, endpoint maps, affinity, both families), decoded from the kernel's
    netlink dump, matches what kproxy applied: a whole check finds nothing."""
    from test_netns_dualstack import DUAL_FLAGS, dual_stack

    pods = [endpoint(cluster.pods[p]) for p in ("pod2", "pod3")]
    lb = service("lb", "10.96.0.81", [port(80, 8080, name="http"), port(53, 8080, protocol="UDP", name="dns")],
                 type="LoadBalancer", lb_ips=["203.0.113.30"], external_ips=["203.0.113.31"])
    lb["spec"].update(loadBalancerSourceRanges=["198.51.100.0/24", "192.0.2.7/32"], externalTrafficPolicy="Local")
    sticky = service("sticky", "10.96.0.82", [port(80, 8080, node_port=30082)], type="NodePort")
    sticky["spec"].update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}})
    dual = dual_stack(cluster, ["pod2", "pod4"])
    dual[0]["spec"].update(sessionAffinity="ClientIP", sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    lb_ports = [slice_port(8080, name="http"), slice_port(8080, protocol="UDP", name="dns")]
    objects = [*web(cluster), lb, endpoint_slice("lb", pods, lb_ports),
               sticky, endpoint_slice("sticky", pods, [slice_port(8080)]),
               service("empty", "10.96.0.83", [port(80, 8080, protocol="SCTP")]), *dual]
    manifests = kproxy.write(objects) if (kproxy := nft_kproxy) else None
    root = Path(__file__).resolve().parent.parent.parent
    done = cluster.run("node1", "env", f"PYTHONPATH={root}", sys.executable, "-P", "-c", WHOLE_CHECK,
                       "--manifests", str(manifests), *NODE_FLAGS, *DUAL_FLAGS, timeout=60)
    assert json.loads(done.stdout.splitlines()[-1]) == {"4": [], "6": []}, done.stdout + done.stderr
    sets = kproxy.ruleset()
    for name in ("firewall-allow-udp", "cluster-cidrs", "affinity-frontends-300", "endpoints-2", "sc-frontends",
                 "no-endpoint-frontends", "frontends", "hairpin"):
        assert f" {name} {{" in sets and "elements = {" in sets.split(f" {name} {{")[1].split("}")[0], name
