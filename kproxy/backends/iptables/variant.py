"""Which iptables variant the node uses, decided as upstream's iptables-wrapper does.

1. kubelet's hint chains (KUBE-IPTABLES-HINT, KUBE-KUBELET-CANARY in mangle) name it;
2. else the variant that holds more rules wins (legacy at >= 10 rules, as upstream);
3. else (a node with no rules at all) nft, when the nf_tables kernel interface answers.
Pure, given the two save outputs.
"""

from __future__ import annotations

from collections.abc import Callable

VARIANTS = ("nft", "legacy")
HINT_CHAINS = (":KUBE-IPTABLES-HINT", ":KUBE-KUBELET-CANARY")


def count_rules(save_text: str) -> int:
    return sum(1 for line in save_text.splitlines() if line.startswith("-"))


def choose_variant(legacy_save: str | None, nft_save: str | None) -> str:
    """`*_save`: the variant's full iptables-save output; None when it cannot run."""
    if nft_save is None:
        return "legacy"
    if legacy_save is None:
        return "nft"
    for variant, text in (("legacy", legacy_save), ("nft", nft_save)):
        if any(hint in text for hint in HINT_CHAINS):
            return variant
    legacy, nft = count_rules(legacy_save), count_rules(nft_save)
    if legacy >= 10 and legacy >= nft:
        return "legacy"
    return "legacy" if legacy > nft else "nft"


def detect_variant(save_all: Callable[[str], str | None]) -> str:
    """`save_all(variant)`: `iptables-<variant>-save` output for every table it has
    (without -t, which would load legacy table modules), None if it fails."""
    return choose_variant(save_all("legacy"), save_all("nft"))
