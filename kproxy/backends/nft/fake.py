"""FakeNft: NftKernel in memory, for tests without root.

It applies the nft scripts kproxy sends the way the kernel does, for the commands kproxy
uses: a script is one transaction (all or nothing), and it refuses what the kernel
refuses: rules in missing chains, jumps and map verdicts to missing chains, lookups of
missing sets, deleting what is not there or is still referenced, and a map element added
again with other data. It lists the table as `nft -j list table` does, so render -> fake
-> readback / trace / affinity round-trips without a kernel. Rules are listed without
their expressions (nothing in kproxy reads them back from JSON).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from kproxy.backends.base import Touched
from kproxy.backends.nft import wire
from kproxy.backends.nft.batch import joined_encoder
from kproxy.backends.nft.drift import Structure, holds
from kproxy.backends.nft.events import CommitLog
from kproxy.backends.nft.kernel import NftError
from kproxy.backends.nft.names import SKELETON, TABLE
from kproxy.backends.nft.objects import Element, SetSpec, Skeleton
from kproxy.backends.nft.transaction import elements_transaction

_REF = re.compile(r"@([\w-]+)")
_JUMP = re.compile(r"\b(?:jump|goto) ([\w-]+)")
_HOOK = re.compile(r"type (\w+) hook (\w+) priority ([\w-]+);")
_PRIORITIES = {"dstnat": -100, "srcnat": 100, "filter": 0, "raw": -300, "mangle": -150, "security": 50}
_ELEMENT = re.compile(r'^(?P<key>.+?)(?: comment "(?P<comment>[^"]*)")?(?: : (?P<data>.+))?$')


@dataclass(slots=True)
class _Set:
    spec: str
    is_map: bool
    elements: dict[str, tuple[str | None, str | None]] = field(default_factory=dict)  # key -> (data, comment)


@dataclass(slots=True)
class _Chain:
    hook: str | None
    rules: list[tuple[int, str]] = field(default_factory=list)  # (handle, rule)


@dataclass(slots=True)
class _Table:
    comment: str | None = None
    chains: dict[str, _Chain] = field(default_factory=dict)
    sets: dict[str, _Set] = field(default_factory=dict)
    handles: int = 0  # the last object handle given out in this table, as the kernel counts


class FakeNft:
    """NftKernel for one table ("ip kproxy" or "ip6 kproxy"); `scripts` records what was
    applied, `fail_next` makes the next apply fail with that message."""

    def __init__(self, table: str = TABLE) -> None:
        self.table = table
        self.family, self.name = table.split()
        self.scripts: list[str] = []
        self.fail_next: str | None = None
        self._state: _Table | None = None
        self._generation = 1  # bumped by every committed transaction, as the kernel does
        # what the kernel announces to the nf_tables event group: one datagram per commit
        self.events: list[bytes] = []

    # --- NftKernel ------------------------------------------------------------------------

    def apply(self, script: str) -> None:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise NftError(message)
        work = copy.deepcopy(self._state)
        for n, line in enumerate(script.splitlines(), 1):
            if line.strip():
                try:
                    work = self._command(work, line.strip())
                except NftError as err:
                    raise NftError(f"Error: line {n}: {err}: {line.strip()[:200]}") from None
        self._announce(self._state, work)
        self._state = work
        self.scripts.append(script)

    def holds(self, skeleton: Skeleton) -> bool | None:
        if self._state is None:
            return None
        marker = self._state.sets.get(SKELETON)
        digest = marker.elements.get("0", (None, None))[1] if marker is not None else None
        return holds(self._structure(self._state), digest, skeleton)

    def load_elements(self, table: str, sets: Sequence[tuple[SetSpec, Iterable[tuple[str, Element]]]],
                      flush: bool = False, atomic: bool = True) -> int:
        self.apply(elements_transaction(table, sets, flush).text())
        return 1

    def generation(self) -> int | None:
        return self._generation

    def list_table(self) -> dict[str, Any] | None:
        if self._state is None:
            return None
        items: list[dict[str, Any]] = [{"table": {"family": self.family, "name": self.name, "handle": 1}}]
        items += [self._set_json(name, s) for name, s in self._state.sets.items()]
        for name, chain in self._state.chains.items():
            items.append({"chain": self._chain_json(name, chain)})
        for name, chain in self._state.chains.items():
            for handle, _rule in chain.rules:
                items.append({"rule": {"family": self.family, "table": self.name, "chain": name, "handle": handle}})
        return {"nftables": items}

    def list_map(self, name: str) -> dict[str, Any] | None:
        if self._state is None or name not in self._state.sets:
            return None
        return {"nftables": [self._set_json(name, self._state.sets[name])]}

    def delete_table(self) -> bool:
        present = self._state is not None
        if present:
            self._announce(self._state, None)
        self._state = None
        return present

    def structure(self) -> Structure | None:
        return None if self._state is None else self._structure(self._state)

    @staticmethod
    def _structure(state: _Table) -> Structure:
        return Structure(chains={name: len(c.rules) for name, c in state.chains.items()}, sets=frozenset(state.sets))

    def read_elements(self, name: str, spec: str) -> Iterator[tuple[str, str | None]]:
        held = self._state.sets.get(name) if self._state is not None else None
        for key, (data, _comment) in (held.elements.items() if held is not None else ()):
            yield key, data

    def read_element(self, name: str, spec: str, key: bytes) -> tuple[str, str | None] | None:
        held = self._state.sets.get(name) if self._state is not None else None
        text = wire.joined(wire.layout(spec).key)(key)
        if held is None or text not in held.elements:
            return None
        return text, held.elements[text][0]

    def foreign_commit(self, table: str = "ip filter") -> None:
        """Another program's transaction in another table: the generation moves, the events
        name that table."""
        family, name = table.split()
        self._generation += 1
        self.events.append(wire.event(wire.NEWTABLE, wire.NFPROTO[family], wire.name_attr(wire.TABLE, name))
                           + wire.generation_event(self._generation))

    def _announce(self, before: _Table | None, after: _Table | None) -> None:
        """A commit's events (what changed, by table, chain and set) and its new generation."""
        family, table = wire.NFPROTO[self.family], wire.name_attr(wire.TABLE, self.name)
        messages = []
        if (before is None) != (after is None):
            messages.append(wire.event(wire.NEWTABLE if after is not None else wire.DELTABLE, family, table))
        old, new = before or _Table(), after or _Table()
        for name in sorted(old.chains.keys() | new.chains.keys()):
            was, now = old.chains.get(name), new.chains.get(name)
            if (was is None) != (now is None):
                kind = wire.NEWCHAIN if now is not None else wire.DELCHAIN
                messages.append(wire.event(kind, family, table, wire.name_attr(wire.CHAIN_NAME, name)))
            elif was is not None and now is not None and was.rules != now.rules:
                messages.append(wire.event(wire.NEWRULE, family, table, wire.name_attr(wire.RULE_CHAIN, name)))
        for name in sorted(old.sets.keys() | new.sets.keys()):
            had, has = old.sets.get(name), new.sets.get(name)
            if (had is None) != (has is None):
                kind = wire.NEWSET if has is not None else wire.DELSET
                messages.append(wire.event(kind, family, table, wire.name_attr(wire.SET_NAME, name)))
            elif had is not None and has is not None and had.elements != has.elements:
                messages.append(wire.event(wire.NEWSETELEM, family, table, wire.name_attr(wire.ELEM_LIST_SET, name),
                                           *_element_list(has.spec, had.elements, has.elements)))
        self._generation += 1
        self.events.append(b"".join(messages) + wire.generation_event(self._generation))

    def listing(self) -> dict[str, Any] | None:
        """The whole table as plain data to compare two fakes by: chains with their hook and
        rules in order, sets with their definition and elements; None without a table."""
        if self._state is None:
            return None
        return {
            "comment": self._state.comment,
            "chains": {name: (c.hook, [rule for _handle, rule in c.rules])
                       for name, c in sorted(self._state.chains.items())},
            "sets": {name: (s.spec, dict(sorted(s.elements.items()))) for name, s in sorted(self._state.sets.items())},
        }

    # --- what the kernel does by itself ---------------------------------------------------------

    def fill(self, set_name: str, key: str, data: str | None = None) -> None:
        """An element the kernel adds on its own (a dynamic map filled from the packet path)."""
        assert self._state is not None, "no table"
        self._state.sets[set_name].elements[key] = (data, None)

    def elements(self, set_name: str) -> dict[str, str | None]:
        """key -> data of one set or map, as applied (for assertions)."""
        assert self._state is not None, "no table"
        return {k: d for k, (d, _c) in self._state.sets[set_name].elements.items()}

    def chain_rules(self, chain: str) -> list[str]:
        assert self._state is not None, "no table"
        return [rule for _handle, rule in self._state.chains[chain].rules]

    # --- one command ---------------------------------------------------------------------------

    def _command(self, work: _Table | None, line: str) -> _Table | None:
        verb, kind, rest = [*line.split(None, 2), "", ""][:3]
        if kind in ("table", "chain", "set", "map", "rule", "element") and not rest.startswith(self.table):
            raise NftError(f"only table {self.table} is faked")
        rest = rest[len(self.table):].strip()
        if kind == "table":
            return self._table(work, verb, rest)
        if work is None:
            raise NftError("No such file or directory (no table)")
        name, _, body = rest.partition(" ")
        if (verb, kind) == ("add", "chain"):
            hook = body.strip().removeprefix("{").removesuffix("}").strip() or None
            known = work.chains.get(name)
            if known is not None and known.hook != hook:
                raise NftError(f"chain {name} exists with another hook")
            work.chains.setdefault(name, _Chain(hook))
        elif (verb, kind) in (("delete", "chain"), ("flush", "chain")):
            chain = self._chain(work, name)
            if verb == "delete":
                self._unreferenced(work, name, f"jump {name}", f"goto {name}")
                del work.chains[name]
            else:
                chain.rules.clear()
        elif (verb, kind) == ("add", "rule"):
            self._check_rule(work, self._chain(work, name), body)
            work.handles += 1
            work.chains[name].rules.append((work.handles, body))
        elif verb == "add" and kind in ("set", "map"):
            spec = body.strip().removeprefix("{").removesuffix("}").strip()
            known_set = work.sets.get(name)
            if known_set is not None and (known_set.spec, known_set.is_map) != (spec, kind == "map"):
                raise NftError(f"{kind} {name} exists with another definition")
            work.sets.setdefault(name, _Set(spec, kind == "map"))
        elif verb == "flush" and kind in ("set", "map"):
            self._set(work, name).elements.clear()
        elif verb == "delete" and kind in ("set", "map"):
            self._set(work, name)
            self._unreferenced(work, name, f"@{name}")
            del work.sets[name]
        elif kind == "element" and verb in ("add", "delete"):
            self._elements(work, verb, self._set(work, name), body)
        else:
            raise NftError(f"unsupported command {verb} {kind}")
        return work

    def _table(self, work: _Table | None, verb: str, rest: str) -> _Table | None:
        if verb == "add":
            comment = re.search(r'comment "([^"]*)"', rest)
            work = work or _Table()
            if comment:
                work.comment = comment.group(1)
            return work
        if verb == "delete":
            if work is None:
                raise NftError("No such file or directory (delete table)")
            return None
        raise NftError(f"unsupported command {verb} table")

    @staticmethod
    def _chain(work: _Table, name: str) -> _Chain:
        if name not in work.chains:
            raise NftError(f"No such file or directory (chain {name})")
        return work.chains[name]

    @staticmethod
    def _set(work: _Table, name: str) -> _Set:
        if name not in work.sets:
            raise NftError(f"No such file or directory (set {name})")
        return work.sets[name]

    @staticmethod
    def _check_rule(work: _Table, _chain: _Chain, rule: str) -> None:
        """Refuse a rule that refers to a missing set or chain."""
        for ref in _REF.findall(rule):
            if ref not in work.sets:
                raise NftError(f"Could not process rule: No such file or directory (set {ref})")
        for target in _JUMP.findall(rule):
            if target not in work.chains:
                raise NftError(f"Could not process rule: No such file or directory (chain {target})")

    @staticmethod
    def _unreferenced(work: _Table, name: str, *needles: str) -> None:
        """Refuse to delete what a rule or a verdict map still refers to (EBUSY)."""
        for chain_name, chain in work.chains.items():
            for _handle, rule in chain.rules:
                if any(re.search(re.escape(n) + r"\b", rule) for n in needles):
                    raise NftError(f"Device or resource busy ({name} used in chain {chain_name})")
        for set_name, held in work.sets.items():
            if held.is_map and any(d in needles for d, _c in held.elements.values()):
                raise NftError(f"Device or resource busy ({name} used in map {set_name})")

    @staticmethod
    def _elements(work: _Table, verb: str, target: _Set, body: str) -> None:
        inner = body.strip().removeprefix("{").removesuffix("}").strip()
        for text in (t.strip() for t in inner.split(", ") if t.strip()):
            match = _ELEMENT.match(text)
            assert match is not None
            key, comment, data = match.group("key"), match.group("comment"), match.group("data")
            if verb == "delete":
                if target.elements.pop(key, None) is None:
                    raise NftError(f"No such file or directory (element {key})")
                continue
            if target.is_map != (data is not None):
                raise NftError(f"element {key}: {'map needs data' if target.is_map else 'set has no data'}")
            for chain in _JUMP.findall(data or ""):
                if chain not in work.chains:
                    raise NftError(f"No such file or directory (chain {chain})")
            known = target.elements.get(key)
            if known is not None and known[0] != data:
                raise NftError(f"File exists (element {key} with other data)")
            target.elements[key] = (data, comment)

    # --- JSON as nft -j prints it ----------------------------------------------------------------

    def _set_json(self, name: str, held: _Set) -> dict[str, Any]:
        kind = "map" if held.is_map else "set"
        out: dict[str, Any] = {"family": self.family, "name": name, "table": self.name}
        if "interval" in held.spec:
            out["flags"] = ["interval"]
        timeout = re.search(r"timeout (\d+)s", held.spec)
        elems = []
        for key, (data, comment) in held.elements.items():
            value = _value(key, interval="interval" in held.spec)
            if comment:
                value = {"elem": {"val": value, "comment": comment}}
            elif timeout:  # a dynamic map's entries carry their timeout and time left
                value = {"elem": {"val": value, "timeout": int(timeout.group(1)), "expires": int(timeout.group(1))}}
            elems.append([value, _data(data)] if held.is_map else value)
        if elems:
            out["elem"] = elems
        return {kind: out}

    def _chain_json(self, name: str, chain: _Chain) -> dict[str, Any]:
        out: dict[str, Any] = {"family": self.family, "table": self.name, "name": name}
        hook = _HOOK.search(chain.hook or "")
        if hook:
            prio = hook.group(3)
            out.update(type=hook.group(1), hook=hook.group(2),
                       prio=_PRIORITIES.get(prio, int(prio) if prio.lstrip("-").isdigit() else 0), policy="accept")
        return out


