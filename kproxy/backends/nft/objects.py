"""Plain values mirroring the nftables objects kproxy owns: chains, sets/maps, elements."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

from kproxy.backends.nft.names import TABLE

COMMENT_MAX = 128  # nft refuses longer element comments


@dataclass(frozen=True, slots=True, kw_only=True)
class Chain:
    name: str
    rules: tuple[str, ...] = ()
    # "type nat hook prerouting priority dstnat; policy accept;" for a base chain
    hook: str | None = None

    def definition(self, table: str) -> str:
        return f"add chain {table} {self.name}" + (f" {{ {self.hook} }}" if self.hook else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class SetSpec:
    """A named set or map: `spec` is its body, e.g. "typeof ip daddr; flags interval;"."""

    name: str
    spec: str
    is_map: bool = False

    @property
    def is_verdict_map(self) -> bool:
        return self.is_map and self.spec.rstrip().endswith(": verdict;")

    def definition(self, table: str) -> str:
        kind = "map" if self.is_map else "set"
        return f"add {kind} {table} {self.name} {{ {self.spec} }}"


@dataclass(frozen=True, slots=True)
class Element:
    """The value part of a set element: map data (None for plain sets) and a comment."""

    data: str | None = None
    comment: str | None = None


def element_text(key: str, element: Element) -> str:
    text = key
    if element.comment:
        text += f' comment "{element.comment[:COMMENT_MAX]}"'
    if element.data is not None:
        text += f" : {element.data}"
    return text


@dataclass(frozen=True, slots=True, kw_only=True)
class Skeleton:
    """Everything but the elements: chains with their rules, and set definitions.

    It depends only on node-wide settings and on which endpoint counts are in use, so it
    is small and cheap to rebuild each sync.
    """

    chains: tuple[Chain, ...]
    sets: tuple[SetSpec, ...]
    table: str = TABLE  # "ip kproxy" or "ip6 kproxy"

    def chain_map(self) -> dict[str, Chain]:
        return {c.name: c for c in self.chains}

    def set_map(self) -> dict[str, SetSpec]:
        return {s.name: s for s in self.sets}

    def digest(self) -> str:
        """Names this skeleton by every chain, rule and set definition: the backend puts it
        in the kernel (names.SKELETON), so a later full sync can tell the kernel holds it."""
        text = "\n".join([*(c.definition(self.table) for c in self.chains),
                          *(rule for c in self.chains for rule in (c.name, *c.rules)),
                          *(s.definition(self.table) for s in self.sets)])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

