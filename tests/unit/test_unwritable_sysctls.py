"""A sysctl that cannot be written (read-only /proc/sys: an unprivileged container, or
systemd's ProtectKernelTunables) is one warning that turns its feature off, never a
traceback; `kproxy sysctls` makes it a one-line error (exit 1)."""

from __future__ import annotations

import errno

from structlog.testing import capture_logs

from kproxy.backends.iptables.localnet import restore_route_localnet, route_localnet_or_warn
from kproxy.cli import main
from kproxy.sysctls import apply_sysctls


class ReadOnlySysctl:
    """A /proc/sys file mounted read-only: reads its value, refuses writes as the kernel does."""

    def __init__(self, value: str) -> None:
        self.value = value

    def read_text(self) -> str:
        return f"{self.value}\n"

    def write_text(self, _text: str) -> None:
        raise OSError(errno.EROFS, "Read-only file system")


def test_route_localnet_read_only_is_one_warning_and_false(tmp_path):
    with capture_logs() as logs:
        assert route_localnet_or_warn(ReadOnlySysctl("0"), tmp_path) is False  # type: ignore[arg-type]
    (warning,) = [e for e in logs if e["log_level"] == "warning"]
    assert warning["event"].startswith("cannot set net.ipv4.conf.all.route_localnet=1 (Read-only file system): "
                                       "NodePorts on 127.0.0.1 are off")


def test_route_localnet_already_set_needs_no_write(tmp_path):
    with capture_logs() as logs:
        assert route_localnet_or_warn(ReadOnlySysctl("1"), tmp_path) is True  # type: ignore[arg-type]
    assert logs == []


def test_restoring_route_localnet_on_a_read_only_proc_warns(tmp_path):
    from kproxy.backends.iptables import localnet

    (tmp_path / f"route_localnet.{localnet.netns_id()}").write_text("0\n")
    with capture_logs() as logs:
        assert restore_route_localnet(ReadOnlySysctl("1"), tmp_path) is None  # type: ignore[arg-type]
    assert [e["log_level"] for e in logs] == ["warning"]


def test_conntrack_sysctl_read_only_is_a_warning():
    class Root:  # /proc/sys/net/netfilter, read-only, every value 0
        def __truediv__(self, _name: str) -> ReadOnlySysctl:
            return ReadOnlySysctl("0")

    with capture_logs() as logs:
        failed = apply_sysctls({"nf_conntrack_tcp_be_liberal": 1}, root=Root())  # type: ignore[arg-type]
    assert failed == {"nf_conntrack_tcp_be_liberal": "Read-only file system"}
    assert logs[0]["event"].startswith("cannot set sysctl net.netfilter.nf_conntrack_tcp_be_liberal=1 "
                                       "(Read-only file system)")


def test_kproxy_sysctls_is_one_line_error_when_it_cannot_write(monkeypatch, capsys):
    from kproxy.cli import node_sysctls

    def refuse() -> None:
        raise OSError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(node_sysctls, "enable_route_localnet", refuse)
    assert main(["sysctls", "--proxy-mode", "iptables"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["kproxy: error: cannot set net.ipv4.conf.all.route_localnet: Read-only file system"]
