"""ApiSource against an in-process API server, through the real kubernetes client."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kproxy.model import ServiceName
from kproxy.sources.api import ApiConfigError, ApiSource, load_api_client
from kproxy.tracker import Tracker
from tests.api.fake_apiserver import FakeApiServer, Store, write_kubeconfig
from tests.builders import endpoint_slice, service

pytestmark = pytest.mark.timeout(20)


def wait_until(condition: Callable[[], bool], timeout: float = 4.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.01)
    return condition()


class Harness:
    def __init__(self, tmp_path: Path, store: Store, **source_options: Any) -> None:
        self.store = store
        self.server = FakeApiServer(store)
        self.kubeconfig = tmp_path / "kubeconfig"
        write_kubeconfig(self.kubeconfig, self.server.url)
        self.changes = 0
        self.tracker = Tracker(self._changed)
        self.stop = threading.Event()
        options: dict[str, Any] = {"watch_timeout": 30, "initial_backoff": 0.05, "max_backoff": 0.2,
                                   "connect_timeout": 1.0, **source_options}
        self.source = ApiSource(load_api_client(str(self.kubeconfig)), self.tracker, self.stop, **options)

    def _changed(self) -> None:
        self.changes += 1

    def services(self) -> list[str]:
        return sorted(str(n) for n in self.tracker.snapshot().services)

    def slices(self) -> list[str]:
        return sorted(f"{ns}/{name}" for ns, name in self.tracker.snapshot().slices)

    def start(self) -> None:
        self.source.run()
        assert self.source.wait_synced(timeout=4)

    def restart_server(self) -> None:
        self.server = FakeApiServer(self.store, port=self.server.port)

    def close(self) -> None:
        self.stop.set()
        assert self.source.join(timeout=3), "ApiSource threads did not stop"
        self.server.stop()


@pytest.fixture
def store() -> Store:
    store = Store()
    store.apply(service("a", cluster_ip="10.96.0.1"))
    store.apply(endpoint_slice("a", ["10.1.0.1", "10.1.0.2"]))
    return store


@pytest.fixture
def harness(tmp_path: Path, store: Store) -> Iterator[Harness]:
    h = Harness(tmp_path, store)
    yield h
    h.close()


def test_initial_list_reaches_tracker(harness: Harness) -> None:
    harness.start()
    assert harness.services() == ["default/a"]
    assert harness.slices() == ["default/a-abc12"]
    assert harness.store.calls[("services", "list")] == 1
    assert harness.store.calls[("endpointslices", "list")] == 1


def test_create_update_delete_via_watch(harness: Harness) -> None:
    harness.start()
    assert wait_until(lambda: harness.store.calls[("services", "watch")] >= 1)
    harness.store.apply(service("b", "shop", cluster_ip="10.96.0.2"))
    harness.store.apply(endpoint_slice("b", ["10.1.0.9"], ns="shop"))
    assert wait_until(lambda: harness.services() == ["default/a", "shop/b"])
    assert wait_until(lambda: harness.slices() == ["default/a-abc12", "shop/b-abc12"])

    harness.store.apply(service("b", "shop", cluster_ip="10.96.0.3"))
    assert wait_until(
        lambda: str(harness.tracker.snapshot().services[ServiceName("shop", "b")].cluster_ip) == "10.96.0.3"
    )

    harness.store.delete("Service", "a")
    harness.store.delete("EndpointSlice", "a-abc12")
    assert wait_until(lambda: harness.services() == ["shop/b"] and harness.slices() == ["shop/b-abc12"])
    assert harness.store.calls[("services", "list")] == 1  # all of it through the watch


@pytest.mark.parametrize("gone_mode", ["event", "http"])
def test_410_gone_relists_and_missed_delete_is_applied(harness: Harness, gone_mode: str) -> None:
    harness.store.gone_mode = gone_mode
    harness.start()
    assert wait_until(lambda: harness.store.calls[("services", "watch")] >= 1)
    harness.store.freeze()
    harness.store.delete("Service", "a")  # missed by the watch...
    harness.store.delete("EndpointSlice", "a-abc12")
    harness.store.apply(service("c", cluster_ip="10.96.0.4"))
    harness.store.expire()  # ...and compacted away: only a relist can tell
    assert wait_until(lambda: harness.services() == ["default/c"])
    assert wait_until(lambda: harness.slices() == [])
    assert harness.store.calls[("services", "list")] == 2
    assert harness.store.calls[("endpointslices", "list")] == 2
    harness.store.apply(service("d", cluster_ip="10.96.0.5"))  # and the new watch works
    assert wait_until(lambda: harness.services() == ["default/c", "default/d"])


def test_server_gone_keeps_state_and_resumes(harness: Harness) -> None:
    harness.start()
    assert wait_until(lambda: harness.store.calls[("services", "watch")] >= 1)
    changes = harness.changes
    with capture_logs() as logs:
        harness.server.stop()
        assert wait_until(lambda: any(e["event"] == "api request failed" for e in logs))
        time.sleep(0.5)  # several failed reconnects
    assert harness.services() == ["default/a"]
    assert harness.slices() == ["default/a-abc12"]
    assert harness.changes == changes
    failures = [e for e in logs if e["event"] == "api request failed"]
    assert {e["phase"] for e in failures} == {"watch"} and len(failures) >= 3
    retry = [e["retry_in"] for e in failures if e["kind"] == "Service"]
    # exponential from 0.05, capped at 0.2, each jittered down by up to half (rounded to 0.01)
    for delay, most in zip(retry, [0.05, 0.1, 0.2, 0.2, 0.2], strict=False):
        assert most / 2 - 0.01 <= delay <= most + 0.01, retry

    harness.store.delete("Service", "a")  # while the server is away
    harness.store.apply(service("b", cluster_ip="10.96.0.2"))
    harness.restart_server()
    assert wait_until(lambda: harness.services() == ["default/b"])
    # Resumed from the last version seen: no relist was needed.
    assert harness.store.calls[("services", "list")] == 1


def test_bookmark_advances_resume_version(harness: Harness) -> None:
    harness.start()
    assert wait_until(lambda: harness.store.calls[("services", "watch")] >= 1)
    version = harness.store.bookmark()
    time.sleep(0.2)  # let the bookmark arrive
    harness.server.stop()
    harness.restart_server()
    assert wait_until(lambda: harness.store.calls[("services", "watch")] >= 2)
    assert ("services", str(version)) in harness.store.watch_versions
    assert harness.store.calls[("services", "list")] == 1


def test_invalid_object_from_watch_is_skipped_and_logged(harness: Harness) -> None:
    harness.start()
    assert wait_until(lambda: harness.store.calls[("services", "watch")] >= 1)
    bad = service("bad", cluster_ip="10.96.0.999")
    with capture_logs() as logs:
        harness.store.apply(bad)
        harness.store.apply(service("ok", cluster_ip="10.96.0.8"))
        assert wait_until(lambda: harness.services() == ["default/a", "default/ok"])
    warnings = [e for e in logs if e["event"] == "skipping invalid object"]
    assert [(w["object"], w["field"]) for w in warnings] == [("default/bad", "spec.clusterIP")]


def test_stop_is_prompt_while_watching(harness: Harness) -> None:
    harness.start()
    assert wait_until(lambda: harness.store.calls[("endpointslices", "watch")] >= 1)
    started = time.monotonic()
    harness.stop.set()
    assert harness.source.join(timeout=2)
    assert time.monotonic() - started < 1.0


def test_not_synced_until_server_answers(tmp_path: Path) -> None:
    store = Store()
    store.apply(service("a"))
    h = Harness(tmp_path, store)
    port = h.server.port
    h.server.stop()
    try:
        h.source.run()
        assert not h.source.wait_synced(timeout=0.3)
        assert h.services() == []
        h.server = FakeApiServer(store, port=port)
        assert h.source.wait_synced(timeout=4)
        assert h.services() == ["default/a"]
    finally:
        h.close()


def test_load_api_client_errors_are_one_line(tmp_path: Path) -> None:
    with pytest.raises(ApiConfigError) as info:
        load_api_client(str(tmp_path / "missing"))
    assert str(tmp_path / "missing") in str(info.value) and "\n" not in str(info.value)
    broken = tmp_path / "broken"
    broken.write_text("clusters: [\n")
    with pytest.raises(ApiConfigError) as info:
        load_api_client(str(broken))
    assert "\n" not in str(info.value)


def test_load_api_client_reads_kubeconfig(tmp_path: Path) -> None:
    path = tmp_path / "kc"
    write_kubeconfig(path, "http://127.0.0.1:1")
    api = load_api_client(str(path))
    assert api.configuration.host == "http://127.0.0.1:1"
