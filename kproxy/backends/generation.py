"""The nftables ruleset generation of this network namespace: a counter the kernel bumps
on every committed transaction, of any table, iptables-nft's included. Reading it costs a
tenth of a millisecond, so each sync can tell cheaply whether anyone touched the rules."""

from __future__ import annotations

import structlog
from pyroute2.netlink import NLM_F_REQUEST
from pyroute2.netlink.nfnetlink.nftsocket import NFT_MSG_GETGEN, NFTSocket, nft_gen_msg

log = structlog.get_logger(__name__)


def ruleset_generation() -> int | None:
    """The current generation, or None when the kernel cannot tell (no nf_tables)."""
    try:
        with NFTSocket() as sock:
            msg = nft_gen_msg()
            msg["nfgen_family"] = 0
            replies = list(sock.request_get(msg, NFT_MSG_GETGEN, NLM_F_REQUEST))
    except Exception as err:  # noqa: BLE001 - no nf_tables, or no permission: no cheap signal
        log.debug("no nftables generation", error=str(err))
        return None
    for reply in replies:
        generation = reply.get_attr("NFTA_GEN_ID")
        if generation is not None:
            return int(generation)
    return None
