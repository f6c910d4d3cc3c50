"""The command line: flag errors and unreadable input are one line and exit 2."""

from __future__ import annotations

import io
import subprocess
import sys

import pytest

from kproxy.cli import main
from kproxy.cli.output import ClosedPipeGuard
from kproxy.cli.parser import parse_command_line
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
    (["--bogus"], "unrecognized arguments: --bogus"),
    (["--bogus", "dump"], "unrecognized arguments: --bogus"),
    (["lab", "--bogus"], "unrecognized arguments: --bogus"),
    ([], "the following arguments are required: COMMAND (run, sync, dump, top, cleanup, sysctls, trace, config, lab)"),
    (["lab"], "lab: the following arguments are required: ACTION (up, status, walk, curl, scale, exec, down)"),
    (["sync", "--conntrack-max-per-core", "-3"], "argument --conntrack-max-per-core: -3 is negative"),
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


@pytest.mark.parametrize("flag", ["--kubeconfig", "--config"])
def test_a_missing_kubeconfig_or_config_file_is_named(capsys, tmp_path, flag):
    missing = tmp_path / "nonexist"
    code, err = run_returning(capsys, "sync", flag, str(missing), "--node-ip", "10.0.0.1")
    assert code == 2 and err.count("\n") == 1
    assert str(missing) in err
    if flag == "--kubeconfig":
        assert err == f"kproxy: error: --kubeconfig {missing}: the file does not exist\n"


@pytest.mark.parametrize("position", ["before", "after"])
def test_lab_name_before_or_after_the_action(position):
    argv = ["lab", "--name", "x1", "status"] if position == "before" else ["lab", "status", "--name", "x1"]
    args = parse_command_line(argv)
    assert (args.name, args.lab_command) == ("x1", "status")
    assert parse_command_line(["lab", "status"]).name == "kplab"
    assert parse_command_line(["lab", "--name", "a", "up", "--name", "b"]).name == "b"  # the later one wins


def test_sync_once_is_still_accepted():
    assert parse_command_line(["sync", "--once", "--manifests", "m.yaml"]).command == "sync"
    assert parse_command_line(["sync", "--manifests", "m.yaml"]).command == "sync"


@pytest.mark.parametrize("argv", [["config", "--print"], ["--help"], ["lab", "--help"]])
def test_a_closed_output_pipe_ends_quietly(argv):
    """`kproxy ... | head`: the reader is gone before kproxy writes; no traceback, and the
    command ends as it would have (exit 0)."""
    proc = subprocess.Popen([sys.executable, "-m", "kproxy", *argv], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # before the interpreter has even started: every write finds it closed
    err = proc.stderr.read()
    assert proc.wait(timeout=30) == 0, err
    assert "Traceback" not in err and "BrokenPipe" not in err and "Exception ignored" not in err, err


def test_the_pipe_guard_drops_output_after_the_reader_left():
    written: list[str] = []

    class Closing(io.StringIO):
        def write(self, text: str) -> int:
            if written:
                raise BrokenPipeError(32, "Broken pipe")
            written.append(text)
            return len(text)

    guard = ClosedPipeGuard(Closing())
    assert guard.write("first\n") == 6
    assert guard.write("second\n") == 7 and guard.pipe_closed
    guard.flush()
    assert guard.write("third\n") == 6 and written == ["first\n"]
