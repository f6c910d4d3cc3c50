"""The one place that builds things: flags (and the config file under them) become a
source, a node config, backends, the agent and its runner, the HTTP servers."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import structlog

from kproxy import node as node_facts
from kproxy.backends.base import Backend
from kproxy.backends.registry import make_backend, node_variant, remove_other_modes
from kproxy.cli.errors import UsageError
from kproxy.health.http import TEXT, Response, RouteServer
from kproxy.health.proxier import HealthEndpoints, ProxyHealth
from kproxy.metrics import ChangeSource, ObservedSync, ProxyMetrics, SyncReportLike
from kproxy.model import IPAddress, NodeConfig
from kproxy.sources.manifests import ManifestError, ManifestSource
from kproxy.sources.threads import SourceFailure, start_guarded
from kproxy.sysctls import ConntrackSettings, apply_sysctls, desired_sysctls
from kproxy.tracker import Tracker

log = structlog.get_logger("kproxy")


# --- this node ------------------------------------------------------------------------------

def node_name(args: argparse.Namespace) -> str:
    return str(args.hostname_override or os.environ.get("NODE_NAME") or socket.gethostname()).lower()


def node_config(args: argparse.Namespace,
                source_node_ips: Callable[[str], tuple[IPAddress, ...]] = lambda _name: ()) -> NodeConfig:
    """Upstream's order for node IPs: --node-ip, else the Node object, else the default route."""
    hostname = node_name(args)
    node_ips = tuple(args.node_ip) or source_node_ips(hostname) or node_facts.detect_node_ips()
    if not node_ips:
        log.warning("no node IP found; NodePorts will not answer", hint="pass --node-ip")
    local_ips = node_facts.local_addresses() if args.nodeport_addresses else ()
    return NodeConfig(
        hostname=hostname,
        node_ips=node_ips,
        local_ips=local_ips,
        cluster_cidrs=args.cluster_cidr,
        service_cidrs=args.service_cluster_ip_range,
        nodeport_cidrs=args.nodeport_addresses,
        masquerade_all=args.masquerade_all,
    )


# --- where Services come from ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StartedSource:
    wait_synced: Callable[[float], bool]  # True once a full state is known
    node_ips: Callable[[str], tuple[IPAddress, ...]]  # this node's IPs, if the source knows
    read_node: Callable[[str], dict[str, Any] | None] | None = None  # the Node object (None: unknown)
    skipped: Callable[[], int] = lambda: 0  # malformed entries the source left out (the tracker's aside)


def start_source(args: argparse.Namespace, tracker: Tracker, stop: threading.Event,
                 watch: bool, on_fatal: Callable[[str], object] | None = None) -> StartedSource:
    """The source of --manifests or the API, started. A source thread that cannot continue
    calls `on_fatal` (default: a SourceFailure that sets `stop`)."""
    on_fatal = on_fatal or SourceFailure(stop)
    if args.manifests and args.kubeconfig:
        raise UsageError("--manifests and --kubeconfig exclude each other")
    if args.manifests:
        source = ManifestSource(args.manifests, tracker)
        try:
            source.load_once()
        except ManifestError as err:
            raise UsageError(str(err)) from None
        if watch:
            start_guarded("manifests", source.watch, on_fatal, stop)
        return StartedSource(wait_synced=lambda _timeout: True, node_ips=lambda _name: (),
                             skipped=lambda: source.skipped)
    from kproxy.sources.api import ApiSource, load_api_client  # 0.4 s of imports, only with the API

    try:
        client = load_api_client(args.kubeconfig)
    except Exception as err:  # noqa: BLE001 - any config problem is one line for the user
        raise UsageError(f"kubeconfig: {err}") from None
    api = ApiSource(client, tracker, stop, node_name=node_name(args), on_fatal=on_fatal)
    api.run()
    return StartedSource(wait_synced=api.wait_synced,
                         node_ips=lambda name: node_facts.node_ips_from_api(client, name),
                         read_node=lambda name: node_facts.read_node_json(client, name))


# --- the kernel -------------------------------------------------------------------------------

def backends_for(args: argparse.Namespace, node: NodeConfig) -> dict[int, Backend]:
    """A backend per IP family for --proxy-mode, after removing the other modes' rules."""
    removed = remove_other_modes(args.proxy_mode)
    if removed:
        log.info("removed the rules of another proxy mode", removed_mode=",".join(removed),
                 proxy_mode=args.proxy_mode)
    variant = node_variant(args.iptables_variant) if args.proxy_mode == "iptables" else "auto"
    backends = {family: make_backend(args.proxy_mode, family=family, iptables_variant=variant,
                                     localhost_nodeports=args.iptables_localhost_nodeports)
                for family in node.families()}
    if args.proxy_mode == "iptables":
        log.info("iptables backend", variant=variant, families=list(backends))
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


# --- metrics and health -------------------------------------------------------------------------

@dataclass(slots=True)
class Observability:
    metrics: ProxyMetrics
    health: ProxyHealth
    servers: list[RouteServer] = field(default_factory=list)

    def queued(self) -> None:
        """A change arrived that needs a sync (a tracker listener)."""
        self.health.queued_update()
        self.metrics.queued(time.time())

    def observe(self, sync: Callable[[], SyncReportLike], changes: ChangeSource) -> ObservedSync:
        return ObservedSync(sync, changes, self.metrics, self.health)

    def close(self) -> None:
        for server in self.servers:
            server.close()


def metrics_routes(metrics: ProxyMetrics) -> dict[str, Callable[[], Response]]:
    return {
        "/metrics": lambda: (200, *metrics.exposition()),
        "/proxyMode": lambda: (200, TEXT, metrics.mode.encode()),
        # upstream's metrics server also answers /healthz (plain "ok": the process is up)
        "/healthz": lambda: (200, TEXT, b"ok"),
    }


def start_observability(mode: str, changes: ChangeSource, sync_period: float,
                        metrics_address: str | None, healthz_address: str | None,
                        clock: Callable[[], float] = time.time) -> Observability:
    """Servers that cannot bind are logged and left out (upstream's bindAddressHardFail: false)."""
    metrics = ProxyMetrics(mode, changes)
    health = ProxyHealth(timeout=2 * sync_period, clock=clock)
    endpoints = HealthEndpoints(
        health, lambda path, code: (metrics.healthz if path == "healthz" else metrics.livez).labels(str(code)).inc())
    obs = Observability(metrics, health)
    wanted: list[tuple[str, str | None, dict[str, Callable[[], Response]]]] = [
        ("metrics", metrics_address, metrics_routes(metrics)),
        ("healthz", healthz_address, {"/healthz": endpoints.healthz, "/livez": endpoints.livez}),
    ]
    for name, address, routes in wanted:
        if not address:
            continue
        try:
            obs.servers.append(RouteServer(address, routes, name).start())
        except OSError as err:
            log.error("cannot serve", server=name, address=address, error=err.strerror or str(err))
    obs.queued()  # the first sync is due: /healthz fails if it does not happen in time
    return obs


def install_stop_handlers(stop: threading.Event, wake: Callable[[], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        wake()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
