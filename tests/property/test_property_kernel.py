"""Valid random clusters render rulesets the kernel accepts: `nft -c -f` of the nftables
render and `iptables-restore --test` of the iptables render, both families, inside a
throwaway network namespace this module creates and deletes (never the host's)."""

from __future__ import annotations

import os
import secrets
import subprocess
from collections.abc import Iterator
from ipaddress import ip_address
from typing import Any

import pytest
from hypothesis import given

from kproxy.backends.iptables.backend import IptablesBackend
from kproxy.backends.iptables.fake import FakeIptables
from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.kernel import RecordingKernel
from kproxy.model import NodeConfig
from kproxy.planner import compute_plan
from kproxy.tracker import ENDPOINT_SLICE, SERVICE, Tracker
from tests.builders import service
from tests.property.strategies import clusters, examples, nodes

pytestmark = pytest.mark.netns


@pytest.fixture(scope="module")
def netns() -> Iterator[str]:
    if os.geteuid() != 0:
        pytest.skip("nft -c and iptables-restore --test need root (in a namespace of their own)")
    name = f"kproxy-prop-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    try:
        yield name
    finally:
        subprocess.run(["ip", "netns", "delete", name], check=False)


def plans(objects: list[dict[str, Any]], node: NodeConfig) -> list[Any]:
    tracker = Tracker()
    tracker.replace_all({kind: [o for o in objects if o["kind"] == kind] for kind in (SERVICE, ENDPOINT_SLICE)})
    state = tracker.snapshot()
    return [compute_plan(node, state, family=family) for family in node.families()]


def in_netns(netns: str, argv: list[str], text: str) -> None:
    done = subprocess.run(["ip", "netns", "exec", netns, *argv], input=text, capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, f"{' '.join(argv)} refused:\n{done.stderr}\n---- input\n{text}"


def no_route_localnet() -> None:
    pass


def nft_check(netns: str, objects: list[dict[str, Any]], node: NodeConfig) -> None:
    scripts = []
    for plan in plans(objects, node):
        kernel = RecordingKernel()
        NftBackend(kernel, plan.family).sync(plan, full=True)
        scripts += kernel.scripts
    in_netns(netns, ["nft", "-c", "-f", "-"], "\n".join(scripts))  # both families' tables, one batch


# IPv6 ClientIP affinity is left out here: see the xfail test below.
@examples(60)
@given(objects=clusters(v6_affinity=False), node=nodes())
def test_nft_accepts_the_rendered_ruleset(netns: str, objects: list[dict[str, Any]], node: NodeConfig) -> None:
    nft_check(netns, objects, node)


@pytest.mark.xfail(strict=True, reason="found by the property test above: nft 1.0.6 aborts (netlink_linearize "
                   "assertion dreg < ctx->reg_low) on `update @affinity-N { ip6 saddr . ... : ip6 daddr . th "
                   "dport }`, a map update with more than 32 bytes of IPv6 key and data, so a Service with "
                   "ClientIP affinity and an IPv6 ClusterIP makes every IPv6 sync fail. Needs another affinity "
                   "layout for IPv6 (e.g. upstream's per-endpoint sets); remove the v6_affinity=False above then.")
def test_nft_accepts_ipv6_client_ip_affinity(netns: str) -> None:
    svc = service("web", cluster_ip="fd00:96::a", sessionAffinity="ClientIP")
    svc["spec"]["clusterIPs"] = ["fd00:96::a"]
    nft_check(netns, [svc], NodeConfig(hostname="node1", node_ips=(ip_address("fd00:50::10"),)))


@examples(60)
@given(objects=clusters(), node=nodes())
def test_iptables_restore_accepts_the_rendered_rules(
        netns: str, objects: list[dict[str, Any]], node: NodeConfig) -> None:
    for plan in plans(objects, node):
        kernel = FakeIptables()
        IptablesBackend(kernel, route_localnet=no_route_localnet, family=plan.family).sync(plan, full=True)
        binary = "iptables-nft-restore" if plan.family == 4 else "ip6tables-nft-restore"
        for text in kernel.inputs:
            in_netns(netns, [binary, "--noflush", "--test"], text)


def test_nft_accepts_overlapping_source_ranges(netns: str) -> None:
    """Found by the property test: ranges that overlap each other, or that hold the LB IP
    allowed for the node's own hairpin, were one interval set's overlapping elements,
    which the kernel refuses ("File exists"), failing every sync."""
    svc = service("lb", cluster_ip="fd00:96::b", type="LoadBalancer", node_port=30004, lb_ips=["fd00:198::1"],
                  loadBalancerSourceRanges=["fd00::/8", "fd00:198::/64", "10.0.0.0/8", "10.1.0.0/16"])
    svc["spec"]["clusterIPs"] = ["fd00:96::b"]
    node = NodeConfig(hostname="node1", node_ips=(ip_address("fd00:50::10"),))
    nft_check(netns, [svc], node)
