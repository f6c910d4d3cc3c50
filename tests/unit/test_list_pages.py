"""list_pages: pages of Services and EndpointSlices decoded straight into values, and every
other page (or object) handed to parse.py as JSON."""

from __future__ import annotations

import json
from typing import Any

import pytest

from kproxy.parse import parse_endpoint_slice, parse_service
from kproxy.sources.list_pages import NotAList, decode_page
from kproxy.tracker import ENDPOINT_SLICE, SERVICE, Parsed
from tests.builders import endpoint, endpoint_slice, port, service


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


def usual_services() -> list[dict[str, Any]]:
    return [
        service("web", "shop", cluster_ip="10.96.0.10", ports=[port(80, name="http"), port(53, name="dns",
                                                                                       protocol="UDP")]),
        # a stale nodePort on a ClusterIP Service is ignored, as upstream ignores it
        service("stale", cluster_ip="10.96.0.11", node_port=30001, internalTrafficPolicy="Local"),
        service("np", cluster_ip="10.96.0.12", type="NodePort", node_port=30002, externalTrafficPolicy="Cluster",
                sessionAffinity="None"),
        {**service("bare", cluster_ip="10.96.0.13"), "status": {"loadBalancer": {}}},
    ]


def test_the_usual_services_come_parsed_as_parse_py_parses_them() -> None:
    objects = usual_services()
    for obj in objects[:3]:
        obj["spec"]["clusterIPs"] = [obj["spec"]["clusterIP"]]
    found = decode_page(SERVICE, page(objects, resourceVersion="3"))
    assert [type(item) for item in found.items] == [Parsed] * 4
    assert [item.value for item in found.items] == [parse_service(obj) for obj in objects]
    assert [item.key for item in found.items] == [item.value.name for item in found.items]
    assert found.items[1].value.ports[0].node_port is None


@pytest.mark.parametrize("unusual", [
    service("lb", type="LoadBalancer", lb_ips=["203.0.113.1"]),
    service("dual", cluster_ip="10.96.0.20") | {"spec": {"clusterIP": "10.96.0.20",
                                                          "clusterIPs": ["10.96.0.20", "fd00::20"]}},
    service("v6", cluster_ip="fd00::20"),
    service("headless", cluster_ip="None"),
    service("ext", external_ips=["203.0.113.1"]),
    service("sticky", sessionAffinity="ClientIP"),
    service("local", type="NodePort", node_port=30003, externalTrafficPolicy="Local"),
    service("proxied", labels={"service.kubernetes.io/service-proxy-name": "other"}),
    service("unnamed", ports=[port(80), port(81)]),
    service("twice", ports=[port(80, name="a"), port(81, name="a")]),
    service("one-unnamed", ports=[port(80, name="a"), port(81)]),
    service("bad-node-port", type="NodePort", node_port=70000),
    service("external-name", type="ExternalName"),
])
def test_any_other_service_is_left_as_json_in_its_place(unusual: dict[str, Any]) -> None:
    objects = usual_services()[:1] + [unusual] + usual_services()[1:2]
    found = decode_page(SERVICE, page(objects))
    assert [type(item) for item in found.items] == [Parsed, dict, Parsed]
    assert found.items[1] == unusual


def test_other_kinds_are_json() -> None:
    objects = [{"kind": "Node", "metadata": {"name": "node1"}}]
    found = decode_page("Node", page(objects, resourceVersion="3"))
    assert (found.items, found.version, found.token) == (objects, "3", None)


@pytest.mark.parametrize("kind", [SERVICE, ENDPOINT_SLICE, "Node"])
@pytest.mark.parametrize(("data", "message"), [
    (b"<html>", "is not JSON"),
    (b"[1, 2]", "has no list of items"),
    (b'{"items": {"a": 1}}', "has no list of items"),
])
def test_what_is_not_a_list_is_refused(kind: str, data: bytes, message: str) -> None:
    with pytest.raises(NotAList, match=message):
        decode_page(kind, data)


@pytest.mark.parametrize("kind", [SERVICE, ENDPOINT_SLICE, "Node"])
def test_a_list_without_items_or_metadata_is_empty(kind: str) -> None:
    found = decode_page(kind, b'{"items": null}')
    assert (found.items, found.version, found.token) == ([], "", None)


def test_a_failure_making_a_value_leaves_the_object_to_parse_py(monkeypatch: pytest.MonkeyPatch) -> None:
    import kproxy.sources.list_pages as list_pages

    def broken(item: Any) -> Parsed | None:
        raise RuntimeError("a bug")

    monkeypatch.setitem(list_pages._TYPED, ENDPOINT_SLICE, (list_pages._TYPED[ENDPOINT_SLICE][0], broken))
    objects = [usual("web", "10.244.1.2")]
    found = decode_page(ENDPOINT_SLICE, page(objects))
    assert found.items == objects
