"""Stale UDP conntrack entries, found and removed after a sync (upstream's reconciler).

UDP has no connection end: a client that keeps sending to a Service keeps its conntrack
entry, and so its old DNAT, for ever. After a sync, any UDP entry whose original
destination is a Service frontend that now has endpoints, but whose reply does not come
from one of them (an endpoint that left, or no DNAT at all because the Service had no
endpoints when the flow began), is deleted, so the next packet is DNATed afresh.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from ipaddress import ip_address
from typing import Any

import structlog

from kproxy.model import IPAddress, Protocol, ServicePortName
from kproxy.plan import Plan, ServicePortPlan

log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Flow:
    """The parts of a UDP conntrack entry that matter here."""

    orig_dst: IPAddress
    orig_dport: int
    reply_src: IPAddress
    reply_sport: int


def stale_flows(plan: Plan, changed: Iterable[ServicePortPlan], flows: Iterable[Flow]) -> list[Flow]:
    """Flows to changed UDP Service ports that no current endpoint answers. Pure."""
    by_frontend: dict[tuple[IPAddress, int], set[tuple[IPAddress, int]]] = {}
    by_nodeport: dict[int, set[tuple[IPAddress, int]]] = {}
    for sp in changed:
        if sp.protocol is not Protocol.UDP:
            continue
        valid = {(t.ip, t.port) for t in sp.all_targets()}
        if not valid:
            continue  # nothing to send it to: the flow is rejected or dropped anyway
        for fe in sp.frontends:
            if fe.ip is None:
                by_nodeport[fe.port] = valid
            else:
                by_frontend[(fe.ip, fe.port)] = valid
    nodeport_ips = set(plan.nodeport_ips)
    stale = []
    for flow in flows:
        answering = by_frontend.get((flow.orig_dst, flow.orig_dport))
        if answering is None and (plan.nodeport_all_local or flow.orig_dst in nodeport_ips):
            answering = by_nodeport.get(flow.orig_dport)
        if answering is not None and (flow.reply_src, flow.reply_sport) not in answering:
            stale.append(flow)
    return stale


def changed_udp_ports(before: Mapping[ServicePortName, ServicePortPlan],
                      plan: Plan) -> list[ServicePortPlan]:
    return [sp for sp in plan.service_ports
            if sp.protocol is Protocol.UDP and before.get(sp.name) is not sp and before.get(sp.name) != sp]


class ConntrackCleaner:
    """After each sync, removes stale UDP entries of the UDP Service ports that changed."""

    def __init__(self) -> None:
        self._before: dict[int, dict[ServicePortName, ServicePortPlan]] = {}  # per IP family

    def after_sync(self, plan: Plan, _report: object = None) -> int:
        changed = changed_udp_ports(self._before.get(plan.family, {}), plan)
        self._before[plan.family] = {sp.name: sp for sp in plan.service_ports if sp.protocol is Protocol.UDP}
        if not changed:
            return 0
        try:
            return self._clean(plan, changed)
        except OSError as err:
            log.warning("could not clean UDP conntrack entries", error=str(err))
            return 0

    @staticmethod
    def _clean(plan: Plan, changed: list[ServicePortPlan]) -> int:
        from pyroute2 import Conntrack
        from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

        removed = 0
        family = socket.AF_INET if plan.family == 4 else socket.AF_INET6
        with Conntrack() as ct:
            entries = list(ct.dump_entries(tuple_orig=NFCTAttrTuple(family=family, proto=socket.IPPROTO_UDP)))
            flows: dict[Flow, list[Any]] = {}
            for entry in entries:
                orig, reply = entry.tuple_orig, entry.tuple_reply
                if orig.family != family:
                    continue
                flow = Flow(ip_address(orig.daddr), orig.dport, ip_address(reply.saddr), reply.sport)
                flows.setdefault(flow, []).append(entry)
            for flow in stale_flows(plan, changed, flows):
                for entry in flows[flow]:
                    try:
                        ct.delete(entry)
                        removed += 1
                    except OSError:
                        pass  # gone meanwhile
        if removed:
            log.info("removed stale UDP conntrack entries", count=removed)
        return removed
