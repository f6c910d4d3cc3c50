"""Malformed objects through --manifests, in node1 with real traffic: skipped with a
warning each, everything else programmed; `sync --once` exits 0 and says how many it
skipped; `run` keeps following the file after a malformed object."""

from __future__ import annotations

import re

import pytest
import traffic
from kproxy_lab import Kproxy
from topology import Cluster

from manifests import endpoint, endpoint_slice, port, service, slice_port
from tests.malformed import SHAPES, Shape

pytestmark = pytest.mark.netns

WEB_IP = "10.96.0.10"
# In a manifest, an object that is a list is a list of objects: that shape cannot be written.
MANIFEST_SHAPES = [s for s in SHAPES if s.id != "svc-object-is-a-list"]
SPEC_IS_A_STRING = next(s for s in SHAPES if s.id == "svc-spec-is-a-string")


def web(cluster: Cluster, *pods: str, name: str = "web", ip: str = WEB_IP) -> list[dict]:
    return [
        service(name, ip, [port(80, 8080)]),
        endpoint_slice(name, [endpoint(cluster.pods[p]) for p in pods], [slice_port(8080)]),
    ]


def bad_objects(shapes: list[Shape]) -> list[object]:
    return [shape.make(f"bad{i}") for i, shape in enumerate(shapes)]


@pytest.mark.parametrize("shapes", [[SPEC_IS_A_STRING], MANIFEST_SHAPES], ids=["spec-is-a-string", "every-shape"])
def test_sync_once_programs_the_good_objects_and_counts_the_skipped(
        cluster: Cluster, kproxy: Kproxy, shapes: list[Shape]) -> None:
    objects = [*web(cluster, "pod2", "pod4"), *bad_objects(shapes), *web(cluster, "pod5", name="api", ip="10.96.0.11")]
    result = kproxy.sync(objects)  # raises unless the exit code is 0
    assert "Traceback" not in result.stderr, result.stderr
    warnings = [line for line in result.stderr.splitlines() if "skipping invalid object" in line]
    assert len(warnings) == len(shapes), result.stderr
    for shape in shapes:
        assert any(f"field={shape.field}" in w or f"field='{shape.field}'" in w for w in warnings), (shape, warnings)
    skipped = re.search(r"skipped malformed objects.*skipped=(\d+)", result.stderr)
    assert skipped and int(skipped.group(1)) == len(shapes), result.stderr
    r = traffic.tcp(cluster.ns("pod1"), WEB_IP, 80, count=20)
    assert set(r.pods) == {"pod2", "pod4"} and not r.failures, r
    r = traffic.tcp(cluster.ns("pod1"), "10.96.0.11", 80, count=3)
    assert set(r.pods) == {"pod5"} and not r.failures, r


def test_run_keeps_applying_file_changes_after_a_malformed_object(cluster: Cluster, kproxy: Kproxy) -> None:
    agent = kproxy.start([*web(cluster, "pod2"), *bad_objects(MANIFEST_SHAPES)])
    kproxy.wait_synced(agent)
    traffic.wait_until(
        lambda: traffic.tcp(cluster.ns("pod1"), WEB_IP, 80, count=3),
        lambda r: set(r.pods) == {"pod2"} and not r.failures, what="web serves from pod2",
    )
    # A later change to the file: an endpoint moves and a Service is added, the bad ones stay.
    kproxy.write([*web(cluster, "pod4"), *bad_objects(MANIFEST_SHAPES), *web(cluster, "pod5", name="api",
                                                                              ip="10.96.0.11")])
    traffic.wait_until(
        lambda: traffic.tcp(cluster.ns("pod1"), "10.96.0.11", 80, count=3),
        lambda r: set(r.pods) == {"pod5"} and not r.failures, what="api added after the bad objects",
    )
    r = traffic.tcp(cluster.ns("pod1"), WEB_IP, 80, count=10)
    assert set(r.pods) == {"pod4"} and not r.failures, r
    # The malformed Service fixed in place is programmed too.
    fixed = web(cluster, "pod3", name="bad5", ip="10.96.0.12")
    kproxy.write([*web(cluster, "pod4"), *fixed])
    traffic.wait_until(
        lambda: traffic.tcp(cluster.ns("pod1"), "10.96.0.12", 80, count=3),
        lambda r: set(r.pods) == {"pod3"} and not r.failures, what="the fixed object is programmed",
    )
    assert agent.poll() is None, "agent died"
    log = next(log for p, log in kproxy.agents if p is agent).read_text()
    assert "Traceback" not in log and "source thread failed" not in log, log
