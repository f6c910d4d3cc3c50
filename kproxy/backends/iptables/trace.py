"""`kproxy trace` for the iptables backend: what the node's nat and filter rules, as
iptables-save prints them, do with one new connection. Pure.

It walks the chains the way the kernel does, rule by rule: nat PREROUTING (OUTPUT for a
source on this node) into KUBE-SERVICES and the per-Service-port chains; when nothing
DNATs, the filter chain the packet meets (FORWARD, INPUT, or OUTPUT then INPUT); then nat
POSTROUTING, where KUBE-HAIRPIN (through KUBE-HAIRPIN-00..63) marks and the 0x4000 mark
decides masquerade. A `-m statistic --probability p` rule splits the walk into two paths (taken with p, passed
with 1-p), so every endpoint comes with its share. Only jumps from the built-in chains
into KUBE-* chains are followed: the trace says what kproxy's rules do, not other
software's. The answer is trace.py's TraceResult, worded as the nftables evaluator words
it, so both backends' `--json` can be compared.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from functools import lru_cache
from ipaddress import ip_address, ip_network

from kproxy.backends.iptables.render import (
    CLUSTER_IPS,
    FIREWALL,
    HAIRPIN_CHAINS,
    MARK_MASQ,
    MASQ_OFF_CLUSTER,
    NAT_SERVICES,
)
from kproxy.backends.iptables.save import Table, frontend_label, nodeport_addresses, options, parse_save_all, tokens
from kproxy.backends.trace import (
    MASQ_ALL,
    MASQ_EXTERNAL,
    MASQ_HAIRPIN,
    MASQ_NODE_OWN,
    MASQ_OFF_CLUSTER_REASON,
    NO_ENDPOINTS,
    NO_LOCAL_ENDPOINT,
    NOT_A_SERVICE,
    NOTHING_PROGRAMMED,
    SHORT_CIRCUIT,
    SOURCE_ALLOWED,
    SOURCE_RANGES_DROP,
    UNALLOCATED,
    WRONG_PORT,
    TraceResult,
)
from kproxy.model import IPAddress
from kproxy.values import endpoint_host, endpoint_text

LOCALNET = "a loopback address reached from outside the node (KUBE-FIREWALL)"

BUILTIN = ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING")
TERMINAL = ("DNAT", "ACCEPT", "DROP", "REJECT", "MASQUERADE")
MAX_DEPTH = 32  # kproxy's chains nest 4 deep; a loop would never end


@dataclass(frozen=True, slots=True, kw_only=True)
class Path:
    """One way a new connection takes through the rules, taken by `share` of them."""

    share: float = 1.0
    dst: IPAddress
    port: int
    dnat: str | None = None  # --to-destination, as printed
    mark: int = 0
    why: tuple[str, ...] = ()  # why the masquerade mark was set, in order
    labels: tuple[tuple[str, str], ...] = ()  # (namespace/name:port, kind) of frontend rules passed
    notes: tuple[str, ...] = ()  # short-circuit, source ranges
    affinity: int | None = None
    chains: tuple[str, ...] = ()  # entered, in order
    verdict: str | None = None  # a TERMINAL target, once one is reached
    rule: str = ""  # the rule that gave the verdict

    def note(self, text: str) -> Path:
        return self if text in self.notes else replace(self, notes=(*self.notes, text))


@dataclass(frozen=True, slots=True)
class Packet:
    """What does not change along the walk: the source, protocol, and this node's addresses."""

    src: IPAddress
    proto: str
    local: frozenset[IPAddress]

    def is_local(self, ip: IPAddress) -> bool:
        return ip in self.local or ip.is_loopback


@lru_cache(maxsize=1 << 16)
def _parsed(rule: str) -> tuple[tuple[str, ...], dict[str, str]]:
    # a trace may walk KUBE-SERVICES more than once: tokenize each rule once (callers never
    # change the dict)
    return tuple(tokens(rule)), options(rule)


def _negatable(value: str, test: bool) -> bool:
    return not test if value.startswith("!") else test


def _in_cidr(ip: IPAddress, value: str) -> bool:
    """`-s`/`-d`: a prefix, or address/mask with any mask (the hairpin dispatch's 0.0.0.7/0.0.0.63)."""
    text = value.lstrip("!")
    address, _, mask = text.partition("/")
    if "." in mask or ":" in mask:
        found = ip_address(address)
        return _negatable(value, found.version == ip.version and int(ip) & int(ip_address(mask)) == int(found))
    return _negatable(value, ip in ip_network(text, strict=False))


def _port_in(port: int, value: str) -> bool:
    low, _, high = value.lstrip("!").partition(":")
    return _negatable(value, int(low) <= port <= int(high or low))


