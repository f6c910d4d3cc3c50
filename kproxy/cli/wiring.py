"""The one place that builds things: flags (and the config file under them) become a
source, a node config, backends, the agent and its runner, the HTTP servers."""

from __future__ import annotations

import argparse
import os
import resource
import signal
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import structlog

from kproxy import node as node_facts
from kproxy.agent import Generation
from kproxy.backends.base import Backend
from kproxy.backends.generation import RulesetGeneration
from kproxy.backends.registry import ModeUnavailable, check_mode, make_backend, node_variant, remove_other_modes
from kproxy.backends.takeover import KernelIpvs, take_over
from kproxy.cli.errors import UsageError
from kproxy.cli.ipvs_mode import prepare_ipvs
from kproxy.health.http import TEXT, Response, RouteServer
from kproxy.health.proxier import HealthEndpoints, ProxyHealth
from kproxy.metrics import ChangeSource, ObservedSync, ProxyMetrics, SyncReportLike
from kproxy.model import IPAddress, LocalMode, NodeConfig
from kproxy.runner import gc_keep, gc_paused
from kproxy.sources.manifests import ManifestError, ManifestSource
from kproxy.sources.threads import SourceFailure, start_guarded
from kproxy.sysctls import ConntrackSettings, apply_sysctls, desired_sysctls
from kproxy.tracker import Tracker

if TYPE_CHECKING:
    from kproxy.sources.events import NodeEvents

log = structlog.get_logger("kproxy")


# --- this node ------------------------------------------------------------------------------

def node_name(args: argparse.Namespace) -> str:
    return str(args.hostname_override or os.environ.get("NODE_NAME") or socket.gethostname()).lower()


def check_local_detection(args: argparse.Namespace) -> None:
    """--detect-local-mode (detectLocalMode) with what it needs: the bridge must exist on
    this node now, a prefix must be given. UsageError (exit 2) naming flag and field."""
    mode = LocalMode(args.detect_local_mode)
    if mode is LocalMode.BRIDGE_INTERFACE:
        bridge = args.pod_bridge_interface
        if not bridge:
            raise UsageError("--detect-local-mode BridgeInterface needs --pod-bridge-interface "
                             "(detectLocal.bridgeInterface)")
        if not node_facts.interface_exists(bridge):
            raise UsageError(f"--pod-bridge-interface (detectLocal.bridgeInterface) {bridge}: "
                             "no such interface on this node")
    if mode is LocalMode.INTERFACE_NAME_PREFIX and not args.pod_interface_name_prefix:
        raise UsageError("--detect-local-mode InterfaceNamePrefix needs --pod-interface-name-prefix "
                         "(detectLocal.interfaceNamePrefix)")


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
        local_mode=LocalMode(args.detect_local_mode),
        pod_bridge_interface=args.pod_bridge_interface or "",
        pod_interface_prefix=args.pod_interface_name_prefix or "",
        external_ip_cidrs=args.external_ip_cidrs,
    )


# --- where Services come from ---------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class StartedSource:
    wait_synced: Callable[[float], bool]  # True once a full state is known
    node_ips: Callable[[str], tuple[IPAddress, ...]]  # this node's IPs, if the source knows
    read_node: Callable[[str], dict[str, Any] | None] | None = None  # the Node object (None: unknown)
    skipped: Callable[[], int] = lambda: 0  # malformed entries the source left out (the tracker's aside)
    events: NodeEvents | None = None  # events on this node's Node object (with the API)


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
    # 0.3 s of imports, only with the API. Their 90,000 objects live as long as the agent:
    # no collection needs to walk them while they are made (40 ms), nor after
    with gc_paused():
        from kproxy.sources.api import ApiSource, load_api_client
    gc_keep()

    if args.kubeconfig and not os.path.isfile(args.kubeconfig):
        what = "does not exist" if not os.path.exists(args.kubeconfig) else "is not a file"
        raise UsageError(f"--kubeconfig {args.kubeconfig}: the file {what}")
    try:
        client = load_api_client(args.kubeconfig)
    except Exception as err:  # noqa: BLE001 - any config problem is one line for the user
        raise UsageError(f"kubeconfig: {err}") from None
    from kproxy.sources.api_request import read_node
    from kproxy.sources.events import NodeEvents

    # without --service-cluster-ip-range, the ServiceCIDR objects say what the service CIDRs are
    api = ApiSource(client, tracker, stop, node_name=node_name(args), on_fatal=on_fatal,
                    service_cidrs=not args.service_cluster_ip_range,
                    wait_for_node=LocalMode(args.detect_local_mode) is LocalMode.NODE_CIDR)
    api.run()
    return StartedSource(wait_synced=api.wait_synced,
                         node_ips=lambda name: node_facts.node_ips_from_api(read_node(client, name), name),
                         read_node=lambda name: read_node(client, name),
                         events=NodeEvents(client, node_name(args)))


