"""Lists read in pages (`limit`/`continue`), as client-go's reflector reads them: the fake
API server pages a consistent snapshot and expires continue tokens with 410 as the real
one does after a compaction; ApiSource reads every page, parses each while the next is fetched, and
answers an expired token with a full relist."""

from __future__ import annotations

import gc
import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from kproxy.model import ServiceName
from kproxy.tracker import ParsedList
from tests.api.fake_apiserver import FakeApiServer, Store
from tests.api.test_api_source import Harness, wait_until
from tests.builders import endpoint_slice, service

pytestmark = pytest.mark.timeout(30)

SERVICES = "/api/v1/services"
COUNT = 1203  # pages of 500: 500, 500 and 203


def cluster(count: int = COUNT) -> Store:
    store = Store()
    for i in range(count):
        store.apply(service(f"svc{i:04}", cluster_ip=f"10.96.{i >> 8}.{i & 255}"))
        store.apply(endpoint_slice(f"svc{i:04}", [f"10.1.{i >> 8}.{i & 255}"]))
    return store


def get(server: FakeApiServer, path: str, **query: Any) -> tuple[int, dict[str, Any]]:
    url = server.url + path + ("?" + "&".join(f"{k}={v}" for k, v in query.items()) if query else "")
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read())


@pytest.fixture
def server() -> Iterator[FakeApiServer]:
    s = FakeApiServer(cluster(5))
    yield s
    s.stop()


def test_the_fake_server_pages_a_consistent_snapshot(server: FakeApiServer) -> None:
    code, first = get(server, SERVICES, limit=2)
    assert code == 200
    assert [i["metadata"]["name"] for i in first["items"]] == ["svc0000", "svc0001"]
    assert first["metadata"]["remainingItemCount"] == 3
    version = first["metadata"]["resourceVersion"]
    # a change after the first page is not in the pages that follow: one version throughout
    server.store.apply(service("svc0003", cluster_ip="10.96.9.9"))
    server.store.apply(service("svc0002a", cluster_ip="10.96.9.10"))
    names, ips, token = [], [], first["metadata"]["continue"]
    while token:
        code, page = get(server, SERVICES, limit=2, **{"continue": token})
        assert code == 200 and page["metadata"]["resourceVersion"] == version
        names += [i["metadata"]["name"] for i in page["items"]]
        ips += [i["spec"]["clusterIP"] for i in page["items"]]
        token = page["metadata"].get("continue")
    assert names == ["svc0002", "svc0003", "svc0004"]
    assert "10.96.9.9" not in ips
    # a list without limit is whole, and the new version's
    code, whole = get(server, SERVICES)
    assert "continue" not in whole["metadata"] and len(whole["items"]) == 6


def test_the_fake_server_answers_an_expired_continue_with_410(server: FakeApiServer) -> None:
    _, first = get(server, SERVICES, limit=2)
    server.store.expire()  # a compaction: every continue token in flight is too old
    code, status = get(server, SERVICES, limit=2, **{"continue": first["metadata"]["continue"]})
    assert code == 410
    assert status["kind"] == "Status" and status["reason"] == "Expired" and "continue" in status["message"]


def test_lists_are_read_in_pages_and_applied_in_one_transaction(tmp_path: Path) -> None:
    store = cluster()
    h = Harness(tmp_path, store)
    try:
        with capture_logs() as logs:
            h.start()
        assert len(h.services()) == COUNT and len(h.slices()) == COUNT
        for resource in ("services", "endpointslices"):
            asked = [(limit, cont) for r, limit, cont in store.list_limits if r == resource]
            assert asked == [(500, False), (500, True), (500, True)]
        assert h.changes == 1  # both kinds, all pages: one tracker transaction
        listed = {line["kind"]: line for line in logs if line["event"] == "listed"}
        assert listed["Service"]["pages"] == 3 and listed["Service"]["objects"] == COUNT
        # the watch follows the list's version: a change after it arrives
        store.apply(service("svc0007", cluster_ip="10.96.200.7"))
        assert wait_until(lambda: str(h.tracker.snapshot().services[ServiceName("default", "svc0007")]
                                      .cluster_ip) == "10.96.200.7")
    finally:
        h.close()


def test_a_page_size_of_zero_lists_in_one_request(tmp_path: Path) -> None:
    store = cluster(20)
    h = Harness(tmp_path, store, list_page_size=0)
    try:
        h.start()
        assert len(h.services()) == 20
        assert [(limit, cont) for r, limit, cont in store.list_limits if r == "services"] == [(0, False)]
    finally:
        h.close()


def test_an_expired_continue_token_means_a_full_relist(tmp_path: Path) -> None:
    store = cluster()
    store.expire_continues("endpointslices")  # the slices' second page gets 410
    h = Harness(tmp_path, store)
    try:
        with capture_logs() as logs:
            h.start()
        assert len(h.services()) == COUNT and len(h.slices()) == COUNT
        asked = [(limit, cont) for r, limit, cont in store.list_limits if r == "endpointslices"]
        # first page, the expired continue, then the whole list again from its first page
        assert asked == [(500, False), (500, True), (500, False), (500, True), (500, True)]
        assert any(line["event"] == "list continue token expired, relisting" for line in logs)
        assert h.changes == 1  # nothing half-listed reached the tracker
    finally:
        h.close()


def test_pages_are_parsed_with_the_cyclic_collector_paused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    collecting: list[bool] = []
    add = ParsedList.add

    def recording_add(self: ParsedList, kind: str, objects: Any) -> None:
        collecting.append(gc.isenabled())
        add(self, kind, objects)

    monkeypatch.setattr(ParsedList, "add", recording_add)
    h = Harness(tmp_path, cluster())
    try:
        h.start()
        assert collecting and not any(collecting) and gc.isenabled()
    finally:
        h.close()


def test_the_next_page_is_fetched_while_one_is_parsed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """As client-go's pager buffers pages: the server's and the network's time per page
    hides behind the parse of the one before."""
    store = cluster()  # three pages of each kind
    add = ParsedList.add
    asked_while_parsing: dict[str, list[int]] = {"Service": [], "EndpointSlice": []}

    def waiting_add(self: ParsedList, kind: str, objects: Any) -> None:
        resource = {"Service": "services", "EndpointSlice": "endpointslices"}[kind]
        parsing = asked_while_parsing[kind]
        wanted = min(len(parsing) + 2, 3)  # this page's request and the next one's

        def asked() -> int:
            return sum(1 for r, _limit, _cont in store.list_limits if r == resource)

        wait_until(lambda: asked() >= wanted, timeout=3)
        parsing.append(asked())
        add(self, kind, objects)

    monkeypatch.setattr(ParsedList, "add", waiting_add)
    h = Harness(tmp_path, store)
    try:
        h.start()
        assert len(h.services()) == COUNT and len(h.slices()) == COUNT
        assert asked_while_parsing == {"Service": [2, 3, 3], "EndpointSlice": [2, 3, 3]}
    finally:
        h.close()