def _mark_match(mark: int, value: str) -> bool:
    want, _, mask = value.lstrip("!").partition("/")
    return _negatable(value, mark & int(mask or "0xffffffff", 0) == int(want, 0))


def _set_mark(mark: int, opts: dict[str, str]) -> int:
    """MARK's target options; iptables-save prints --or-mark 0x4000 as --set-xmark 0x4000/0x4000."""
    for option, value in opts.items():
        bits, _, mask_text = value.partition("/")
        v, mask = int(bits, 0), int(mask_text or "0xffffffff", 0)
        if option == "--set-xmark":
            return (mark & ~mask) ^ v
        if option == "--set-mark":
            return (mark & ~mask) | v
        if option == "--or-mark":
            return mark | v
        if option == "--xor-mark":
            return mark ^ v
        if option == "--and-mark":
            return mark & v
    return mark


def _probability(argv: tuple[str, ...], opts: dict[str, str], pkt: Packet, path: Path) -> float:
    """How likely the rule matches this path: 0 or 1, or p for `-m statistic`."""
    tests: tuple[tuple[str, Callable[[str], bool]], ...] = (
        ("-s", lambda v: _in_cidr(pkt.src, v)),
        ("-d", lambda v: _in_cidr(path.dst, v)),
        # a traced address arrives on no pod interface (--detect-local-mode by interface)
        ("-i", lambda v: _negatable(v, False)),
        ("-p", lambda v: _negatable(v, v.lstrip("!") == pkt.proto)),
        ("--dport", lambda v: _port_in(path.port, v)),
        ("--src-type", lambda v: _negatable(v, v.lstrip("!") == "LOCAL" and pkt.is_local(pkt.src))),
        ("--dst-type", lambda v: _negatable(v, v.lstrip("!") == "LOCAL" and pkt.is_local(path.dst))),
        # a new connection; DNAT once something rewrote its destination
        ("--ctstate", lambda v: _negatable(v, bool({"NEW", *(["DNAT"] if path.dnat else [])}
                                                   & set(v.lstrip("!").split(","))))),
        ("--mark", lambda v: _mark_match(path.mark, v)),
    )
    for option, test in tests:
        if option in opts and not test(opts[option]):
            return 0.0
    if "--probability" in opts:
        return float(opts["--probability"])
    return 1.0


def _mark_reason(chain: str, opts: dict[str, str]) -> str:
    """Why a rule in `chain` jumps to KUBE-MARK-MASQ, worded as the nftables trace words it."""
    note = opts.get("--comment", "")
    if chain in HAIRPIN_CHAINS:
        return MASQ_HAIRPIN
    if chain == MASQ_OFF_CLUSTER:
        return MASQ_OFF_CLUSTER_REASON
    if note.startswith("masquerade traffic for"):
        return MASQ_EXTERNAL
    if note.startswith("masquerade LOCAL traffic"):
        return MASQ_NODE_OWN
    if chain.startswith("KUBE-SVC-"):
        return MASQ_ALL
    return note or f"marked in {chain}"


class _Walk:
    """Runs one table's chains for every path (see the module docstring)."""

    def __init__(self, table: Table, pkt: Packet) -> None:
        self.table = table
        self.pkt = pkt

    def chain(self, chain: str, path: Path, why: str | None = None, depth: int = 0) -> list[tuple[Path, str]]:
        """Paths out of `chain`: ("verdict" | "return", path)."""
        if depth > MAX_DEPTH:
            return [(path, "return")]
        return self._from(chain, 0, replace(path, chains=(*path.chains, chain)), why, depth)

    def _from(self, chain: str, start: int, path: Path, why: str | None, depth: int) -> list[tuple[Path, str]]:
        rules = self.table.get(chain, [])
        for index in range(start, len(rules)):
            argv, opts = _parsed(rules[index])
            target = opts.get("-j") or opts.get("-g") or ""
            if chain in BUILTIN and not target.startswith("KUBE-"):
                continue  # not kproxy's
            if "--rcheck" in argv or "--update" in argv:
                # sessionAffinity: a new client has no entry yet, so it is picked at random
                if "--seconds" in opts:
                    path = replace(path, affinity=int(opts["--seconds"]))
                continue
            p = _probability(argv, opts, self.pkt, path)
            if p <= 0:
                continue
            out: list[tuple[Path, str]] = []
            for taken, how in self._target(chain, rules[index], target, opts, replace(path, share=path.share * p),
                                           why, depth):
                out += [(taken, how)] if how in ("verdict", "return") else \
                    self._from(chain, index + 1, taken, why, depth)
            if p < 1:
                out += self._from(chain, index + 1, replace(path, share=path.share * (1 - p)), why, depth)
            return out
        return [(path, "return")]

    def _target(self, chain: str, rule: str, target: str, opts: dict[str, str], path: Path,
                why: str | None, depth: int) -> list[tuple[Path, str]]:
        """Paths after one matching rule: ("verdict" | "return" | "next", path)."""
        label = frontend_label(opts)
        if label is not None:
            path = replace(path, labels=(*path.labels, label))
        if target in self.table and target not in BUILTIN:
            if chain.startswith("KUBE-FW-") and "-s" in opts:
                path = path.note(SOURCE_ALLOWED)
            note = opts.get("--comment", "")
            if note.startswith(("pod traffic for", "route LOCAL traffic for")):
                path = path.note(SHORT_CIRCUIT)
            inner = _mark_reason(chain, opts) if target == MARK_MASQ else why
            done = self.chain(target, path, inner, depth + 1)
            if "-g" in opts:  # goto: the end of that chain is the end of this one
                return done
            return [(p, "verdict" if how == "verdict" else "next") for p, how in done]
        if target == "RETURN":
            return [(path, "return")]
        if target == "MARK":
            mark = _set_mark(path.mark, {k: v for k, v in opts.items() if k.endswith("mark")})
            if why and mark and why not in path.why:  # (hairpin adds its reason to a mark already set)
                path = replace(path, why=(*path.why, why))
            return [(replace(path, mark=mark), "next")]
        if target == "DNAT":
            host, port = _split_destination(opts["--to-destination"], path.port)
            return [(replace(path, dnat=endpoint_text(host, port), dst=host, port=port, verdict="DNAT",
                             rule=rule), "verdict")]
        if target in TERMINAL:
            return [(replace(path, verdict=target, rule=rule), "verdict")]
        return [(path, "next")]  # LOG, CONNMARK, ...: the walk goes on


