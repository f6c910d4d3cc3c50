"""Tracker: change notifications, invalid objects, snapshots, thread safety."""

from __future__ import annotations

import threading
from ipaddress import IPv4Address

import pytest
from structlog.testing import capture_logs

from kproxy.model import ServiceName
from kproxy.tracker import Tracker
from tests.builders import endpoint_slice, service


class Counter:
    def __init__(self) -> None:
        self.calls = 0

    def __call__(self) -> None:
        self.calls += 1


@pytest.fixture
def changes() -> Counter:
    return Counter()


@pytest.fixture
def tracker(changes: Counter) -> Tracker:
    return Tracker(changes)


def test_upsert_delete_reach_snapshot(tracker: Tracker, changes: Counter) -> None:
    tracker.upsert("Service", service("a", cluster_ip="10.96.0.1"))
    tracker.upsert("EndpointSlice", endpoint_slice("a", ["10.1.0.1"]))
    state = tracker.snapshot()
    assert list(state.services) == [ServiceName("default", "a")]
    assert list(state.slices) == [("default", "a-abc12")]
    assert changes.calls == 2
    tracker.delete("Service", service("a"))
    tracker.delete("EndpointSlice", {"metadata": {"namespace": "default", "name": "a-abc12"}})
    assert tracker.snapshot().services == {} and tracker.snapshot().slices == {}
    assert changes.calls == 4


def test_identical_upsert_does_not_notify(tracker: Tracker, changes: Counter) -> None:
    tracker.upsert("Service", service("a"))
    svc = service("a", resource_version="99")  # metadata differs, parsed value does not
    tracker.upsert("Service", svc)
    assert changes.calls == 1
    tracker.upsert("Service", service("a", cluster_ip="10.96.0.2"))
    assert changes.calls == 2
    assert tracker.snapshot().services[ServiceName("default", "a")].cluster_ip == IPv4Address("10.96.0.2")


def test_delete_of_unknown_does_not_notify(tracker: Tracker, changes: Counter) -> None:
    tracker.delete("Service", service("nope"))
    tracker.delete("EndpointSlice", endpoint_slice("nope"))
    assert changes.calls == 0


def test_replace_notifies_only_on_change_and_drops_missing(tracker: Tracker, changes: Counter) -> None:
    tracker.replace("Service", [service("a"), service("b")])
    assert changes.calls == 1
    tracker.replace("Service", [service("b"), service("a")])
    assert changes.calls == 1
    tracker.replace("Service", [service("a")])
    assert changes.calls == 2
    assert list(tracker.snapshot().services) == [ServiceName("default", "a")]
    tracker.replace("Service", [])
    assert tracker.snapshot().services == {}
    assert changes.calls == 3


def test_a_relist_parses_unchanged_objects_into_the_stored_ones(tracker: Tracker) -> None:
    tracker.replace_all({"Service": [service("a"), service("b")],
                         "EndpointSlice": [endpoint_slice("a", ["10.1.0.1"])]})
    before = tracker.snapshot()
    parsed = tracker.parsed_list()
    parsed.add("Service", [service("a"), service("b", cluster_ip="10.96.0.9")])
    parsed.add("EndpointSlice", [endpoint_slice("a", ["10.1.0.1"])])
    a, b = ServiceName("default", "a"), ServiceName("default", "b")
    # while the new list is still being read, it already holds the stored objects, so a
    # relist or a reload never keeps two copies of what did not change
    assert parsed.stores["Service"][a] is before.services[a]
    assert parsed.stores["EndpointSlice"][("default", "a-abc12")] is before.slices[("default", "a-abc12")]
    assert parsed.stores["Service"][b] is not before.services[b]
    tracker.replace_parsed(parsed)
    after = tracker.snapshot()
    assert after.services[a] is before.services[a]
    assert after.services[b].cluster_ip == IPv4Address("10.96.0.9")


def test_replace_of_one_kind_keeps_the_other(tracker: Tracker) -> None:
    tracker.replace("Service", [service("a")])
    tracker.replace("EndpointSlice", [endpoint_slice("a", ["10.1.0.1"])])
    tracker.replace("EndpointSlice", [])
    assert list(tracker.snapshot().services) == [ServiceName("default", "a")]


def test_skipped_object_removes_stored_version(tracker: Tracker, changes: Counter) -> None:
    tracker.upsert("Service", service("a"))
    tracker.upsert("Service", service("a", type="ExternalName", cluster_ip=None))
    assert tracker.snapshot().services == {}
    assert changes.calls == 2
    tracker.upsert("Service", service("b", cluster_ip="None"))  # never stored: no change
    assert changes.calls == 2


