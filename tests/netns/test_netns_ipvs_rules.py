"""IPVS mode's auxiliary nftables table, rendered for a Service set with every feature, loads
into the running kernel (a throwaway `unshare -n` namespace): on this host and, in the VM
matrix's ipvs group, on each Debian kernel (it avoids the constructs docs/kernels.md lists
as refused); and `kproxy trace` reads it back."""

from __future__ import annotations

import json
import os
import subprocess
from ipaddress import ip_address
from pathlib import Path

import pytest

from kproxy.backends.ipvs.aux import render_aux
from kproxy.backends.ipvs.render import nodeport_ips
from kproxy.planner import compute_plan
from kproxy.sources.manifests import load_manifests
from tests.unit.test_planner import NODE, state

pytestmark = pytest.mark.netns

EVERY_FEATURE = Path(__file__).resolve().parent.parent / "vm" / "data" / "every-feature.yaml"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")
def test_auxiliary_table_for_every_feature_loads() -> None:
    plan = compute_plan(NODE, state(*load_manifests(EVERY_FEATURE)))
    assert plan.service_ports, "every-feature.yaml gave no Service ports"
    script = render_aux(plan, nodeport_ips(plan, ()))
    done = subprocess.run(["unshare", "--net", "--", "sh", "-c", "nft -f - && nft list table ip kproxy-ipvs"],
                          input=script, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, f"{done.stderr}\n{script}"
    listed = done.stdout
    for name in ("frontends", "reject-frontends", "firewall-allow", "hairpin", "cluster-ips"):
        assert f"set {name} " in listed, listed
    assert 'comment "' in listed  # Service names ride on the frontends' elements
    marks = listed[listed.index("map short-circuit-marks"):]
    assert "elements = {" in marks.split("}")[0] + "}", listed  # every-feature has a Local-policy LB


def kernel_listing(script: str) -> dict:
    """The auxiliary table as the kernel lists it (JSON), loaded in a throwaway namespace."""
    done = subprocess.run(["unshare", "--net", "--", "sh", "-c", "nft -f - && nft -j list table ip kproxy-ipvs"],
                          input=script, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root (network namespaces, nftables)")
def test_trace_reads_virtual_servers_and_the_auxiliary_table() -> None:
    from kproxy.backends.ipvs.backend import IpvsBackend
    from kproxy.backends.ipvs.fake import FakeIpvs
    from kproxy.backends.ipvs.trace import trace_ipvs
    from tests.builders import endpoint_slice, service

    local = service("lb", cluster_ip="10.96.0.30", type="LoadBalancer", node_port=30030,
                    lb_ips=["203.0.113.30"], externalTrafficPolicy="Local",
                    loadBalancerSourceRanges=["198.51.100.0/24"])
    eps = endpoint_slice("lb", [{"addresses": ["10.244.1.2"], "conditions": {"ready": True}, "nodeName": "node1"},
                                {"addresses": ["10.244.2.2"], "conditions": {"ready": True}, "nodeName": "node2"}])
    web = service("web", cluster_ip="10.96.0.10", sessionAffinity="ClientIP")
    plan = compute_plan(NODE, state(local, eps, web, endpoint_slice("web", ["10.244.2.3"])))
    kernel = FakeIpvs()
    IpvsBackend(kernel).sync(plan)
    aux = kernel_listing(kernel.aux_scripts[-1])
    node_ips = [ip_address("192.168.50.10")]

    def go(src: str, dst: str, port: int):
        return trace_ipvs(kernel.list_virtuals(), aux, ip_address(src), ip_address(dst), port, "tcp", node_ips)

    outside = go("198.51.100.7", "203.0.113.30", 80)
    assert (outside.verdict, outside.service_port, outside.frontend) == ("dnat", "default/lb", "LoadBalancer")
    assert outside.endpoints == ("10.244.1.2:80",) and not outside.masquerade  # Local: the client's address
    assert go("192.0.2.1", "203.0.113.30", 80).verdict == "drop"  # not in loadBalancerSourceRanges
    pod = go("10.244.1.9", "192.168.50.10", 30030)  # short-circuit: every endpoint, source kept
    assert pod.endpoints == ("10.244.1.2:80", "10.244.2.2:80") and not pod.masquerade, pod
    node = go("192.168.50.10", "192.168.50.10", 30030)
    assert node.masquerade and node.endpoints == ("10.244.1.2:80", "10.244.2.2:80"), node
    cluster = go("192.0.2.1", "10.96.0.10", 80)  # off-cluster to a ClusterIP: masqueraded; affinity
    assert cluster.masquerade and cluster.affinity_seconds == 10800, cluster
    assert go("10.244.1.9", "10.96.0.10", 81).reason == "a ClusterIP, but not on this port"
    assert go("10.244.1.9", "10.96.0.99", 80).verdict == "drop"
    assert go("10.244.1.9", "8.8.8.8", 80).verdict == "none"
