"""Which nftables constructs does the running kernel accept? And kproxy's own ruleset?

Meant to run as root inside a VM (tests/vm/run-in-vm --kernel K -- .venv/bin/python
tests/vm/nft_capabilities.py --out DIR); on a host it only ever touches throwaway network
namespaces (`unshare -n`, gone when the command exits). Writes DIR/capabilities-<release>.json
and prints a summary. Findings: docs/kernels.md.

1. Constructs: small self-contained scripts, each loaded twice into a fresh namespace, with
   `nft -c -f` (check: the kernel validates the batch, then it is aborted) and `nft -f`.
2. kproxy's real ruleset: `kproxy sync --once` on tests/vm/data/every-feature.yaml in a fresh
   namespace, with libnftables' `Nftables.cmd` recorded, so the exact scripts kproxy sends
   are kept even when the kernel refuses them. A refused script is then bisected: its lines
   are added one at a time (`nft -c`), keeping those the kernel accepts, and each refused
   line is reported with nft's error.
3. Kernel features for later work: IPVS modules, dummy links, SCTP sockets, ipset.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFEST = HERE / "data" / "every-feature.yaml"
NODE_FLAGS = [
    "--hostname-override", "node1", "--node-ip", "192.168.50.10", "--node-ip", "fd00:50::10",
    "--cluster-cidr", "10.244.0.0/16,fd00:244::/56",
    "--service-cluster-ip-range", "10.96.0.0/16,fd00:96::/112",
]

# A table with one base chain per hook kproxy uses, and a plain chain to jump to.
BASE = """\
add table ip t
add chain ip t x
add chain ip t nat-prerouting { type nat hook prerouting priority dstnat; policy accept; }
add chain ip t nat-output { type nat hook output priority -100; policy accept; }
add chain ip t nat-postrouting { type nat hook postrouting priority srcnat; policy accept; }
add chain ip t filter-input { type filter hook input priority -110; policy accept; }
"""
FRONTEND = "ip daddr . meta l4proto . th dport"
VMAP = f"add map ip t vm {{ typeof {FRONTEND} : verdict; }}\n"
NUMGEN_MAP = f"add map ip t ep {{ typeof {FRONTEND} . numgen random mod 2 : ip daddr . th dport; }}\n"
AFFINITY_MAP = ("add map ip t aff { type ipv4_addr . ipv4_addr . inet_proto . inet_service : "
                "ipv4_addr . inet_service; flags dynamic,timeout; timeout 600s; }\n")
ORIGINAL = "ct original ip daddr . meta l4proto . ct original proto-dst"

# (key, what, script after BASE). Keys follow the list in docs/kernels.md.
CONSTRUCTS: list[tuple[str, str, str]] = [
    ("base", "the base table: nat and filter base chains at kproxy's priorities", ""),
    ("a0", "verdict map used as a map: `... vmap @vm`",
     VMAP + f"add rule ip t nat-prerouting {FRONTEND} vmap @vm\n"),
    ("a", "named verdict map looked up as a set: `... @vm jump x`",
     VMAP + f"add rule ip t nat-prerouting {FRONTEND} @vm jump x\n"),
    ("a1", "the smallest case of (a): `ip daddr @m accept`, m of type ipv4_addr : verdict",
     "add map ip t m { type ipv4_addr : verdict; }\nadd rule ip t nat-prerouting ip daddr @m accept\n"),
    ("a2", "(a) with the vmap in an ip6 table",
     "add table ip6 t6\nadd chain ip6 t6 x\n"
     "add chain ip6 t6 c { type nat hook prerouting priority dstnat; policy accept; }\n"
     "add map ip6 t6 vm { typeof ip6 daddr . meta l4proto . th dport : verdict; }\n"
     "add rule ip6 t6 c ip6 daddr . meta l4proto . th dport @vm jump x\n"),
    ("b", "set of concatenations with th dport, looked up",
     f"add set ip t s {{ typeof {FRONTEND}; }}\n"
     "add element ip t s { 10.96.0.10 . tcp . 80, 10.96.0.10 . sctp . 9999 }\n"
     f"add rule ip t nat-prerouting {FRONTEND} @s jump x\n"
     "add set ip t np { typeof meta l4proto . th dport; }\n"
     "add rule ip t nat-prerouting meta l4proto . th dport @np jump x\n"),
    ("c1", "typeof map keyed by `... . numgen random mod N`", NUMGEN_MAP),
    ("c2", "`dnat ip to <concat> . numgen random mod N map @m`",
     NUMGEN_MAP + "add element ip t ep { 10.96.0.10 . tcp . 80 . 0 : 10.244.1.2 . 8080 }\n"
     f"add rule ip t x dnat ip to {FRONTEND} . numgen random mod 2 map @ep\n"
     "add rule ip t nat-prerouting jump x\n"),
    ("d1", "dynamic map with timeout (affinity)", AFFINITY_MAP),
    ("d2", "`update @aff { ... }` from a rule, keyed by ct original (affinity recording)",
     AFFINITY_MAP + f"add set ip t fe {{ typeof {FRONTEND}; }}\n"
     f"add rule ip t nat-postrouting meta l4proto tcp ct status dnat {ORIGINAL} @fe "
     f"update @aff {{ ip saddr . {ORIGINAL} : ip daddr . th dport }}\n"),
    ("d3", "`dnat ip to ip saddr . <concat> map @aff` (affinity lookup)",
     AFFINITY_MAP + f"add rule ip t nat-prerouting dnat ip to ip saddr . {FRONTEND} map @aff\n"),
    *[
        (f"e-{hook}-{prio}-{kind}", f"`{rule}` in a filter {hook} chain at priority {prio}",
         f"add chain ip t f {{ type filter hook {hook} priority {prio}; policy accept; }}\n"
         f"add rule ip t f {rule}\n")
        for hook in ("prerouting", "input", "forward", "output")
        for prio in (-110, -90)
        for kind, rule in (("tcp-reset", "meta l4proto tcp reject with tcp reset"), ("reject", "reject"))
    ],
    *[
        (f"e-{hook}-{prio}-jump", f"reject through a jump (kproxy's reject-chain) from filter {hook} {prio}",
         "add chain ip t r\nadd rule ip t r meta l4proto tcp reject with tcp reset\nadd rule ip t r reject\n"
         f"add chain ip t f {{ type filter hook {hook} priority {prio}; policy accept; }}\n"
         "add rule ip t f ct state new goto r\n")
        for hook in ("prerouting", "input", "forward", "output")
        for prio in (-110, -90)
    ],
    ("f", "set and verdict-map elements with comments",
     VMAP + f"add set ip t s {{ typeof {FRONTEND}; }}\n"
     'add element ip t s { 10.96.0.10 . tcp . 80 comment "default/web ClusterIP" }\n'
     'add element ip t vm { 10.96.0.10 . tcp . 80 comment "default/web ClusterIP" : goto x }\n'),
    ("g1", "concatenated interval set `... . ip saddr; flags interval` with a CIDR element",
     f"add set ip t fw {{ typeof {FRONTEND} . ip saddr; flags interval; }}\n"
     "add element ip t fw { 203.0.113.10 . tcp . 443 . 198.51.100.0/24 }\n"),
    ("g2", "lookup `... . ip saddr != @fw drop` in the concatenated interval set",
     f"add set ip t fw {{ typeof {FRONTEND} . ip saddr; flags interval; }}\n"
     f"add rule ip t filter-input {FRONTEND} . ip saddr != @fw drop\n"),
    ("g3", "(g2) without the `!=`: a plain lookup in the concatenated interval set",
     f"add set ip t fw {{ typeof {FRONTEND} . ip saddr; flags interval; }}\n"
     f"add rule ip t filter-input {FRONTEND} . ip saddr @fw accept\n"),
    ("g4", "`!=` lookup in a two-field concatenated interval set `ip daddr . ip saddr`",
     "add set ip t fw2 { typeof ip daddr . ip saddr; flags interval; }\n"
     "add rule ip t filter-input ip daddr . ip saddr != @fw2 drop\n"),
    ("g5", "`!=` lookup in a concatenated set without intervals",
     f"add set ip t s {{ typeof {FRONTEND}; }}\n"
     f"add rule ip t filter-input {FRONTEND} != @s drop\n"),
    ("h1", "`fib saddr type local`", "add rule ip t nat-prerouting fib saddr type local jump x\n"),
    ("h2", "`fib daddr type local ip daddr != 127.0.0.0/8`",
     "add rule ip t nat-prerouting fib daddr type local ip daddr != 127.0.0.0/8 jump x\n"),
    ("i", "`ct original ip daddr`, `ct original proto-dst`, `ct status dnat`",
     f"add set ip t fe {{ typeof {FRONTEND}; }}\n"
     f"add rule ip t nat-postrouting meta l4proto tcp ct status dnat {ORIGINAL} @fe jump x\n"),
    ("j", "`masquerade fully-random`", "add rule ip t nat-postrouting masquerade fully-random\n"),
    ("k1", "named interval set looked up with `!=`: `ip saddr != @cidrs`",
     "add set ip t cidrs { type ipv4_addr; flags interval; }\n"
     "add element ip t cidrs { 10.244.0.0/16 }\n"
     "add rule ip t nat-prerouting ip saddr != @cidrs jump x\n"),
    ("k2", "anonymous interval set with `!=`: `ip saddr != { 10.244.0.0/16 }`",
     "add rule ip t nat-prerouting ip saddr != { 10.244.0.0/16 } jump x\n"),
    ("l1", "mark arithmetic: `meta mark set meta mark | 0x4000`, `^ 0x4000`, `& 0x4000 == 0`",
     "add rule ip t nat-postrouting meta mark & 0x4000 == 0 return\n"
     "add rule ip t nat-postrouting meta mark set meta mark | 0x4000\n"
     "add rule ip t nat-postrouting meta mark set meta mark ^ 0x4000\n"),
    ("l2", "hairpin: `ct status dnat ip saddr . ip daddr @hairpin`",
     "add set ip t hairpin { typeof ip saddr . ip daddr; }\n"
     "add rule ip t nat-postrouting ct status dnat ip saddr . ip daddr @hairpin jump x\n"),
    ("l3", "IPv6: numgen dnat map and dynamic affinity map in an ip6 table",
     "add table ip6 t6\nadd chain ip6 t6 x\n"
     "add chain ip6 t6 c { type nat hook prerouting priority dstnat; policy accept; }\n"
     "add map ip6 t6 ep { typeof ip6 daddr . meta l4proto . th dport . numgen random mod 2 : ip6 daddr . th dport; }\n"
     "add rule ip6 t6 x dnat ip6 to ip6 daddr . meta l4proto . th dport . numgen random mod 2 map @ep\n"
     "add rule ip6 t6 c jump x\n"
     "add map ip6 t6 aff { type ipv6_addr . ipv6_addr . inet_proto . inet_service : ipv6_addr . inet_service; "
     "flags dynamic,timeout; timeout 600s; }\n"
     "add rule ip6 t6 c dnat ip6 to ip6 saddr . ip6 daddr . meta l4proto . th dport map @aff\n"),
    ("l4", "`ct state new jump` from a filter chain, `sctp dport`",
     "add rule ip t filter-input ct state new jump x\nadd rule ip t filter-input sctp dport 9999 accept\n"),
    ("l5", "inet table with a verdict map looked up as a set (a third family for (a))",
     "add table inet ti\nadd chain inet ti x\n"
     "add chain inet ti c { type filter hook input priority 0; policy accept; }\n"
     "add map inet ti vm { typeof ip daddr . meta l4proto . th dport : verdict; }\n"
     "add rule inet ti c ip daddr . meta l4proto . th dport @vm jump x\n"),
]


def in_fresh_netns(argv: list[str], stdin: str | None = None, timeout: float = 120) -> tuple[int, str]:
    """Run argv in a network namespace of its own (gone when it exits): (status, output)."""
    result = subprocess.run(["unshare", "--net", "--", *argv], input=stdin, capture_output=True,
                            text=True, timeout=timeout)
    return result.returncode, (result.stdout + result.stderr).strip()


def first_error(output: str) -> str:
    """nft's first error line, without the "/dev/stdin:LINE:" prefix (columns kept)."""
    lines = [re.sub(r"^/dev/stdin:\d+:(\S+): ", r"(cols \1) ", line) for line in output.splitlines() if line.strip()]
    errors = [line for line in lines if "Error" in line]
    return (errors or lines or [""])[0]