def _element_list(spec: str, before: dict[str, Any], after: dict[str, Any]) -> list[bytes]:
    """The changed elements' keys as the kernel's event carries them (none for an interval
    set: the watch then reads the set whole, as it does for the kernel's)."""
    changed = [k for k in before.keys() | after.keys() if before.get(k) != after.get(k)]
    try:
        shape = wire.layout(spec)
        if shape.interval:
            return []
        return [wire.element_list(map(joined_encoder(shape.key), sorted(changed)))]
    except (ValueError, KeyError):
        return []


def _part(text: str, interval: bool) -> Any:
    if text.isdigit():
        return int(text)
    if "/" in text:
        addr, _, length = text.partition("/")
        if interval and int(length) in (32, 128):
            return addr  # a single address in an interval set prints bare
        return {"prefix": {"addr": addr, "len": int(length)}}
    return text


def _value(text: str, interval: bool = False) -> Any:
    parts = [_part(p.strip(), interval) for p in text.split(" . ")]
    return parts[0] if len(parts) == 1 else {"concat": parts}


def _data(data: str | None) -> Any:
    if data is None:
        return None
    verb, _, target = data.partition(" ")
    if verb in ("goto", "jump"):
        return {verb: {"target": target}}
    if verb in ("drop", "accept", "return", "continue"):
        return {verb: None}
    return _value(data)


