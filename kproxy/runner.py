"""Running syncs: a bounded-frequency runner, after upstream's async.BoundedFrequencyRunner,
and the garbage collector kept out of the way of big builds.

Sync requests may arrive thousands of times a second; the sync runs at most once per
`min_interval`, soon after a request, and again after `retry_interval` when it fails.

A full list, or planning and rendering a full sync, allocates millions of objects that
form no reference cycles: reference counting frees them. Yet every few hundred thousand
allocations the collector walks every object it tracks: at 10k Services its full
collections took about 1 s of a 3 s build, more than that at 50k. While a build runs the
collector is paused (`gc_paused`); after a full sync the agent's state is frozen (`gc_settle`,
gc.freeze), so the collections that run during small syncs walk only what is new instead
of all of it (one that walked everything showed as a 30 ms spike in a 4 ms sync at 10k).
A list or a reload freezes what it built too (`gc_keep`): otherwise the collector, let go,
walked its million new objects (0.2 s at 10k) between the list and the sync it causes.

Frozen objects are still freed when nothing refers to them; only a reference cycle
through one would be kept, and kproxy's state is made of values that hold none. What else
a list froze uncollected (a few cycles of its HTTP requests) is collected at the next
settle, which thaws everything first.
"""

from __future__ import annotations

import gc
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Protocol, TypeVar

import structlog

log = structlog.get_logger(__name__)


class SyncRunner:
    def __init__(
        self,
        sync: Callable[[], object],
        min_interval: float,
        max_interval: float | None = None,
        retry_interval: float = 1.0,
        max_retry_interval: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._sync = sync
        self._min_interval = min_interval
        self._max_interval = max_interval  # sync at least this often (upstream --sync-period)
        self._retry_interval = retry_interval
        self._max_retry_interval = max_retry_interval
        self._clock = clock
        self._wake = threading.Event()
        self._pending = True  # the first sync needs no request
        self._lock = threading.Lock()
        self.failures = 0

    def request(self) -> None:
        with self._lock:
            self._pending = True
        self._wake.set()

    def run(self, stop: threading.Event) -> None:
        last_start = float("-inf")
        retry_at: float | None = None
        while not stop.is_set():
            now = self._clock()
            wake_at = [t for t in (retry_at, self._periodic_at(last_start)) if t is not None]
            with self._lock:
                due = self._pending or any(now >= t for t in wake_at)
            if not due:
                self._wait(stop, max(0.0, min(wake_at) - now) if wake_at else None)
                continue
            earliest = last_start + self._min_interval
            if now < earliest:
                self._wait(stop, earliest - now)
                continue
            with self._lock:
                self._pending = False
            last_start = now
            try:
                self._sync()
            except Exception as err:  # noqa: BLE001 - any failure is retried, never fatal
                self.failures += 1
                delay = min(self._retry_interval * 2 ** (self.failures - 1), self._max_retry_interval)
                retry_at = self._clock() + delay
                log.error("sync failed", error=str(err), retry_in_s=round(delay, 2))
            else:
                self.failures = 0
                retry_at = None

    def _periodic_at(self, last_start: float) -> float | None:
        return None if self._max_interval is None else last_start + self._max_interval

    def _wait(self, stop: threading.Event, timeout: float | None) -> None:
        # wake on a request, on stop (the stopper also sets our event), or on timeout
        self._wake.wait(timeout if timeout is not None else 1.0)
        self._wake.clear()

    def wake(self) -> None:
        self._wake.set()


# --- the cyclic garbage collector
_lock = threading.Lock()
_pauses = 0  # builds running now (a list thread and the sync thread may overlap)
_was_enabled = True
_thaw = False  # frozen by gc_keep since the last settle: the next settle collects everything

class _Report(Protocol):
    @property
    def full(self) -> bool: ...


R = TypeVar("R", bound=_Report)


@contextmanager
def gc_paused() -> Iterator[None]:
    global _pauses, _was_enabled
    with _lock:
        if _pauses == 0:
            _was_enabled = gc.isenabled()
            gc.disable()
        _pauses += 1
    try:
        yield
    finally:
        with _lock:
            _pauses -= 1
            if _pauses == 0 and _was_enabled:
                gc.enable()


def gc_keep() -> None:
    """Freeze what was just built (a list, a reload), uncollected: no collection walks it
    before the next settle."""
    global _thaw
    with _lock:
        gc.freeze()
        _thaw = True


def gc_settle() -> None:
    """Collect once, then freeze what survives: later collections skip it."""
    global _thaw
    with _lock:
        if _thaw:
            gc.unfreeze()  # what gc_keep froze is collected too, cycles and all
            _thaw = False
    gc.collect()
    gc.freeze()


def gc_settling(sync: Callable[[], R]) -> Callable[[], R]:
    """`sync`, settling after each full one."""

    def run() -> R:
        report = sync()
        if report.full:
            gc_settle()
        return report

    return run
