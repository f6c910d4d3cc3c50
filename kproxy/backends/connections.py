"""The conntrack table, read over netlink (pyroute2), as stats.Connection values: the only
I/O of `kproxy dump --stats` and `kproxy top`."""

from __future__ import annotations

import socket

from kproxy.backends.stats import Connection

PROTOCOLS = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", socket.IPPROTO_SCTP: "SCTP"}
TCP_ESTABLISHED = 3  # TCP_CONNTRACK_ESTABLISHED
IPS_ASSURED = 1 << 2


def read_connections() -> list[Connection]:
    """Every TCP, UDP and SCTP entry of both families in this network namespace."""
    from pyroute2 import Conntrack
    from pyroute2.netlink.nfnetlink.nfctsocket import NFCTAttrTuple

    found = []
    with Conntrack() as ct:
        for family in (socket.AF_INET, socket.AF_INET6):
            for proto, name in PROTOCOLS.items():
                for entry in ct.dump_entries(tuple_orig=NFCTAttrTuple(family=family, proto=proto)):
                    orig, reply = entry.tuple_orig, entry.tuple_reply
                    if orig.family != family or orig.proto != proto:
                        continue
                    if proto == socket.IPPROTO_TCP:
                        established = entry.protoinfo is not None and entry.protoinfo.state == TCP_ESTABLISHED
                    else:
                        established = bool((entry.status or 0) & IPS_ASSURED)
                    found.append(Connection(
                        protocol=name, orig_dst=str(orig.daddr), orig_dport=int(orig.dport or 0),
                        reply_src=str(reply.saddr), reply_sport=int(reply.sport or 0), established=established,
                        key=(name, str(orig.saddr), orig.sport, str(orig.daddr), orig.dport, entry.id)))
    return found
