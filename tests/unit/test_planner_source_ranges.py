"""loadBalancerSourceRanges reach the plan merged: one interval set cannot hold
overlapping intervals (the kernel refuses the whole transaction)."""

from __future__ import annotations

from ipaddress import ip_address, ip_network

from kproxy.model import NodeConfig
from kproxy.parse import parse_service
from kproxy.planner import source_ranges
from tests.builders import service


def ranges(node_ip: str, lb_ip: str, *cidrs: str) -> list[str]:
    svc = parse_service(service("lb", type="LoadBalancer", node_port=30004, lb_ips=[lb_ip],
                                loadBalancerSourceRanges=list(cidrs)))
    assert svc is not None
    return [str(r) for r in source_ranges(NodeConfig(hostname="n", node_ips=(ip_address(node_ip),)), svc.ports[0])]


def test_overlapping_ranges_are_merged() -> None:
    assert ranges("192.168.50.10", "198.51.100.1", "10.0.0.0/8", "10.1.0.0/16", "10.0.0.0/8") == ["10.0.0.0/8"]
    assert ranges("192.168.50.10", "198.51.100.1", "10.0.0.0/9", "10.128.0.0/9") == ["10.0.0.0/8"]


def test_the_lb_ip_allowed_for_hairpin_is_merged_into_a_range_holding_it() -> None:
    # the node IP is in 192.168.0.0/16, so the LB IP is allowed too; it is inside the range
    assert ranges("192.168.50.10", "192.168.50.200", "192.168.0.0/16") == ["192.168.0.0/16"]
    assert ranges("192.168.50.10", "198.51.100.1", "192.168.0.0/16") == ["192.168.0.0/16", "198.51.100.1/32"]
    assert ranges("10.9.9.9", "198.51.100.1", "192.168.0.0/16") == ["192.168.0.0/16"]  # node not in a range


def test_ranges_keep_their_union() -> None:
    got = [ip_network(r) for r in ranges("192.168.50.10", "198.51.100.1", "10.0.0.0/8", "172.16.0.0/12",
                                         "10.20.0.0/16")]
    for probe in ("10.20.1.1", "10.255.0.1", "172.20.0.1"):
        assert any(ip_address(probe) in r for r in got)
    assert not any(ip_address("11.0.0.1") in r for r in got)
