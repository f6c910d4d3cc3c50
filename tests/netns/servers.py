"""A tiny TCP/UDP server run inside a pod namespace.

TCP: on accept, send "<name> <peer ip>\\n"; then echo every line received as
"<name> <peer ip> <line>\\n" until the peer closes (so a test can hold a connection
open across an agent restart). UDP: answer each datagram with "<name> <peer ip>".

    ip netns exec POD python3 servers.py --name pod1 --tcp 8080 --udp 8080 --ready-file F
"""

from __future__ import annotations

import argparse
import socket
import threading
from pathlib import Path


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
        conn, (peer, _port) = sock.accept()
        threading.Thread(target=serve_tcp_conn, args=(conn, name, peer), daemon=True).start()


def udp_loop(sock: socket.socket, name: str) -> None:
    while True:
        _data, (peer, port) = sock.recvfrom(4096)
        sock.sendto(f"{name} {peer}".encode(), (peer, port))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--name", required=True)
    ap.add_argument("--tcp", type=int, action="append", default=[])
    ap.add_argument("--udp", type=int, action="append", default=[])
    ap.add_argument("--ready-file")
    args = ap.parse_args()

    threads = []
    # SCTP (one-to-one style) behaves like TCP here; kernels without it skip those ports
    streams = [(p, socket.IPPROTO_TCP) for p in args.tcp]
    try:
        socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_SCTP).close()
        streams += [(p, socket.IPPROTO_SCTP) for p in args.tcp]
    except OSError:
        pass
    for port, proto in streams:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, proto)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(("0.0.0.0", port))
        s.listen(128)
        threads.append(threading.Thread(target=tcp_loop, args=(s, args.name), daemon=True))
    for port in args.udp:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", port))
        threads.append(threading.Thread(target=udp_loop, args=(s, args.name), daemon=True))
    for t in threads:
        t.start()
    if args.ready_file:
        Path(args.ready_file).write_text("ready\n")
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
