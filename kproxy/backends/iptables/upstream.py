"""What upstream kube-proxy leaves in iptables (any of its modes) -> the restore input that
removes it. Pure.

As upstream's CleanupLeftovers (pkg/proxy/iptables/cleanup.go): the jumps from the built-in
chains into its chains, then its chains in nat (KUBE-SERVICES, KUBE-NODEPORTS,
KUBE-POSTROUTING, KUBE-MARK-MASQ, KUBE-PROXY-CANARY and every per-Service chain), filter
(KUBE-SERVICES, KUBE-EXTERNAL-SERVICES, KUBE-FORWARD, KUBE-NODEPORTS, KUBE-PROXY-FIREWALL,
KUBE-PROXY-CANARY) and mangle (KUBE-PROXY-CANARY); plus the chains its IPVS mode adds.
What kubelet owns stays: KUBE-FIREWALL, KUBE-KUBELET-CANARY, KUBE-MARK-DROP,
KUBE-IPTABLES-HINT. Chains kproxy has programmed itself (its iptables mode uses upstream's
names) are passed as `keep` and stay, with the jumps into them.
"""

from __future__ import annotations

from collections.abc import Callable

from kproxy.backends.iptables.render import BUILTIN
from kproxy.backends.iptables.restore import RestoreInput, _restore_input, _table_block
from kproxy.backends.iptables.save import Table, options

CANARY = "KUBE-PROXY-CANARY"
UPSTREAM_CHAINS = {
    "nat": ("KUBE-SERVICES", "KUBE-NODEPORTS", "KUBE-POSTROUTING", "KUBE-MARK-MASQ", CANARY,
            # IPVS mode
            "KUBE-LOAD-BALANCER", "KUBE-NODE-PORT"),
    "filter": ("KUBE-SERVICES", "KUBE-EXTERNAL-SERVICES", "KUBE-FORWARD", "KUBE-NODEPORTS",
               "KUBE-PROXY-FIREWALL", CANARY,
               # IPVS mode
               "KUBE-NODE-PORT", "KUBE-IPVS-FILTER", "KUBE-IPVS-OUT-FILTER", "KUBE-SOURCE-RANGES-FIREWALL"),
    "mangle": (CANARY,),
}
# upstream's isServiceChainName, and the older KUBE-XLB- (externalTrafficPolicy: Local)
SERVICE_PREFIXES = ("KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-FW-", "KUBE-SEP-", "KUBE-XLB-")
TABLES = ("filter", "nat", "mangle")


def is_upstreams(table: str, chain: str) -> bool:
    return chain in UPSTREAM_CHAINS.get(table, ()) or (table == "nat" and chain.startswith(SERVICE_PREFIXES))


def upstream_removal(existing: dict[str, Table],
                     keep: Callable[[str, str], bool] = lambda _t, _c: False) -> tuple[RestoreInput, list[str]]:
    """The restore input that removes upstream's chains (those `keep(table, chain)` does not
    claim) and the built-in chains' jumps into them; and what it removes, "table/chain"."""
    blocks, removed = [], []
    for table in TABLES:
        have = existing.get(table, {})
        gone = sorted(c for c in have if is_upstreams(table, c) and not keep(table, c))
        if not gone:
            continue
        unlink = ["-D" + rule[2:] for chain, rules in have.items() if chain in BUILTIN.get(table, ())
                  for rule in rules if options(rule).get("-j", "") in gone]
        blocks.append(_table_block(table, (), {}, gone, unlink))
        removed += [f"{table}/{c}" for c in gone]
    return _restore_input(blocks), removed
