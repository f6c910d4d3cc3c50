"""What each `kproxy` subcommand does; cli.py parses, this wires and runs."""

from __future__ import annotations

import argparse
import os
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from ipaddress import IPv4Address
from typing import Any

import structlog

from kproxy.agent import Agent
from kproxy.backends import Backend, cleanup_nftables, make_backend
from kproxy.backends.iptables.kernel import IptablesError
from kproxy.backends.nft.kernel import LibNftKernel, NftError
from kproxy.backends.nft.objects import table_of
from kproxy.model import NodeConfig
from kproxy.conntrack import ConntrackCleaner
from kproxy.sysctls import ConntrackSettings, apply_sysctls, desired_sysctls
from kproxy.healthcheck import ServiceHealthServer
from kproxy.cli import EXIT_FAILED, UsageError, install_stop_handlers, node_config, node_name, print_json
from kproxy.config import dump_config
from kproxy.health import watch_node_deletion
from kproxy.observability import Observability, start_observability
from kproxy.runner import SyncRunner
from kproxy.tracker import Tracker
from kproxy.lab.command import lab_command
from kproxy.trace_command import trace_command
from kproxy.view import format_view, merge_views

log = structlog.get_logger("kproxy")

WAIT_FOR_API_S = 60.0


@dataclass(frozen=True, slots=True)
class StartedSource:
    wait_synced: Callable[[float], bool]  # True once a full state is known
    node_ips: Callable[[str], tuple[IPv4Address, ...]]  # this node's IPs, if the source knows
    read_node: Callable[[str], dict[str, Any] | None] | None = None  # the Node object (None: unknown)


def _start_source(args: argparse.Namespace, tracker: Tracker, stop: threading.Event,
                  watch: bool) -> StartedSource:
    if args.manifests and args.kubeconfig:
        raise UsageError("--manifests and --kubeconfig exclude each other")
    if args.manifests:
        from kproxy.sources.manifests import ManifestError, ManifestSource

        source = ManifestSource(args.manifests, tracker)
        try:
            source.load_once()
        except ManifestError as err:
            raise UsageError(str(err)) from None
        if watch:
            threading.Thread(target=source.watch, args=(stop,), name="manifests", daemon=True).start()
        return StartedSource(wait_synced=lambda _timeout: True, node_ips=lambda _name: ())
    from kproxy.sources.api import ApiSource, load_api_client, node_ips_from_api
    from kproxy.node_api import read_node_json

    try:
        client = load_api_client(args.kubeconfig)
    except Exception as err:  # noqa: BLE001 - any config problem is one line for the user
        raise UsageError(f"kubeconfig: {err}") from None
    api = ApiSource(client, tracker, stop, node_name=node_name(args))
    api.run()
    return StartedSource(wait_synced=api.wait_synced, node_ips=lambda name: node_ips_from_api(client, name),
                         read_node=lambda name: read_node_json(client, name))


def _backends(args: argparse.Namespace, node: NodeConfig) -> dict[int, Backend]:
    """A backend per IP family for --proxy-mode, after removing the other mode's rules
    (switching modes must not leave two sets of rules fighting over the same packets)."""
    if args.proxy_mode == "iptables":
        removed = cleanup_nftables()
    else:
        from kproxy.backends.iptables.backend import cleanup_all_variants

        removed = cleanup_all_variants()
    if removed:
        log.info("removed the rules of the other proxy mode", proxy_mode=args.proxy_mode)
    families = node.families()
    backends = {family: make_backend(args.proxy_mode, localhost_nodeports=args.iptables_localhost_nodeports,
                                     iptables_variant=args.iptables_variant, family=family)
                for family in families}
    if args.proxy_mode == "iptables":
        log.info("iptables backend", variant=getattr(next(iter(backends.values())), "variant", "?"),
                 families=list(backends))
    return backends


def apply_conntrack_sysctls(args: argparse.Namespace) -> None:
    settings = ConntrackSettings(
        max_per_core=args.conntrack_max_per_core, min=args.conntrack_min,
        tcp_timeout_established=args.conntrack_tcp_timeout_established,
        tcp_timeout_close_wait=args.conntrack_tcp_timeout_close_wait,
        tcp_be_liberal=args.conntrack_tcp_be_liberal,
        udp_timeout=args.conntrack_udp_timeout, udp_timeout_stream=args.conntrack_udp_timeout_stream,
    )
    apply_sysctls(desired_sysctls(settings, os.cpu_count() or 1))


