"""The command line: flag errors and unreadable input are one line and exit 2."""

from __future__ import annotations

import pytest

from kproxy.cli import main
from kproxy.values import parse_duration


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(argv))
    return exit_info.value.code, capsys.readouterr().err


def run_returning(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    code = main(list(argv))
    return code, capsys.readouterr().err


@pytest.mark.parametrize(("argv", "needle"), [
    (["sync", "--once", "--cluster-cidr", "10.0.0.0/33"], "--cluster-cidr: '10.0.0.0/33' is not a CIDR"),
    (["sync", "--once", "--node-ip", "banana"], "--node-ip: 'banana' is not an IP address"),
    (["run", "--min-sync-period", "soon"], "--min-sync-period: invalid duration 'soon'"),
    (["run", "--proxy-mode", "userspace"], "--proxy-mode: invalid choice: 'userspace'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["run", "--no-such-flag"], "unrecognized arguments: --no-such-flag"),
])
def test_bad_flags_are_one_line_and_exit_2(capsys, argv, needle):
    code, err = run(capsys, *argv)
    assert code == 2
    assert needle in err
    assert err.count("\n") == 1 and err.startswith("kproxy: error: ")


@pytest.mark.parametrize("content", [None, "kind: Service\nmetadata: [unclosed\n"], ids=["missing", "broken-yaml"])
def test_unreadable_manifests_name_the_file(capsys, tmp_path, content):
    path = tmp_path / "m.yaml"
    if content is not None:
        path.write_text(content)
    code, err = run_returning(capsys, "sync", "--once", "--manifests", str(path), "--node-ip", "10.0.0.1")
    assert code == 2
    assert str(path) in err and err.count("\n") == 1


def test_manifests_and_kubeconfig_exclude_each_other(capsys, tmp_path):
    f = tmp_path / "m.yaml"
    f.write_text("")
    code, err = run_returning(capsys, "sync", "--once", "--manifests", str(f), "--kubeconfig", str(f))
    assert code == 2 and "exclude each other" in err


@pytest.mark.parametrize(("text", "seconds"), [("1s", 1.0), ("500ms", 0.5), ("1m30s", 90.0), ("0.2s", 0.2)])
def test_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)
