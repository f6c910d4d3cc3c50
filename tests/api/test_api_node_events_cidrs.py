"""The API side of the node's settings, through the real kubernetes client against the
in-project API server: ServiceCIDR objects (networking.k8s.io/v1) as the service CIDRs,
watched only when --service-cluster-ip-range is not given and only where the API serves
them; the Node's podCIDRs; events on the Node."""

from __future__ import annotations

from dataclasses import replace
from ipaddress import IPv4Network, IPv6Network
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from kproxy.agent import Agent
from kproxy.model import LocalMode
from kproxy.plan import LocalDetector
from kproxy.sources.api import load_api_client
from kproxy.sources.events import NodeEvents, node_event
from tests.api.fake_apiserver import FakeApiServer, Store, write_kubeconfig
from tests.api.test_api_source import Harness, wait_until
from tests.unit.test_agent import RecordingBackend
from tests.unit.test_planner import NODE

pytestmark = pytest.mark.timeout(20)


def service_cidr(name: str, *cidrs: str) -> dict:
    return {"apiVersion": "networking.k8s.io/v1", "kind": "ServiceCIDR", "metadata": {"name": name},
            "spec": {"cidrs": list(cidrs)}}


def node(name: str, *pod_cidrs: str) -> dict:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}, "spec": {"podCIDRs": list(pod_cidrs)}}


@pytest.fixture
def harness(tmp_path: Path, request: pytest.FixtureRequest):
    options = getattr(request, "param", {})
    store = Store(serve_service_cidrs=options.pop("serve", True))
    h = Harness(tmp_path, store, node_name="node1", **options)
    yield h
    h.stop.set()
    h.server.stop()


def agent_for(h: Harness, **node_settings) -> tuple[Agent, RecordingBackend]:
    backend = RecordingBackend()
    return Agent(replace(NODE, service_cidrs=(), **node_settings), {4: backend}, h.tracker), backend


@pytest.mark.parametrize("harness", [{"service_cidrs": True}], indirect=True)
def test_service_cidr_objects_are_the_service_cidrs_and_are_followed(harness):
    harness.store.apply(service_cidr("kubernetes", "10.96.0.0/16", "fd00:96::/112"))
    harness.start()
    agent, backend = agent_for(harness)
    assert wait_until(lambda: harness.tracker.snapshot().service_cidrs)
    agent.sync()
    assert backend.calls[-1][0].service_cidrs == (IPv4Network("10.96.0.0/16"),)
    harness.store.apply(service_cidr("extra", "10.100.0.0/16"))
    assert wait_until(lambda: len(harness.tracker.snapshot().service_cidrs) == 2)
    agent.sync()
    assert backend.calls[-1][0].service_cidrs == (IPv4Network("10.96.0.0/16"), IPv4Network("10.100.0.0/16"))
    harness.store.delete("ServiceCIDR", "kubernetes")
    assert wait_until(lambda: len(harness.tracker.snapshot().service_cidrs) == 1)
    agent.sync()
    assert backend.calls[-1][0].service_cidrs == (IPv4Network("10.100.0.0/16"),)
    assert harness.tracker.snapshot().all_service_cidrs()[-1:] == (IPv4Network("10.100.0.0/16"),)


@pytest.mark.parametrize("harness", [{"service_cidrs": True}], indirect=True)
def test_the_flag_wins_over_service_cidr_objects(harness):
    harness.store.apply(service_cidr("kubernetes", "10.96.0.0/16"))
    harness.start()
    assert wait_until(lambda: harness.tracker.snapshot().service_cidrs)
    backend = RecordingBackend()
    Agent(NODE, {4: backend}, harness.tracker).sync()  # NODE has --service-cluster-ip-range 10.96.0.0/16
    assert backend.calls[-1][0].service_cidrs == NODE.service_cidrs


def test_without_the_option_service_cidrs_are_not_watched(harness):
    harness.store.apply(service_cidr("kubernetes", "10.96.0.0/16"))
    harness.start()
    assert wait_until(lambda: harness.store.calls[("nodes", "list")] >= 1)
    assert harness.store.calls[("servicecidrs", "list")] == 0
    assert harness.tracker.snapshot().service_cidrs == {}


