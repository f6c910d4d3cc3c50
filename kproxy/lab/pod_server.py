"""What a lab pod runs: HTTP on each TCP port and an echo on each UDP port, answering
"<pod> on <node> (saw <source address>)", so every request shows where it landed and
whether it was masqueraded. Started by the lab inside the pod's network namespace.

    python -m kproxy.lab.pod_server --pod NAME --node NODE --tcp 8080 --udp 5353 --ready FILE
"""

from __future__ import annotations

import argparse
import http.server
import socket
import socketserver
import threading
from pathlib import Path


def answer(pod: str, node: str, source: str) -> bytes:
    return f"{pod} on {node} (saw {source})\n".encode()


def http_server(port: int, pod: str, node: str) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            body = answer(pod, node, self.client_address[0])
            self.send_response(200)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    http.server.ThreadingHTTPServer.allow_reuse_address = True
    return http.server.ThreadingHTTPServer(("0.0.0.0", port), Handler)


def udp_server(port: int, pod: str, node: str) -> socketserver.UDPServer:
    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            _data, sock = self.request
            sock.sendto(answer(pod, node, self.client_address[0]), self.client_address)

    return socketserver.ThreadingUDPServer(("0.0.0.0", port), Handler)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="kproxy.lab.pod_server")
    parser.add_argument("--pod", required=True)
    parser.add_argument("--node", required=True)
    parser.add_argument("--tcp", type=int, action="append", default=[])
    parser.add_argument("--udp", type=int, action="append", default=[])
    parser.add_argument("--ready", type=Path, help="file created once every port listens")
    args = parser.parse_args(argv)
    servers: list[socketserver.BaseServer] = [http_server(p, args.pod, args.node) for p in args.tcp]
    servers += [udp_server(p, args.pod, args.node) for p in args.udp]
    threads = [threading.Thread(target=s.serve_forever, daemon=True) for s in servers]
    for t in threads:
        t.start()
    if args.ready:
        args.ready.write_text("ready\n")
    if not threads:  # a pod without ports: stay up, as a container would
        socket.socketpair()[0].recv(1)
    for t in threads:
        t.join()


if __name__ == "__main__":
    main()
