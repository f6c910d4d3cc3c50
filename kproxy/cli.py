"""`kproxy` command line: parse flags, wire the pieces, map outcomes to exit codes.

Flag names follow upstream kube-proxy where one exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import socket
import sys
import threading
from collections.abc import Callable, Sequence
from ipaddress import ip_address, ip_network
from typing import NoReturn

import structlog

from kproxy.config import (
    DEFAULT_HEALTHZ_BIND_ADDRESS,
    DEFAULT_METRICS_BIND_ADDRESS,
    ConfigError,
    apply_config_file,
    check_bind_address,
)
from kproxy.logs import configure_logging
from kproxy.model import IPAddress, IPNetwork, NodeConfig

log = structlog.get_logger("kproxy")

EXIT_USAGE = 2
EXIT_FAILED = 1


class UsageError(Exception):
    """A bad flag value or an unreadable input: one line, exit 2."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        sys.stderr.write(f"kproxy: error: {message}\n")
        sys.exit(EXIT_USAGE)


def parse_duration(text: str) -> float:
    """Go-style durations as upstream takes them: 1s, 500ms, 1m30s, 0.2s."""
    units = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise argparse.ArgumentTypeError(f"invalid duration {text!r} (examples: 1s, 500ms, 1m)")
    return sum(float(n) * units[u] for n, u in parts)


def parse_bool(text: str) -> bool:
    """Go's strconv.ParseBool spellings, as upstream's flags take them."""
    value = {"1": True, "t": True, "true": True, "0": False, "f": False, "false": False}.get(text.lower())
    if value is None:
        raise argparse.ArgumentTypeError(f"invalid boolean {text!r} (true or false)")
    return value


def _cidr_list(text: str) -> tuple[IPNetwork, ...]:
    found = []
    for item in (t.strip() for t in text.split(",") if t.strip()):
        try:
            found.append(ip_network(item, strict=False))
        except ValueError:
            raise argparse.ArgumentTypeError(f"{item!r} is not a CIDR") from None
    return tuple(found)


_cidr_list.__name__ = "CIDR list"  # argparse's name for the type


