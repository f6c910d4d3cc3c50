"""nf_tables over raw netlink sockets: the commit watch and the drift check's reads.

libnftables builds a whole expression tree per element and keeps it: listing kproxy's
10,000-Service table costs it 3-5 s and raises the process's peak RSS by ~600 MB. The
drift check needs far less: chains with their rule counts, set names, and the elements of
a few sets, compared as they stream in. Those are plain netlink dumps, decoded by
wire.py. The commit watch subscribes to the kernel's nf_tables events, so a commit that
did not touch kproxy's tables costs nothing but reading its few messages.
"""

from __future__ import annotations

import errno
import os
import socket
from collections.abc import Callable, Iterable, Iterator

import structlog

from kproxy.backends.base import Touched
from kproxy.backends.nft import wire
from kproxy.backends.nft.drift import Structure
from kproxy.backends.nft.events import CommitLog
from kproxy.backends.nft.names import SKELETON

log = structlog.get_logger(__name__)

NETLINK_NETFILTER = 12
SOL_NETLINK = 270
NETLINK_ADD_MEMBERSHIP = 1
NETLINK_DROP_MEMBERSHIP = 2
NFNLGRP_NFTABLES = 7
SO_RCVBUFFORCE = 33
# Room for other programs' commits between two syncs (each message is a few hundred bytes;
# the kernel's own accounting doubles it). kproxy's own full sync overflows it: the agent
# then knows from the generation whether anyone else committed meanwhile.
EVENT_BUFFER = 8 << 20
RECV = 1 << 16
# Datagrams one drain reads at most: a flood of events cannot hold the sync loop; what is
# left counts as lost.
MAX_DATAGRAMS = 200_000


def open_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    sock.bind((0, 0))
    return sock


def dump(sock: socket.socket, message: bytes) -> Iterator[wire.Message]:
    """The messages a dump request answers; NetlinkError on an error other than a missing
    object (FileNotFoundError)."""
    sock.send(message)
    for _datagram in range(1 << 30):  # bounded by the dump's own end
        data = sock.recv(RECV)
        for reply in wire.messages(data):
            if reply.kind == wire.DONE:
                return
            if reply.kind == wire.ERROR:
                code = -wire.error_code(reply)
                if code == 0:
                    return
                if code == errno.ENOENT:
                    raise FileNotFoundError(code, "No such file or directory")
                raise NetlinkError(f"netlink: {errno.errorcode.get(code, code)}")
            yield reply


class NetlinkError(RuntimeError):
    """The kernel refused a netlink request."""


SO_SNDBUFFORCE = 32
NETLINK_CAP_ACK = 10
COMMIT_TIMEOUT_S = 120.0


def commit(data: bytes, last_seq: int, about: Callable[[int], str]) -> None:
    """Send one transaction (a batch.Batch) and wait until the kernel acknowledges its last
    message, which it does once the whole batch is committed or aborted. NetlinkError names
    the first refused message (`about` says what a sequence number was about): then
    nothing of the batch was applied."""
    with open_socket() as sock:
        # the kernel takes a batch from one datagram: the send buffer must hold it whole
        sock.setsockopt(socket.SOL_SOCKET, SO_SNDBUFFORCE, len(data) + (1 << 16))
        sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, 1 << 22)
        sock.setsockopt(SOL_NETLINK, NETLINK_CAP_ACK, 1)  # errors without a copy of the request
        sock.settimeout(COMMIT_TIMEOUT_S)
        if sock.send(data) != len(data):
            raise NetlinkError("netlink: the batch was not sent whole")
        refused: list[str] = []
        for _datagram in range(1 << 20):  # bounded by the ack of the last message
            for reply in wire.messages(sock.recv(RECV)):
                if reply.kind != wire.ERROR:
                    continue
                code, seq = -wire.error_code(reply), wire.error_seq(reply)
                if code:
                    refused.append(f"{about(seq)}: {os.strerror(code)}")
                # the last message's ack ends it; so does a refused batch begin (seq 1),
                # after which the kernel reads no further
                if seq == last_seq or (code and seq <= 1):
                    if refused:
                        raise NetlinkError(refused[0])
                    return
        raise NetlinkError("netlink: no acknowledgement of the batch")


