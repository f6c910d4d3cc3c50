"""SyncRunner: coalesces bursts, honours the minimum interval, retries failures."""

from __future__ import annotations

import threading
import time

from kproxy.runner import SyncRunner


def run_for(runner: SyncRunner, seconds: float, during=None) -> None:
    stop = threading.Event()
    thread = threading.Thread(target=runner.run, args=(stop,), daemon=True)
    thread.start()
    if during:
        during()
    time.sleep(seconds)
    stop.set()
    runner.wake()
    thread.join(timeout=5)
    assert not thread.is_alive()


def test_first_sync_runs_without_a_request_and_bursts_coalesce():
    starts: list[float] = []
    runner = SyncRunner(lambda: starts.append(time.monotonic()), min_interval=0.2)

    def burst() -> None:
        time.sleep(0.05)
        for _ in range(1000):
            runner.request()

    run_for(runner, 0.6, burst)
    # one initial sync, then the 1000 requests made within one interval give one more
    assert len(starts) == 2
    assert starts[1] - starts[0] >= 0.19


def test_no_request_no_sync():
    calls = []
    runner = SyncRunner(lambda: calls.append(1), min_interval=0.01)
    run_for(runner, 0.3)
    assert calls == [1]


def test_failure_is_retried_with_backoff_until_it_succeeds():
    outcomes = [RuntimeError("kernel said no"), RuntimeError("again"), None]
    calls = []

    def sync() -> None:
        calls.append(time.monotonic())
        outcome = outcomes.pop(0) if outcomes else None
        if outcome:
            raise outcome

    runner = SyncRunner(sync, min_interval=0.01, retry_interval=0.05)
    run_for(runner, 0.5)
    assert len(calls) == 3
    assert calls[2] - calls[1] >= calls[1] - calls[0] >= 0.04  # doubling delay
    assert runner.failures == 0


def test_periodic_sync_without_requests():
    calls = []
    runner = SyncRunner(lambda: calls.append(1), min_interval=0.01, max_interval=0.1)
    run_for(runner, 0.45)
    assert 3 <= len(calls) <= 6
