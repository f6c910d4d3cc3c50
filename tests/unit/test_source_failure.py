"""A source thread that cannot continue: reported once, /healthz and /livez fail, and
`kproxy run` exits non-zero (so the DaemonSet restarts it) instead of serving a ruleset
that no longer follows the cluster."""

from __future__ import annotations

import importlib
import json
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from structlog.testing import capture_logs

from kproxy.backends.nft.backend import NftBackend
from kproxy.backends.nft.fake import FakeNft
from kproxy.cli import main
from kproxy.cli.errors import EXIT_FAILED
from kproxy.health.http import RouteServer
from kproxy.health.proxier import HealthEndpoints, ProxyHealth
from kproxy.sources.manifests import ManifestSource
from kproxy.sources.threads import SourceFailure, start_guarded
from tests.builders import endpoint_slice, service

run_module = importlib.import_module("kproxy.cli.run")  # the package's `run` names the function


def get(port: int, path: str) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)


def test_an_exception_escaping_a_guarded_thread_is_reported_with_its_traceback() -> None:
    reasons: list[str] = []

    def body(x: int) -> None:
        raise RuntimeError(f"boom {x}\nsecond line")

    with capture_logs() as logs:
        start_guarded("worker", body, reasons.append, 7).join(timeout=5)
    assert reasons == ["worker: RuntimeError: boom 7 second line"]
    assert logs[0]["event"] == "source thread failed" and logs[0]["exc_info"] is True


def test_source_failure_keeps_the_first_reason_runs_hooks_once_and_sets_stop() -> None:
    stop = threading.Event()
    failure = SourceFailure(stop)
    seen: list[str] = []
    failure.listen(seen.append)
    failure("first")
    failure("second")
    assert (failure.reason, seen, stop.is_set()) == ("first", ["first"], True)
    late: list[str] = []
    failure.listen(late.append)  # a hook added after the failure runs at once
    assert late == ["first"]


def test_a_failed_source_fails_healthz_and_livez_for_good() -> None:
    health = ProxyHealth(timeout=60)
    endpoints = HealthEndpoints(health)
    health.updated()
    assert endpoints.healthz()[0] == 200 and endpoints.livez()[0] == 200
    health.fail("manifests: RuntimeError: boom")
    health.updated()  # a sync completing afterwards does not make it healthy again
    assert endpoints.healthz()[0] == 503 and endpoints.livez()[0] == 503
    server = RouteServer("127.0.0.1:0", {"/healthz": endpoints.healthz, "/livez": endpoints.livez}, "healthz")
    server.start(announce=False)
    try:
        assert get(server.port, "/healthz") == 503 and get(server.port, "/livez") == 503
    finally:
        server.close()


@pytest.fixture
def signal_handlers() -> Iterator[None]:
    """`kproxy run` installs SIGTERM/SIGINT handlers: put pytest's back afterwards."""
    saved = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
    yield
    for sig, handler in saved.items():
        signal.signal(sig, handler)


class NoConntrack:
    def after_sync(self, *_args: Any) -> None:
        pass


@pytest.mark.timeout(60)
def test_run_exits_non_zero_when_the_manifests_watcher_dies(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, signal_handlers: None,
        capsys: pytest.CaptureFixture[str]) -> None:
    """A failure injected into the manifests reload: `kproxy run` returns 1 and its
    health was failed, within a few polls; without the guard it ran on for ever."""
    manifests = tmp_path / "m.yaml"
    manifests.write_text(yaml.safe_dump_all([service("web", cluster_ip="10.96.0.10"),
                                             endpoint_slice("web", ["10.244.1.2"])]))
    kernel = FakeNft()
    monkeypatch.setattr(run_module, "backends_for", lambda _args, _node: {4: NftBackend(kernel)})
    monkeypatch.setattr(run_module, "ConntrackCleaner", NoConntrack)
    monkeypatch.setattr(run_module, "apply_conntrack_sysctls", lambda _args: None)
    # no kernel at all: the ruleset generation (drift detection, where wired) is unknown
    monkeypatch.setattr(run_module, "generation_source", lambda _args: lambda: None, raising=False)
    observed: list[Any] = []
    original_observability = run_module.start_observability

    def capture_observability(*args: Any, **kwargs: Any) -> Any:
        observed.append(original_observability(*args, **kwargs))
        return observed[-1]

    monkeypatch.setattr(run_module, "start_observability", capture_observability)
    loads: list[int] = []
    original_load = ManifestSource.load_once

    def load_then_fail(self: ManifestSource) -> None:
        loads.append(1)
        if len(loads) > 1:
            raise RuntimeError("injected: the reload hit a bug")
        original_load(self)

    monkeypatch.setattr(ManifestSource, "load_once", load_then_fail)

    def touch_after_first_sync() -> None:
        deadline = time.monotonic() + 20
        while not kernel.scripts and time.monotonic() < deadline:
            time.sleep(0.05)
        manifests.write_text(manifests.read_text() + "\n")  # a change: the watcher reloads

    toucher = threading.Thread(target=touch_after_first_sync, daemon=True)
    toucher.start()
    started = time.monotonic()
    code = main(["run", "--manifests", str(manifests), "--node-ip", "192.168.50.10",
                 "--hostname-override", "node1", "--metrics-bind-address", "127.0.0.1:0",
                 "--healthz-bind-address", "127.0.0.1:0", "--min-sync-period", "0.1s"])
    took = time.monotonic() - started
    assert code == EXIT_FAILED
    assert took < 20
    assert "10.96.0.10" in "".join(kernel.scripts)  # it had programmed before the failure
    health = observed[0].health
    assert health.failure == "manifests: RuntimeError: injected: the reload hit a bug"
    assert HealthEndpoints(health).healthz()[0] == 503
    out = capsys.readouterr()
    logged = out.out + out.err  # main() configures its own logging
    assert "source thread failed" in logged and "Traceback" in logged
    assert "a source thread failed; exiting" in logged


def test_a_manifest_that_fails_to_parse_is_not_fatal(tmp_path: Path) -> None:
    """Expected failures (a file being edited into nonsense) keep the watcher alive."""
    from kproxy.tracker import Tracker

    path = tmp_path / "m.yaml"
    path.write_text(json.dumps(service("a")))
    tracker = Tracker()
    source = ManifestSource(path, tracker)
    source.load_once()
    stop = threading.Event()
    reasons: list[str] = []
    thread = start_guarded("manifests", source.watch, reasons.append, stop, 0.05)
    try:
        path.write_text("kind: [unclosed\n")
        time.sleep(0.4)
        path.write_text(json.dumps(service("b")))
        deadline = time.monotonic() + 5
        while [s.name for s in tracker.snapshot().services] != ["b"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert [s.name for s in tracker.snapshot().services] == ["b"]
        assert reasons == [] and thread.is_alive()
    finally:
        stop.set()
        thread.join(timeout=5)
