"""iptables-save output -> chains and rules, and -> ProgrammedView. Pure.

Frontends are read from the rules that carry a "namespace/name:port Kind" comment
(render.py puts one on each); endpoints from the DNAT rules of the chain such a rule
jumps to, following jumps into other KUBE-SVC-* chains.
"""

from __future__ import annotations

import shlex
from collections import defaultdict

from kproxy.backends.iptables.render import (
    FILTER_NODEPORTS,
    FILTER_SERVICES,
    NAT_NODEPORTS,
    NAT_SERVICES,
)
from kproxy.backends.view import KIND_ORDER, FrontendView, ProgrammedView, ServicePortView
from kproxy.values import endpoint_text

Table = dict[str, list[str]]  # chain -> rules ("-A CHAIN ..." lines), in order


def parse_save_all(text: str) -> dict[str, Table]:
    """Every table in an iptables-save output."""
    tables: dict[str, Table] = {}
    current: Table = {}
    for line in text.splitlines():
        if line.startswith("*"):
            current = tables.setdefault(line[1:].strip(), {})
        elif line.startswith(":"):
            current.setdefault(line[1:].split(" ", 1)[0], [])
        elif line.startswith("-A "):
            current.setdefault(line[3:].split(" ", 1)[0], []).append(line)
    return tables


def tokens(rule: str) -> list[str]:
    if '"' not in rule and "'" not in rule:
        return rule.split()
    # iptables-save quotes whole words in double quotes (comments): split around them
    # without shlex, which costs seconds on a large table; anything else goes to shlex
    parts = rule.split('"')
    if "\\" in rule or "'" in rule or len(parts) % 2 == 0 or any(
            (parts[i - 1] and not parts[i - 1][-1].isspace()) or (parts[i + 1] and not parts[i + 1][0].isspace())
            for i in range(1, len(parts), 2)):
        return shlex.split(rule)
    return [word for i, part in enumerate(parts) for word in ([part] if i % 2 else part.split())]


def options(rule: str) -> dict[str, str]:
    """The value of each option of a rule (the last one wins); `!` kept as a prefix."""
    found: dict[str, str] = {}
    argv = tokens(rule)
    negate = False
    for i, word in enumerate(argv):
        if word == "!":
            negate = True
            continue
        if word.startswith("-") and i + 1 < len(argv) and not argv[i + 1].startswith("-"):
            found[word] = ("!" if negate else "") + argv[i + 1]
        negate = False
    return found


def _host_text(cidr: str) -> str:
    return cidr.removesuffix("/32").removesuffix("/128")


def _endpoints(nat: Table, chain: str, seen: frozenset[str] = frozenset()) -> list[str]:
    out: list[str] = []
    for rule in nat.get(chain, ()):
        opts = options(rule)
        target = opts.get("-j", "")
        if "--rcheck" in rule:  # affinity: the same endpoint again, listed once
            continue
        if target == "DNAT" and "--to-destination" in opts:
            out.append(opts["--to-destination"])  # ip:port, IPv6 bracketed
        elif target.startswith(("KUBE-SVC-", "KUBE-EXT-", "KUBE-SEP-", "KUBE-SCT-")) and target not in seen \
                and ("-s" not in opts or chain.startswith("KUBE-FW-")) and "--src-type" not in opts:
            # (a jump on a source match in EXT is a short-circuit, not the frontend's own)
            out += _endpoints(nat, target, seen | {chain})
    return out


def frontend_label(opts: dict[str, str]) -> tuple[str, str] | None:
    """(namespace/name:port, kind) from a frontend rule's comment; None on other rules."""
    name, _, kind = opts.get("--comment", "").rpartition(" ")
    return (name, kind) if name and kind in KIND_ORDER else None


def nodeport_addresses(nat: Table) -> tuple[list[str], bool]:
    """The addresses nat KUBE-SERVICES sends to KUBE-NODEPORTS, and whether it sends every
    local address (--nodeport-addresses 0.0.0.0/0; the list then keeps only 127.x)."""
    nodeport_ips: list[str] = []
    all_local = False
    for rule in nat.get(NAT_SERVICES, ()):
        opts = options(rule)
        if opts.get("-j") == NAT_NODEPORTS:
            if "-d" in opts:
                nodeport_ips.append(_host_text(opts["-d"]))
            else:
                all_local = True
    if all_local:
        nodeport_ips = [ip for ip in nodeport_ips if ip.startswith("127.")]
    return nodeport_ips, all_local


def read_view(tables: dict[str, Table]) -> ProgrammedView:
    """`tables`: parse_save_all() of the variant's iptables-save output."""
    nat, filt = tables.get("nat", {}), tables.get("filter", {})
    if NAT_SERVICES not in nat:
        return ProgrammedView(present=False)
    nodeport_ips, all_local = nodeport_addresses(nat)

    def address(opts: dict[str, str]) -> str:
        port = opts.get("--dport", "?")
        if "-d" in opts:
            return endpoint_text(_host_text(opts['-d']), port)
        return ",".join(f"{ip}:{port}" for ip in nodeport_ips) if nodeport_ips and not all_local else f"*:{port}"

    by_port: dict[str, list[FrontendView]] = defaultdict(list)
    protocols: dict[str, str] = {}
    for table, chain in ((nat, NAT_SERVICES), (nat, NAT_NODEPORTS),  # filter: no endpoints
                         (filt, FILTER_SERVICES), (filt, FILTER_NODEPORTS)):
        for rule in table.get(chain, ()):
            opts = options(rule)
            label = frontend_label(opts)
            if label is None:
                continue
            name, kind = label
            target = opts.get("-j", "")
            if target in ("REJECT", "DROP"):
                fe = FrontendView(kind=kind, address=address(opts), endpoints=(), verdict=target.lower())
            else:
                endpoints = tuple(_endpoints(nat, target))
                if not endpoints:  # only short-circuits: the filter rule has its verdict
                    continue
                fe = FrontendView(kind=kind, address=address(opts), endpoints=endpoints, verdict="dnat")
            by_port[name].append(fe)
            protocols[name] = opts.get("-p", "?").upper()
    ports = tuple(
        ServicePortView(name=name, protocol=protocols[name], frontends=tuple(sorted(fes)))
        for name, fes in sorted(by_port.items())
    )
    return ProgrammedView(present=True, service_ports=ports,
                          nodeport_ips=() if all_local and not nodeport_ips else tuple(nodeport_ips))


def programmed(save_text: str) -> bool:
    """Whether kproxy's chains are in this iptables-save output."""
    return NAT_SERVICES in parse_save_all(save_text).get("nat", {})
