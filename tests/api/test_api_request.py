"""Requests through the kubernetes client's ApiClient without its generated API classes
(sources/api_request.py), against the in-project API server: the answers, the errors the
generated methods would raise, and the Node read for the node's IPs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from kubernetes.client.exceptions import ApiException

from kproxy.node import node_ips_from_api
from kproxy.sources.api import load_api_client
from kproxy.sources.api_request import Collection, read_node, request
from tests.api.fake_apiserver import FakeApiServer, Store, write_kubeconfig

pytestmark = pytest.mark.timeout(20)


@pytest.fixture
def api(tmp_path):
    store = Store()
    server = FakeApiServer(store)
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, server.url)
    yield store, load_api_client(str(kubeconfig))
    server.stop()


def node(name: str, *addresses: tuple[str, str]) -> dict:
    return {"kind": "Node", "metadata": {"name": name},
            "status": {"addresses": [{"type": t, "address": a} for t, a in addresses]}}


def test_a_collection_lists_with_its_fixed_query_and_pages(api):
    store, client = api
    for name in ("a", "b", "c"):
        store.apply(node(name))
    nodes = Collection(client, "/api/v1/nodes")
    page = json.loads(nodes.get({"limit": 2, "continue": None, "labelSelector": None}, timeout=5).read())
    assert [n["metadata"]["name"] for n in page["items"]] == ["a", "b"]
    rest = json.loads(nodes.get({"limit": 2, "continue": page["metadata"]["continue"]}, timeout=5).read())
    assert [n["metadata"]["name"] for n in rest["items"]] == ["c"]
    assert store.list_limits[-2:] == [("nodes", 2, False), ("nodes", 2, True)]


def test_a_watch_query_sends_booleans_as_the_api_spells_them(api):
    store, client = api
    version = store.apply(node("a"))
    response = Collection(client, "/api/v1/nodes").get(
        {"watch": True, "resourceVersion": str(version - 1), "timeoutSeconds": 1}, timeout=5)
    first = json.loads(response.read().split(b"\n")[0])
    assert (first["type"], first["object"]["metadata"]["name"]) == ("ADDED", "a")
    assert store.watch_versions[-1] == ("nodes", str(version - 1))


def test_an_error_answer_is_the_api_exception_the_generated_methods_raise(api):
    _, client = api
    with pytest.raises(ApiException) as caught:
        request(client, "GET", "/api/v1/nowhere", timeout=5)
    assert caught.value.status == 404


def test_the_node_is_read_by_name_and_gives_the_node_ips(api):
    store, client = api
    store.apply(node("node1", ("ExternalIP", "203.0.113.9"), ("InternalIP", "10.0.0.5")))
    read = read_node(client, "node1")
    assert read is not None and read["metadata"]["name"] == "node1"
    assert [str(ip) for ip in node_ips_from_api(read, "node1")] == ["10.0.0.5"]
    assert read_node(client, "other") is None  # 404: the caller keeps what it knew
    assert node_ips_from_api(None, "other") == ()


AGENT_WITH_THE_API = """
import sys, threading
from kproxy.cli import run
from kproxy.sources.api import ApiSource, load_api_client
from kproxy.sources.events import NodeEvents
from kproxy.tracker import Tracker
client = load_api_client(sys.argv[1])
ApiSource(client, Tracker(), threading.Event(), node_name="node1", service_cidrs=True)
NodeEvents(client, "node1")
print(sorted(m for m in sys.modules if m.startswith(("kubernetes.client.api.", "pyroute2"))))
"""


def test_an_agent_with_the_api_imports_neither_generated_api_classes_nor_pyroute2(tmp_path):
    # the generated classes build hundreds of pydantic models at import (~22 MB, ~0.6 s of
    # start-up); pyroute2 (~10 MB) serves only IPVS mode and addresses read from the kernel
    kubeconfig = tmp_path / "kubeconfig"
    write_kubeconfig(kubeconfig, "http://127.0.0.1:9")
    done = subprocess.run([sys.executable, "-c", AGENT_WITH_THE_API, str(kubeconfig)],
                          capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