def load(script: str, check: bool) -> tuple[bool, str]:
    status, output = in_fresh_netns(["nft", *(["-c"] if check else []), "-f", "-"], stdin=script)
    return status == 0, output


def probe_constructs() -> list[dict]:
    results = []
    for key, what, body in CONSTRUCTS:
        script = BASE + body
        checked, check_out = load(script, check=True)
        loaded, load_out = load(script, check=False)
        results.append({"key": key, "what": what, "script": body, "check_ok": checked, "load_ok": loaded,
                        "check_error": "" if checked else check_out,
                        "load_error": "" if loaded else load_out})
    return results


# --- kproxy's own ruleset ------------------------------------------------------------------


def record_kproxy(out: Path, mode: str, keep_going: bool = False) -> int:
    """Inner mode, run in a fresh namespace: kproxy sync --once with nft's scripts recorded.

    keep_going: a batch the kernel refused is reported to kproxy as applied, so that it goes
    on to its next batch (the IPv6 table after the IPv4 one) and every batch is recorded."""
    subprocess.run(["ip", "link", "set", "lo", "up"], check=False)
    recorded: list[dict] = []
    if mode == "nftables":
        import nftables

        real_cmd = nftables.Nftables.cmd

        def cmd(self, text):  # libnftables' entry point: every batch kproxy applies passes here
            rc, output, error = real_cmd(self, text)
            if not text.lstrip().startswith("list"):
                recorded.append({"script": text, "rc": rc, "error": error})
                if keep_going and rc != 0:
                    return 0, "", ""
            return rc, output, error

        nftables.Nftables.cmd = cmd
    from kproxy.cli import main as kproxy_main

    try:
        status = kproxy_main(["sync", "--once", "--manifests", str(MANIFEST), "--proxy-mode", mode, *NODE_FLAGS])
    except SystemExit as exc:
        status = exc.code if isinstance(exc.code, int) else 1
    listing = subprocess.run(["nft", "list", "ruleset"], capture_output=True, text=True).stdout
    out.write_text(json.dumps({"status": status, "batches": recorded, "ruleset": listing}))
    return 0


