"""`kproxy run` in node1: rules follow manifest changes; connections survive a restart."""

from __future__ import annotations

import json

import pytest
import traffic
from kproxy_lab import Kproxy
from topology import Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port

pytestmark = pytest.mark.netns


def svc(cluster: Cluster, name: str, ip: str, pods: list[str]) -> list[dict]:
    return [
        service(name, ip, [port(80, 8080)]),
        endpoint_slice(name, [endpoint(cluster.pods[p]) for p in pods], [slice_port(8080)]),
    ]


def test_rules_follow_manifest_changes(cluster: Cluster, kproxy: Kproxy) -> None:
    pod1 = cluster.ns("pod1")
    stable = svc(cluster, "stable", "10.96.0.70", ["pod2", "pod4"])
    agent = kproxy.start(stable + svc(cluster, "dyn", "10.96.0.71", ["pod3"]))
    kproxy.wait_synced(agent)
    traffic.wait_until(
        lambda: traffic.tcp(cluster.client, "10.96.0.70", 80, count=10),
        lambda r: set(r.pods) == {"pod2", "pod4"}, what="stable serves",
    )

    loop = traffic.Loop(cluster.client, "10.96.0.70", 80, kproxy.workdir / "loop.stop", max_seconds=90)
    try:
        # Add an endpoint.
        kproxy.write(stable + svc(cluster, "dyn", "10.96.0.71", ["pod3", "pod5"]))
        traffic.wait_until(
            lambda: traffic.tcp(pod1, "10.96.0.71", 80, count=20),
            lambda r: set(r.pods) == {"pod3", "pod5"} and not r.failures, what="dyn gains pod5",
        )
        # Remove an endpoint.
        kproxy.write(stable + svc(cluster, "dyn", "10.96.0.71", ["pod5"]))
        traffic.wait_until(
            lambda: traffic.tcp(pod1, "10.96.0.71", 80, count=10),
            lambda r: set(r.pods) == {"pod5"} and not r.failures, what="dyn loses pod3",
        )
        # Add a Service.
        new = svc(cluster, "new", "10.96.0.72", ["pod1"])
        kproxy.write(stable + svc(cluster, "dyn", "10.96.0.71", ["pod5"]) + new)
        traffic.wait_until(
            lambda: traffic.tcp(cluster.client, "10.96.0.72", 80, count=3),
            lambda r: set(r.pods) == {"pod1"} and not r.failures, what="new serves",
        )
        # Delete a Service: its ClusterIP becomes unallocated, so dropped.
        kproxy.write(stable + new)
        traffic.wait_until(
            lambda: traffic.tcp(pod1, "10.96.0.71", 80, count=1, timeout=0.5),
            lambda r: r.failures == {"TIMEOUT": 1}, what="dyn gone",
        )
        summary = loop.stop()
    finally:
        loop.kill()
    assert summary["ok"] > 0, summary
    assert summary["failures"] == [], summary
    assert agent.poll() is None, "agent died"
    # The last state, all at once.
    r = traffic.tcp(pod1, "10.96.0.70", 80, count=20)
    assert set(r.pods) == {"pod2", "pod4"} and not r.failures, r


def test_established_connection_survives_agent_restart_and_cleanup_removes_table(
    cluster: Cluster, kproxy: Kproxy
) -> None:
    pod1 = cluster.pods["pod1"]
    agent = kproxy.start(svc(cluster, "echo", "10.96.0.80", ["pod4"]))
    kproxy.wait_synced(agent)
    traffic.wait_until(
        lambda: traffic.tcp(pod1.ns, "10.96.0.80", 80, count=1),
        lambda r: set(r.pods) == {"pod4"}, what="echo serves",
    )
    held = traffic.Holder(pod1.ns, "10.96.0.80", 80)
    # New connections, too, keep working while the agent is down and while it adopts.
    loop = traffic.Loop(cluster.client, "10.96.0.80", 80, kproxy.workdir / "loop.stop", max_seconds=60)
    try:
        assert held.greeting == f"pod4 {pod1.ip}"
        assert held.send("before") == f"pod4 {pod1.ip} before"

        kproxy.stop(agent)
        assert "kproxy" in kproxy.tables(), "stopping the agent must leave its rules in place"
        assert held.send("down") == f"pod4 {pod1.ip} down"
        agent = kproxy.start()
        kproxy.wait_synced(agent)
        assert held.send("after") == f"pod4 {pod1.ip} after"
        summary = loop.stop()
        assert summary["ok"] > 0 and summary["failures"] == [], summary
        # And new connections still work after the adoption.
        r = traffic.tcp(pod1.ns, "10.96.0.80", 80, count=3)
        assert r.pairs() == {("pod4", pod1.ip)}, r
        assert held.send("again") == f"pod4 {pod1.ip} again"
    finally:
        loop.kill()
        held.close()

    kproxy.stop(agent)
    kproxy.cli("cleanup")
    assert "kproxy" not in kproxy.tables(), kproxy.tables()
    assert json.loads(kproxy.cli("dump", "--json").stdout)["present"] is False
    # With no rules, the ClusterIP is just an address node1 routes to its default gateway.
    r = traffic.tcp(pod1.ns, "10.96.0.80", 80, count=1, timeout=1.0)
    assert not r.pods, r
