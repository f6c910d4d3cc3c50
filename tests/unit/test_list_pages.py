"""list_pages: a page of EndpointSlices decoded straight into values, and every other
page (or slice) handed to parse.py as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kproxy.parse import parse_endpoint_slice
from kproxy.sources.list_pages import NotAList, decode_page
from kproxy.tracker import ENDPOINT_SLICE, Parsed
from tests.builders import endpoint, endpoint_slice, service


def page(items: list[Any], **metadata: Any) -> bytes:
    return json.dumps({"kind": "EndpointSliceList", "metadata": metadata, "items": items}).encode()


def usual(name: str, *ips: str) -> dict[str, Any]:
    eps = [endpoint(ip, node="node1", zone="z1") for ip in ips]
    eps.append(endpoint("10.244.9.9", ready=False, serving=True, terminating=True))
    # a port without a number is skipped, as upstream skips it
    obj = endpoint_slice(name, eps, ns="shop", name=f"{name}-x",
                         ports=[{"name": "http", "port": 8080}, {"name": "none", "protocol": "UDP"}])
    obj["metadata"]["annotations"] = {"endpoints.kubernetes.io/last-change-trigger-time": "2026-01-02T03:04:05Z"}
    obj["endpoints"][0]["targetRef"] = {"kind": "Pod", "name": "web-1"}  # a field kproxy does not read
    return obj


def test_the_usual_slices_come_parsed_as_parse_py_parses_them() -> None:
    objects = [usual("web", "10.244.1.2", "10.244.1.3"), usual("api", "10.244.2.2")]
    found = decode_page(ENDPOINT_SLICE, page(objects, resourceVersion="41", **{"continue": "next"}))
    assert (found.version, found.token) == ("41", "next")
    assert [type(item) for item in found.items] == [Parsed, Parsed]
    assert [item.key for item in found.items] == [("shop", "web-x"), ("shop", "api-x")]
    assert [item.value for item in found.items] == [parse_endpoint_slice(obj) for obj in objects]
    # trigger_time is not compared by ==
    assert [item.value.trigger_time for item in found.items] == [parse_endpoint_slice(o).trigger_time for o in objects]


@pytest.mark.parametrize("unusual", [
    endpoint_slice("web", ["fd00::1"], address_type="IPv6", name="web-v6"),
    endpoint_slice("web", [{**endpoint("10.244.1.2"), "hints": {"forZones": [{"name": "z1"}]}}], name="web-hints"),
    endpoint_slice("web", ["10.244.1.2"], name="web-headless", labels={"service.kubernetes.io/headless": ""}),
    endpoint_slice("web", ["10.1"], name="web-bad-address"),
    endpoint_slice("web", ["10.244.1.2"], name="web-bad-port", port=70000),
])
def test_any_other_slice_is_left_as_json_in_its_place(unusual: dict[str, Any]) -> None:
    objects = [usual("a", "10.244.1.2"), unusual, usual("b", "10.244.1.4")]
    found = decode_page(ENDPOINT_SLICE, page(objects))
    assert [type(item) for item in found.items] == [Parsed, dict, Parsed]
    assert found.items[1] == unusual


@pytest.mark.parametrize("breaks", [
    lambda o: o["endpoints"][0]["conditions"].update(ready=0),  # 0 == False, but no boolean
    lambda o: o["metadata"].update(name=7),
    lambda o: o["metadata"]["labels"].update(other=["x"]),
    lambda o: o.update(endpoints="10.244.1.2"),
])
def test_a_page_the_records_do_not_fit_is_json_all_through(breaks: Any) -> None:
    objects = [usual("a", "10.244.1.2"), usual("b", "10.244.1.3")]
    breaks(objects[1])
    found = decode_page(ENDPOINT_SLICE, page(objects, resourceVersion="7"))
    assert found.items == objects and found.version == "7" and found.token is None


def test_other_kinds_are_json() -> None:
    objects = [service("web", cluster_ip="10.96.0.10")]
    found = decode_page("Service", page(objects, resourceVersion="3"))
    assert (found.items, found.version, found.token) == (objects, "3", None)


@pytest.mark.parametrize("kind", ["Service", ENDPOINT_SLICE])
@pytest.mark.parametrize(("data", "message"), [
    (b"<html>", "is not JSON"),
    (b"[1, 2]", "has no list of items"),
    (b'{"items": {"a": 1}}', "has no list of items"),
])
def test_what_is_not_a_list_is_refused(kind: str, data: bytes, message: str) -> None:
    with pytest.raises(NotAList, match=message):
        decode_page(kind, data)


@pytest.mark.parametrize("kind", ["Service", ENDPOINT_SLICE])
def test_a_list_without_items_or_metadata_is_empty(kind: str) -> None:
    found = decode_page(kind, b'{"items": null}')
    assert (found.items, found.version, found.token) == ([], "", None)
