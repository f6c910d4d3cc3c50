"""The only place that runs iptables-restore / iptables-save (one variant: nft or legacy;
ip6tables-restore / ip6tables-save for IPv6). Its fake is fake.py, beside it."""

from __future__ import annotations

import subprocess
from typing import Protocol

RESTORE_FLAGS = ("--noflush", "-w", "5", "-W", "100000")  # hold the xtables lock, as upstream


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
