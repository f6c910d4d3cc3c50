"""Malformed objects of every shape (tests/malformed.py): parse names the field, and the
tracker skips the object with one warning and keeps applying what comes after it."""

from __future__ import annotations

import pytest
from structlog.testing import capture_logs

from kproxy.parse import InvalidObject, object_key, parse_endpoint_slice, parse_service
from kproxy.tracker import Tracker
from tests.malformed import SERVICE_SHAPES, SHAPES, SLICE_SHAPES, Shape, good_service, good_slice

PARSE = {"Service": parse_service, "EndpointSlice": parse_endpoint_slice}


def names(tracker: Tracker, kind: str) -> list[str]:
    state = tracker.snapshot()
    if kind == "Service":
        return sorted(f"{n.namespace}/{n.name}" for n in state.services)
    return sorted(f"{ns}/{name}" for ns, name in state.slices)


def good(kind: str, name: str) -> dict:
    return good_service(name) if kind == "Service" else good_slice(name)


def test_there_are_at_least_twenty_shapes() -> None:
    assert len(SHAPES) >= 20 and len({s.id for s in SHAPES}) == len(SHAPES)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_parse_raises_only_invalid_object_naming_the_field(shape: Shape) -> None:
    good_obj = good(shape.kind, "web")
    assert PARSE[shape.kind](good_obj) is not None  # the shape, not the base object, is what breaks
    with pytest.raises(InvalidObject) as info:
        PARSE[shape.kind](shape.make("web"))
    err = info.value
    assert (err.kind, err.field) == (shape.kind, shape.field)
    assert err.key == ("default/web" if shape.named else "unnamed")
    assert "\n" not in str(err)


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_object_key_takes_any_shape(shape: Shape) -> None:
    namespace, name = object_key(shape.make("web"))
    assert isinstance(namespace, str) and isinstance(name, str)
    assert name == ("web" if shape.named else "")


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_watch_events_after_a_malformed_object_are_applied(shape: Shape) -> None:
    kind = shape.kind
    tracker = Tracker()
    tracker.upsert(kind, good(kind, "keep"))
    with capture_logs() as logs:
        tracker.upsert(kind, shape.make("web"))
    warnings = [e for e in logs if e["event"] == "skipping invalid object"]
    assert [(w["kind"], w["field"]) for w in warnings] == [(kind, shape.field)], logs
    assert warnings[0]["object"] == ("default/web" if shape.named else "unnamed")
    assert names(tracker, kind) == ["default/keep"]
    # a later good version, a change and a deletion all still apply
    tracker.upsert(kind, good(kind, "web"))
    assert names(tracker, kind) == sorted(["default/keep", "default/web"])
    tracker.upsert(kind, good(kind, "keep2"))
    tracker.delete(kind, good(kind, "keep"))
    assert names(tracker, kind) == sorted(["default/keep2", "default/web"])


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.id)
def test_a_list_with_a_malformed_object_applies_the_others(shape: Shape) -> None:
    kind = shape.kind
    tracker = Tracker()
    with capture_logs() as logs:
        tracker.replace(kind, [good(kind, "a"), shape.make("web"), good(kind, "b")])
    assert names(tracker, kind) == sorted(["default/a", "default/b"])
    assert [e["field"] for e in logs if e["event"] == "skipping invalid object"] == [shape.field]
    assert tracker.invalid_count() == 1


@pytest.mark.parametrize(("kind", "shapes"), [("Service", SERVICE_SHAPES), ("EndpointSlice", SLICE_SHAPES)])
def test_invalid_count_counts_every_malformed_object_of_a_list(kind: str, shapes: list[Shape]) -> None:
    tracker = Tracker()
    tracker.replace(kind, [good(kind, "a"), *(s.make(f"bad{i}") for i, s in enumerate(shapes))])
    assert names(tracker, kind) == ["default/a"]
    assert tracker.invalid_count() == len(shapes)  # unnamed ones are counted one by one too
    tracker.replace(kind, [good(kind, "a")])
    assert tracker.invalid_count() == 0


def test_a_parser_bug_costs_one_object_not_the_caller(monkeypatch: pytest.MonkeyPatch) -> None:
    """Defence in depth: whatever a parser raises is turned into one warning."""
    import kproxy.tracker as tracker_module

    def broken(obj: dict) -> None:
        raise KeyError("surprise")

    monkeypatch.setattr(tracker_module, "parse_service", broken)
    tracker = Tracker()
    with capture_logs() as logs:
        tracker.replace("Service", [good_service("a")])
    assert tracker.snapshot().services == {}
    assert logs[0]["field"] == "(object)" and "KeyError" in logs[0]["error"]