# --- the kernel -------------------------------------------------------------------------------

def backends_for(args: argparse.Namespace, node: NodeConfig) -> dict[int, Backend]:
    """A backend per IP family for --proxy-mode (what other modes and kube-proxy left is
    removed by take_over_node, once these have programmed). A kernel that cannot run the
    mode is a usage error (exit 2), found before anything changes."""
    try:
        check_mode(args.proxy_mode, node.families())
    except ModeUnavailable as err:
        raise UsageError(str(err)) from None
    variant = node_variant(args.iptables_variant) if args.proxy_mode == "iptables" else "auto"
    scheduler = prepare_ipvs(args) if args.proxy_mode == "ipvs" else ""
    backends = {family: make_backend(args.proxy_mode, family=family, iptables_variant=variant,
                                     localhost_nodeports=args.iptables_localhost_nodeports,
                                     ipvs_scheduler=scheduler or "rr",
                                     ipvs_exclude=tuple(getattr(args, "ipvs_exclude_cidrs", ())))
                for family in node.families()}
    if args.proxy_mode == "iptables":
        log.info("iptables backend", variant=variant, families=list(backends))
    return backends


def take_over_node(args: argparse.Namespace) -> None:
    """After kproxy's first successful sync, never before (so no new connection ever meets
    a node without rules): remove what upstream kube-proxy left, then kproxy's own rules of
    other modes."""
    try:
        # kproxy's own IPVS mode keeps IPVS state of its own: it is not kube-proxy's to remove
        take_over(node_variant(args.iptables_variant) if args.proxy_mode == "iptables" else None,
                  ipvs=None if args.proxy_mode == "ipvs" else KernelIpvs())
        removed = remove_other_modes(args.proxy_mode)
    except Exception as err:  # noqa: BLE001 - leftovers must never stop the agent that replaced them
        log.warning("could not remove what other proxies left", error=str(err))
        return
    if removed:
        log.info(f"removed the rules of the {' and '.join(removed)} mode after programming {args.proxy_mode}",
                 removed_mode=",".join(removed), proxy_mode=args.proxy_mode)


class TakeOverOnce:
    """A sync hook: take_over_node after the first sync that succeeded (hooks run only then)."""

    def __init__(self, args: argparse.Namespace) -> None:
        self._args = args
        self._done = False

    def after_sync(self, _plan: object, _report: object) -> None:
        if not self._done:
            self._done = True
            take_over_node(self._args)


def generation_source(args: argparse.Namespace) -> Generation:
    """What tells the agent cheaply that someone changed the rules: the nftables ruleset
    generation, which iptables-nft moves too; iptables-legacy has none."""
    if args.proxy_mode == "iptables" and node_variant(args.iptables_variant) == "legacy":
        return lambda: None
    return RulesetGeneration()


def apply_conntrack_sysctls(args: argparse.Namespace) -> dict[str, str]:
    """The conntrack sysctls the flags ask for; those that could not be set, with why."""
    if args.conntrack_min and not args.conntrack_max_per_core:
        log.warning("--conntrack-min (conntrack.min) alone changes nothing: it is the floor of "
                    "--conntrack-max-per-core times the CPUs, as upstream")
    settings = ConntrackSettings(
        max_per_core=args.conntrack_max_per_core, min=args.conntrack_min,
        tcp_timeout_established=args.conntrack_tcp_timeout_established,
        tcp_timeout_close_wait=args.conntrack_tcp_timeout_close_wait,
        tcp_be_liberal=args.conntrack_tcp_be_liberal,
        udp_timeout=args.conntrack_udp_timeout, udp_timeout_stream=args.conntrack_udp_timeout_stream,
    )
    return apply_sysctls(desired_sysctls(settings, os.cpu_count() or 1))


