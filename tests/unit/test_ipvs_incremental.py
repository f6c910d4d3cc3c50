"""IPVS mode after the first sync: only the Service ports the planner says changed are
rendered and diffed, and the result is still what the whole plan renders to."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import ip_address
from typing import Any

import pytest

from kproxy.backends.ipvs import desired as desired_module
from kproxy.backends.ipvs.backend import IpvsBackend
from kproxy.backends.ipvs.desired import DesiredIpvs
from kproxy.backends.ipvs.diff import AddReal
from kproxy.backends.ipvs.fake import FakeIpvs
from kproxy.backends.ipvs.kernel import IpvsError
from kproxy.backends.ipvs.objects import RealKey, VirtualKey
from kproxy.backends.ipvs.render import render_state
from kproxy.model import Protocol, ServicePortName
from kproxy.plan import Plan, ServicePortPlan
from kproxy.planner import compute_plan
from tests.builders import endpoint_slice, service
from tests.unit.test_planner import NODE, state


def cluster(n: int, extra_endpoint: bool = False) -> list[dict]:
    objects = []
    for i in range(n):
        objects.append(service(f"s{i}", cluster_ip=f"10.96.{i // 250}.{i % 250 + 1}", type="NodePort",
                               node_port=30000 + i))
        ips = [f"10.244.{i // 250}.{i % 250 + 1}"] + (["10.244.9.9"] if extra_endpoint and i == 7 else [])
        objects.append(endpoint_slice(f"s{i}", ips))
    return objects


def changed(plan: Plan, *services: str) -> Plan:
    names = frozenset(sp.name for sp in plan.service_ports if sp.name.service.name in services)
    return replace(plan, changed=names)


def test_a_one_endpoint_change_renders_and_sends_only_that_service(monkeypatch: pytest.MonkeyPatch) -> None:
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(compute_plan(NODE, state(*cluster(200))))
    rendered: list[ServicePortName] = []
    real_render = desired_module.render_service_port

    def counting(sp: ServicePortPlan, *args: Any) -> Any:
        rendered.append(sp.name)
        return real_render(sp, *args)

    monkeypatch.setattr(desired_module, "render_service_port", counting)
    before = len(kernel.aux_scripts)
    plan = changed(compute_plan(NODE, state(*cluster(200, extra_endpoint=True))), "s7")
    result = backend.sync(plan)
    assert not result.full
    assert {name.service.name for name in rendered} == {"s7"}  # old and new plan of s7, nothing else
    new_real = RealKey(ip=ip_address("10.244.9.9"), port=80)
    cluster_ip = VirtualKey(ip=ip_address("10.96.0.8"), protocol=Protocol.TCP, port=80)
    nodeport = VirtualKey(ip=ip_address("192.168.50.10"), protocol=Protocol.TCP, port=30007)
    assert result.operations == 2  # one real server on each of s7's two frontends
    assert result.netlink_ms is not None and result.netlink_ms <= result.apply_ms
    assert new_real in kernel.virtuals[cluster_ip].reals and new_real in kernel.virtuals[nodeport].reals
    assert len(kernel.aux_scripts) == before  # no masquerade, reject or hairpin fact changed
    fresh = FakeIpvs()
    IpvsBackend(fresh).sync(replace(plan, changed=None))
    assert kernel.list_virtuals() == fresh.list_virtuals() and kernel.addrs == fresh.addrs
    assert kernel.aux.listing() == fresh.aux.listing()


def test_auxiliary_changes_are_element_commands_not_a_new_table() -> None:
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(compute_plan(NODE, state(*cluster(5))))
    # s3 loses its endpoints: its frontends join reject-frontends, nothing else is rewritten
    objects = cluster(5)
    objects[7] = endpoint_slice("s3", [])
    backend.sync(changed(compute_plan(NODE, state(*objects)), "s3"))
    script = kernel.aux_scripts[-1]
    assert "delete table" not in script and "add chain" not in script
    assert script.strip().splitlines() == [
        "add element ip kproxy-ipvs reject-frontends { 10.96.0.4 . tcp . 80, 192.168.50.10 . tcp . 30003 }"]


def test_the_smallest_service_port_wins_a_shared_frontend_whatever_the_order() -> None:
    """Two Services claiming one externalIP:port: IPVS has one virtual server for it, and
    it is the smaller name's, as a full render makes it."""
    a = service("a", cluster_ip="10.96.0.1", external_ips=["192.0.2.50"])
    b = service("b", cluster_ip="10.96.0.2", external_ips=["192.0.2.50"])
    slices = [endpoint_slice("a", ["10.244.1.1"]), endpoint_slice("b", ["10.244.2.2"])]
    shared = VirtualKey(ip=ip_address("192.0.2.50"), protocol=Protocol.TCP, port=80)
    only_b = compute_plan(NODE, state(b, *slices))
    both = compute_plan(NODE, state(a, b, *slices))
    desired = DesiredIpvs(4, "rr", ())
    for plan in (only_b, both):
        for sp in plan.service_ports:
            desired.update(sp.name, sp, set(), set())
    virtual = desired.virtual(shared)
    assert virtual is not None and set(virtual.reals) == {RealKey(ip=ip_address("10.244.1.1"), port=80)}
    assert desired.state() == render_state(both)
    (a_port,) = [sp for sp in both.service_ports if sp.name.service.name == "a"]
    keys: set[VirtualKey] = set()
    desired.update(a_port.name, None, keys, set())  # a goes: b's real servers take over
    assert shared in keys
    virtual = desired.virtual(shared)
    assert virtual is not None and set(virtual.reals) == {RealKey(ip=ip_address("10.244.2.2"), port=80)}
    assert desired.state() == render_state(only_b)


def test_a_failed_request_makes_the_next_sync_full_and_right() -> None:
    kernel = FakeIpvs()
    backend = IpvsBackend(kernel)
    backend.sync(compute_plan(NODE, state(*cluster(5))))
    kernel.fail_on = AddReal
    plan = changed(compute_plan(NODE, state(*cluster(10))), *(f"s{i}" for i in range(5, 10)))
    with pytest.raises(IpvsError, match="refused"):
        backend.sync(plan)
    result = backend.sync(changed(plan))  # nothing changed since: still a full sync
    assert result.full
    fresh = FakeIpvs()
    IpvsBackend(fresh).sync(plan)
    assert kernel.list_virtuals() == fresh.list_virtuals() and kernel.aux.listing() == fresh.aux.listing()