def _split_destination(text: str, port: int) -> tuple[IPAddress, int]:
    """DNAT's --to-destination: ip[:port] or [ip6][:port] (no port: the port is kept)."""
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        return ip_address(host), int(rest[1:]) if rest.startswith(":") else port
    if text.count(":") == 1:
        host, _, port_text = text.partition(":")
        return ip_address(host), int(port_text)
    return ip_address(text), port


def _pod_cidrs(nat: Table) -> list[str]:
    """--cluster-cidr, as KUBE-MASQ-OFF-CLUSTER's RETURN rules hold it."""
    return [opts["-s"] for opts in (options(r) for r in nat.get(MASQ_OFF_CLUSTER, ()))
            if opts.get("-j") == "RETURN" and "-s" in opts]


def _filter_chains(pkt: Packet, dst: IPAddress) -> tuple[str, ...]:
    """The built-in filter chains a packet meets: a local source's packet leaves through
    OUTPUT and, to a local address, comes back through INPUT."""
    to_local = pkt.is_local(dst)
    if pkt.is_local(pkt.src):
        return ("OUTPUT", "INPUT") if to_local else ("OUTPUT",)
    return ("INPUT",) if to_local else ("FORWARD",)


def _walk_builtins(table: Table, pkt: Packet, chains: Iterable[str], path: Path) -> list[Path]:
    """The paths out of built-in chains met in turn (one ending in a verdict stops there)."""
    paths = [path]
    for builtin in chains:
        ended = [p for p in paths if p.verdict]
        going = [p for how_p in (_Walk(table, pkt).chain(builtin, p) for p in paths if not p.verdict)
                 for p, _how in how_p]
        paths = ended + going
    return paths


def _refusal(filt: Table, path: Path, pkt: Packet) -> tuple[str, tuple[str, str] | None]:
    """Why the filter table refused: the reason, and the frontend (service port, kind) if named."""
    _argv, opts = _parsed(path.rule)
    note = opts.get("--comment", "")
    label = frontend_label(opts)
    if note.endswith(" source ranges"):
        if SOURCE_ALLOWED not in path.notes:
            return SOURCE_RANGES_DROP, None
        # allowed, but nothing DNATed it: the frontend's own rule further down says why
        chain = path.rule.split()[1]
        rules = filt.get(chain, [])
        for later in rules[rules.index(path.rule) + 1:]:
            later_argv, later_opts = _parsed(later)
            if frontend_label(later_opts) and _probability(later_argv, later_opts, pkt, path) > 0:
                label = frontend_label(later_opts)
                return (NO_LOCAL_ENDPOINT if later_opts.get("-j") == "DROP" else NO_ENDPOINTS), label
        return NO_LOCAL_ENDPOINT, None
    if label is not None:
        return (NO_LOCAL_ENDPOINT if path.verdict == "DROP" else NO_ENDPOINTS), label
    if path.rule.split()[1] == CLUSTER_IPS:
        return (WRONG_PORT if path.verdict == "REJECT" else UNALLOCATED), None
    if path.rule.split()[1] == FIREWALL:
        return LOCALNET, None
    return note or f"{path.verdict} in {path.rule.split()[1]}", None


