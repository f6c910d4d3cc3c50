"""What differs between the table kproxy last applied and the kernel's listing of it.
Pure.

Other agents change rules on real nodes (a firewall reload, a CNI, an admin): a deleted
table, a flushed chain, a deleted element, a rule added to a kproxy chain. The backend
compares what it applied (its Skeleton and ElementTable) with a listing whenever the
ruleset generation moved without it, and rewrites the table when they differ.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from kproxy.backends.nft.elements import ElementTable
from kproxy.backends.nft.names import is_affinity_map
from kproxy.backends.nft.objects import Skeleton
from kproxy.backends.nft.readback import key_parts, part_text


def _text(value: Any) -> str:
    """A key or data of the JSON listing as render writes it ("10.0.0.1 . tcp . 80")."""
    if isinstance(value, dict):
        for verdict in ("goto", "jump"):
            if verdict in value:
                return f"{verdict} {value[verdict]['target']}"
        if len(value) == 1 and next(iter(value)) in ("drop", "accept", "return", "continue"):
            return str(next(iter(value)))
    parts, _comment = key_parts(value)
    return " . ".join(_bare(part_text(p)) for p in parts)


def _bare(part: str) -> str:
    """A single address in an interval set lists without its /32 or /128."""
    return part.removesuffix("/32").removesuffix("/128")


def listed_elements(listing: dict[str, Any]) -> dict[str, dict[str, str | None]]:
    """set or map name -> key -> data (None for sets), as render writes them."""
    found: dict[str, dict[str, str | None]] = {}
    for item in listing.get("nftables", []):
        for kind in ("set", "map"):
            if kind in item:
                elems: dict[str, str | None] = {}
                for entry in item[kind].get("elem") or []:
                    if kind == "map":
                        elems[_text(entry[0])] = _text(entry[1])
                    else:
                        elems[_text(entry)] = None
                found[item[kind]["name"]] = elems
    return found


def listed_rule_counts(listing: dict[str, Any]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for item in listing.get("nftables", []):
        if "chain" in item:
            counts[item["chain"]["name"]] += 0
        elif "rule" in item:
            counts[item["rule"]["chain"]] += 1
    return counts


def differences(skeleton: Skeleton, table: ElementTable, listing: dict[str, Any] | None) -> list[str]:
    """What the kernel lacks or has beyond what kproxy applied; empty when they match."""
    if listing is None:
        return [f"table {skeleton.table} missing"]
    found: list[str] = []
    rules = listed_rule_counts(listing)
    for chain in skeleton.chains:
        if chain.name not in rules:
            found.append(f"chain {chain.name} missing")
        elif rules[chain.name] != len(chain.rules):
            found.append(f"chain {chain.name}: {rules[chain.name]} rules, want {len(chain.rules)}")
    wanted_chains = {c.name for c in skeleton.chains}
    found += [f"chain {name} not kproxy's" for name in sorted(rules.keys() - wanted_chains)]
    elements = listed_elements(listing)
    for spec in skeleton.sets:
        have = elements.get(spec.name)
        if have is None:
            found.append(f"{'map' if spec.is_map else 'set'} {spec.name} missing")
            continue
        if is_affinity_map(spec.name):
            continue  # filled by the kernel, not by kproxy
        want = {_bare_key(k): e.data for k, e in table.elements(spec.name)}
        missing = [k for k in want if k not in have]
        extra = [k for k in have if k not in want]
        changed = [k for k in want if k in have and have[k] != want[k]]
        for what, keys in (("missing", missing), ("not kproxy's", extra), ("changed", changed)):
            if keys:
                found.append(f"{spec.name}: {len(keys)} element(s) {what}")
    wanted_sets = {s.name for s in skeleton.sets}
    found += [f"set {name} not kproxy's" for name in sorted(elements.keys() - wanted_sets)]
    return found


def _bare_key(key: str) -> str:
    return " . ".join(_bare(p) for p in key.split(" . "))