def kproxy_sync(mode: str = "nftables", python: str = sys.executable, keep_going: bool = False) -> dict:
    """`kproxy sync --once` of every-feature.yaml in a fresh namespace: its exit status, its
    output, the nft batches it sent (nftables mode) and the ruleset it left."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "kproxy.json"
        argv = [python, str(Path(__file__).resolve()), "--record-kproxy", str(out), "--mode", mode]
        status, output = in_fresh_netns(argv + (["--keep-going"] if keep_going else []), timeout=600)
        if status != 0 or not out.exists():
            raise RuntimeError(f"recording kproxy sync failed ({status}): {output[-3000:]}")
        recorded = json.loads(out.read_text())
    recorded["output"] = output
    return recorded


def bisect(script: str) -> tuple[list[str], list[dict]]:
    """Add the script's lines one at a time, keeping those the kernel accepts (nft -c)."""
    kept: list[str] = []
    refused: list[dict] = []
    for line in (line for line in script.splitlines() if line.strip()):
        ok, output = load("\n".join([*kept, line]) + "\n", check=True)
        if ok:
            kept.append(line)
        else:
            refused.append({"line": line, "error": first_error(output)})
    return kept, refused


def probe_kproxy(python: str) -> dict:
    try:
        recorded = kproxy_sync("nftables", python, keep_going=True)
    except RuntimeError as exc:
        return {"error": str(exc)}
    result = {"sync_status": recorded["status"], "batches": []}
    for batch in recorded["batches"]:
        script = batch["script"]
        entry = {"rc": batch["rc"], "error": first_error(batch["error"]) if batch["rc"] else "",
                 "lines": len(script.splitlines())}
        checked, check_out = load(script, check=True)
        entry["check_ok"], entry["check_error"] = checked, "" if checked else first_error(check_out)
        if batch["rc"] != 0 or not checked:
            kept, refused = bisect(script)
            entry["refused"] = refused
            ok, rest_out = load("\n".join(kept) + "\n", check=False)
            entry["rest_loads"], entry["rest_error"] = ok, "" if ok else first_error(rest_out)
        entry["script"] = script
        result["batches"].append(entry)
    return result


