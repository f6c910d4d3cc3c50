"""A tiny TCP/UDP server run inside a pod namespace.

TCP: on accept, send "<name> <peer ip>\\n"; then echo every line received as
"<name> <peer ip> <line>\\n" until the peer closes (so a test can hold a connection
open across an agent restart). UDP: answer each datagram with "<name> <peer ip>".
Every port is served on IPv4 and on IPv6 (separate IPv6-only sockets), and the peer ip
is printed in its plain text form ("10.244.1.2", "fd00:244:1::2"; never "::ffff:...").

    ip netns exec POD python3 servers.py --name pod1 --tcp 8080 --udp 8080 --ready-file F
"""

from __future__ import annotations

import argparse
import ipaddress
import socket
import threading
from pathlib import Path


def peer_text(addr: tuple) -> str:
    """The peer's address from a sockaddr of either family, as plain text."""
    ip = ipaddress.ip_address(addr[0].split("%", 1)[0])
    if ip.version == 6 and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def listening(family: int, kind: int, proto: int, port: int) -> socket.socket:
    s = socket.socket(family, kind, proto)
    if kind == socket.SOCK_STREAM:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if family == socket.AF_INET6:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        s.bind(("::", port))
    else:
        s.bind(("0.0.0.0", port))
    if kind == socket.SOCK_STREAM:
        s.listen(128)
    return s


def has_proto(family: int, proto: int) -> bool:
    try:
        socket.socket(family, socket.SOCK_STREAM, proto).close()
    except OSError:
        return False
    return True


def serve_tcp_conn(conn: socket.socket, name: str, peer: str) -> None:
    with conn:
        conn.settimeout(300)
        try:
            conn.sendall(f"{name} {peer}\n".encode())
            buf = b""
            while True:
                data = conn.recv(4096)
                if not data:
                    return
                buf += data
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    conn.sendall(f"{name} {peer} {line.decode(errors='replace')}\n".encode())
        except OSError:
            return


def tcp_loop(sock: socket.socket, name: str) -> None:
    while True:
        conn, addr = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, name, peer_text(addr)), daemon=True).start()


def udp_loop(sock: socket.socket, name: str) -> None:
    while True:
        _data, addr = sock.recvfrom(4096)
        sock.sendto(f"{name} {peer_text(addr)}".encode(), addr)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    ap.add_argument("--ready-file")
    args = ap.parse_args()

    threads = []
    families = (socket.AF_INET, socket.AF_INET6)
    # SCTP (one-to-one style) behaves like TCP here; kernels without it skip those ports
    streams = [(f, p, socket.IPPROTO_TCP) for f in families for p in args.tcp]
    streams += [(f, p, socket.IPPROTO_SCTP) for f in families if has_proto(f, socket.IPPROTO_SCTP)
                for p in args.tcp]
    for family, port, proto in streams:
        s = listening(family, socket.SOCK_STREAM, proto, port)
        threads.append(threading.Thread(target=tcp_loop, args=(s, args.name), daemon=True))
    for family in families:
        for port in args.udp:
            s = listening(family, socket.SOCK_DGRAM, 0, port)
            threads.append(threading.Thread(target=udp_loop, args=(s, args.name), daemon=True))
    for t in threads:
        t.start()
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
