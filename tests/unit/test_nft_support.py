"""nftables mode on every kernel: the rendering avoids the constructs some kernels refuse
(docs/kernels.md), and a kernel that refuses kproxy's rules anyway gets one line and exit 2
before anything is touched (the real-kernel side: tests/vm/test_no_nftables.py and the VM
matrix)."""

from __future__ import annotations

import re

import pytest

from kproxy.backends import registry
from kproxy.backends.nft.support import check_script, unavailable_reason
from kproxy.cli import main, wiring

# what 5.10 and 6.1 answered for a verdict map looked up as a set (docs/kernels.md, a)
REFUSED_ON_5_10 = """\
Error: Could not process rule: Invalid argument
add rule ip kproxy-check-ips services fib saddr type local ip daddr . meta l4proto . th dport @sc-frontends jump x
                                                                                             ^^^^^^^^^^^^^^^^^^^^
"""
# a kernel without nf_tables: the first command already fails
NO_NF_TABLES = """\
Error: Could not process rule: Operation not supported
add table ip kproxy-check-ips
^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^
"""

SET_DEF = re.compile(r"^add (set|map) \S+ \S+ ([\w-]+) \{ (.*) \}$")


def definitions(script: str) -> dict[str, tuple[str, str]]:
    """set name -> (set|map, its spec), over every table of the script."""
    found = {}
    for line in script.splitlines():
        m = SET_DEF.match(line)
        if m:
            found[m.group(2)] = (m.group(1), m.group(3))
    return found


@pytest.mark.parametrize("family", [4, 6])
def test_no_verdict_map_is_looked_up_as_a_set(family):
    """5.10 and 6.1 refuse `... @vmap jump x`: verdict maps appear only after `vmap`."""
    script = check_script(family)
    verdict_maps = {n for n, (kind, spec) in definitions(script).items() if kind == "map" and ": verdict" in spec}
    assert {"sc-frontends", "frontends", "no-endpoint-frontends"} <= verdict_maps
    rules = [line for line in script.splitlines() if line.startswith("add rule")]
    misuse = [r for r in rules for m in re.finditer(r"(\S+) @([\w-]+)", r)
              if m.group(2) in verdict_maps and m.group(1) != "vmap"]
    assert not misuse
    assert any("@sc-masq-frontends jump mark-for-masquerade" in r for r in rules)
    assert any("@sc-masq-nodeports jump mark-for-masquerade" in r for r in rules)


@pytest.mark.parametrize("family", [4, 6])
def test_no_interval_set_key_holds_meta_l4proto(family):
    """6.12.115+ refuse `meta l4proto` in the key of a concatenated interval set."""
    defs = definitions(check_script(family))
    intervals = {n: spec for n, (_kind, spec) in defs.items() if "flags interval" in spec}
    assert {"firewall-allow-tcp", "firewall-allow-udp", "firewall-allow-sctp"} <= set(intervals)
    assert not [n for n, spec in intervals.items() if "meta l4proto" in spec]


def test_check_script_covers_every_chain_kind():
    script = check_script(4)
    for chain in ("sc-dnat-2", "sc-dnat-nodeport-1", "dnat-1", "dnat-nodeport-2", "firewall-check"):
        assert f"add chain ip kproxy-check-ips {chain}" in script
    assert "affinity-10800" in script
    assert "fib daddr type local" in script  # the --nodeport-addresses-unset variant too
    assert "ip kproxy " not in script  # never the real table


def test_a_refusing_kernel_is_one_line_naming_kernel_rule_and_iptables():
    with pytest.raises(registry.ModeUnavailable) as refused:
        registry.check_mode("nftables", [4, 6], check=lambda _script: REFUSED_ON_5_10, release="5.10.0-46-amd64")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith("nftables mode cannot work on kernel 5.10.0-46-amd64: the kernel refuses")
    assert "Invalid argument" in message and "@sc-frontends jump x" in message
    assert message.endswith("use --proxy-mode iptables")


def test_a_kernel_without_nf_tables_is_named_so():
    assert unavailable_reason("4.9.0", NO_NF_TABLES) == (
        "nftables mode cannot work on kernel 4.9.0: the kernel has no usable nf_tables "
        "(Error: Could not process rule: Operation not supported); use --proxy-mode iptables")


def test_an_accepting_kernel_is_checked_once_per_family_and_iptables_mode_not_at_all():
    seen: list[str] = []
    registry.check_mode("nftables", [4, 6], check=lambda s: seen.append(s) or None, release="6.1.0")
    assert len(seen) == 2 and "add table ip kproxy-check-ips" in seen[0] and "ip6 kproxy-check-ips" in seen[1]
    registry.check_mode("iptables", [4, 6], check=lambda s: pytest.fail("iptables mode was checked"))


def test_sync_exits_2_before_touching_anything(capsys, tmp_path, monkeypatch):
    touched: list[str] = []
    monkeypatch.setattr(registry, "check_batch", lambda _script: NO_NF_TABLES)
    monkeypatch.setattr(wiring, "remove_other_modes", lambda mode: touched.append(mode) or [])
    monkeypatch.setattr(registry.os, "uname", lambda: type("U", (), {"release": "4.9.0-fake"})())
    manifests = tmp_path / "m.yaml"
    manifests.write_text("")
    code = main(["sync", "--proxy-mode", "nftables", "--manifests", str(manifests), "--node-ip", "10.0.0.1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == ("kproxy: error: nftables mode cannot work on kernel 4.9.0-fake: the kernel has no usable "
                   "nf_tables (Error: Could not process rule: Operation not supported); use --proxy-mode iptables\n")
    assert touched == []