# --- kernel features for later work ---------------------------------------------------------


def probe_features(modprobe: bool) -> dict:
    def run(argv: list[str], netns: bool = True) -> tuple[bool, str]:
        if netns:
            status, output = in_fresh_netns(argv, timeout=60)
        else:
            done = subprocess.run(argv, capture_output=True, text=True, timeout=60)
            status, output = done.returncode, (done.stdout + done.stderr).strip()
        return status == 0, output[-500:]

    found: dict[str, tuple[bool, str]] = {}
    if modprobe:
        found["modprobe ip_vs ip_vs_rr ip_vs_wrr ip_vs_sh"] = run(
            ["modprobe", "-a", "ip_vs", "ip_vs_rr", "ip_vs_wrr", "ip_vs_sh"], netns=False)
        found["modprobe sctp"] = run(["modprobe", "sctp"], netns=False)
        found["modprobe dummy"] = run(["modprobe", "dummy"], netns=False)
    found["ip link add type dummy"] = run(["ip", "link", "add", "kp-dummy0", "type", "dummy"])
    # IPVS wants its real servers routable, as on a node: a dummy link with a pod-like subnet
    found["ipvsadm: NAT virtual service with a real server"] = run(
        ["sh", "-c", "ip link set lo up && ip link add kp0 type dummy && ip addr add 10.244.0.1/16 dev kp0 "
                     "&& ip link set kp0 up && ipvsadm -A -t 10.96.0.10:80 -s rr "
                     "&& ipvsadm -a -t 10.96.0.10:80 -r 10.244.1.2:80 -m && ipvsadm -Ln"])
    found["SCTP socket (listen on 127.0.0.1)"] = run(
        ["sh", "-c", f"ip link set lo up && {sys.executable} -c \"import socket; "
                     "s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP); "
                     "s.bind(('127.0.0.1', 0)); s.listen(); print('sctp ok', s.getsockname())\""])
    found["ipset create hash:ip,port"] = run(
        ["sh", "-c", "ipset create KUBE-TEST hash:ip,port && ipset add KUBE-TEST 10.96.0.10,tcp:80 && ipset list"])
    return {name: {"ok": ok, "output": output} for name, (ok, output) in found.items()}