class FakeWatch:
    """The commit watch (netlink.CommitWatch) over fakes' events, as the kernel sends them."""

    def __init__(self, kernels: Iterable[FakeNft]) -> None:
        self._kernels = list(kernels)
        self._log = CommitLog(k.table for k in self._kernels)
        self._read = [0] * len(self._kernels)
        self.paused = False

    def drain(self) -> None:
        if self.paused:
            return
        for i, kernel in enumerate(self._kernels):
            for datagram in kernel.events[self._read[i]:]:
                self._log.feed(datagram)
            self._read[i] = len(kernel.events)

    def lose(self) -> None:
        """The socket overflowed: what is queued now is lost."""
        self._read = [len(k.events) for k in self._kernels]
        self._log.overflowed()

    def pause(self) -> None:
        self.drain()
        self.paused = True
        self._log.stopped_listening()

    def resume(self) -> None:
        if self.paused:
            self._read = [len(k.events) for k in self._kernels]  # what came meanwhile was not heard
            self.paused = False

    def take(self) -> dict[str, Touched] | None:
        self.drain()
        return self._log.take()

    def forget(self) -> None:
        self._log.forget()

    def own(self, after: int, through: int) -> None:
        self._log.own(after, through)

    def seen(self, generation: int) -> bool:
        return self._log.through is not None and self._log.through >= generation