# --- metrics and health -------------------------------------------------------------------------

# Upstream (bindAddressHardFail false, its default) retries a server that cannot bind every
# 5 s, forever, logging each failure; a liveness probe then fails with the cause only in
# those lines. kproxy retries the same way but gives up after a minute and exits non-zero,
# so the failure is plain (a crash-looping pod, a failed unit); a minute covers a kube-proxy
# that still holds the ports while it is being replaced. --bind-address-hard-fail
# (bindAddressHardFail: true) exits at the first failure, as upstream.
BIND_RETRY_S = 5.0
BIND_GIVE_UP_S = 60.0


class BindError(Exception):
    """A metrics or healthz address that cannot be served (with --bind-address-hard-fail)."""


@dataclass(frozen=True, slots=True)
class WantedServer:
    name: str  # metrics or healthz
    address: str
    routes: dict[str, Callable[[], Response]]


@dataclass(slots=True)
class Observability:
    metrics: ProxyMetrics
    health: ProxyHealth
    servers: list[RouteServer] = field(default_factory=list)
    unbound: list[WantedServer] = field(default_factory=list)  # still to bind (keep_binding retries)
    _retry: threading.Thread | None = None

    def bind(self, wanted: WantedServer) -> str | None:
        """Serve it; None when it is served, else why not."""
        try:
            self.servers.append(RouteServer(wanted.address, wanted.routes, wanted.name).start())
        except OSError as err:
            return err.strerror or str(err)
        return None

    def keep_binding(self, stop: threading.Event, give_up: Callable[[str], None]) -> None:
        """Retry the servers that could not bind, every BIND_RETRY_S, until they are served
        or `stop` is set; after BIND_GIVE_UP_S, call give_up with why (the caller exits)."""
        if not self.unbound:
            return
        retry_s, give_up_s = BIND_RETRY_S, BIND_GIVE_UP_S

        def retry() -> None:
            started = time.monotonic()
            while self.unbound and not stop.wait(retry_s):
                failed = []
                for wanted in list(self.unbound):
                    error = self.bind(wanted)
                    if error is None:
                        self.unbound.remove(wanted)
                    else:
                        failed.append(f"{wanted.name} on {wanted.address}: {error}")
                if failed and time.monotonic() - started >= give_up_s:
                    give_up(f"cannot serve {'; '.join(failed)} (retried for {give_up_s:g}s)")
                    return
                for failure in failed:
                    log.error("cannot serve yet; retrying", failure=failure, retry_s=retry_s)

        self._retry = threading.Thread(target=retry, name="bind-retry", daemon=True)
        self._retry.start()

    def queued(self) -> None:
        """A change arrived that needs a sync (a tracker listener)."""
        self.health.queued_update()
        self.metrics.queued(time.time())

    def observe(self, sync: Callable[[], SyncReportLike], changes: ChangeSource) -> ObservedSync:
        return ObservedSync(sync, changes, self.metrics, self.health)

    def close(self) -> None:
        if self._retry is not None:
            self._retry.join(timeout=BIND_RETRY_S + 1)  # its stop event is set by now
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
                        clock: Callable[[], float] = time.time, hard_fail: bool = False,
                        families: tuple[int, ...] = (4,)) -> Observability:
    """The metrics and healthz servers. One that cannot bind raises BindError with
    hard_fail; otherwise it is logged and left in `unbound` for keep_binding to retry."""
    metrics = ProxyMetrics(mode, changes, families=families)
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
        server = WantedServer(name, address, routes)
        error = obs.bind(server)
        if error is None:
            continue
        if hard_fail:
            obs.close()
            raise BindError(f"cannot serve {name} on {address}: {error} (bind address hard fail)")
        log.error(f"cannot serve; retrying every {BIND_RETRY_S:g}s, exiting after {BIND_GIVE_UP_S:g}s",
                  server=name, address=address, error=error)
        obs.unbound.append(server)
    obs.queued()  # the first sync is due: /healthz fails if it does not happen in time
    return obs


def raise_open_file_limit(wanted: int = 65536) -> None:
    """The HTTP servers hold up to MAX_CONNECTIONS clients each; the default soft limit of
    1024 descriptors would make them refuse clients first (the hard limit is the cap)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


def install_stop_handlers(stop: threading.Event, wake: Callable[[], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        wake()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
