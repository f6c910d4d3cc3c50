"""The only place that talks to the kernel's nftables: through libnftables' Python binding."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from functools import partial
from typing import Any, Protocol

from kproxy.backends.nft import wire
from kproxy.backends.nft.batch import TRANSACTION_ELEMENTS, elements_encoder, endpoint_rows_encoder, transactions
from kproxy.backends.nft.drift import Structure, holds
from kproxy.backends.nft.elements import EndpointRows
from kproxy.backends.nft.names import TABLE
from kproxy.backends.nft.netlink import NetlinkError, NetlinkTable, commit
from kproxy.backends.nft.objects import Element, SetSpec, Skeleton
from kproxy.backends.nft.transaction import elements_transaction


class NftError(RuntimeError):
    """A transaction or listing the kernel refused; the previous state is still in place."""


class NftKernel(Protocol):
    def apply(self, script: str) -> None: ...

    def list_table(self) -> dict[str, Any] | None: ...

    def delete_table(self) -> bool: ...

    def list_map(self, name: str) -> dict[str, Any] | None: ...

    # the drift check's reads (drift.TableReader)
    def structure(self) -> Structure | None: ...

    def read_elements(self, name: str, spec: str) -> Iterable[tuple[str, str | None]]: ...

    def read_element(self, name: str, spec: str, key: bytes) -> tuple[str, str | None] | None: ...

    def holds(self, skeleton: Skeleton) -> bool | None:
        """Whether the table is this very skeleton (drift.holds); None: there is no table."""

    def load_elements(self, table: str, sets: Sequence[tuple[SetSpec, Iterable[tuple[str, Element]]]],
                      flush: bool = False, atomic: bool = True) -> int:
        """Empty these sets first if `flush`, then add their elements: in one transaction, or
        (not `atomic`) in as many as suit the kernel. Returns how many were committed."""


class LibNftKernel:
    """NftKernel over libnftables (python3-nftables). One batch per apply() call."""

    def __init__(self, table: str = TABLE) -> None:
        import nftables  # imported here: the pure parts of kproxy must not need it

        self.table = table
        self._nft = nftables.Nftables()
        self._nft.set_handle_output(False)
        self._json = nftables.Nftables()
        self._json.set_json_output(True)
        self._netlink = NetlinkTable(table)

    def apply(self, script: str) -> None:
        if len(script) > LARGE_SCRIPT:
            return _apply_in_child(script)
        rc, _out, err = self._nft.cmd(script)
        if rc != 0:
            raise NftError(_first_error(err))
        return None

    def exists(self) -> bool:
        """Whether the table is there, in about a millisecond. nft 1.0.6 fetches every set's
        elements for `list tables` and `list table` (2 s with kproxy's 10k-Service table in
        the namespace), but only tables for `list flowtables`, which prints each table's
        header even when it has no flowtable."""
        rc, out, err = self._nft.cmd(f"list flowtables {self.table.split()[0]}")
        if rc != 0:
            raise NftError(_first_error(err))
        return f"table {self.table} {{" in str(out).splitlines()

    def list_table(self) -> dict[str, Any] | None:
        return self._list(f"table {self.table}")

    def list_map(self, name: str) -> dict[str, Any] | None:
        return self._list(f"map {self.table} {name}")

    def structure(self) -> Structure | None:
        """Chains with their rule counts and set names, over netlink (milliseconds at any size)."""
        return self._netlink.structure()

    def read_elements(self, name: str, spec: str) -> Iterable[tuple[str, str | None]]:
        """One set's elements streamed over netlink, decoded as render writes them (libnftables
        would hold the whole listing: 600 MB more at 10,000 Services)."""
        return self._netlink.elements(name, spec)

    def read_element(self, name: str, spec: str, key: bytes) -> tuple[str, str | None] | None:
        return self._netlink.element(name, spec, key)

    def holds(self, skeleton: Skeleton) -> bool | None:
        structure = self._netlink.structure()
        return None if structure is None else holds(structure, self._netlink.skeleton_digest(), skeleton)

    def load_elements(self, table: str, sets: Sequence[tuple[SetSpec, Iterable[tuple[str, Element]]]],
                      flush: bool = False, atomic: bool = True) -> int:
        """Over netlink, encoded by batch.py: nft would parse each of 100,000s of elements
        into an expression tree first (docs/DESIGN.md §3). `atomic`: one transaction, every
        element encoded before anything is sent, so one that cannot be encoded changes
        nothing. Otherwise transactions of batch.TRANSACTION_ELEMENTS, each sent as soon as
        it is encoded: the kernel takes those faster than one big one, and the agent never
        holds the whole load encoded. A transaction is committed by a thread of its own while
        the next one is encoded: the kernel's share (0.2 s at 10,000 Services) overlaps ours."""
        family, name = table.split()
        encoded = ((spec.name, _encoded(spec, items)) for spec, items in sets)
        committed = 0
        emptied = [spec.name for spec, _items in sets] if flush else []
        batches = transactions(wire.NFPROTO[family], name, emptied, encoded, None if atomic else TRANSACTION_ELEMENTS)
        sending: Future[None] | None = None
        # the thread is in this thread's network namespace: it is made here, not before
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix="nft-load") as sender:
            try:
                for tx in batches:
                    data, last = tx.finish()
                    if last is None:
                        continue
                    if sending is not None:
                        sending.result()  # in order, and a refusal stops the load here
                    sending = sender.submit(commit, data, last, partial(_about, tx.sets))
                    committed += 1
                if sending is not None:
                    sending.result()
            except (NetlinkError, OSError) as err:
                raise NftError(f"loading elements: {err}") from None
        return committed

    def _list(self, what: str) -> dict[str, Any] | None:
        """The kernel's JSON listing of one object; None when it does not exist."""
        rc, out, err = self._json.cmd(f"list {what}")
        if rc != 0:
            if "No such file or directory" in err:
                return None
            raise NftError(_first_error(err))
        listing: dict[str, Any] = json.loads(out)
        return listing

    def delete_table(self) -> bool:
        if self.list_table() is None:
            return False
        # add first, so that delete cannot fail on a table removed meanwhile
        self.apply(f"add table {self.table}\ndelete table {self.table}\n")
        return True

    def list_ruleset_text(self) -> str:
        rc, out, err = self._nft.cmd(f"list table {self.table}")
        if rc != 0:
            raise NftError(_first_error(err))
        return str(out)


