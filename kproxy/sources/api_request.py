"""Requests to the API server through the kubernetes client's ApiClient: its configuration,
credentials, TLS and connection pool, and the exceptions its generated methods raise.

The generated classes (CoreV1Api, DiscoveryV1Api, ...) are not used: importing them
builds hundreds of pydantic model classes, ~22 MB and ~0.6 s at start-up, for bodies that
kproxy reads as raw JSON anyway.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import structlog
from kubernetes.client import ApiClient
from kubernetes.client.exceptions import ApiException

log = structlog.get_logger(__name__)

Timeout = float | tuple[float, float] | None


def request(api_client: ApiClient, method: str, path: str, query: Mapping[str, str | int | bool | None] = {},
            body: Any = None, timeout: Timeout = None) -> Any:
    """The unread response (a urllib3 response) of a 2xx answer; ApiException otherwise, as
    a generated method called with `_preload_content=False` raises. None values in `query`
    are left out; booleans are sent as "true" and "false"."""
    params = [(k, str(v).lower() if isinstance(v, bool) else v) for k, v in query.items() if v is not None]
    headers = {"Accept": "application/json"}
    if body is not None:
        headers["Content-Type"] = "application/json"
    serialized = api_client.param_serialize(method=method, resource_path=path, query_params=params,
                                            header_params=headers, body=body, auth_settings=["BearerToken"])
    answer = api_client.call_api(*serialized, _request_timeout=timeout)
    if not 200 <= answer.status <= 299:
        answer.read()
        raise ApiException.from_response(http_resp=answer, body=None, data=None)
    return answer.response


class Collection:
    """List and watch one collection (e.g. /api/v1/services, every namespace), with fixed
    query parameters (a field selector) added to each request."""

    def __init__(self, api_client: ApiClient, path: str, **fixed: str) -> None:
        self._api_client = api_client
        self.path = path
        self._fixed = fixed

    def get(self, query: Mapping[str, str | int | bool | None], timeout: Timeout) -> Any:
        return request(self._api_client, "GET", self.path, {**self._fixed, **query}, timeout=timeout)


def read_node(api_client: ApiClient, node_name: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """A Node object as a dict, or None when it cannot be read (the caller keeps what it
    knew: API trouble must not change health or addresses)."""
    try:
        path = f"/api/v1/nodes/{quote(node_name, safe='')}"
        node = json.loads(request(api_client, "GET", path, timeout=timeout).data)
    except Exception as exc:  # noqa: BLE001 - unknown node or API trouble: caller falls back
        log.debug("cannot read this node", node=node_name, error=" ".join(str(exc).split())[:300])
        return None
    return node if isinstance(node, dict) else None