def test_invalid_upsert_drops_earlier_version_and_warns_once(tracker: Tracker, changes: Counter) -> None:
    tracker.upsert("Service", service("a", "shop"))
    bad = service("a", "shop")
    bad["spec"]["ports"][0]["port"] = 0
    with capture_logs() as logs:
        tracker.upsert("Service", bad)
        tracker.upsert("Service", bad)  # same error again: not logged again
    assert tracker.snapshot().services == {}
    assert changes.calls == 2
    assert logs == [
        {
            "event": "skipping invalid object",
            "log_level": "warning",
            "kind": "Service",
            "object": "shop/a",
            "field": "spec.ports[0].port",
            "error": "port must be 1-65535, got 0",
        }
    ]


def test_invalid_object_is_logged_again_after_it_was_fixed(tracker: Tracker) -> None:
    bad = endpoint_slice("a", ["10.1.0.300"])
    with capture_logs() as logs:
        tracker.upsert("EndpointSlice", bad)
        tracker.upsert("EndpointSlice", endpoint_slice("a", ["10.1.0.3"]))
        tracker.upsert("EndpointSlice", bad)
    assert [entry["field"] for entry in logs] == ["endpoints[0].addresses[0]"] * 2
    assert tracker.snapshot().slices == {}


def test_invalid_in_replace_leaves_others_untouched(tracker: Tracker, changes: Counter) -> None:
    bad = service("bad")
    bad["spec"]["clusterIP"] = "nonsense"
    with capture_logs() as logs:
        tracker.replace("Service", [service("a"), bad, service("c")])
        tracker.replace("Service", [service("a"), bad, service("c")])  # relist: no repeat
    assert sorted(s.name for s in tracker.snapshot().services) == ["a", "c"]
    assert changes.calls == 1
    assert len(logs) == 1
    assert (logs[0]["object"], logs[0]["field"], logs[0]["kind"]) == ("default/bad", "spec.clusterIP", "Service")


def test_snapshot_is_a_copy(tracker: Tracker) -> None:
    tracker.upsert("Service", service("a"))
    before = tracker.snapshot()
    tracker.upsert("Service", service("b"))
    tracker.delete("Service", service("a"))
    assert list(before.services) == [ServiceName("default", "a")]


def test_unknown_kind_rejected(tracker: Tracker) -> None:
    with pytest.raises(ValueError):
        tracker.upsert("Pod", {"metadata": {"name": "x"}})


def test_on_change_may_call_snapshot(changes: Counter) -> None:
    """on_change runs outside the lock, so a callback that snapshots does not deadlock."""
    seen: list[int] = []
    tracker: Tracker

    def on_change() -> None:
        seen.append(len(tracker.snapshot().services))

    tracker = Tracker(on_change)
    tracker.upsert("Service", service("a"))
    tracker.replace("Service", [service("a"), service("b")])
    assert seen == [1, 2]


def test_concurrent_writers(tracker: Tracker, changes: Counter) -> None:
    def writer(prefix: str) -> None:
        for i in range(200):
            tracker.upsert("Service", service(f"{prefix}{i}"))
            tracker.snapshot()

    threads = [threading.Thread(target=writer, args=(p,)) for p in "abcd"]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=10)
    assert len(tracker.snapshot().services) == 800
    assert changes.calls == 800


def test_slices_grouped_by_service_with_stable_identity(tracker: Tracker) -> None:
    tracker.replace(
        "EndpointSlice",
        [
            endpoint_slice("a", ["10.1.0.2"], name="a-2"),
            endpoint_slice("a", ["10.1.0.1"], name="a-1"),
            endpoint_slice("b", ["10.1.0.3"], name="b-1"),
        ],
    )
    first = tracker.snapshot().slices_by_service
    assert first is not None
    assert [s.name for s in first[ServiceName("default", "a")]] == ["a-1", "a-2"]
    # An identical reload and a change to b leave a's group (and its slices) the same objects.
    tracker.replace(
        "EndpointSlice",
        [
            endpoint_slice("a", ["10.1.0.1"], name="a-1"),
            endpoint_slice("a", ["10.1.0.2"], name="a-2"),
            endpoint_slice("b", ["10.1.0.4"], name="b-1"),
        ],
    )
    second = tracker.snapshot().slices_by_service
    assert second is not None
    assert second[ServiceName("default", "a")] is first[ServiceName("default", "a")]
    assert second[ServiceName("default", "b")] is not first[ServiceName("default", "b")]
    tracker.delete("EndpointSlice", endpoint_slice("b", name="b-1"))
    tracker.upsert("EndpointSlice", endpoint_slice("a", ["10.1.0.1"], name="a-1", ready=False))
    third = tracker.snapshot().slices_by_service
    assert third is not None and ServiceName("default", "b") not in third
    assert [e.ready for s in third[ServiceName("default", "a")] for e in s.endpoints] == [False, True]
