"""Source threads that cannot die silently.

A source thread retries what it expects to fail (an API error, a manifest that does not
parse). Anything else escaping it means the agent no longer follows the cluster: rather
than keep serving a stale ruleset with /healthz at 200, the failure is reported to a
`SourceFailure`, which fails the health check and stops the agent so it exits non-zero
and the DaemonSet restarts it.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import structlog

log = structlog.get_logger(__name__)


class SourceFailure:
    """The first fatal failure of a source thread; `listen` hooks run when it happens (or
    at once, if it already did). Calling it sets `stop`."""

    def __init__(self, stop: threading.Event) -> None:
        self._stop = stop
        self._lock = threading.Lock()
        self._hooks: list[Callable[[str], object]] = []
        self.reason: str | None = None

    def listen(self, hook: Callable[[str], object]) -> None:
        with self._lock:
            self._hooks.append(hook)
            reason = self.reason
        if reason is not None:
            hook(reason)

    def __call__(self, reason: str) -> None:
        with self._lock:
            first = self.reason is None
            if first:
                self.reason = reason
            hooks = list(self._hooks)
        if not first:
            return
        for hook in hooks:
            hook(reason)
        self._stop.set()


def start_guarded(name: str, target: Callable[..., object], on_fatal: Callable[[str], object],
                  *args: Any) -> threading.Thread:
    """Run `target(*args)` in a daemon thread; an exception escaping it is logged with its
    traceback and reported to `on_fatal` (one line: thread, type, message)."""

    def body() -> None:
        try:
            target(*args)
        except BaseException as exc:  # whatever kills the thread must be reported
            reason = " ".join(f"{name}: {type(exc).__name__}: {exc}".split())[:300]
            log.exception("source thread failed", thread=name, error=reason)
            on_fatal(reason)

    thread = threading.Thread(target=body, name=name, daemon=True)
    thread.start()
    return thread
