"""The start-up check of nftables mode: a throw-away copy of kproxy's whole skeleton (every
chain and set kind, both NodePort-address variants) for the kernel to validate. Pure.

The kernel validates a check-mode batch (`nft -c`) exactly as a real one and then aborts it
(docs/kernels.md: on every kernel measured, `nft -c` refused exactly what a load refused),
so a kernel that cannot run kproxy's rules is found before anything is touched.

One rendering serves every kernel from 5.10 on: the constructs some kernels refuse (a
verdict map looked up as a set; `meta l4proto` in a concatenated interval key) are not
used, at no cost at scale, so nothing here chooses between renderings.
"""

from __future__ import annotations

from dataclasses import replace

from kproxy.backends.nft.elements import ElementTable
from kproxy.backends.nft.names import DISPATCHES, TABLE_NAME
from kproxy.backends.nft.render import render_skeleton
from kproxy.backends.nft.transaction import full_transaction
from kproxy.plan import Plan

RENDERING = "portable: plain sets for short-circuit masquerade, one source-range set per protocol"
CHECK_TABLE = f"{TABLE_NAME}-check"
SAMPLE_COUNTS = (1, 2)  # endpoint counts: a dispatch chain and map of each kind
SAMPLE_AFFINITY_TIMEOUT = 10800


def check_script(family: int) -> str:
    """One batch creating check tables with every rule kproxy may ever need; `nft -c` it."""
    ip = "ip" if family == 4 else "ip6"
    counts = {how: SAMPLE_COUNTS for how in DISPATCHES}
    # IPv6 affinity recording is left out: nft 1.0.6 itself aborts on it (an assertion in
    # its register allocation, before the kernel sees anything), which says nothing about
    # the kernel
    timeouts = (SAMPLE_AFFINITY_TIMEOUT,) if family == 4 else ()
    lines = []
    for all_local in (False, True):
        skeleton = render_skeleton(Plan(family=family, nodeport_all_local=all_local), counts, timeouts)
        table = f"{ip} {CHECK_TABLE}-{'local' if all_local else 'ips'}"
        lines.append(full_transaction(replace(skeleton, table=table), ElementTable()).text())
    return "".join(lines)


def refusal(check_output: str) -> tuple[str, str]:
    """nft's output of a refused check -> (the error line, the refused command or "")."""
    lines = [line for line in check_output.splitlines() if line.strip() and not set(line.strip()) <= {"^", "~"}]
    for i, line in enumerate(lines):
        if line.startswith("Error"):
            following = lines[i + 1] if i + 1 < len(lines) and not lines[i + 1].startswith("Error") else ""
            return line.strip()[:200], following.strip()[:300]
    return (lines[0].strip()[:200] if lines else "nft failed without a message"), ""


def unavailable_reason(release: str, check_output: str) -> str:
    """One line: why nftables mode cannot run on this kernel, and what to use instead."""
    error, command = refusal(check_output)
    if command.startswith("add table") or not command:
        why = f"the kernel has no usable nf_tables ({error})"
    else:
        why = f"the kernel refuses one of kproxy's rules ({error}: {command})"
    return f"nftables mode cannot work on kernel {release}: {why}; use --proxy-mode iptables"
