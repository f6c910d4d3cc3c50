"""The `kproxy` command line: every subcommand and flag. Flag names follow upstream
kube-proxy where one exists; values parse through kproxy.values, as the config file's do."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from typing import NoReturn

from kproxy import values
from kproxy.cli.config_file import (
    DEFAULT_HEALTHZ_BIND_ADDRESS,
    DEFAULT_METRICS_BIND_ADDRESS,
    HEALTHZ_PORT,
    METRICS_PORT,
    ConfigError,
    check_bind_address,
    parse_node_port_addresses,
)
from kproxy.cli.errors import EXIT_USAGE
from kproxy.lab.command import add_lab_parser
from kproxy.model import IPNetwork, LocalMode


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:  # one line, not the usage block
        sys.stderr.write(f"kproxy: error: {message}\n")
        sys.exit(EXIT_USAGE)


def _argument_type(parse: Callable[[str], object], name: str) -> Callable[[str], object]:
    """A kproxy.values parser as an argparse type: its ValueError becomes argparse's error."""
    def convert(text: str) -> object:
        try:
            return parse(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(str(err)) from None
    convert.__name__ = name  # argparse names the type in some messages
    return convert


duration = _argument_type(values.parse_duration, "duration")
boolean = _argument_type(values.parse_bool, "boolean")
ip = _argument_type(values.parse_ip, "IP address")
cidr_list = _argument_type(values.parse_cidr_list, "CIDR list")


def non_negative_int(text: str) -> int:
    """An integer of at least 0 (upstream's validation refuses negative conntrack sizes)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{value} is negative (must be 0 or more)")
    return value


def interface_name(text: str) -> str:
    """A network interface name (or a prefix of one), as the kernel allows them."""
    try:
        return values.parse_interface_name(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def node_port_addresses(text: str) -> tuple[IPNetwork, ...]:
    """`primary` (the node IPs), `all` (every local address) or CIDRs, as the config field."""
    try:
        return parse_node_port_addresses(text.split(","))
    except ConfigError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


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
    sources.add_argument("--metrics-bind-address", type=_bind_address(METRICS_PORT),
                         default=DEFAULT_METRICS_BIND_ADDRESS,
                         metavar="IP:PORT",
                         help=f"serve /metrics and /proxyMode here (default {DEFAULT_METRICS_BIND_ADDRESS})")
    sources.add_argument("--healthz-bind-address", type=_bind_address(HEALTHZ_PORT),
                         default=DEFAULT_HEALTHZ_BIND_ADDRESS,
                         metavar="IP:PORT",
                         help=f"serve /healthz and /livez here (default {DEFAULT_HEALTHZ_BIND_ADDRESS})")
    sources.add_argument("--bind-address-hard-fail", action="store_true",
                         help="exit at once when the metrics or healthz address cannot be bound "
                         "(default: retry every 5s, exit after 60s)")
    sources.add_argument("--kubeconfig", help="kubeconfig file (default: in-cluster, then ~/.kube/config)")
    sources.add_argument("--manifests", metavar="PATH",
                         help="a YAML/JSON file or folder of Services and EndpointSlices, instead of the API")
    sources.add_argument("--hostname-override", metavar="NAME",
                         help="this node's name (default: $NODE_NAME, else the hostname)")
    sources.add_argument("--node-ip", type=ip, action="append", default=[], metavar="IP",
                         help="this node's primary IP, one per family for dual-stack (repeatable; "
                         "default: the Node object's, else the default route's source)")
    sources.add_argument("--cluster-cidr", type=cidr_list, default=(), metavar="CIDRS",
                         help="pod CIDRs; traffic to ClusterIPs from outside them is masqueraded")
    sources.add_argument("--service-cluster-ip-range", type=cidr_list,
                         default=(), metavar="CIDRS", help="service CIDRs; unallocated IPs in them are dropped")
    sources.add_argument("--masquerade-all", action="store_true", help="masquerade all traffic to Services")
    sources.add_argument("--nodeport-addresses", type=node_port_addresses, default=(),
                         metavar="primary|all|CIDRS", help="NodePorts answer on local addresses in these CIDRs "
                         "(default primary: the node IPs; all or 0.0.0.0/0,::/0: every local address)")
    sources.add_argument("--detect-local-mode", default=LocalMode.CLUSTER_CIDR.value, metavar="MODE",
                         choices=[m.value for m in LocalMode],
                         help="what makes traffic local (from this node's pods): ClusterCIDR (default), "
                         "NodeCIDR (the Node's spec.podCIDRs), BridgeInterface, InterfaceNamePrefix")
    sources.add_argument("--pod-bridge-interface", type=interface_name, default=None, metavar="NAME",
                         help="with --detect-local-mode BridgeInterface: traffic arriving on this bridge is local")
    sources.add_argument("--pod-interface-name-prefix", type=interface_name, default=None, metavar="PREFIX",
                         help="with --detect-local-mode InterfaceNamePrefix: traffic arriving on interfaces "
                         "named PREFIX* is local")
    sources.add_argument("--external-ip-cidrs", type=cidr_list, default=None, metavar="CIDRS",
                         help="program only externalIPs inside these CIDRs; others are logged once per Service "
                         "(default: every externalIP, as upstream)")
    sources.add_argument("--proxy-mode", default="nftables", choices=("nftables", "iptables", "ipvs"),
                         help="backend (default nftables)")
    sources.add_argument("--iptables-localhost-nodeports", type=boolean, default=True, metavar="BOOL",
                         help="iptables mode: NodePorts also answer on 127.0.0.1 (default true)")
    sources.add_argument("--iptables-variant", choices=("auto", "nft", "legacy"), default="auto",
                         help="iptables mode: iptables-nft or iptables-legacy (default: detect, as upstream)")
    add_ipvs_flags(sources)
    sources.add_argument("--min-sync-period", type=duration, default=1.0, metavar="DURATION",
                         help="least time between two syncs (default 1s)")
    sources.add_argument("--sync-period", type=duration, default=30.0, metavar="DURATION",
                         help="sync at least this often, even without changes (default 30s)")
    # conntrack sysctls: left alone unless a flag asks (see kproxy/sysctls.py)
    sources.add_argument("--conntrack-max-per-core", type=non_negative_int, metavar="N",
                         help="set nf_conntrack_max to N per CPU (at least --conntrack-min); 0: leave it")
    sources.add_argument("--conntrack-min", type=non_negative_int, metavar="N",
                         help="lower bound for nf_conntrack_max; only with --conntrack-max-per-core, as upstream")
    sources.add_argument("--conntrack-tcp-timeout-established", type=duration, metavar="DURATION",
                         help="idle timeout of established TCP connections")
    sources.add_argument("--conntrack-tcp-timeout-close-wait", type=duration, metavar="DURATION",
                         help="timeout of TCP connections in CLOSE_WAIT")
    sources.add_argument("--conntrack-tcp-be-liberal", action="store_true",
                         help="mark out-of-window TCP packets INVALID no more (nf_conntrack_tcp_be_liberal=1)")
    sources.add_argument("--conntrack-udp-timeout", type=duration, metavar="DURATION",
                         help="timeout of UDP flows in UNREPLIED state")
    sources.add_argument("--conntrack-udp-timeout-stream", type=duration, metavar="DURATION",
                         help="timeout of UDP flows in ASSURED state")

    parser = Parser(prog="kproxy", parents=[common],
                    description="kube-proxy replacement: Services and EndpointSlices to nftables or iptables rules")
    # not required here: parse_command_line says a command is missing after naming any bad flag
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.add_parser("run", parents=[common, sources], help="the agent: watch and keep rules in sync")
    sync = sub.add_parser("sync", parents=[common, sources], help="program the rules once and exit")
    # `sync` always programs once; --once is still accepted, so older scripts keep working
    sync.add_argument("--once", action="store_true", help=argparse.SUPPRESS)
    dump = sub.add_parser("dump", parents=[common], help="show what is programmed, read from the kernel")
    dump.add_argument("--json", action="store_true", help="machine-readable output")
    dump.add_argument("--raw", action="store_true", help="the kernel's own listing of kproxy's table")
    dump.add_argument("--proxy-mode", choices=("auto", "nftables", "iptables", "ipvs"), default="auto",
                      help="which backend's rules to read (default: whichever is programmed)")
    dump.add_argument("--stats", action="store_true",
                      help="the connections conntrack holds now, per frontend and endpoint (established / other)")
    dump.add_argument("--rate", type=duration, nargs="?", const=1.0, metavar="DURATION",
                      help="with --stats: also new connections per second, over this window (default 1s)")
    top = sub.add_parser("top", parents=[common],
                         help="dump --stats --rate, refreshed until Ctrl-C (full screen on a terminal)")
    top.add_argument("--interval", type=duration, default=2.0, metavar="DURATION",
                     help="refresh period, also the window of new connections per second (default 2s)")
    top.add_argument("--iterations", type=non_negative_int, default=0, metavar="N",
                     help="stop after N refreshes (default 0: until Ctrl-C)")
    top.add_argument("--proxy-mode", choices=("auto", "nftables", "iptables"), default="auto",
                     help="which backend's rules to read (default: whichever is programmed)")
    sub.add_parser("cleanup", parents=[common], help="remove everything kproxy programmed")
    sub.add_parser("sysctls", parents=[common, sources],
                   help="set the sysctls these flags need, then exit (a privileged init container, so the "
                        "agent needs no write access to /proc/sys)")
    tracer = sub.add_parser("trace", parents=[common],
                            help="what the programmed rules (nftables or iptables) do with a new connection")
    tracer.add_argument("--from", dest="source", required=True, metavar="SRC", help="client address")
    tracer.add_argument("--to", required=True, metavar="DST:PORT[/tcp|udp|sctp]", help="destination")
    tracer.add_argument("--json", action="store_true", help="machine-readable output")
    tracer.add_argument("--probe", action="store_true",
                        help="send one real packet (TCP SYN or UDP datagram) with nftrace set and report the "
                             "kernel's own trace of it; the packet is dropped before it leaves or is delivered "
                             "(nftables mode, root)")
    tracer.add_argument("--timeout", type=duration, default=5.0, metavar="DURATION",
                        help="with --probe: how long to wait for the kernel's trace (default 5s)")
    config = sub.add_parser("config", parents=[common, sources],
                            help="show the effective configuration (--config file and flags) as YAML")
    config.add_argument("--print", action="store_true", dest="print_config", required=True,
                        help="print it (the only action)")
    add_lab_parser(sub, common)
    return parser


def add_ipvs_flags(group: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """Upstream's --ipvs-* flags (IPVS mode only)."""
    group.add_argument("--ipvs-scheduler", default="", metavar="NAME",
                       help="ipvs mode: the IPVS scheduler (default rr; wrr, lc, wlc, sh, mh, ... as the kernel has)")
    group.add_argument("--ipvs-strict-arp", type=boolean, default=False, metavar="BOOL",
                       help="ipvs mode: arp_ignore=1, arp_announce=2, as upstream's strictARP")
    group.add_argument("--ipvs-exclude-cidrs", type=cidr_list, default=(), metavar="CIDRS",
                       help="ipvs mode: virtual servers in these CIDRs are not kproxy's (never deleted)")
    for name, what in (("tcp", "idle TCP connections"), ("tcpfin", "TCP connections after FIN"),
                       ("udp", "UDP flows")):
        group.add_argument(f"--ipvs-{name}-timeout", type=duration, default=0.0, metavar="DURATION",
                           help=f"ipvs mode: IPVS timeout for {what} (default 0: the kernel's)")
    group.add_argument("--ipvs-sync-period", type=duration, default=None, metavar="DURATION",
                       help="ipvs mode: as --sync-period")
    group.add_argument("--ipvs-min-sync-period", type=duration, default=None, metavar="DURATION",
                       help="ipvs mode: as --min-sync-period")


def parse_command_line(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """The command line, parsed. A missing command or lab action is reported only when
    every flag was understood, so `kproxy --bogus` names --bogus."""
    parser = build_parser()
    args = parser.parse_args(argv)
    commands = _subcommands(parser)
    if args.command is None:
        parser.error(f"the following arguments are required: COMMAND ({', '.join(commands)})")
    if args.command == "lab" and args.lab_command is None:
        actions = _subcommands(commands["lab"])
        parser.error(f"lab: the following arguments are required: ACTION ({', '.join(actions)})")
    return args


def _subcommands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    return next(dict(a.choices) for a in parser._actions if isinstance(a, argparse._SubParsersAction))
