"""IPVS mode's own behaviour, with real packets in node1 (the VM kernels: this host's kernel
has no IP_VS). Every data-plane test of test_netns_dataplane.py and test_netns_policies.py
runs in IPVS mode too, where the kernel has it; these are what only IPVS mode has."""

from __future__ import annotations

import json
import time

import pytest
import traffic
from kproxy_lab import Kproxy, kernel_has_ipvs
from topology import TIME_SCALE, Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = [
    pytest.mark.netns,
    pytest.mark.skipif(not kernel_has_ipvs(), reason="this kernel has no IP_VS (the VM matrix runs these)"),
    pytest.mark.parametrize("kproxy", ["ipvs"], indirect=True),
]

IP = "10.96.0.110"


def objects(cluster: Cluster, *pods: str, **spec: object) -> list[dict]:
    p = cluster.pods
    svc = service("gt", IP, [port(80, 8080)])
    svc["spec"].update(spec)  # the manifests builder takes no spec fields of its own
    return [svc,
            endpoint_slice("gt", [endpoint(p[name]) for name in pods], [slice_port(8080)])]


def ipvsadm(cluster: Cluster, *args: str) -> str:
    return cluster.run("node1", "ipvsadm", *args).stdout


def real_servers(cluster: Cluster, vip: str) -> dict[str, int]:
    """real server -> weight, from ipvsadm -Ln of one TCP virtual server."""
    out = ipvsadm(cluster, "-Ln", "-t", f"{vip}:80")
    return {line.split()[1]: int(line.split()[3]) for line in out.splitlines() if line.strip().startswith("->")
            and ":" in line.split()[1] and line.split()[1][0].isdigit()}


def test_graceful_termination_keeps_a_live_connection_on_a_removed_endpoint(cluster: Cluster, kproxy: Kproxy) -> None:
    pod1, p = cluster.pods["pod1"], cluster.pods
    agent = kproxy.start(objects(cluster, "pod4"))
    kproxy.wait_synced(agent)
    held = traffic.Holder(pod1.ns, IP, 80)
    try:
        assert held.greeting == f"pod4 {pod1.ip}"
        kproxy.write(objects(cluster, "pod5"))
        deadline = time.monotonic() + 20 * TIME_SCALE
        while real_servers(cluster, IP).get(f"{p['pod5'].ip}:8080") != 1 and time.monotonic() < deadline:
            time.sleep(0.2)
        # the removed endpoint stays, at weight 0, while the connection lives
        assert real_servers(cluster, IP) == {f"{p['pod4'].ip}:8080": 0, f"{p['pod5'].ip}:8080": 1}
        assert held.send("still") == f"pod4 {pod1.ip} still"
        r = traffic.tcp(pod1.ns, IP, 80, count=5)
        assert set(r.pods) == {"pod5"} and not r.failures, r
        assert held.send("again") == f"pod4 {pod1.ip} again"
    finally:
        held.close()


def test_dump_shows_virtual_servers_like_ipvsadm_and_as_json(cluster: Cluster, kproxy: Kproxy) -> None:
    p = cluster.pods
    kproxy.sync(objects(cluster, "pod2", "pod4", sessionAffinity="ClientIP",
                        sessionAffinityConfig={"clientIP": {"timeoutSeconds": 300}}), "--ipvs-scheduler", "wrr")
    text = kproxy.cli("dump").stdout
    assert f"TCP  {IP}:80 wrr persistent 300" in text, text
    for pod in ("pod2", "pod4"):
        assert ["->", f"{p[pod].ip}:8080", "Masq", "1", "0", "0"] in [line.split() for line in text.splitlines()]
    view = json.loads(kproxy.cli("dump", "--json").stdout)
    assert view["mode"] == "ipvs"
    (sp,) = [sp for sp in view["service_ports"] if sp["name"] == "default/gt"]
    (fe,) = sp["frontends"]
    assert (fe["kind"], fe["address"], fe["verdict"]) == ("ClusterIP", f"{IP}:80", "dnat")
    assert sorted(fe["endpoints"]) == sorted(f"{p[pod].ip}:8080" for pod in ("pod2", "pod4"))
    (vs,) = [vs for vs in view["virtual_servers"] if vs["address"] == IP]
    assert (vs["scheduler"], vs["persistence"]) == ("wrr", 300)
    # and the kernel agrees with ipvsadm itself
    assert f"TCP  {IP}:80 wrr persistent 300" in ipvsadm(cluster, "-Ln")


def test_ipvs_timeouts_and_strict_arp_are_set_in_the_nodes_namespace(cluster: Cluster, kproxy: Kproxy) -> None:
    kproxy.sync(objects(cluster, "pod2"), "--ipvs-tcp-timeout", "15m", "--ipvs-tcpfin-timeout", "30s",
                "--ipvs-udp-timeout", "7s", "--ipvs-strict-arp", "true")
    assert "Timeout (tcp tcpfin udp): 900 30 7" in ipvsadm(cluster, "-L", "--timeout")
    sysctl = {name: cluster.run("node1", "sysctl", "-n", name).stdout.strip() for name in (
        "net.ipv4.vs.conntrack", "net.ipv4.vs.expire_nodest_conn", "net.ipv4.conf.all.arp_ignore",
        "net.ipv4.conf.all.arp_announce")}
    assert sysctl == {"net.ipv4.vs.conntrack": "1", "net.ipv4.vs.expire_nodest_conn": "1",
                      "net.ipv4.conf.all.arp_ignore": "1", "net.ipv4.conf.all.arp_announce": "2"}


def test_bad_scheduler_and_bad_timeout_are_one_line_usage_errors(cluster: Cluster, kproxy: Kproxy) -> None:
    unknown = kproxy.sync(objects(cluster, "pod2"), "--ipvs-scheduler", "fastest", check=False)
    assert unknown.returncode == 2 and "unknown IPVS scheduler" in unknown.stderr, unknown
    bad = kproxy.sync(objects(cluster, "pod2"), "--ipvs-tcp-timeout", "soon", check=False)
    assert bad.returncode == 2 and "--ipvs-tcp-timeout" in bad.stderr, bad
    assert ipvsadm(cluster, "-Ln").count("->") == 1  # the header line only: nothing programmed


def test_switching_modes_removes_the_other_modes_state_and_cleanup_removes_all(
    cluster: Cluster, kproxy: Kproxy
) -> None:
    kproxy.sync(objects(cluster, "pod2"), "--proxy-mode", "iptables")
    assert "KUBE-SERVICES" in kproxy.iptables_save()
    kproxy.sync(objects(cluster, "pod2"))
    assert "KUBE-SERVICES" not in kproxy.iptables_save()
    assert f"{IP}:80" in ipvsadm(cluster, "-Ln")
    r = traffic.tcp(cluster.pods["pod1"].ns, IP, 80, count=3)
    assert set(r.pods) == {"pod2"} and not r.failures, r
    kproxy.sync(objects(cluster, "pod2"), "--proxy-mode", "iptables")
    assert f"{IP}:80" not in ipvsadm(cluster, "-Ln")
    assert "kube-ipvs0" not in cluster.run("node1", "ip", "link").stdout
    assert "kproxy-ipvs" not in kproxy.ruleset()
    kproxy.sync(objects(cluster, "pod2"))
    kproxy.cli("cleanup")
    assert f"{IP}:80" not in ipvsadm(cluster, "-Ln")
    assert "kube-ipvs0" not in cluster.run("node1", "ip", "link").stdout
    assert "kproxy-ipvs" not in kproxy.ruleset()