@pytest.mark.parametrize("harness", [{"service_cidrs": True, "serve": False}], indirect=True)
def test_an_api_without_service_cidrs_is_asked_once(harness):
    with capture_logs() as logs:
        harness.start()
        assert wait_until(lambda: any(e.get("kind") == "ServiceCIDR" for e in logs))
        harness.store.apply(node("node1", "10.244.1.0/24"))
        assert wait_until(lambda: harness.tracker.snapshot().nodes)  # the other kinds go on
    assert harness.store.calls[("servicecidrs", "list")] == 1
    assert [e["event"] for e in logs if e.get("kind") == "ServiceCIDR"] == [
        "the API server does not serve this kind; not watching it"]


def test_the_nodes_pod_cidrs_drive_node_cidr_detection(harness):
    harness.store.apply(node("node1", "10.244.1.0/24", "fd00:244:1::/64"))
    harness.store.apply(node("node2", "10.244.2.0/24"))
    harness.start()
    assert wait_until(lambda: "node1" in harness.tracker.snapshot().nodes)
    agent, backend = agent_for(harness, local_mode=LocalMode.NODE_CIDR)
    agent.sync()
    assert backend.calls[-1][0].local == LocalDetector(cidrs=(IPv4Network("10.244.1.0/24"),))
    assert harness.tracker.snapshot().nodes["node1"].pod_cidrs[1] == IPv6Network("fd00:244:1::/64")
    harness.store.apply(node("node1", "10.244.5.0/24"))
    assert wait_until(lambda: harness.tracker.snapshot().nodes["node1"].pod_cidrs == (IPv4Network("10.244.5.0/24"),))
    agent.sync()
    assert backend.calls[-1][0].local == LocalDetector(cidrs=(IPv4Network("10.244.5.0/24"),))


def test_events_are_written_on_the_node_as_upstreams(tmp_path):
    store = Store()
    server = FakeApiServer(store)
    try:
        kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(kubeconfig, server.url)
        events = NodeEvents(load_api_client(str(kubeconfig)), "node1", clock_ns=lambda: 1_700_000_000_123_456_789)
        events.record("Normal", "Starting", wait=True)
        events.record("Warning", "FailedToStartProxierHealthcheck", "cannot serve healthz", wait=True)
    finally:
        server.stop()
    (namespace, first), (_, second) = store.events
    assert namespace == "default"
    assert first["metadata"]["name"] == f"node1.{1_700_000_000_123_456_789:x}"
    assert {k: first[k] for k in ("reason", "action", "type", "regarding", "reportingController")} == {
        "reason": "Starting", "action": "StartKubeProxy", "type": "Normal",
        "regarding": {"kind": "Node", "name": "node1", "uid": "node1"}, "reportingController": "kproxy"}
    assert first["eventTime"].startswith("2023-11-14T22:13:20.123456")
    assert (second["type"], second["reason"], second["note"]) == (
        "Warning", "FailedToStartProxierHealthcheck", "cannot serve healthz")


def test_an_event_that_cannot_be_written_is_a_warning_only(tmp_path):
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, "http://127.0.0.1:9")  # nothing listens there
    with capture_logs() as logs:
        NodeEvents(load_api_client(str(kubeconfig)), "node1").record("Normal", "Starting", wait=True)
    assert [e["event"] for e in logs] == ["cannot record an event on this node"]


def test_node_event_is_pure_and_bounded():
    event = node_event("n", "Warning", "X", "y" * 5000, 16)
    assert event["metadata"]["name"] == "n.10" and len(event["note"]) == 1024


@pytest.mark.parametrize("harness", [{"wait_for_node": True, "list_read_timeout": 1.0}], indirect=True)
def test_node_cidr_mode_waits_for_the_first_node_list(harness):
    """The first rules of NodeCIDR mode need the Node's podCIDRs: the source is synced only
    once the Node was listed too (else only Services and EndpointSlices are awaited)."""
    harness.store.stall_next("nodes", "list")  # the Node's first list breaks off halfway
    harness.source.run()
    assert not harness.source.wait_synced(timeout=1.0)
    assert harness.store.calls[("services", "list")] == 1
    assert harness.source.wait_synced(timeout=10)  # the stalled list is given up and retried
    assert harness.store.calls[("nodes", "list")] == 2