class NetlinkTable:
    """Reads one table ("ip kproxy") for the drift check and a full sync."""

    def __init__(self, table: str) -> None:
        family, self.name = table.split()
        self.family = wire.NFPROTO[family]

    def structure(self) -> Structure | None:
        """Chains (with their rule counts) and sets; None when the table is missing."""
        table = wire.name_attr(wire.TABLE, self.name)
        with open_socket() as sock:
            try:
                for _reply in dump(sock, wire.request(wire.GETTABLE, self.family, wire.NLM_F_ACK, table)):
                    pass
            except FileNotFoundError:
                return None
            chains: dict[str, int] = {}
            for reply in dump(sock, wire.request(wire.GETCHAIN, self.family, wire.NLM_F_DUMP, seq=2)):
                found = wire.attributes(reply.body)
                if wire.string(found.get(wire.TABLE)) == self.name:
                    chains.setdefault(wire.string(found.get(wire.CHAIN_NAME)) or "", 0)
            for reply in dump(sock, wire.request(wire.GETRULE, self.family, wire.NLM_F_DUMP, table, seq=3)):
                found = wire.attributes(reply.body)
                if wire.string(found.get(wire.TABLE)) == self.name:
                    chain = wire.string(found.get(wire.RULE_CHAIN)) or ""
                    chains[chain] = chains.get(chain, 0) + 1
            sets = set()
            for reply in dump(sock, wire.request(wire.GETSET, self.family, wire.NLM_F_DUMP, table, seq=4)):
                found = wire.attributes(reply.body)
                if wire.string(found.get(wire.TABLE)) == self.name:
                    sets.add(wire.string(found.get(wire.SET_NAME)) or "")
        return Structure(chains=chains, sets=frozenset(sets))

    def skeleton_digest(self) -> str | None:
        """The digest the table says its skeleton has (names.SKELETON); None: none there."""
        request = wire.request(wire.GETSETELEM, self.family, wire.NLM_F_DUMP, wire.name_attr(wire.TABLE, self.name),
                               wire.name_attr(wire.ELEM_LIST_SET, SKELETON))
        with open_socket() as sock:
            try:
                for reply in dump(sock, request):
                    found = wire.element_comment(reply)
                    if found is not None:
                        return found
            except FileNotFoundError:
                return None
        return None

    def elements(self, name: str, spec: str) -> Iterator[tuple[str, str | None]]:
        """(key, data) of every element of one set or map, as render writes them; nothing
        when the set is missing."""
        decoder = wire.ElementDecoder(wire.layout(spec))
        request = wire.request(wire.GETSETELEM, self.family, wire.NLM_F_DUMP,
                               wire.name_attr(wire.TABLE, self.name), wire.name_attr(wire.ELEM_LIST_SET, name))
        with open_socket() as sock:
            try:
                for reply in dump(sock, request):
                    yield from decoder.feed(reply)
            except FileNotFoundError:
                return
        yield from decoder.finish()


    def element(self, name: str, spec: str, key: bytes) -> tuple[str, str | None] | None:
        """One element by its raw key; None when it (or its set) is missing."""
        decoder = wire.ElementDecoder(wire.layout(spec))
        with open_socket() as sock:
            try:
                for reply in dump(sock, wire.element_request(self.family, self.name, name, key)):
                    for found in decoder.feed(reply):
                        return found
            except FileNotFoundError:
                return None
        return None


class CommitWatch:
    """Subscribes to nf_tables' events in this network namespace and keeps a CommitLog of
    the watched tables. Not thread-safe: the agent uses it under its sync lock. Without
    nf_tables (or permission) it knows nothing: take() answers None, so every change of
    the generation means a whole check, as without a watch."""

    def __init__(self, tables: Iterable[str]) -> None:
        self._log = CommitLog(tables)
        self._sock: socket.socket | None = None
        self._paused = False
        try:
            sock = open_socket()
            try:
                sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, EVENT_BUFFER)
            except OSError:  # without CAP_NET_ADMIN: as large as net.core.rmem_max allows
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, EVENT_BUFFER)
            sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
            sock.setblocking(False)
            self._sock = sock
        except OSError as err:
            log.info("no nftables events: every change of the ruleset generation means a whole drift check",
                     error=str(err))

    def drain(self) -> None:
        """Read every event queued so far."""
        if self._sock is None:
            return
        for _datagram in range(MAX_DATAGRAMS):
            try:
                data = self._sock.recv(RECV)
            except BlockingIOError:
                return
            except OSError as err:
                self._log.overflowed()  # ENOBUFS: the kernel dropped events; anything else: unknown too
                if err.errno == errno.ENOBUFS:
                    continue
                log.info("nftables events unreadable: the next drift check reads the whole table", error=str(err))
                return
            self._log.feed(data)
        self._log.overflowed()

    def take(self) -> dict[str, Touched] | None:
        """What commits touched since the last take or forget, per watched table; None: unknown."""
        if self._sock is None:
            return None
        self.drain()
        return self._log.take()

    def forget(self) -> None:
        """What was drained so far was kproxy's own doing."""
        self._log.forget()

    def own(self, after: int, through: int) -> None:
        """The commits of generations after `after` up to `through` were kproxy's own."""
        self._log.own(after, through)

    def pause(self) -> None:
        """Stop listening while kproxy rewrites its whole table: its 200,000 element events
        would cost the kernel a third more time to build than the commit itself, and this
        process a second to read. What others commit meanwhile is unknown (as if lost),
        unless the generation shows that nobody did."""
        if self._sock is None or self._paused:
            return
        self.drain()
        self._sock.setsockopt(SOL_NETLINK, NETLINK_DROP_MEMBERSHIP, NFNLGRP_NFTABLES)
        self._paused = True
        self._log.stopped_listening()

    def resume(self) -> None:
        if self._sock is None or not self._paused:
            return
        self._sock.setsockopt(SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, NFNLGRP_NFTABLES)
        self._paused = False

    def seen(self, generation: int) -> bool:
        """Whether the events of every commit up to `generation` have been read."""
        through = self._log.through
        if self._sock is None:
            return True
        return through is not None and (through - generation) % (1 << 32) < (1 << 31)

    def close(self) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