def _source_kind(pkt: Packet, pod_cidrs: list[str]) -> str:
    """As the nftables trace decides it: the cluster CIDR first, then this node's addresses."""
    if any(_in_cidr(pkt.src, c) for c in pod_cidrs):
        return "pod"
    return "node" if pkt.is_local(pkt.src) else "external"


def trace_iptables(save_text: str, src: IPAddress, dst: IPAddress, port: int, proto: str,
                   local_ips: Iterable[IPAddress] = ()) -> TraceResult:
    """`save_text`: the family's iptables-save output (nat and filter). `local_ips`: this
    node's addresses (addrtype LOCAL); the NodePort addresses of the rules count as local."""
    tables = parse_save_all(save_text)
    nat, filt = tables.get("nat", {}), tables.get("filter", {})
    if NAT_SERVICES not in nat:
        return TraceResult(verdict="none", reason=NOTHING_PROGRAMMED)
    nodeport_ips, _all_local = nodeport_addresses(nat)
    pkt = Packet(src=src, proto=proto,
                 local=frozenset(local_ips) | {ip_address(ip) for ip in nodeport_ips})
    kind = _source_kind(pkt, _pod_cidrs(nat))
    steps = [f"source {src} is {'a pod (inside the cluster CIDR)' if kind == 'pod' else kind}"]
    start = Path(dst=dst, port=port)
    entry = "OUTPUT" if pkt.is_local(src) else "PREROUTING"
    paths = _walk_builtins(nat, pkt, (entry,), start)
    dnat = [p for p in paths if p.verdict == "DNAT"]
    if not dnat:
        # nothing DNATed it, so it is still addressed to dst: the filter table decides
        undone = replace(paths[0], verdict=None, rule="", chains=())
        refused = [p for p in _walk_builtins(filt, pkt, _filter_chains(pkt, dst), undone)
                   if p.verdict in ("DROP", "REJECT")]
        if not refused:
            return TraceResult(verdict="none", reason=NOT_A_SERVICE, source_kind=kind, steps=tuple(steps))
        path = refused[0]
        steps += [*path.notes, "filter " + " → ".join(path.chains)]
        reason, label = _refusal(filt, path, pkt)
        return TraceResult(verdict=path.verdict.lower() if path.verdict else "none", reason=reason,
                           service_port=label[0] if label else None, frontend=label[1] if label else None,
                           source_kind=kind, steps=tuple(steps))
    return _dnat_result(nat, pkt, kind, dnat, steps)


def _dnat_result(nat: Table, pkt: Packet, kind: str, paths: list[Path],
                 steps: list[str]) -> TraceResult:
    first = paths[0]
    service_port, frontend = first.labels[0] if first.labels else (None, None)
    steps += [n for n in first.notes if n == SOURCE_ALLOWED]
    steps.append(f"{frontend} frontend of {service_port}")
    steps += [n for n in first.notes if n != SOURCE_ALLOWED]
    steps.append("nat " + " → ".join(first.chains))
    shares: dict[str, float] = {}
    reasons: list[str] = []
    for path in paths:
        assert path.dnat is not None
        shares[path.dnat] = shares.get(path.dnat, 0.0) + path.share
        out = _walk_builtins(nat, pkt, ("POSTROUTING",), replace(path, verdict=None))
        for done in out:
            if done.verdict == "MASQUERADE":
                reasons += [w for w in done.why if w not in reasons]
    affinity = max((p.affinity for p in paths if p.affinity), default=None)
    if affinity:
        steps.append(f"sessionAffinity ClientIP: a client keeps its endpoint for {affinity}s")
    total = sum(shares.values()) or 1.0
    percent = {e: 100 * s / total for e, s in shares.items()}
    if max(percent.values()) - min(percent.values()) < 0.5:
        steps.append(f"DNAT to one of {len(shares)} endpoint(s) at random")
    else:
        steps.append("DNAT at random, shares: " + ", ".join(f"{e} {s:.0f}%" for e, s in percent.items()))
    # hairpin last, as the nftables trace lists it
    reasons.sort(key=lambda r: r == MASQ_HAIRPIN)
    # KUBE-HAIRPIN-00..63 hold one "-s IP -d IP" rule per endpoint on this node
    local = {options(rule).get("-s", "").split("/")[0] for chain in HAIRPIN_CHAINS for rule in nat.get(chain, [])}
    return TraceResult(verdict="dnat", reason="DNAT to an endpoint", service_port=service_port,
                       frontend=frontend, source_kind=kind, endpoints=tuple(shares),
                       local_endpoints=tuple(e for e in shares if endpoint_host(e) in local), masquerade=bool(reasons),
                       masquerade_reasons=tuple(reasons), affinity_seconds=affinity, steps=tuple(steps))
