"""This node's Node object, read raw from the API (for /healthz's node-deletion check)."""

from __future__ import annotations

import json
from typing import Any

import structlog
from kubernetes import client

log = structlog.get_logger(__name__)


def read_node_json(api_client: client.ApiClient, node_name: str, timeout: float = 10.0) -> dict[str, Any] | None:
    """The Node as a dict, or None when it cannot be read (the caller keeps what it knew)."""
    try:
        response = client.CoreV1Api(api_client).read_node(node_name, _preload_content=False,
                                                          _request_timeout=timeout)
        node = json.loads(response.data)
    except Exception as exc:  # noqa: BLE001 - API trouble must not change health
        log.debug("cannot read this node", node=node_name, error=str(exc))
        return None
    return node if isinstance(node, dict) else None
