"""Agent: which syncs are full, this node's zone from its Node object, the callbacks."""

from __future__ import annotations

import gc
from dataclasses import dataclass, field

from kproxy.agent import FULL_SYNC_PERIOD_S, Agent, SyncHook
from kproxy.backends.base import SyncResult
from kproxy.plan import Plan
from kproxy.tracker import Tracker
from tests.builders import endpoint, endpoint_slice, service
from tests.unit.test_planner import NODE


@dataclass
class RecordingBackend:
    mode = "recording"
    watched_table = None
    calls: list[tuple[Plan, bool]] = field(default_factory=list)
    refuse_full: bool = False  # report partial syncs even when asked for a full one
    collecting: list[bool] = field(default_factory=list)  # was the cyclic collector on, per sync

    def sync(self, plan: Plan, full: bool = False) -> SyncResult:
        self.calls.append((plan, full))
        self.collecting.append(gc.isenabled())
        return SyncResult(full=full and not self.refuse_full, operations=1, render_ms=0.0, apply_ms=0.0)

    def differences(self, touched: object = None) -> list[str]:
        return []


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def agent(backend: RecordingBackend, clock: Clock | None = None,
          on_synced: list[SyncHook] | None = None) -> tuple[Agent, Tracker]:
    tracker = Tracker(on_change=lambda: None)
    tracker.replace("Service", [service("web", cluster_ip="10.96.0.10")])
    tracker.replace("EndpointSlice", [endpoint_slice("web", ["10.244.1.2"])])
    return Agent(NODE, {4: backend}, tracker, on_synced=on_synced or [], clock=clock or Clock()), tracker


def test_first_sync_is_full_then_partial_until_the_full_sync_period_passes():
    backend, clock = RecordingBackend(), Clock()
    agent_, _ = agent(backend, clock)
    assert agent_.sync().full
    clock.now += FULL_SYNC_PERIOD_S - 1
    assert not agent_.sync().full
    assert agent_.sync(full=True).full  # asked for
    clock.now += FULL_SYNC_PERIOD_S - 1
    assert not agent_.sync().full  # the period counts from the last full sync
    clock.now += 1
    assert agent_.sync().full
    assert [full for _plan, full in backend.calls] == [True, False, True, False, True]


def test_the_collector_is_paused_during_a_full_sync_only():
    backend = RecordingBackend()
    agent_, _ = agent(backend)
    assert gc.isenabled()
    agent_.sync()
    agent_.sync()
    assert backend.collecting == [False, True] and gc.isenabled()


def test_a_full_sync_the_backend_did_not_do_is_asked_for_again():
    backend = RecordingBackend(refuse_full=True)
    agent_, _ = agent(backend)
    assert not agent_.sync().full
    agent_.sync()
    assert [full for _plan, full in backend.calls] == [True, True]


def test_zone_comes_from_this_nodes_node_object():
    backend = RecordingBackend()
    agent_, tracker = agent(backend)
    hinted = [endpoint("10.244.1.2", node="n2"), endpoint("10.244.2.2", node="n3")]
    hinted[0]["hints"] = {"forZones": [{"name": "z1"}]}
    hinted[1]["hints"] = {"forZones": [{"name": "z2"}]}
    tracker.replace("EndpointSlice", [endpoint_slice("web", hinted)])

    def node(name: str, zone: str) -> dict:
        return {"kind": "Node", "metadata": {"name": name, "labels": {"topology.kubernetes.io/zone": zone}}}

    for nodes in ([], [node(NODE.hostname, "z1")], [node("other", "z1")]):
        tracker.replace("Node", nodes)
        agent_.sync()
    assert [[str(t.ip) for t in plan.service_ports[0].internal_targets] for plan, _full in backend.calls] == [
        ["10.244.1.2", "10.244.2.2"], ["10.244.1.2"], ["10.244.1.2", "10.244.2.2"]]
    assert agent_.node.zone is None  # the configured node is left as it was


def test_each_plan_and_the_report_go_to_every_callback_after_the_sync():
    backend = RecordingBackend()
    seen: list[tuple[Plan, object]] = []
    agent_, _ = agent(backend, on_synced=[lambda plan, report: seen.append((plan, report))])
    report = agent_.sync()
    assert seen == [(backend.calls[0][0], report)]
    assert agent_.last_sync is report
    assert (report.service_ports, report.endpoints, report.operations) == (1, 1, 1)
