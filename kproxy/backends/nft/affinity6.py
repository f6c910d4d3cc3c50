"""sessionAffinity ClientIP for IPv6 frontends: one dynamic set per endpoint. Pure.

IPv4 affinity is one map per timeout, client . frontend -> endpoint, filled after DNAT
(render.py). nft 1.0.6 (Debian 12) cannot build that map's update rule for IPv6: more
than 32 bytes of key and data abort it (`netlink_linearize: dreg < ctx->reg_low`). So
IPv6 does what upstream's nftables mode does for both families, with sets of clients:

- set `clients6-H-E` per endpoint E of Service port H holds the clients that got E,
  each for the Service's timeout (`update` refreshes it);
- chain `affinity6-T-H-int` / `-ext` (T the timeout), one rule per endpoint of that
  frontend's endpoint list: a client in E's set is DNATed to E; a client in none falls
  through to the usual random choice. Verdict map `affinity6-frontends` (and
  `affinity6-nodeports`) sends a frontend there, before the dispatch;
- chain `affinity6-record-H`, one rule per endpoint: after DNAT (nat postrouting), the
  client is added to the set of the endpoint it got. Verdict maps
  `affinity6-record-frontends` / `-nodeports` send the original destination there.

An endpoint that leaves takes its set along, as upstream: its clients choose afresh.
The cost is two chains and one set per endpoint of IPv6 affinity Service ports only.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Iterable

from kproxy.backends.nft.names import FRONTEND_KEY, NODEPORT_IPS, NODEPORT_KEY
from kproxy.backends.nft.objects import Chain, Element, SetSpec
from kproxy.plan import ServicePortPlan, Target
from kproxy.values import ip_text

PREFIX = "affinity6-"
CLIENTS_PREFIX = "clients6-"
FRONTENDS = "affinity6-frontends"
NODEPORTS = "affinity6-nodeports"
RECORD_FRONTENDS = "affinity6-record-frontends"
RECORD_NODEPORTS = "affinity6-record-nodeports"
RECORD_CHAIN_PREFIX = "affinity6-record-"
VMAPS = (FRONTENDS, NODEPORTS, RECORD_FRONTENDS, RECORD_NODEPORTS)
PROTOCOLS = ("tcp", "udp", "sctp")


def _hash(text: str) -> str:
    """8 characters of base32(sha256): short stable names, like upstream's chain names."""
    return base64.b32encode(hashlib.sha256(text.encode()).digest())[:8].decode().lower()


def set_name(sp: ServicePortPlan, target: Target) -> str:
    return f"{CLIENTS_PREFIX}{_hash(str(sp.name))}-{_hash(f'{ip_text(target.ip)} . {target.port}')}"


def lookup_chain(sp: ServicePortPlan, external: bool) -> str:
    return f"{PREFIX}{sp.affinity_timeout}-{_hash(str(sp.name))}-{'ext' if external else 'int'}"


def record_chain(sp: ServicePortPlan) -> str:
    return f"{RECORD_CHAIN_PREFIX}{_hash(str(sp.name))}"


def timeout_of_chain(name: str) -> int | None:
    """T of a lookup chain (affinity6-600-abcdefgh-int -> 600), else None."""
    parts = name.removeprefix(PREFIX).split("-")
    if name.startswith(PREFIX) and len(parts) == 3 and parts[0].isdigit():
        return int(parts[0])
    return None


def is_client_set(name: str) -> bool:
    """A set of clients (clients6-H-E): the kernel fills it, kproxy only creates it."""
    return name.startswith(CLIENTS_PREFIX)


def _unique(targets: tuple[Target, ...]) -> list[Target]:
    return list(dict.fromkeys(targets))


def elements(sp: ServicePortPlan, frontends: Iterable[tuple[str, bool, bool]]) -> dict[str, dict[str, Element]]:
    """The verdict-map elements of one IPv6 affinity Service port. `frontends`: (element
    key as render writes it, is a NodePort, is external) of each frontend."""
    out: dict[str, dict[str, Element]] = {}
    for key, nodeport, external in frontends:
        targets = sp.external_targets if external else sp.internal_targets
        comment = str(sp.name)
        if targets:
            out.setdefault(NODEPORTS if nodeport else FRONTENDS, {})[key] = Element(
                f"jump {lookup_chain(sp, external)}", comment)
        out.setdefault(RECORD_NODEPORTS if nodeport else RECORD_FRONTENDS, {})[key] = Element(
            f"jump {record_chain(sp)}", comment)
    return out


def chains_and_sets(sp: ServicePortPlan) -> tuple[list[Chain], list[SetSpec]]:
    """One IPv6 affinity Service port's chains and client sets."""
    proto = sp.protocol.nft
    everyone = _unique(sp.all_targets())
    spec = f"type ipv6_addr; flags dynamic,timeout; timeout {sp.affinity_timeout}s;"
    sets = [SetSpec(name=set_name(sp, t), spec=spec) for t in everyone]
    chains = [Chain(name=record_chain(sp), rules=tuple(
        f"ip6 daddr {ip_text(t.ip)} meta l4proto {proto} th dport {t.port} update @{set_name(sp, t)} {{ ip6 saddr }}"
        for t in everyone))]
    for external, targets in ((False, sp.internal_targets), (True, sp.external_targets)):
        if targets and any(fe.kind.is_external == external for fe in sp.frontends):
            chains.append(Chain(name=lookup_chain(sp, external), rules=tuple(
                f"ip6 saddr @{set_name(sp, t)} meta l4proto {proto} dnat ip6 to [{ip_text(t.ip)}]:{t.port}"
                for t in _unique(targets))))
    return chains, sets


def skeleton_parts(nodeport: str, nodeport_all_local: bool) -> tuple[list[str], list[str], list[SetSpec]]:
    """(services rules, nat postrouting rules, verdict maps) that lead to the chains above;
    `nodeport` is the skeleton's NodePort match (addresses, then proto . port)."""
    frontend = FRONTEND_KEY.format(ip="ip6")
    services = [f"{frontend} vmap @{FRONTENDS}", f"{nodeport} vmap @{NODEPORTS}"]
    # after DNAT the destination is the endpoint: match the original one
    original = "ct original ip6 daddr . meta l4proto . ct original proto-dst"
    addresses = "" if nodeport_all_local else f"ct original ip6 daddr @{NODEPORT_IPS} "
    # `ct original proto-dst` is typed only with the protocol known: one rule per protocol
    postrouting = []
    for proto in PROTOCOLS:
        postrouting.append(f"meta l4proto {proto} ct status dnat {original} vmap @{RECORD_FRONTENDS}")
        postrouting.append(f"meta l4proto {proto} ct status dnat {addresses}"
                           f"meta l4proto . ct original proto-dst vmap @{RECORD_NODEPORTS}")
    verdict = ": verdict;"
    sets = [SetSpec(name=FRONTENDS, spec=f"typeof {frontend} {verdict}", is_map=True),
            SetSpec(name=NODEPORTS, spec=f"typeof {NODEPORT_KEY} {verdict}", is_map=True),
            SetSpec(name=RECORD_FRONTENDS, spec=f"typeof {frontend} {verdict}", is_map=True),
            SetSpec(name=RECORD_NODEPORTS, spec=f"typeof {NODEPORT_KEY} {verdict}", is_map=True)]
    return services, postrouting, sets
