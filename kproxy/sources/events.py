"""Events on this node's Node object, as upstream kube-proxy records them (events.k8s.io/v1):
`Starting` (action StartKubeProxy) once the agent runs, and a Warning when its healthz or
metrics server cannot be served. An event that cannot be written is logged, never fatal."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from kubernetes.client import ApiClient

from kproxy.sources.api_request import request

log = structlog.get_logger(__name__)

ACTION_START = "StartKubeProxy"  # upstream's action for every start-up event
REPORTING_CONTROLLER = "kproxy"
# Events about a cluster-scoped object live in "default", as client-go's recorder puts them.
EVENT_NAMESPACE = "default"
TIMEOUT_S = 5.0


def node_event(node: str, type_: str, reason: str, note: str, now_ns: int) -> dict[str, Any]:
    """An events.k8s.io/v1 Event about Node `node`, shaped as upstream's recorder makes it
    (name: regarding name and the time in hex; the Node's uid is its name, as kube-proxy's
    NodeRef has it). Pure."""
    moment = datetime.fromtimestamp(now_ns // 10**9, UTC).replace(microsecond=now_ns // 1000 % 10**6)
    stamp = moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # a MicroTime
    return {
        "apiVersion": "events.k8s.io/v1",
        "kind": "Event",
        "metadata": {"name": f"{node}.{now_ns:x}", "namespace": EVENT_NAMESPACE},
        "eventTime": stamp,
        "reportingController": REPORTING_CONTROLLER,
        "reportingInstance": f"{REPORTING_CONTROLLER}-{node}",
        "action": ACTION_START,
        "reason": reason,
        "type": type_,
        "note": note[:1024],
        "regarding": {"kind": "Node", "name": node, "uid": node},
    }


class NodeEvents:
    """Writes events about this node from a short-lived thread, so the API never delays the
    agent; `wait=True` (before an exit) waits for the write, at most TIMEOUT_S."""

    def __init__(self, api_client: ApiClient, node: str,
                 clock_ns: Callable[[], int] = time.time_ns) -> None:
        self._api_client = api_client
        self._node = node
        self._clock_ns = clock_ns

    def record(self, type_: str, reason: str, note: str = "", wait: bool = False) -> None:
        body = node_event(self._node, type_, reason, note, self._clock_ns())
        thread = threading.Thread(target=self._write, args=(body,), name="node-event", daemon=True)
        thread.start()
        if wait:
            thread.join(TIMEOUT_S + 1)

    def _write(self, body: dict[str, Any]) -> None:
        try:
            path = f"/apis/events.k8s.io/v1/namespaces/{EVENT_NAMESPACE}/events"
            # read to the end, so that the connection goes back to the pool
            request(self._api_client, "POST", path, body=body, timeout=TIMEOUT_S).read()
        except Exception as exc:  # noqa: BLE001 - RBAC, API down...: the event is lost, the agent goes on
            log.warning("cannot record an event on this node", reason=body["reason"],
                        error=" ".join(str(exc).split())[:300])
