"""The only place that runs iptables-restore / iptables-save (one variant: nft or legacy;
ip6tables-restore / ip6tables-save for IPv6),
and an in-memory fake beside it that applies restore input the way the kernel does."""

from __future__ import annotations

import shlex
import subprocess
from typing import Protocol

RESTORE_FLAGS = ("--noflush", "-w", "5", "-W", "100000")  # hold the xtables lock, as upstream
BUILTIN = {
    "nat": ("PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"),
    "filter": ("INPUT", "FORWARD", "OUTPUT"),
    "mangle": ("PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"),
}


class IptablesError(RuntimeError):
    """iptables-restore refused the input; the table it was applying is unchanged."""


class IptablesKernel(Protocol):
    variant: str  # "nft" or "legacy"

    def restore(self, text: str) -> None: ...

    def save_all(self) -> str: ...


def command(family: int) -> str:
    """The binaries' stem: iptables for IPv4, ip6tables for IPv6."""
    return "iptables" if family == 4 else "ip6tables"


class IptablesCommands:
    """IptablesKernel over the {ip,ip6}tables-{variant}-restore/-save binaries."""

    def __init__(self, variant: str, family: int = 4) -> None:
        self.variant = variant
        self.family = family

    def restore(self, text: str) -> None:
        argv = [f"{command(self.family)}-{self.variant}-restore", *RESTORE_FLAGS]
        try:
            done = subprocess.run(argv, input=text, capture_output=True, text=True, check=False)
        except OSError as err:
            raise IptablesError(f"cannot run {argv[0]}: {err}") from None
        if done.returncode != 0:
            raise IptablesError(_first_error(done.stderr, text))

    def save_all(self) -> str:
        return save_all(self.variant, self.family) or ""


def save_all(variant: str, family: int = 4) -> str | None:
    """Every table the variant has, without -t (which would load legacy table modules);
    None when the binary is missing or fails (no such kernel interface)."""
    try:
        done = subprocess.run([f"{command(family)}-{variant}-save"], capture_output=True, text=True,
                              check=False, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout if done.returncode == 0 else None


def _first_error(stderr: str, text: str) -> str:
    lines = [line for line in stderr.splitlines() if line.strip()]
    message = (lines or ["iptables-restore failed without a message"])[0][:300]
    # "line N failed": show the line, which is what one needs to see
    for word in message.replace(":", " ").split():
        if word.isdigit() and "line" in message:
            n = int(word)
            source = text.splitlines()
            if 0 < n <= len(source):
                return f"{message}: {source[n - 1][:200]}"
    return message


class FakeIptables:
    """IptablesKernel in memory: applies restore input per table transactionally (all or
    nothing per COMMIT), rejects rules in or jumps to missing chains and deleting chains
    still referenced, and saves in iptables-save's shape. For tests without root."""

    def __init__(self, variant: str = "nft") -> None:
        self.variant = variant
        self.tables: dict[str, dict[str, list[str]]] = {
            t: {c: [] for c in chains} for t, chains in BUILTIN.items()}
        self.inputs: list[str] = []
        self.fail_next: str | None = None

    def restore(self, text: str) -> None:
        if self.fail_next is not None:
            message, self.fail_next = self.fail_next, None
            raise IptablesError(message)
        self.inputs.append(text)
        work: dict[str, list[str]] | None = None
        table = ""
        for n, raw in enumerate(text.splitlines(), 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("*"):
                table = line[1:]
                work = {c: list(r) for c, r in self.tables.setdefault(table, {}).items()}
            elif work is None:
                raise IptablesError(f"line {n}: no table")
            elif line == "COMMIT":
                self._check_jumps(work, n)
                self.tables[table] = work
                work = None
            elif line.startswith(":"):
                chain = line[1:].split()[0]
                work[chain] = []
            else:
                self._command(work, shlex.split(line), line, n)
        if work is not None:
            raise IptablesError("missing COMMIT")

    def _command(self, work: dict[str, list[str]], argv: list[str], line: str, n: int) -> None:
        op, chain = argv[0], argv[1] if len(argv) > 1 else ""
        if chain not in work:
            raise IptablesError(f"line {n} failed: no chain {chain}")
        rest = line.split(None, 2)[2] if len(argv) > 2 else ""
        if op == "-A":
            work[chain].append(f"-A {chain} {rest}")
        elif op == "-I":
            position, spec = 1, rest
            if argv[2].isdigit():
                position, spec = int(argv[2]), rest.split(None, 1)[1]
            work[chain].insert(position - 1, f"-A {chain} {spec}")
        elif op == "-D":
            try:
                work[chain].remove(f"-A {chain} {rest}")
            except ValueError:
                raise IptablesError(f"line {n} failed: no such rule") from None
        elif op == "-X":
            for other, rules in work.items():
                if other != chain and any(r.endswith(f"-j {chain}") for r in rules):
                    raise IptablesError(f"line {n} failed: {chain} referenced from {other}")
            if work[chain]:
                raise IptablesError(f"line {n} failed: {chain} not empty")
            del work[chain]
        else:
            raise IptablesError(f"line {n} failed: unknown command {op}")

    @staticmethod
    def _check_jumps(work: dict[str, list[str]], n: int) -> None:
        for chain, rules in work.items():
            for rule in rules:
                target = rule.rsplit(" -j ", 1)[-1].split()[0] if " -j " in rule else ""
                if target.startswith("KUBE-") and target not in work:
                    raise IptablesError(f"line {n} failed: {chain} jumps to missing {target}")

    def save_all(self) -> str:
        return "".join(self.save(t) for t in self.tables if any(self.tables[t].values())
                       or any(c not in BUILTIN.get(t, ()) for c in self.tables[t]))

    def save(self, table: str) -> str:
        chains = self.tables.get(table)
        if chains is None:
            return ""
        builtin = BUILTIN.get(table, ())
        lines = [f"*{table}"]
        lines += [f":{c} ACCEPT [0:0]" for c in chains if c in builtin]
        lines += [f":{c} - [0:0]" for c in sorted(chains) if c not in builtin]
        lines += [r for rules in chains.values() for r in rules]
        return "\n".join([*lines, "COMMIT", ""])
