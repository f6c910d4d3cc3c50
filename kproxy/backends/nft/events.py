"""What commits touched in the tables kproxy watches, from nf_tables' netlink events. Pure.

The kernel announces every committed transaction to the NFNLGRP_NFTABLES group: one
message per object it added or deleted (NEWRULE, DELSETELEM, ...; each names its table,
attribute 1, and chain or set), then NEWGEN with the new ruleset generation. A commit of
kubelet's or a CNI's (iptables-nft) names only their tables, so the drift check can skip
it instead of reading kproxy's table back, and a commit that did touch kproxy's table
says which chains and sets to read, and even which elements (their keys are in the
events), so a deleted endpoint costs reading that element, not its 500,000-element map.
Which commits were kproxy's own is the agent's to say (by the generation): this log
records every commit.
"""

from __future__ import annotations

from collections.abc import Iterable

from kproxy.backends.base import Touched
from kproxy.backends.nft import wire

_CHAIN_NAME = {wire.NEWCHAIN: wire.CHAIN_NAME, wire.DELCHAIN: wire.CHAIN_NAME,
               wire.NEWRULE: wire.RULE_CHAIN, wire.DELRULE: wire.RULE_CHAIN}
_SET_NAME = {wire.NEWSET: wire.SET_NAME, wire.DELSET: wire.SET_NAME,
             wire.NEWSETELEM: wire.ELEM_LIST_SET, wire.DELSETELEM: wire.ELEM_LIST_SET}
_ELEMENTS = {wire.NEWSETELEM, wire.DELSETELEM}
_WHOLE = {wire.NEWTABLE, wire.DELTABLE, wire.NEWOBJ, wire.DELOBJ, wire.NEWFLOWTABLE, wire.DELFLOWTABLE}


class CommitLog:
    """What commits touched in the watched tables ("ip kproxy"), by generation, since the
    last take().

    Messages of a commit are held until its NEWGEN; a lost message (the socket overflowed:
    ENOBUFS) makes the log unknown until taken or forgotten. Commits the agent knows to be
    its own (by their generations) are dropped with own()."""

    def __init__(self, tables: Iterable[str]) -> None:
        self._watched: dict[tuple[int, str], str] = {}
        for table in tables:
            family, name = table.split()
            self._watched[(wire.NFPROTO[family], name)] = table
        self._pending: dict[str, Touched] = {}  # the commit whose NEWGEN has not come yet
        self._commits: list[tuple[int | None, dict[str, Touched]]] = []  # those that touched a watched table
        self.lost = False
        self.blind = False  # not listening for a while (kproxy's own full rewrite)
        self.through: int | None = None  # the generation of the last NEWGEN seen
        self.commits = 0  # NEWGEN messages seen, for tests and logs

    def feed(self, data: bytes) -> None:
        """One datagram from the group."""
        for message in wire.messages(data):
            self._message(message)

    def _message(self, message: wire.Message) -> None:
        if message.kind == wire.NEWGEN:
            generation = wire.generation(message)
            if self._pending:
                self._commits.append((generation, self._pending))
                self._pending = {}
            self.through = generation
            self.commits += 1
            return
        found = wire.attributes(message.body)
        table = self._watched.get((message.family, wire.string(found.get(wire.TABLE)) or ""))
        if table is None:
            return
        if message.kind in _WHOLE:
            touched = Touched(table=True)
        elif message.kind in _CHAIN_NAME:
            touched = Touched(chains=frozenset({wire.string(found.get(_CHAIN_NAME[message.kind])) or ""}))
        elif message.kind in _SET_NAME:
            name = wire.string(found.get(_SET_NAME[message.kind])) or ""
            keys = wire.element_keys(message) if message.kind in _ELEMENTS else None
            touched = Touched(sets=frozenset({name}), keys={} if keys is None else {name: frozenset(keys)})
        else:
            return
        self._pending[table] = self._pending.get(table, Touched()) | touched

    def overflowed(self) -> None:
        """Messages were lost (ENOBUFS): what was touched is unknown."""
        self.lost = True

    def stopped_listening(self) -> None:
        """Commits from now on go unheard until own() says they were kproxy's."""
        self.blind = True

    def own(self, after: int, through: int) -> None:
        """The commits of generations after `after` up to `through` were kproxy's own (and
        so were those made while not listening, which began after `after`)."""
        self.blind = False
        self._commits = [(g, t) for g, t in self._commits
                         if g is None or not 0 < (g - after) % (1 << 32) <= (through - after) % (1 << 32)]

    def take(self) -> dict[str, Touched] | None:
        """What completed commits touched, per watched table (absent: untouched); None
        when messages were lost. Starts a new log."""
        commits, lost = self._commits, self.lost or self.blind
        self.forget()
        if lost:
            return None
        touched: dict[str, Touched] = {}
        for _generation, tables in commits:
            for table, what in tables.items():
                touched[table] = touched.get(table, Touched()) | what
        return touched

    def forget(self) -> None:
        """Drop every completed commit (the agent knows them all to be its own, lost ones
        too); a commit still in progress stays."""
        self._commits = []
        self.lost = self.blind = False
