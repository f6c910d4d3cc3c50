"""FakeIptables: IptablesKernel in memory, for tests without root. It applies
iptables-restore input the way the kernel does and saves in iptables-save's shape."""

from __future__ import annotations

import shlex

from kproxy.backends.iptables.kernel import IptablesError
from kproxy.backends.iptables.render import BUILTIN


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
        elif op == "-F":
            work[chain] = []
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
