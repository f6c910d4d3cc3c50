"""list_pages: a page of Services or EndpointSlices, decoded into records and values where
it can be, parses to exactly what parse.py makes of its objects one by one: the same
values under the same keys, the same objects refused with the same messages."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

from kproxy.sources.list_pages import decode_page
from kproxy.tracker import ENDPOINT_SLICE, SERVICE, Parsed, Tracker
from tests.property.strategies import clusters, examples, mutated

valid = clusters().map(lambda objects: [(obj["kind"], obj) for obj in objects])


@examples(300)
@given(objects=mutated(clusters()) | valid, kind=st.sampled_from([SERVICE, ENDPOINT_SLICE]))
def test_a_page_parses_as_its_objects_one_by_one(objects: list[tuple[str, Any]], kind: str) -> None:
    try:  # what arrives is JSON: no NaN
        data = json.dumps({"items": [obj for k, obj in objects if k == kind]}, allow_nan=False)
    except ValueError:
        assume(False)
    page = decode_page(kind, data.encode())
    decoded, one_by_one = Tracker().parsed_list(), Tracker().parsed_list()
    decoded.add(kind, page.items)
    one_by_one.add(kind, json.loads(data)["items"])
    assert decoded.stores == one_by_one.stores
    assert decoded.invalid == one_by_one.invalid


def usual(kind: str, obj: dict[str, Any]) -> bool:
    if kind == ENDPOINT_SLICE:
        return obj["addressType"] == "IPv4" and not any("hints" in ep for ep in obj["endpoints"])
    spec = obj["spec"]
    return (spec["type"] != "LoadBalancer" and spec["clusterIPs"] == [spec["clusterIP"]]
            and ":" not in spec["clusterIP"] and not spec.get("externalIPs")
            and "sessionAffinity" not in spec and "externalTrafficPolicy" not in spec)


@examples(100)
@given(objects=valid, kind=st.sampled_from([SERVICE, ENDPOINT_SLICE]))
def test_the_usual_objects_come_parsed(objects: list[tuple[str, Any]], kind: str) -> None:
    chosen = [obj for k, obj in objects if k == kind and usual(k, obj)]
    page = decode_page(kind, json.dumps({"items": chosen}).encode())
    assert all(type(item) is Parsed for item in page.items) and len(page.items) == len(chosen)
