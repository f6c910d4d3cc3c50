"""Parsing of traffic policies, affinity, source ranges, hints and Nodes."""

from __future__ import annotations

from ipaddress import IPv4Network

import pytest

from kproxy.parse import InvalidObject, parse_endpoint_slice, parse_node, parse_service
from tests.builders import endpoint, endpoint_slice, service


def test_affinity_defaults_to_upstreams_timeout():
    (p,) = parse_service(service("web", sessionAffinity="ClientIP")).ports
    assert p.affinity_timeout == 10800
    (p,) = parse_service(service("web", sessionAffinity="ClientIP",
                                 sessionAffinityConfig={"clientIP": {"timeoutSeconds": 60}})).ports
    assert p.affinity_timeout == 60
    assert parse_service(service("web")).ports[0].affinity_timeout is None


def test_bad_affinity_timeout_names_the_field():
    with pytest.raises(InvalidObject) as err:
        parse_service(service("web", sessionAffinity="ClientIP",
                              sessionAffinityConfig={"clientIP": {"timeoutSeconds": 0}}))
    assert err.value.field == "spec.sessionAffinityConfig.clientIP.timeoutSeconds"


def test_traffic_policies():
    (p,) = parse_service(service("lb", type="LoadBalancer", node_port=30080, externalTrafficPolicy="Local",
                                 healthCheckNodePort=32000, internalTrafficPolicy="Local")).ports
    assert (p.external_policy_local, p.internal_policy_local, p.health_check_node_port) == (True, True, 32000)
    # externalTrafficPolicy only means something for externally reachable ports
    (p,) = parse_service(service("c", externalTrafficPolicy="Local")).ports
    assert not p.external_policy_local


def test_source_ranges_from_spec_or_annotation():
    (p,) = parse_service(service("lb", type="LoadBalancer", lb_ips=["198.51.100.1"],
                                 loadBalancerSourceRanges=["10.0.0.0/8", "192.168.1.5/32"])).ports
    assert p.source_ranges == (IPv4Network("10.0.0.0/8"), IPv4Network("192.168.1.5/32"))
    svc = service("lb", type="LoadBalancer", lb_ips=["198.51.100.1"])
    svc["metadata"]["annotations"] = {
        "service.beta.kubernetes.io/load-balancer-source-ranges": "10.1.0.0/16, 10.2.0.0/16"}
    assert parse_service(svc).ports[0].source_ranges == (IPv4Network("10.1.0.0/16"), IPv4Network("10.2.0.0/16"))
    with pytest.raises(InvalidObject) as err:
        parse_service(service("lb", type="LoadBalancer", loadBalancerSourceRanges=["nope"]))
    assert err.value.field == "spec.loadBalancerSourceRanges[0]"


def test_hints_are_read():
    e = endpoint("10.244.1.2")
    e["hints"] = {"forZones": [{"name": "b"}, {"name": "a"}], "forNodes": [{"name": "node1"}]}
    (parsed,) = parse_endpoint_slice(endpoint_slice("web", [e])).endpoints
    assert (parsed.zone_hints, parsed.node_hints) == (("a", "b"), ("node1",))


def test_node_zone():
    node = {"kind": "Node", "metadata": {"name": "n1", "labels": {"topology.kubernetes.io/zone": "z1"}}}
    info = parse_node(node)
    assert (info.name, info.zone) == ("n1", "z1")
    assert parse_node({"kind": "Node", "metadata": {"name": "n2"}}).zone is None
