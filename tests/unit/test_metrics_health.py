"""Metrics and health over real HTTP on 127.0.0.1 (ephemeral ports), with a fake sync."""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from types import SimpleNamespace

import pytest
from prometheus_client.parser import text_string_to_metric_families

from kproxy.cli.wiring import Observability, start_observability
from kproxy.health.proxier import HealthEndpoints, ProxyHealth, watch_node_deletion
from kproxy.tracker import ENDPOINT_SLICE, SERVICE, Tracker
from tests.builders import endpoint_slice, service

UPSTREAM_TYPES = {
    "kubeproxy_sync_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_full_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_partial_proxy_rules_duration_seconds": "histogram",
    "kubeproxy_sync_proxy_rules_last_timestamp_seconds": "gauge",
    "kubeproxy_sync_proxy_rules_last_queued_timestamp_seconds": "gauge",
    "kubeproxy_network_programming_duration_seconds": "histogram",
    "kubeproxy_sync_proxy_rules_endpoint_changes": "counter",  # exposed as ..._total
    "kubeproxy_sync_proxy_rules_endpoint_changes_pending": "gauge",
    "kubeproxy_sync_proxy_rules_service_changes": "counter",
    "kubeproxy_sync_proxy_rules_service_changes_pending": "gauge",
    "kubeproxy_sync_proxy_rules_nftables_sync_failures": "counter",
    "kubeproxy_proxy_healthz": "counter",
    "kubeproxy_proxy_livez": "counter",
}


def get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.headers["Content-Type"], resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.headers["Content-Type"], err.read().decode()


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def lab():
    """A tracker wired to metrics and health served on ephemeral ports, as `kproxy run` does."""
    holder: list[Observability] = []
    tracker = Tracker(on_change=lambda: holder[0].queued() if holder else None)
    clock = Clock()
    obs = start_observability("nftables", tracker, sync_period=30.0, metrics_address="127.0.0.1:0",
                              healthz_address="127.0.0.1:0", clock=clock)
    holder.append(obs)
    metrics_url = f"http://127.0.0.1:{obs.servers[0].port}"
    healthz_url = f"http://127.0.0.1:{obs.servers[1].port}"
    outcome: dict[str, object] = {"fail": False}

    def fake_sync():
        if outcome["fail"]:
            raise RuntimeError("kernel said no")
        return SimpleNamespace(full=True, total_ms=12.0, families=())

    sync = obs.observe(fake_sync, tracker)
    yield SimpleNamespace(tracker=tracker, obs=obs, sync=sync, clock=clock, outcome=outcome,
                          metrics_url=metrics_url, healthz_url=healthz_url)
    obs.close()


