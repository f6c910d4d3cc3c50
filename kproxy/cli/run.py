"""`kproxy run` (the agent: watch and keep the rules in sync) and `kproxy sync` (once)."""

from __future__ import annotations

import argparse
import sys
import threading
import time

import structlog

from kproxy.agent import Agent
from kproxy.backends.iptables.kernel import IptablesError
from kproxy.backends.ipvs.kernel import IpvsError
from kproxy.backends.nft.kernel import NftError
from kproxy.backends.registry import commit_watch
from kproxy.cli.errors import EXIT_FAILED
from kproxy.cli.ipvs_mode import check_ipvs_flags
from kproxy.cli.wiring import (
    BindError,
    StartedSource,
    TakeOverOnce,
    apply_conntrack_sysctls,
    backends_for,
    check_local_detection,
    generation_source,
    install_stop_handlers,
    node_config,
    raise_open_file_limit,
    start_observability,
    start_source,
    take_over_node,
)
from kproxy.conntrack import ConntrackCleaner
from kproxy.health.proxier import watch_node_deletion
from kproxy.health.services import ServiceHealthServer
from kproxy.runner import SyncRunner, gc_settling
from kproxy.sources.threads import SourceFailure, start_guarded
from kproxy.tracker import Tracker

log = structlog.get_logger("kproxy")

WAIT_FOR_API_S = 60.0


def run(args: argparse.Namespace) -> int:
    check_ipvs_flags(args)
    check_local_detection(args)
    stop = threading.Event()
    raise_open_file_limit()
    failure = SourceFailure(stop)
    tracker = Tracker()
    source = start_source(args, tracker, stop, watch=True, on_fatal=failure)
    node = node_config(args, source.node_ips)
    try:  # before the kernel is touched: with --bind-address-hard-fail, a busy port changes nothing
        obs = start_observability(args.proxy_mode, tracker, args.sync_period, args.metrics_bind_address,
                                  args.healthz_bind_address, hard_fail=args.bind_address_hard_fail,
                                  families=node.families())
    except BindError as err:
        stop.set()
        bind_failure_event(source, str(err))
        sys.stderr.write(f"kproxy: error: {err}\n")
        return EXIT_FAILED
    apply_conntrack_sysctls(args)
    health_checks = ServiceHealthServer()
    backends = backends_for(args, node)
    agent = Agent(node, backends, tracker,
                  on_synced=(health_checks.after_sync, ConntrackCleaner().after_sync,
                             TakeOverOnce(args).after_sync),
                  generation=generation_source(args), verify_interval=args.sync_period,
                  watch=commit_watch(backends.values()))
    runner = SyncRunner(gc_settling(obs.observe(agent.sync, tracker)), min_interval=args.min_sync_period,
                        max_interval=args.sync_period)
    gave_up: list[str] = []

    def give_up(why: str) -> None:
        gave_up.append(why)
        stop.set()
        runner.wake()

    obs.keep_binding(stop, give_up)
    tracker.listen(obs.queued)
    tracker.listen(runner.request)

    def source_failed(reason: str) -> None:
        obs.health.fail(reason)  # /healthz and /livez answer 503 until the process is gone
        stop.set()
        runner.wake()

    failure.listen(source_failed)
    if source.read_node is not None:
        read_node = source.read_node
        start_guarded("node-deletion", watch_node_deletion, failure,
                      lambda: read_node(node.hostname), obs.health, stop)
    install_stop_handlers(stop, runner.wake)
    log.info("starting", node=node.hostname, node_ips=[str(i) for i in node.node_ips],
             source=args.manifests or "api", min_sync_period_s=args.min_sync_period)
    if source.events is not None:
        source.events.record("Normal", "Starting")  # upstream's "birth cry"
    # Never program a partial or empty view: rules stay as they are until a full list arrived.
    while not source.wait_synced(1.0) and not stop.is_set():
        log.info("waiting for the first full list from the API")
    if not stop.is_set():
        runner.run(stop)
    health_checks.close()
    obs.close()
    if failure.reason is not None:
        # Exit non-zero: the DaemonSet restarts the agent, which relists and adopts the rules.
        log.error("a source thread failed; exiting", reason=failure.reason)
        return EXIT_FAILED
    log.info("stopped; programmed rules stay in place")
    if gave_up:
        bind_failure_event(source, gave_up[0])
        sys.stderr.write(f"kproxy: error: {gave_up[0]}\n")
        return EXIT_FAILED
    return 0


def bind_failure_event(source: StartedSource, why: str) -> None:
    """Upstream's Warning event for a healthz or metrics server it cannot serve."""
    if source.events is not None:
        reason = "FailedToStartProxierHealthcheck" if "healthz" in why else "FailedToStartMetricServer"
        source.events.record("Warning", reason, why, wait=True)


def sync(args: argparse.Namespace) -> int:
    check_ipvs_flags(args)
    check_local_detection(args)
    stop = threading.Event()
    failure = SourceFailure(stop)
    tracker = Tracker()
    try:
        source = start_source(args, tracker, stop, watch=False, on_fatal=failure)
        apply_conntrack_sysctls(args)
        deadline = time.monotonic() + WAIT_FOR_API_S
        while not source.wait_synced(0.2):
            if failure.reason is not None or time.monotonic() > deadline:
                why = failure.reason or f"no full list from the API within {WAIT_FOR_API_S:.0f}s"
                sys.stderr.write(f"kproxy: error: {why}\n")
                return EXIT_FAILED
        node = node_config(args, source.node_ips)
        Agent(node, backends_for(args, node), tracker).sync()
        take_over_node(args)
        if skipped := tracker.invalid_count() + source.skipped():
            log.warning("skipped malformed objects (see above); the others are programmed", skipped=skipped)
    except (NftError, IptablesError, IpvsError) as err:
        sys.stderr.write(f"kproxy: error: the kernel refused the rules: {err}\n")
        return EXIT_FAILED
    finally:
        stop.set()
    return 0