def run(args: argparse.Namespace) -> int:
    stop = threading.Event()
    runner: SyncRunner | None = None
    obs: Observability | None = None

    def changed() -> None:
        if obs is not None:
            obs.queued()
        if runner is not None:
            runner.request()

    tracker = Tracker(on_change=changed)
    source = _start_source(args, tracker, stop, watch=True)
    apply_conntrack_sysctls(args)
    node = node_config(args, source.node_ips)
    agent = Agent(node, _backends(args, node), tracker)
    health_checks = ServiceHealthServer()
    agent.on_synced.append(lambda plan, _report: health_checks.sync(plan.health_checks, plan.family))
    conntrack = ConntrackCleaner()
    agent.on_synced.append(lambda plan, _report: conntrack.after_sync(plan))
    obs = start_observability(args.proxy_mode, tracker, args.sync_period,
                              args.metrics_bind_address, args.healthz_bind_address)
    if source.read_node is not None:
        read_node = source.read_node
        threading.Thread(target=watch_node_deletion, args=(lambda: read_node(node.hostname), obs.health, stop),
                         name="node-deletion", daemon=True).start()
    runner = SyncRunner(obs.observe(agent.sync, tracker), min_interval=args.min_sync_period,
                        max_interval=args.sync_period)
    install_stop_handlers(stop, runner.wake)
    log.info("starting", node=node.hostname, node_ips=[str(i) for i in node.node_ips],
             source=args.manifests or "api", min_sync_period_s=args.min_sync_period)
    # Never program a partial or empty view: rules stay as they are until a full list arrived.
    while not source.wait_synced(1.0):
        if stop.is_set():
            return 0
        log.info("waiting for the first full list from the API")
    runner.run(stop)
    health_checks.close()
    obs.close()
    log.info("stopped; programmed rules stay in place")
    return 0


def sync(args: argparse.Namespace) -> int:
    stop = threading.Event()
    tracker = Tracker(on_change=lambda: None)
    try:
        source = _start_source(args, tracker, stop, watch=False)
        apply_conntrack_sysctls(args)
        if not source.wait_synced(WAIT_FOR_API_S):
            sys.stderr.write(f"kproxy: error: no full list from the API within {WAIT_FOR_API_S:.0f}s\n")
            return EXIT_FAILED
        node = node_config(args, source.node_ips)
        agent = Agent(node, _backends(args, node), tracker)
        agent.sync()
    except (NftError, IptablesError) as err:
        sys.stderr.write(f"kproxy: error: the kernel refused the rules: {err}\n")
        return EXIT_FAILED
    finally:
        stop.set()
    return 0


def dump(args: argparse.Namespace) -> int:
    mode = args.proxy_mode
    if mode == "auto":  # whichever mode has programmed this node; nftables if neither
        programmed = any(LibNftKernel(table_of(f)).list_table() is not None for f in (4, 6))
        mode = "nftables" if programmed else "iptables"
    if mode == "iptables":
        view = merge_views([make_backend("iptables", family=family).read_view() for family in (4, 6)])
        if mode != args.proxy_mode and not view.present:
            mode = "nftables"
    if args.raw:
        if mode == "iptables":
            from kproxy.backends.iptables.kernel import save_all
            from kproxy.backends.iptables.variant import detect_variant

            variant = detect_variant(save_all)
            for family in (4, 6):
                sys.stdout.write(save_all(variant, family) or "")
            return 0
        for family in (4, 6):
            kernel = LibNftKernel(table_of(family))
            sys.stdout.write(kernel.list_ruleset_text() if kernel.list_table() else "")
        return 0
    if mode == "nftables":
        view = merge_views([make_backend("nftables", family=family).read_view() for family in (4, 6)])
    if args.json:
        print_json(view.to_json())
    else:
        sys.stdout.write(format_view(view))
    return 0


def cleanup(_args: argparse.Namespace) -> int:
    from kproxy.backends.iptables.backend import cleanup_all_variants

    removed = cleanup_nftables()
    removed_iptables = cleanup_all_variants()
    log.info("cleanup", removed_table=removed, removed_iptables_rules=removed_iptables)
    return 0


def config(args: argparse.Namespace) -> int:
    sys.stdout.write(dump_config(args))
    return 0


COMMANDS: dict[str, Callable[[argparse.Namespace], int]] = {
    "run": run, "sync": sync, "dump": dump, "cleanup": cleanup, "config": config, "trace": trace_command,
    "lab": lab_command,
}
