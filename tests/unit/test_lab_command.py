"""`kproxy lab` refuses clearly without root, and rejects bad names before touching anything."""

from __future__ import annotations

import pytest

from kproxy.cli import main
from kproxy.lab.build import Lab
from kproxy.lab.spec import LabError


def test_lab_needs_root(monkeypatch, capsys):
    monkeypatch.setattr("os.geteuid", lambda: 1000)
    assert main(["lab", "up"]) == 1
    err = capsys.readouterr().err
    assert err == "kproxy lab: needs root (it creates network namespaces)\n"


@pytest.mark.parametrize("name", ["a/b", "x" * 21, "bad name", ""])
def test_lab_names_are_checked(name):
    with pytest.raises(LabError, match="lab name"):
        Lab(name)
