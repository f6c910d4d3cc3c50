"""healthCheckNodePort answers, over real HTTP on loopback."""

from __future__ import annotations

import json
import socket
import urllib.error
import urllib.request

from kproxy.health.services import ServiceHealthServer, health_answer
from kproxy.model import ServiceName
from kproxy.plan import HealthCheck

WEB = ServiceName("shop", "web")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def get(port: int) -> tuple[int, dict[str, str], dict]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as resp:
            return resp.status, dict(resp.headers), json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), json.loads(err.read())


def test_answer_is_upstreams_shape():
    status, headers, body = health_answer(WEB, 2, True)
    assert status == 200
    assert headers["X-Load-Balancing-Endpoint-Weight"] == "2"
    assert json.loads(body) == {"service": {"namespace": "shop", "name": "web"},
                                "localEndpoints": 2, "serviceProxyHealthy": True}
    assert health_answer(WEB, 0, True)[0] == 503
    assert health_answer(WEB, 3, False)[0] == 503


def test_server_follows_the_plan():
    port = free_port()
    server = ServiceHealthServer("127.0.0.1")
    try:
        server.sync([HealthCheck(service=WEB, node_port=port, local_endpoints=1)])
        status, headers, body = get(port)
        assert (status, headers["X-Load-Balancing-Endpoint-Weight"], body["localEndpoints"]) == (200, "1", 1)
        server.sync([HealthCheck(service=WEB, node_port=port, local_endpoints=0)])
        status, _, body = get(port)
        assert (status, body["localEndpoints"], body["service"]["name"]) == (503, 0, "web")
        server.sync([])
        try:
            get(port)
            raise AssertionError("listener still open after its Service went away")
        except urllib.error.URLError:
            pass
    finally:
        server.close()
