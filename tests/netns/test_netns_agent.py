"""`kproxy run` in node1: rules follow manifest changes; connections survive a restart."""

from __future__ import annotations

import json
import sys

import pytest
import traffic
from kproxy_lab import NODE_FLAGS, Kproxy
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


@pytest.mark.parametrize("kproxy", ["nftables"], indirect=True)
def test_a_busy_metrics_or_healthz_port_is_retried_then_fatal(cluster: Cluster, kproxy: Kproxy) -> None:
    """Upstream retries a server that cannot bind every 5 s (bindAddressHardFail: exit at
    once). kproxy retries too, then exits non-zero, so the cause is not hidden behind a
    failing liveness probe."""
    first = kproxy.start(svc(cluster, "echo", "10.96.0.81", ["pod4"]))  # holds :10249 and :10256
    kproxy.wait_synced(first)
    base = [kproxy.binary, "run", "--manifests", str(kproxy.manifests), *NODE_FLAGS]

    hard = kproxy.cli(*base[1:], "--bind-address-hard-fail", check=False, timeout=30)
    assert hard.returncode == 1, hard.stderr
    assert hard.stderr.splitlines()[-1] == (
        "kproxy: error: cannot serve metrics on 127.0.0.1:10249: Address already in use (bind address hard fail)")
    assert "synced" not in hard.stderr  # nothing was programmed

    # the default: retried (every 5 s, for 60 s; shortened here), then exit 1 naming the address
    quick = ("import sys; from kproxy.cli import main, wiring; wiring.BIND_RETRY_S = 0.2; "
             "wiring.BIND_GIVE_UP_S = 1.0; sys.exit(main(sys.argv[1:]))")
    soft = cluster.run("node1", sys.executable, "-c", quick, *base[1:], "--healthz-bind-address", "0.0.0.0:10256",
                       "--metrics-bind-address", "127.0.0.1:10249", check=False, timeout=30)
    assert soft.returncode == 1, soft.stderr
    assert "cannot serve; retrying every 0.2s, exiting after 1s" in soft.stderr  # 5s and 60s unpatched
    assert "cannot serve yet; retrying" in soft.stderr
    assert soft.stderr.splitlines()[-1].startswith(
        "kproxy: error: cannot serve metrics on 127.0.0.1:10249: Address already in use; "
        "healthz on 0.0.0.0:10256: Address already in use (retried for 1s)"), soft.stderr
    assert first.poll() is None  # the first agent is untouched