def _ip(text: str) -> IPAddress:
    try:
        return ip_address(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an IP address") from None


def _bind_address(default_port: int) -> Callable[[str], str]:
    def parse(text: str) -> str:
        try:
            return check_bind_address("", text, default_port)
        except ConfigError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an IP:port address") from None
    parse.__name__ = "address"
    return parse


def build_parser() -> Parser:
    common = Parser(add_help=False)
    common.add_argument("--log-format", choices=("text", "json"), default=argparse.SUPPRESS,
                        help="text (key=value) or json log lines")
    common.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                        help="debug logging")

    sources = Parser(add_help=False)
    sources.add_argument("--config", metavar="FILE",
                         help="a KubeProxyConfiguration file (kubeproxy.config.k8s.io/v1alpha1); flags override it")
    sources.add_argument("--metrics-bind-address", type=_bind_address(10249), default=DEFAULT_METRICS_BIND_ADDRESS,
                         metavar="IP:PORT",
                         help=f"serve /metrics and /proxyMode here (default {DEFAULT_METRICS_BIND_ADDRESS})")
    sources.add_argument("--healthz-bind-address", type=_bind_address(10256), default=DEFAULT_HEALTHZ_BIND_ADDRESS,
                         metavar="IP:PORT",
                         help=f"serve /healthz and /livez here (default {DEFAULT_HEALTHZ_BIND_ADDRESS})")
    sources.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    sources.add_argument("--manifests", metavar="PATH",
                         help="a YAML/JSON file or folder of Services and EndpointSlices, instead of the API")
    sources.add_argument("--hostname-override", metavar="NAME", help="this node's name (default: hostname)")
    sources.add_argument("--node-ip", type=_ip, action="append", default=[], metavar="IP",
                         help="this node's primary IP, one per family for dual-stack (repeatable; "
                         "default: the Node object's, else the default route's source)")
    sources.add_argument("--cluster-cidr", type=_cidr_list, default=(), metavar="CIDRS",
                         help="pod CIDRs; traffic to ClusterIPs from outside them is masqueraded")
    sources.add_argument("--service-cluster-ip-range", type=_cidr_list,
                         default=(), metavar="CIDRS", help="service CIDRs; unallocated IPs in them are dropped")
    sources.add_argument("--masquerade-all", action="store_true", help="masquerade all traffic to Services")
    sources.add_argument("--nodeport-addresses", type=_cidr_list, default=(),
                         metavar="CIDRS", help="NodePorts answer on local addresses in these CIDRs "
                         "(default: the node IPs; 0.0.0.0/0: every local address)")
    sources.add_argument("--proxy-mode", default="nftables", choices=("nftables", "iptables"),
                         help="backend (default nftables; ipvs is planned)")
    sources.add_argument("--iptables-localhost-nodeports", type=parse_bool, default=True, metavar="BOOL",
                         help="iptables mode: NodePorts also answer on 127.0.0.1 (default true)")
    sources.add_argument("--iptables-variant", choices=("auto", "nft", "legacy"), default="auto",
                         help="iptables mode: iptables-nft or iptables-legacy (default: detect, as upstream)")
    sources.add_argument("--min-sync-period", type=parse_duration, default=1.0, metavar="DURATION",
                         help="least time between two syncs (default 1s)")
    sources.add_argument("--sync-period", type=parse_duration, default=30.0, metavar="DURATION",
                         help="sync at least this often, even without changes (default 30s)")
    # conntrack sysctls: left alone unless a flag asks (see kproxy/sysctls.py)
    sources.add_argument("--conntrack-max-per-core", type=int, metavar="N",
                         help="set nf_conntrack_max to N per CPU (at least --conntrack-min)")
    sources.add_argument("--conntrack-min", type=int, metavar="N", help="lower bound for nf_conntrack_max")
    sources.add_argument("--conntrack-tcp-timeout-established", type=parse_duration, metavar="DURATION",
                         help="idle timeout of established TCP connections")
    sources.add_argument("--conntrack-tcp-timeout-close-wait", type=parse_duration, metavar="DURATION",
                         help="timeout of TCP connections in CLOSE_WAIT")
    sources.add_argument("--conntrack-tcp-be-liberal", action="store_true",
                         help="mark out-of-window TCP packets INVALID no more (nf_conntrack_tcp_be_liberal=1)")
    sources.add_argument("--conntrack-udp-timeout", type=parse_duration, metavar="DURATION",
                         help="timeout of UDP flows in UNREPLIED state")
    sources.add_argument("--conntrack-udp-timeout-stream", type=parse_duration, metavar="DURATION",
                         help="timeout of UDP flows in ASSURED state")

    parser = Parser(prog="kproxy", parents=[common],
                    description="kube-proxy replacement: Services and EndpointSlices to nftables")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sub.add_parser("run", parents=[common, sources], help="the agent: watch and keep rules in sync")
    sync = sub.add_parser("sync", parents=[common, sources], help="program the rules once and exit")
    sync.add_argument("--once", action="store_true", help="program once and exit (the only mode)")
    dump = sub.add_parser("dump", parents=[common], help="show what is programmed, read from the kernel")
    dump.add_argument("--json", action="store_true", help="machine-readable output")
    dump.add_argument("--raw", action="store_true", help="the kernel's own listing of kproxy's table")
    dump.add_argument("--proxy-mode", choices=("auto", "nftables", "iptables"), default="auto",
                      help="which backend's rules to read (default: whichever is programmed)")
    sub.add_parser("cleanup", parents=[common], help="remove everything kproxy programmed")
    tracer = sub.add_parser("trace", parents=[common],
                            help="what the programmed rules (nftables or iptables) do with a new connection")
    tracer.add_argument("--from", dest="source", required=True, metavar="SRC", help="client address")
    tracer.add_argument("--to", required=True, metavar="DST:PORT[/tcp|udp|sctp]", help="destination")
    tracer.add_argument("--json", action="store_true", help="machine-readable output")
    tracer.add_argument("--probe", action="store_true",
                        help="send one real packet (TCP SYN or UDP datagram) with nftrace set and report the "
                             "kernel's own trace of it; the packet is dropped before it leaves or is delivered "
                             "(nftables mode, root)")
    tracer.add_argument("--timeout", type=parse_duration, default=5.0, metavar="DURATION",
                        help="with --probe: how long to wait for the kernel's trace (default 5s)")
    config = sub.add_parser("config", parents=[common, sources],
                            help="show the effective configuration (--config file and flags) as YAML")
    config.add_argument("--print", action="store_true", dest="print_config", required=True,
                        help="print it (the only action)")
    from kproxy.lab.command import add_lab_parser
    add_lab_parser(sub, common)
    return parser


def node_name(args: argparse.Namespace) -> str:
    return (args.hostname_override or os.environ.get("NODE_NAME") or socket.gethostname()).lower()


def node_config(args: argparse.Namespace,
                source_node_ips: Callable[[str], tuple[IPAddress, ...]] = lambda _name: ()) -> NodeConfig:
    """Upstream's order for node IPs: --node-ip, else the Node object, else the default route."""
    from kproxy import node

    hostname = node_name(args)
    node_ips = tuple(args.node_ip) or source_node_ips(hostname) or node.detect_node_ips()
    if not node_ips:
        log.warning("no node IP found; NodePorts will not answer", hint="pass --node-ip")
    local_ips = node.local_addresses() if args.nodeport_addresses else ()
    return NodeConfig(
        hostname=hostname,
        node_ips=node_ips,
        local_ips=local_ips,
        cluster_cidrs=args.cluster_cidr,
        service_cidrs=args.service_cluster_ip_range,
        nodeport_cidrs=args.nodeport_addresses,
        masquerade_all=args.masquerade_all,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
    from kproxy.commands import COMMANDS

    try:
        if getattr(args, "config", None):
            args, ignored = apply_config_file(args, sys.argv[1:] if argv is None else list(argv), build_parser)
            configure_logging(getattr(args, "log_format", "text"), getattr(args, "verbose", False))
            for field in ignored:
                log.warning("config field not implemented by kproxy; ignored", file=args.config, field=field)
        return COMMANDS[args.command](args)
    except (UsageError, ConfigError) as err:
        sys.stderr.write(f"kproxy: error: {err}\n")
        return EXIT_USAGE
    except KeyboardInterrupt:
        return 130


def install_stop_handlers(stop: threading.Event, wake: Callable[[], None]) -> None:
    def handler(signum: int, _frame: object) -> None:
        log.info("stopping", signal=signal.Signals(signum).name)
        stop.set()
        wake()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def print_json(value: object) -> None:
    sys.stdout.write(json.dumps(value, indent=2) + "\n")
