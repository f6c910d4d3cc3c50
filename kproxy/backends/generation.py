"""The nftables ruleset generation of this network namespace: a counter the kernel bumps
on every committed transaction, of any table, iptables-nft's included. Reading it costs a
tenth of a millisecond over an open socket, so each sync can tell cheaply whether anyone
touched the rules."""

from __future__ import annotations

from typing import Any

import structlog
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, NFTSocket, nft_gen_msg

log = structlog.get_logger(__name__)


class RulesetGeneration:
    """Reads the generation over one socket kept open: opening a pyroute2 socket costs
    1-10 ms, twice per sync, more than the rest of a one-endpoint sync. Not thread-safe:
    the agent reads it under its sync lock. Returns None when the kernel cannot tell (no
    nf_tables)."""

    def __init__(self) -> None:
        self._sock: Any = None

    def __call__(self) -> int | None:
        for _attempt in range(2):  # a socket that broke is opened again once
            try:
                if self._sock is None:
                    self._sock = NFTSocket()
                return _read(self._sock)
            except Exception as err:  # noqa: BLE001 - no nf_tables, or no permission: no cheap signal
                self.close()
                error = err
        log.debug("no nftables generation", error=str(error))
        return None

    def close(self) -> None:
        if self._sock is not None:
            try:
                self._sock.close()
            except OSError:
                pass
            self._sock = None


def _read(sock: Any) -> int | None:
    msg = nft_gen_msg()
    msg["nfgen_family"] = 0
    for reply in sock.request_get(msg, NFT_MSG_GETGEN, NLM_F_REQUEST):
        generation = reply.get_attr("NFTA_GEN_ID")
        if generation is not None:
            return int(generation)
    return None