def scrape(url: str) -> dict[str, object]:
    status, ctype, body = get(url + "/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    return {f.name: f for f in text_string_to_metric_families(body)}


def sample(families, family: str, suffix: str = "", **labels: str) -> float:
    for s in families[family].samples:
        if s.name == family + suffix and all(s.labels.get(k) == v for k, v in labels.items()):
            return s.value
    raise AssertionError(f"no sample {family}{suffix} {labels}")


def test_metrics_after_a_sync_carry_upstream_names_types_and_values(lab):
    trigger = datetime.fromtimestamp(time.time() - 2.0, UTC).isoformat().replace("+00:00", "Z")
    sl = endpoint_slice("web", ["10.1.0.1"])
    sl["metadata"].setdefault("annotations", {})["endpoints.kubernetes.io/last-change-trigger-time"] = trigger
    lab.tracker.upsert(SERVICE, service("web"))
    lab.tracker.upsert(ENDPOINT_SLICE, sl)

    before = scrape(lab.metrics_url)
    assert sample(before, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 1
    assert sample(before, "kubeproxy_sync_proxy_rules_service_changes_pending") == 1
    assert sample(before, "kubeproxy_sync_proxy_rules_duration_seconds", "_count", ip_family="IPv4") == 0

    lab.sync()
    families = scrape(lab.metrics_url)
    for name, kind in UPSTREAM_TYPES.items():
        assert families[name].type == kind, name
    assert families["process_resident_memory_bytes"].type == "gauge"
    assert sample(families, "kubeproxy_sync_proxy_rules_duration_seconds", "_count", ip_family="IPv4") == 1
    assert sample(families, "kubeproxy_sync_proxy_rules_duration_seconds", "_sum",
                  ip_family="IPv4") == pytest.approx(0.012)
    assert sample(families, "kubeproxy_sync_full_proxy_rules_duration_seconds", "_count", ip_family="IPv4") == 1
    assert sample(families, "kubeproxy_sync_proxy_rules_last_timestamp_seconds",
                  ip_family="IPv4") == pytest.approx(time.time(), abs=5)
    assert sample(families, "kubeproxy_network_programming_duration_seconds", "_count", ip_family="IPv4") == 1
    latency = sample(families, "kubeproxy_network_programming_duration_seconds", "_sum", ip_family="IPv4")
    assert 1.5 < latency < 10
    assert sample(families, "kubeproxy_sync_proxy_rules_endpoint_changes", "_total") == 1
    assert sample(families, "kubeproxy_sync_proxy_rules_service_changes", "_total") == 1
    assert sample(families, "kubeproxy_sync_proxy_rules_endpoint_changes_pending") == 0
    assert sample(families, "kubeproxy_sync_proxy_rules_nftables_sync_failures", "_total", ip_family="IPv4") == 0
    buckets = [s for s in families["kubeproxy_network_programming_duration_seconds"].samples
               if s.name.endswith("_bucket")]
    assert len(buckets) == 82  # upstream merge(): 0, 0.25, 0.5, 1..59, 60..115, 120..300 (81) and +Inf

    # an equal object again is no change; a deletion is one
    lab.tracker.upsert(SERVICE, service("web"))
    lab.tracker.delete(ENDPOINT_SLICE, sl)
    families = scrape(lab.metrics_url)
    assert sample(families, "kubeproxy_sync_proxy_rules_service_changes", "_total") == 1
    assert sample(families, "kubeproxy_sync_proxy_rules_endpoint_changes", "_total") == 2


def test_failed_syncs_are_counted_and_their_trigger_times_kept(lab):
    sl = endpoint_slice("web", ["10.1.0.1"])
    sl["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": "2020-01-01T00:00:00Z"}
    lab.tracker.upsert(ENDPOINT_SLICE, sl)
    lab.outcome["fail"] = True
    with pytest.raises(RuntimeError):
        lab.sync()
    families = scrape(lab.metrics_url)
    assert sample(families, "kubeproxy_sync_proxy_rules_nftables_sync_failures", "_total", ip_family="IPv4") == 1
    assert sample(families, "kubeproxy_network_programming_duration_seconds", "_count", ip_family="IPv4") == 0
    lab.outcome["fail"] = False
    lab.sync()
    families = scrape(lab.metrics_url)
    assert sample(families, "kubeproxy_network_programming_duration_seconds", "_count", ip_family="IPv4") == 1
    # older than 5 minutes: upstream's last bucket is 300s, so it lands in +Inf only
    assert sample(families, "kubeproxy_network_programming_duration_seconds", "_bucket",
                  ip_family="IPv4", le="300.0") == 0


def test_proxy_mode_and_metrics_server_healthz(lab):
    assert get(lab.metrics_url + "/proxyMode")[::2] == (200, "nftables")
    assert get(lab.metrics_url + "/healthz")[::2] == (200, "ok")
    assert get(lab.metrics_url + "/nope")[0] == 404


def test_healthz_fails_when_syncs_stall_and_recovers(lab):
    # start-up queued the first sync; not late yet
    status, ctype, body = get(lab.healthz_url + "/healthz")
    assert (status, ctype) == (200, "application/json")
    assert set(json.loads(body)) == {"lastUpdated", "currentTime", "nodeEligible"}
    lab.clock.now += 61  # 2 x syncPeriod (30s) without a sync
    status, _, body = get(lab.healthz_url + "/healthz")
    assert status == 503
    doc = json.loads(body)
    assert doc["nodeEligible"] is True and doc["lastUpdated"] == "0001-01-01T00:00:00Z"
    assert get(lab.healthz_url + "/livez")[0] == 503

    lab.sync()
    assert get(lab.healthz_url + "/healthz")[0] == 200
    # quiet for a long time with nothing queued: still healthy
    lab.clock.now += 3600
    assert get(lab.healthz_url + "/healthz")[0] == 200
    # a change arrives and waits too long
    lab.tracker.upsert(SERVICE, service("web"))
    lab.clock.now += 59
    assert get(lab.healthz_url + "/healthz")[0] == 200
    lab.clock.now += 2
    assert get(lab.healthz_url + "/healthz")[0] == 503
    lab.sync()
    status, _, body = get(lab.healthz_url + "/livez")
    assert status == 200 and set(json.loads(body)) == {"lastUpdated", "currentTime"}

    families = scrape(lab.metrics_url)
    assert sample(families, "kubeproxy_proxy_healthz", "_total", code="503") == 2
    assert sample(families, "kubeproxy_proxy_livez", "_total", code="200") == 1


def test_node_being_deleted_fails_healthz_but_not_livez():
    health = ProxyHealth(timeout=60)
    endpoints = HealthEndpoints(health)
    health.updated()
    assert endpoints.healthz()[0] == 200
    health.sync_node(deleting=True)
    code, _, body = endpoints.healthz()
    assert code == 503 and json.loads(body)["nodeEligible"] is False
    assert endpoints.livez()[0] == 200


def test_node_deletion_watch_reads_deletion_timestamp_and_ignores_api_trouble():
    import threading

    health = ProxyHealth(timeout=60)
    stop = threading.Event()
    answers = iter([{"metadata": {"name": "n1"}}, None,
                    {"metadata": {"name": "n1", "deletionTimestamp": "2026-01-01T00:00:00Z"}}])

    def read():
        try:
            node = next(answers)
        except StopIteration:
            stop.set()
            return None
        seen.append(health.status().node_eligible)
        return node

    seen: list[bool] = []
    watch_node_deletion(read, health, stop, interval=0)
    assert seen == [True, True, True]
    assert health.status().node_eligible is False


def test_a_busy_port_is_logged_not_fatal(lab):
    taken = f"127.0.0.1:{lab.obs.servers[0].port}"
    obs = start_observability("nftables", lab.tracker, 30.0, taken, None)
    try:
        assert obs.servers == []
    finally:
        obs.close()
