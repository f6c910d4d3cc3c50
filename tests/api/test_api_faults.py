"""ApiSource under faults, through the real kubernetes client against the fake API server:
malformed objects, outages (with and without 410 Gone), dropped watches, responses that
stall mid-body, and a failure that is not the API's (fatal, not retried).

Convergence after an outage is measured and printed (`pytest -s`); the assertions use a
generous bound so they cannot flake on a busy machine.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kproxy.model import ServiceName
from kproxy.sources import api as api_source
from tests.api.fake_apiserver import RESOURCE_OF_KIND, Store
from tests.api.test_api_source import Harness, wait_until
from tests.builders import endpoint_slice, service
from tests.malformed import SHAPES, Shape

pytestmark = pytest.mark.timeout(60)

# production backoff (ApiSource's defaults), for the convergence measurements
PRODUCTION_BACKOFF = {"initial_backoff": 0.5, "max_backoff": 30.0}
CONVERGE_BOUND_S = 5.0  # the target is about 2 s; the bound leaves room for a loaded machine


def good(kind: str, name: str, ip: str) -> dict[str, Any]:
    """A valid object of `kind` named `name`; `ip` is its ClusterIP or its one endpoint."""
    if kind == "Service":
        return service(name, cluster_ip=ip)
    return endpoint_slice(name, [ip], name=name)


def names(h: Harness, kind: str) -> list[str]:
    return h.services() if kind == "Service" else h.slices()


@pytest.fixture
def store() -> Store:
    store = Store()
    store.apply(service("a", cluster_ip="10.96.0.1"))
    store.apply(endpoint_slice("a", ["10.1.0.1"]))
    return store


@pytest.fixture
def closing() -> Any:
    harnesses: list[Harness] = []
    yield harnesses.append
    for h in harnesses:
        h.close()


# --- malformed objects ---------------------------------------------------------------------


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_a_malformed_event_does_not_stop_later_changes(tmp_path: Path, closing: Any, shape: Shape) -> None:
    kind = shape.kind
    store = Store()
    store.apply(good(kind, "a", "10.96.0.1" if kind == "Service" else "10.1.0.1"))
    h = Harness(tmp_path, store)
    closing(h)
    h.start()
    assert wait_until(lambda: store.calls[(RESOURCE_OF_KIND[kind], "watch")] >= 1)
    with capture_logs() as logs:
        store.apply(shape.make("bad"), kind=kind, key=("default", "bad"))
        store.apply(good(kind, "b", "10.96.0.2" if kind == "Service" else "10.1.0.2"))  # add
        assert wait_until(lambda: names(h, kind) == ["default/a", "default/b"]), names(h, kind)
        store.apply(good(kind, "a", "10.96.0.3" if kind == "Service" else "10.1.0.3"))  # change
        if kind == "Service":
            assert wait_until(lambda: str(h.tracker.snapshot().services[ServiceName("default", "a")].cluster_ip)
                              == "10.96.0.3")
        else:
            assert wait_until(lambda: str(h.tracker.snapshot().slices[("default", "a")].endpoints[0].ip)
                              == "10.1.0.3")
        store.delete(kind, "a")  # delete
        store.delete(kind, "bad")  # the malformed object's own deletion is harmless
        assert wait_until(lambda: names(h, kind) == ["default/b"]), names(h, kind)
    warnings = [e for e in logs if e["event"] == "skipping invalid object"]
    assert [(w["kind"], w["field"]) for w in warnings] == [(kind, shape.field)], warnings
    assert store.calls[(RESOURCE_OF_KIND[kind], "list")] == 1  # all of it through one watch


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_a_malformed_object_in_the_list_does_not_block_the_first_full_list(
        tmp_path: Path, closing: Any, shape: Shape) -> None:
    store = Store()
    store.apply(service("a", cluster_ip="10.96.0.1"))
    store.apply(endpoint_slice("a", ["10.1.0.1"]))
    store.apply(shape.make("bad"), kind=shape.kind, key=("default", "bad"))
    h = Harness(tmp_path, store)
    closing(h)
    with capture_logs() as logs:
        h.start()  # asserts the first full list arrives
    assert (h.services(), h.slices()) == (["default/a"], ["default/a-abc12"])
    assert [e["field"] for e in logs if e["event"] == "skipping invalid object"] == [shape.field]
    assert h.tracker.invalid_count() == 1


# --- outages ---------------------------------------------------------------------------------


def test_initial_lists_reach_the_tracker_in_one_transaction(tmp_path: Path, closing: Any, store: Store) -> None:
    h = Harness(tmp_path, store)
    closing(h)
    h.start()
    assert h.changes == 1  # Services and EndpointSlices together: no sync sees one without the other


def test_outage_then_return_converges_within_seconds(tmp_path: Path, closing: Any, store: Store) -> None:
    fatal: list[str] = []
    h = Harness(tmp_path, store, on_fatal=fatal.append, **PRODUCTION_BACKOFF)
    closing(h)
    h.start()
    assert wait_until(lambda: store.calls[("services", "watch")] >= 1)
    h.server.stop()
    time.sleep(6.0)  # a plain doubling backoff from 0.5 s would now wait 8 s between tries
    store.apply(service("b", cluster_ip="10.96.0.2"))
    store.apply(endpoint_slice("b", ["10.1.0.2"]))
    back = time.monotonic()
    h.restart_server()
    assert wait_until(lambda: h.services() == ["default/a", "default/b"] and len(h.slices()) == 2, timeout=20)
    took = time.monotonic() - back
    print(f"\nconverged {took:.2f}s after the API server returned (outage 6 s, watch resumed)")
    assert took < CONVERGE_BOUND_S
    assert store.calls[("services", "list")] == 1  # resumed from the last version: no relist
    assert fatal == []  # API trouble is retried, never fatal


@pytest.mark.parametrize("gone_mode", ["event", "http"])
def test_outage_with_410_relists_a_consistent_snapshot(
        tmp_path: Path, closing: Any, store: Store, gone_mode: str) -> None:
    store.gone_mode = gone_mode
    slices_of = {ServiceName("default", "a"): ("default", "a-abc12"), ServiceName("default", "new"): ("default", "new")}
    violations: list[str] = []
    h = Harness(tmp_path, store, **PRODUCTION_BACKOFF)
    closing(h)

    def check() -> None:
        state = h.tracker.snapshot()
        for name in state.services:
            if slices_of.get(name) and slices_of[name] not in state.slices:
                violations.append(f"{name} without its slices")

    h.tracker.listen(check)
    h.start()
    assert wait_until(lambda: store.calls[("endpointslices", "watch")] >= 1)
    h.server.stop()
    store.apply(service("new", cluster_ip="10.96.0.7"))
    store.apply(endpoint_slice("new", ["10.1.0.7"], name="new"))
    store.delete("Service", "a")
    store.delete("EndpointSlice", "a-abc12")
    store.expire()  # compacted while away: only a relist can tell what happened
    time.sleep(3.0)
    back = time.monotonic()
    h.restart_server()
    assert wait_until(lambda: h.services() == ["default/new"] and h.slices() == ["default/new"], timeout=20)
    took = time.monotonic() - back
    print(f"\nconverged {took:.2f}s after the API server returned (410 Gone: {gone_mode}, relisted)")
    assert took < CONVERGE_BOUND_S
    assert violations == []
    assert store.calls[("services", "list")] == 2 and store.calls[("endpointslices", "list")] == 2


def test_a_410_on_one_kind_relists_both_together(tmp_path: Path, closing: Any, store: Store) -> None:
    """The Service watch alone learns of the 410; the relist still brings both kinds, in
    one transaction, and the EndpointSlice watch resumes from the new list."""
    h = Harness(tmp_path, store)
    closing(h)
    h.start()
    assert wait_until(lambda: store.calls[("endpointslices", "watch")] >= 1)
    changes = h.changes
    original = h.source._watch
    gone_once: list[bool] = []

    def watch_gone_once(resource: Any, version: str, progress: Any) -> None:
        if resource.kind == "Service" and not gone_once:
            gone_once.append(True)
            raise api_source._Gone()
        original(resource, version, progress)

    store.freeze()
    store.apply(service("n", cluster_ip="10.96.0.8"))
    store.apply(endpoint_slice("n", ["10.1.0.8"], name="n"))
    h.source._watch = watch_gone_once  # type: ignore[method-assign]
    store.drop_watches()
    assert wait_until(lambda: h.services() == ["default/a", "default/n"] and "default/n" in h.slices())
    assert h.changes == changes + 1  # both kinds in one change
    assert store.calls[("endpointslices", "list")] == 2
    store.expire()  # unfreeze; new events still arrive through the resumed watches
    store.apply(endpoint_slice("m", ["10.1.0.9"], name="m"))
    assert wait_until(lambda: "default/m" in h.slices())


def test_a_dropped_watch_resumes_without_a_relist(tmp_path: Path, closing: Any, store: Store) -> None:
    h = Harness(tmp_path, store)
    closing(h)
    h.start()
    assert wait_until(lambda: store.calls[("services", "watch")] >= 1)
    store.drop_watches()
    store.apply(service("b", cluster_ip="10.96.0.2"))
    assert wait_until(lambda: h.services() == ["default/a", "default/b"])
    assert store.calls[("services", "watch")] >= 2
    assert store.calls[("services", "list")] == 1


def test_a_list_that_stalls_mid_body_is_retried(tmp_path: Path, closing: Any, store: Store) -> None:
    store.stall_next("endpointslices", "list")
    h = Harness(tmp_path, store, list_read_timeout=0.5)
    closing(h)
    with capture_logs() as logs:
        h.start()
    assert (h.services(), h.slices()) == (["default/a"], ["default/a-abc12"])
    assert store.stalled[("endpointslices", "list")] == 1
    assert store.calls[("endpointslices", "list")] == 2
    failed = [e for e in logs if e["event"] == "api request failed"]
    assert failed and failed[0]["phase"] == "list"
    assert h.changes == 1  # the Service list was not applied without its slices


def test_a_watch_that_stalls_mid_event_resumes_and_applies_it(tmp_path: Path, closing: Any, store: Store) -> None:
    h = Harness(tmp_path, store, watch_read_timeout=0.5)
    closing(h)
    h.start()
    assert wait_until(lambda: store.calls[("services", "watch")] >= 1)
    store.stall_next("services", "watch")
    store.apply(service("b", cluster_ip="10.96.0.2"))
    assert wait_until(lambda: h.services() == ["default/a", "default/b"])
    assert store.stalled[("services", "watch")] == 1
    assert store.calls[("services", "list")] == 1


# --- what is not the API's fault -----------------------------------------------------------


def test_an_unexpected_failure_is_fatal_not_retried(tmp_path: Path, closing: Any, store: Store) -> None:
    fatal: list[str] = []
    h = Harness(tmp_path, store, on_fatal=fatal.append)
    closing(h)
    h.start()
    assert wait_until(lambda: store.calls[("services", "watch")] >= 1)

    def broken(kind: str, obj: Any) -> None:
        raise TypeError("a bug, not an API error")

    h.tracker.upsert = broken  # type: ignore[method-assign]
    store.apply(service("b", cluster_ip="10.96.0.2"))
    assert wait_until(lambda: len(fatal) == 1)
    assert fatal[0].startswith("api-Service: TypeError: a bug")
    threads = {t.name: t for t in threading.enumerate()}
    assert "api-Service" not in threads  # the thread ended: no silent retry loop
    assert store.calls[("services", "watch")] == 1
