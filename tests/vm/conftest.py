"""The VM matrix's timings, printed at the end of the session (boot, guest pytest, wall)."""

from __future__ import annotations

import pytest

_RUNS: list[dict] = []


@pytest.fixture
def vm_runs() -> list[dict]:
    return _RUNS


def pytest_terminal_summary(terminalreporter) -> None:
    if not _RUNS:
        return
    terminalreporter.section("VM kernels")
    for run in _RUNS:
        boot = f"{run['boot']:.1f}s" if run["boot"] is not None else "-"
        guest = f"{run['guest']:.0f}s" if run["guest"] is not None else "-"
        terminalreporter.write_line(
            f"{run['kernel']:>5} {run['group']:<15} {run['release']:<22} boot {boot:>6}  tests {guest:>6}  "
            f"wall {run['wall']:.0f}s  {run['summary']}")
