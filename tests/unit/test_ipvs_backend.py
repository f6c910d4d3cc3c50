"""IPVS mode's render/diff/apply logic against FakeIpvs (no root): the netlink operations it
sends, what the fake then holds, graceful termination, and read-back."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address, ip_network

import pytest

from kproxy.backends.ipvs.backend import IpvsBackend
from kproxy.backends.ipvs.diff import AddReal, DelReal, DelVirtual, SetWeight, diff
from kproxy.backends.ipvs.fake import FakeIpvs
from kproxy.backends.ipvs.kernel import IpvsError
from kproxy.backends.ipvs.objects import RealKey, VirtualKey
from kproxy.backends.ipvs.readback import ipvs_json, ipvsadm_text
from kproxy.backends.ipvs.render import render_state
from kproxy.model import Protocol
from kproxy.planner import compute_plan
from tests.builders import endpoint_slice, port, service
from tests.unit.test_planner import NODE, state

WEB = service("web", cluster_ip="10.96.0.10", type="NodePort", node_port=30080)
CLUSTER = VirtualKey(ip=ip_address("10.96.0.10"), protocol=Protocol.TCP, port=80)
NODEPORT = VirtualKey(ip=ip_address("192.168.50.10"), protocol=Protocol.TCP, port=30080)


def make(*objects: dict):
    return compute_plan(NODE, state(*objects))


def real(ip: str, port: int = 80) -> RealKey:
    return RealKey(ip=ip_address(ip), port=port)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_first_sync_programs_a_virtual_server_per_frontend_with_nat_real_servers():
    kernel = FakeIpvs()
    result = IpvsBackend(kernel).sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    assert result.full
    assert set(kernel.virtuals) == {CLUSTER, NODEPORT}
    for key in (CLUSTER, NODEPORT):
        vs = kernel.virtuals[key]
        assert (vs.scheduler, vs.persistence) == ("rr", 0)
        assert {r: (s.weight, s.forward) for r, s in vs.reals.items()} == {
            real("10.244.1.2"): (1, 0), real("10.244.1.3"): (1, 0)}
    # the ClusterIP is on kube-ipvs0; the NodePort's address is the node's own
    assert kernel.addrs == {ip_address("10.96.0.10")}
    assert "10.96.0.10 . tcp . 80" in kernel.aux_scripts[0]


def test_unchanged_plan_sends_nothing_and_one_endpoint_change_is_one_request_per_frontend():
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    before = kernel.requests
    assert backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"]))).operations == 0
    assert kernel.requests == before and len(kernel.aux_scripts) == 1
    result = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    assert result.operations == 2  # one AddReal for the ClusterIP, one for the NodePort
    assert kernel.requests == before + 2
    assert len(kernel.aux_scripts) == 1  # no masquerade/reject fact changed


def test_session_affinity_is_persistence_and_a_change_edits_the_virtual_server():
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel, scheduler="sh")
    sticky = service("web", cluster_ip="10.96.0.10", sessionAffinity="ClientIP",
                     sessionAffinityConfig={"clientIP": {"timeoutSeconds": 600}})
    backend.sync(make(sticky, endpoint_slice("web", ["10.244.1.2"])))
    assert (kernel.virtuals[CLUSTER].scheduler, kernel.virtuals[CLUSTER].persistence) == ("sh", 600)
    backend.sync(make(service("web", cluster_ip="10.96.0.10"), endpoint_slice("web", ["10.244.1.2"])))
    assert kernel.virtuals[CLUSTER].persistence == 0
    assert set(kernel.virtuals[CLUSTER].reals) == {real("10.244.1.2")}  # edited, not rebuilt


def test_removed_tcp_real_server_drains_at_weight_zero_then_goes():
    kernel, clock = FakeIpvs(), Clock()
    backend = IpvsBackend(kernel, clock=clock, drain_limit=60)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    kernel.set_connections(CLUSTER, real("10.244.1.3"), active=1)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    # with a connection: weight 0, kept; without (the NodePort's): weight 0, deleted next sync
    assert kernel.virtuals[CLUSTER].reals[real("10.244.1.3")].weight == 0
    assert kernel.virtuals[NODEPORT].reals[real("10.244.1.3")].weight == 0
    assert (CLUSTER, real("10.244.1.3")) in backend.draining()
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    assert real("10.244.1.3") in kernel.virtuals[CLUSTER].reals
    assert real("10.244.1.3") not in kernel.virtuals[NODEPORT].reals
    kernel.set_connections(CLUSTER, real("10.244.1.3"), active=0)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    assert set(kernel.virtuals[CLUSTER].reals) == {real("10.244.1.2")}
    assert backend.draining() == []


def test_draining_real_server_is_deleted_at_the_drain_limit_and_revived_when_wanted_again():
    kernel, clock = FakeIpvs(), Clock()
    backend = IpvsBackend(kernel, clock=clock, drain_limit=60)
    two = endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])
    backend.sync(make(WEB, two))
    kernel.set_connections(CLUSTER, real("10.244.1.3"), active=3)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    backend.sync(make(WEB, two))  # back: weight 1 again, its connections kept
    assert kernel.virtuals[CLUSTER].reals[real("10.244.1.3")].weight == 1
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    clock.now += 59
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    assert real("10.244.1.3") in kernel.virtuals[CLUSTER].reals
    clock.now += 1
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    assert real("10.244.1.3") not in kernel.virtuals[CLUSTER].reals


def test_udp_real_servers_are_deleted_at_once():
    dns = service("dns", cluster_ip="10.96.0.53", ports=[port(53, protocol="UDP")])
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(make(dns, endpoint_slice("dns", ["10.244.1.2", "10.244.1.3"], port=53, protocol="UDP")))
    key = VirtualKey(ip=ip_address("10.96.0.53"), protocol=Protocol.UDP, port=53)
    kernel.set_connections(key, real("10.244.1.3", 53), active=0, inactive=5)
    backend.sync(make(dns, endpoint_slice("dns", ["10.244.1.2"], port=53, protocol="UDP")))
    assert set(kernel.virtuals[key].reals) == {real("10.244.1.2", 53)}


def test_deleted_service_removes_its_virtual_servers_and_address():
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    backend.sync(make())
    assert kernel.virtuals == {} and kernel.addrs == set()


def test_first_sync_adopts_what_the_kernel_has():
    kernel = FakeIpvs()
    IpvsBackend(kernel).sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    requests = kernel.requests
    IpvsBackend(kernel).sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))  # a restarted agent
    assert kernel.requests == requests


def test_a_refused_request_makes_the_next_sync_read_the_kernel_again():
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    kernel.fail_on = AddReal
    with pytest.raises(IpvsError):
        backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    result = backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"])))
    assert result.full
    assert all(real("10.244.1.3") in kernel.virtuals[k].reals for k in (CLUSTER, NODEPORT))
    assert backend.differences() == []


def test_differences_name_what_someone_else_changed():
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    kernel.apply([DelVirtual(key=NODEPORT)])
    assert backend.differences() == [f"virtual server {NODEPORT} missing"]


def test_diff_right_after_apply_is_empty():
    plan = make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.3"]))
    kernel = FakeIpvs()
    IpvsBackend(kernel).sync(plan)
    assert diff(render_state(plan), kernel.list_virtuals(), kernel.addresses()) == []


def test_weight_change_and_removal_operations():
    plan = make(WEB, endpoint_slice("web", ["10.244.1.2"]))
    kernel = FakeIpvs()
    IpvsBackend(kernel).sync(make(WEB, endpoint_slice("web", ["10.244.1.2", "10.244.1.9"])))
    ops = diff(render_state(plan), kernel.list_virtuals(), kernel.addresses())
    assert ops == [SetWeight(virtual=CLUSTER, real=real("10.244.1.9"), weight=0),
                   SetWeight(virtual=NODEPORT, real=real("10.244.1.9"), weight=0)]
    kernel.apply(ops)
    assert diff(render_state(plan), kernel.list_virtuals(), kernel.addresses()) == [
        DelReal(virtual=CLUSTER, real=real("10.244.1.9")), DelReal(virtual=NODEPORT, real=real("10.244.1.9"))]


def test_ipvsadm_view_and_json():
    kernel = FakeIpvs()
    IpvsBackend(kernel).sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    kernel.set_connections(CLUSTER, real("10.244.1.2"), active=2, inactive=1)
    text = ipvsadm_text(kernel.list_virtuals())
    assert "TCP  10.96.0.10:80 rr" in text
    assert ["->", "10.244.1.2:80", "Masq", "1", "2", "1"] in [line.split() for line in text.splitlines()]
    assert ipvs_json(kernel.list_virtuals())[0]["real_servers"] == [
        {"address": "10.244.1.2", "port": 80, "weight": 1, "forward": "Masq", "active": 2, "inactive": 1}]


def aux_sets(kernel: FakeIpvs) -> dict[str, set[str]]:
    """set name -> its elements as nft lists them (key, comment, map data)."""
    listing = kernel.aux.listing()
    assert listing is not None
    return {name: {key + (f' comment "{comment}"' if comment else "") + (f" : {data}" if data else "")
                   for key, (data, comment) in elements.items()}
            for name, (_spec, elements) in listing["sets"].items()}


def test_auxiliary_table_holds_masquerade_reject_drop_and_source_range_facts():
    lb = service("lb", cluster_ip="10.96.0.20", type="LoadBalancer", node_port=30020, lb_ips=["203.0.113.20"],
                 loadBalancerSourceRanges=["198.51.100.0/24"])
    local = service("local", cluster_ip="10.96.0.30", type="NodePort", node_port=30030,
                    externalTrafficPolicy="Local")
    empty = service("empty", cluster_ip="10.96.0.40")
    plan = make(lb, endpoint_slice("lb", ["10.244.2.2"]), local, endpoint_slice("local", ["10.244.2.3"]),
                empty, endpoint_slice("empty", []), WEB,
                endpoint_slice("web", [{"addresses": ["10.244.1.2"], "conditions": {"ready": True},
                                        "nodeName": "node1"}]))
    kernel = FakeIpvs()
    IpvsBackend(kernel).sync(plan)
    sets = aux_sets(kernel)
    assert '10.96.0.10 . tcp . 80 comment "default/web ClusterIP"' in sets["frontends"]
    assert '192.168.50.10 . tcp . 30080 comment "default/web NodePort"' in sets["frontends"]
    assert "10.96.0.10 . tcp . 80" in sets["cluster-frontends"]
    # external frontends masqueraded unless externalTrafficPolicy Local
    assert "192.168.50.10 . tcp . 30080" in sets["masq-frontends"]
    assert "203.0.113.20 . tcp . 80" in sets["masq-frontends"]
    assert "192.168.50.10 . tcp . 30030" not in sets["masq-frontends"]
    # no endpoint anywhere: reject; none on this node under a Local policy: drop
    assert "10.96.0.40 . tcp . 80" in sets["reject-frontends"]
    assert "192.168.50.10 . tcp . 30030" in sets["drop-frontends"]
    assert "203.0.113.20 . tcp . 80" in sets["firewall-frontends"]
    assert "203.0.113.20 . 198.51.100.0/24" in sets["firewall-allow"]
    assert "10.244.1.2 . 10.244.1.2" in sets["hairpin"]  # the local endpoint, reaching itself
    assert "10.244.0.0/16" in sets["no-masq-sources"] and "10.96.0.0/16" in sets["service-cidrs"]


def test_nodeports_on_every_local_address_skip_service_ips():
    kernel = FakeIpvs(local=[ip_address("192.168.50.10"), ip_address("172.16.0.5"), ip_address("10.96.0.10")])
    plan = make(WEB, endpoint_slice("web", ["10.244.1.2"]))
    IpvsBackend(kernel).sync(replace(plan, nodeport_all_local=True))
    nodeports = sorted(str(k.ip) for k in kernel.virtuals if k.port == 30080)
    assert nodeports == ["172.16.0.5", "192.168.50.10"]


def test_virtual_servers_in_excluded_cidrs_are_left_alone():
    from kproxy.backends.ipvs.diff import AddVirtual

    theirs = VirtualKey(ip=ip_address("172.30.0.1"), protocol=Protocol.TCP, port=443)
    stray = VirtualKey(ip=ip_address("10.96.9.9"), protocol=Protocol.TCP, port=80)
    kernel = FakeIpvs()
    kernel.apply([AddVirtual(key=theirs, scheduler="wlc", persistence=0),
                  AddVirtual(key=stray, scheduler="rr", persistence=0)])
    exclude = (ip_network("172.30.0.0/16"),)
    IpvsBackend(kernel, exclude=exclude).sync(make(WEB, endpoint_slice("web", ["10.244.1.2"])))
    assert theirs in kernel.virtuals and stray not in kernel.virtuals


def test_local_policy_frontends_short_circuit_pods_and_the_node_through_a_firewall_mark():
    """Pods and the node reach every endpoint of a Local-policy frontend, as in the other
    modes: the auxiliary table marks their packets, a firewall-mark virtual server has all
    endpoints; outside traffic gets the frontend's own virtual server (local endpoints)."""
    local = service("local", cluster_ip="10.96.0.30", type="LoadBalancer", node_port=30030,
                    lb_ips=["203.0.113.30"], externalTrafficPolicy="Local")
    slice_ = endpoint_slice("local", [
        {"addresses": ["10.244.1.2"], "conditions": {"ready": True}, "nodeName": "node1"},
        {"addresses": ["10.244.2.2"], "conditions": {"ready": True}, "nodeName": "node2"}])
    kernel = FakeIpvs()
    IpvsBackend(kernel).sync(make(local, slice_))
    lb = VirtualKey(ip=ip_address("203.0.113.30"), protocol=Protocol.TCP, port=80)
    assert set(kernel.virtuals[lb].reals) == {real("10.244.1.2")}
    marked = {k: v for k, v in kernel.virtuals.items() if k.fwmark}
    assert len(marked) == 2  # the LB IP and the NodePort on the node IP
    assert all(set(v.reals) == {real("10.244.1.2"), real("10.244.2.2")} for v in marked.values())
    marks = kernel.aux.elements("short-circuit-marks")
    assert set(marks.values()) == {f"{k.fwmark:#x}" for k in marked}
    assert set(marks) == {"203.0.113.30 . tcp . 80", "192.168.50.10 . tcp . 30030"}
    assert all(k.fwmark & 0x4000 == 0 and k.fwmark & 0x10000000 for k in marked)