# libnftables keeps what it parsed: a 10,000-Service table (9 MB of script) leaves
# ~350 MB behind in the process that applied it. Large batches (full syncs) therefore go
# through a short-lived `nft -f -`, which is still one atomic batch; small ones stay
# in-process, where they cost no fork.
LARGE_SCRIPT = 256 * 1024


def _apply_in_child(script: str) -> None:
    try:
        done = subprocess.run(["nft", "-f", "-"], input=script, capture_output=True, text=True, check=False)
    except OSError as err:
        raise NftError(f"cannot run nft: {err}") from None
    if done.returncode != 0:
        raise NftError(_first_error(done.stderr))


def check_batch(script: str) -> str | None:
    """`nft -c -f -`: the kernel validates the batch and aborts it. None when accepted,
    else nft's output (a missing nft binary included)."""
    try:
        done = subprocess.run(["nft", "-c", "-f", "-"], input=script, capture_output=True, text=True, check=False)
    except OSError as err:
        return f"Error: cannot run nft: {err}"
    return None if done.returncode == 0 else (done.stderr or done.stdout or "nft -c failed without a message")


def _first_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error")]
    return (errors or lines or ["nft failed without a message"])[0][:300]


class RecordingKernel:
    """NftKernel fake for tests without root: records scripts, can be told to fail."""

    def __init__(self) -> None:
        self.scripts: list[str] = []
        self.fail_next: str | None = None
        self.table_present = False
        self.maps: dict[str, dict[str, Any]] = {}  # listings list_map returns

    def apply(self, script: str) -> None:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise NftError(message)
        self.scripts.append(script)
        self.table_present = True

    def list_table(self) -> dict[str, Any] | None:
        return {"nftables": []} if self.table_present else None

    def delete_table(self) -> bool:
        present, self.table_present = self.table_present, False
        return present

    def list_map(self, name: str) -> dict[str, Any] | None:
        return self.maps.get(name)

    def structure(self) -> Structure | None:
        return Structure(chains={}, sets=frozenset()) if self.table_present else None

    def read_elements(self, name: str, spec: str) -> Iterable[tuple[str, str | None]]:
        return ()

    def read_element(self, name: str, spec: str, key: bytes) -> tuple[str, str | None] | None:
        return None

    def holds(self, skeleton: Skeleton) -> bool | None:
        return False if self.table_present else None

    def load_elements(self, table: str, sets: Sequence[tuple[SetSpec, Iterable[tuple[str, Element]]]],
                      flush: bool = False, atomic: bool = True) -> int:
        """Recorded as the nft script that would do the same (one transaction)."""
        self.apply(elements_transaction(table, sets, flush).text())
        return 1


def _encoded(spec: SetSpec, items: Iterable[tuple[str, Element]]) -> Iterator[bytes]:
    try:
        if isinstance(items, EndpointRows):
            yield from endpoint_rows_encoder(spec.spec)(items.rows())
        else:
            yield from elements_encoder(spec.spec)(items)
    except ValueError as err:
        raise NftError(f"set {spec.name}: cannot encode an element: {err}") from None


def _about(sets: dict[int, str], seq: int) -> str:
    """What one message of a load was about, for an error."""
    return f"set {sets[seq]}" if seq in sets else "the transaction"