def summary(report: dict) -> str:
    lines = [f"kernel {report['release']}"]
    for r in report["constructs"]:
        verdict = "ok" if r["load_ok"] else "REFUSED"
        note = "" if r["check_ok"] == r["load_ok"] else "  (nft -c disagrees!)"
        error = f"  {first_error(r['load_error'])}" if not r["load_ok"] else ""
        lines.append(f"  {r['key']:<24} {verdict:<8}{error}{note}")
    kp = report.get("kproxy", {})
    if "error" in kp:
        lines.append(f"  kproxy: {kp['error']}")
    for i, b in enumerate(kp.get("batches", [])):
        lines.append(f"  kproxy batch {i}: {b['lines']} lines, applied rc={b['rc']}, nft -c ok={b['check_ok']}"
                     + (f": {b['error']}" if b["rc"] else ""))
        for r in b.get("refused", []):
            lines.append(f"    refused: {r['line']}\n             {r['error']}")
        if "rest_loads" in b:
            lines.append(f"    without the refused lines it loads: {b['rest_loads']} {b['rest_error']}")
    for name, f in report["features"].items():
        lines.append(f"  {name:<44} {'ok' if f['ok'] else 'FAILED: ' + f['output'][-200:]}")
    return "\n".join(lines)


def markdown_table(reports: list[dict]) -> str:
    """Construct x kernel, from several capabilities-*.json (for docs/kernels.md)."""
    reports = sorted(reports, key=lambda r: [int(x) for x in re.findall(r"\d+", r["release"])[:2]])
    head = "| | construct | " + " | ".join(r["release"] for r in reports) + " |"
    lines = [head, "|" + "---|" * (len(reports) + 2)]
    by_key = [{c["key"]: c for c in r["constructs"]} for r in reports]
    for key, what, _ in CONSTRUCTS:
        cells = []
        for found in by_key:
            c = found.get(key)
            cells.append("?" if c is None else "ok" if c["load_ok"] else "**refused**")
        lines.append(f"| {key} | {what.replace('|', chr(92) + '|')} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, help="write capabilities-<release>.json here")
    ap.add_argument("--no-modprobe", action="store_true", help="do not load modules (on a host)")
    ap.add_argument("--table", type=Path, nargs="+", metavar="JSON",
                    help="print a markdown table (construct x kernel) of earlier reports and exit")
    ap.add_argument("--record-kproxy", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--mode", default="nftables", help=argparse.SUPPRESS)
    ap.add_argument("--keep-going", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.table:
        print(markdown_table([json.loads(p.read_text()) for p in args.table]))
        return 0
    if args.record_kproxy:
        return record_kproxy(args.record_kproxy, args.mode, args.keep_going)
    if os.geteuid() != 0:
        print("nft_capabilities: run as root", file=sys.stderr)
        return 1
    release = platform.release()
    nft_version = subprocess.run(["nft", "--version"], capture_output=True, text=True).stdout.strip()
    report = {"release": release, "nft": nft_version, "constructs": probe_constructs(),
              "kproxy": probe_kproxy(sys.executable), "features": probe_features(not args.no_modprobe)}
    print(summary(report))
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"capabilities-{release}.json").write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
