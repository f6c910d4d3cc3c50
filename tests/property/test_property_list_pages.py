"""list_pages: a page of EndpointSlices, decoded into records and values where it can be,
parses to exactly what parse.py makes of its objects one by one: the same values under
the same keys, the same objects refused with the same messages."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import assume, given

from kproxy.sources.list_pages import decode_page
from kproxy.tracker import ENDPOINT_SLICE, Parsed, Tracker
from tests.property.strategies import clusters, examples, mutated

valid = clusters().map(lambda objects: [(obj["kind"], obj) for obj in objects])


@examples(300)
@given(objects=mutated(clusters()) | valid)
def test_a_slice_page_parses_as_its_objects_one_by_one(objects: list[tuple[str, Any]]) -> None:
    try:  # what arrives is JSON: no NaN
        data = json.dumps({"items": [obj for kind, obj in objects if kind == ENDPOINT_SLICE]}, allow_nan=False)
    except ValueError:
        assume(False)
    page = decode_page(ENDPOINT_SLICE, data.encode())
    decoded, one_by_one = Tracker().parsed_list(), Tracker().parsed_list()
    decoded.add(ENDPOINT_SLICE, page.items)
    one_by_one.add(ENDPOINT_SLICE, json.loads(data)["items"])
    assert decoded.stores == one_by_one.stores
    assert decoded.invalid == one_by_one.invalid


@examples(100)
@given(objects=valid)
def test_valid_ipv4_slices_without_hints_come_parsed(objects: list[tuple[str, Any]]) -> None:
    usual = [obj for kind, obj in objects if kind == ENDPOINT_SLICE and obj["addressType"] == "IPv4"
             and not any("hints" in ep for ep in obj["endpoints"])]
    page = decode_page(ENDPOINT_SLICE, json.dumps({"items": usual}).encode())
    assert all(type(item) is Parsed for item in page.items) and len(page.items) == len(usual)
