"""Live connection counts per frontend and per endpoint, from conntrack entries matched
against what is programmed (a ProgrammedView). Pure: the entries are read by
backends/connections.py.

An entry belongs to a frontend when its original direction's destination is that frontend
(ClusterIP, externalIP or LB IP and port; for a NodePort, the port on a NodePort address),
and to an endpoint when its reply comes from it (the DNAT target). "Established": a TCP
entry in state ESTABLISHED, a UDP or SCTP one that conntrack calls assured (replies seen);
every other entry (handshakes, closing, TIME_WAIT, unreplied) is "other". New connections
per second are entries present at the end of a window and not at its start, divided by it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from kproxy.backends.view import FrontendView, ProgrammedView
from kproxy.values import endpoint_host, endpoint_text


@dataclass(frozen=True, slots=True, kw_only=True)
class Connection:
    """One conntrack entry, the parts that matter here."""

    protocol: str  # TCP, UDP, SCTP (as in ServicePortView.protocol)
    orig_dst: str  # ip text
    orig_dport: int
    reply_src: str
    reply_sport: int
    established: bool
    key: tuple[object, ...]  # identifies the entry across two reads (its original tuple)


@dataclass(slots=True)
class Counts:
    established: int = 0
    other: int = 0
    new: int = 0  # in the window (0 without one)

    def add(self, conn: Connection, new: bool) -> None:
        if conn.established:
            self.established += 1
        else:
            self.other += 1
        self.new += new

    def to_json(self, window: float | None) -> dict[str, object]:
        out: dict[str, object] = {"established": self.established, "other": self.other}
        if window:
            out["new_per_second"] = round(self.new / window, 2)
        return out


@dataclass(slots=True)
class FrontendStats:
    service_port: str
    protocol: str
    frontend: FrontendView
    total: Counts = field(default_factory=Counts)
    endpoints: dict[str, Counts] = field(default_factory=dict)  # endpoint ip:port -> counts


@dataclass(frozen=True, slots=True, kw_only=True)
class StatsReport:
    frontends: tuple[FrontendStats, ...]
    window: float | None  # seconds between the two reads, None: one read (no rates)
    unmatched: int  # entries to no programmed frontend (other traffic of the node)

    def to_json(self) -> dict[str, object]:
        return {
            "window_seconds": self.window,
            "frontends": [
                {"service_port": s.service_port, "protocol": s.protocol, "kind": s.frontend.kind,
                 "address": s.frontend.address, **s.total.to_json(self.window),
                 "endpoints": [{"endpoint": ep, **c.to_json(self.window)} for ep, c in s.endpoints.items()]}
                for s in self.frontends
            ],
        }


def _addresses(address: str) -> list[tuple[str, int]]:
    """A FrontendView address ("10.96.0.10:80", "[fd00::1]:80", "a:30080,b:30080",
    "*:30080") as (ip or "*", port) pairs."""
    return [(endpoint_host(part.strip()), int(part.rsplit(":", 1)[1])) for part in address.split(",")]


def connection_stats(view: ProgrammedView, now: Iterable[Connection],
                     before: Iterable[Connection] | None = None, window: float | None = None) -> StatsReport:
    """Counts per frontend and endpoint of the entries in `now`; with `before` (a read
    `window` seconds earlier), how many of them are new."""
    stats: list[FrontendStats] = []
    exact: dict[tuple[str, str, int], FrontendStats] = {}
    any_address: dict[tuple[str, int], FrontendStats] = {}  # NodePorts on every local address
    for sp in view.service_ports:
        for fe in sp.frontends:
            s = FrontendStats(sp.name, sp.protocol, fe, endpoints={ep: Counts() for ep in fe.endpoints})
            stats.append(s)
            for host, port in _addresses(fe.address):
                if host == "*":
                    any_address[(sp.protocol, port)] = s
                else:
                    exact[(sp.protocol, host, port)] = s
    seen = {c.key for c in before} if before is not None else None
    unmatched = 0
    for conn in now:
        hit = exact.get((conn.protocol, conn.orig_dst, conn.orig_dport)) \
            or any_address.get((conn.protocol, conn.orig_dport))
        if hit is None:
            unmatched += 1
            continue
        new = seen is not None and conn.key not in seen
        hit.total.add(conn, new)
        if (conn.reply_src, conn.reply_sport) != (conn.orig_dst, conn.orig_dport):  # DNATed
            hit.endpoints.setdefault(endpoint_text(conn.reply_src, conn.reply_sport), Counts()).add(conn, new)
    return StatsReport(frontends=tuple(stats), window=window if before is not None else None, unmatched=unmatched)


def format_stats(report: StatsReport) -> str:
    """The text form: a line per frontend with endpoints under it."""
    rate = report.window is not None
    head = f"{'frontend':<44}{'estab':>7}{'other':>7}" + (f"{'new/s':>8}" if rate else "")
    lines = [head]

    def row(label: str, c: Counts) -> str:
        text = f"{label:<44}{c.established:>7}{c.other:>7}"
        return text + (f"{c.new / report.window:>8.1f}" if report.window else "")

    current = ""
    for s in report.frontends:
        if s.service_port != current:
            current = s.service_port
            lines.append(f"{s.service_port} ({s.protocol})")
        lines.append(row(f"  {s.frontend.kind} {s.frontend.address}"[:44], s.total))
        for endpoint, c in s.endpoints.items():
            lines.append(row(f"    -> {endpoint}", c))
    if rate:
        lines.append(f"(new connections per second over {report.window:.1f}s)")
    return "\n".join(lines) + "\n"
