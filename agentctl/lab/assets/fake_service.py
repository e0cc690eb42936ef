"""What the scripted outside services (fake_anthropic.py, fake_telegram.py) share: the
server, its command-line options and its start-up. Stdlib only; each service runs as a
script from this folder, so this module is found beside it."""
from __future__ import annotations

import argparse
import os
import socket
import ssl
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Server(ThreadingHTTPServer):
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:
        # Headers and body go out in two writes: without TCP_NODELAY the second waits for
        # the client's delayed ACK (~40 ms a response), a stall no real API server has.
        request.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self.tls is not None:  # the handshake in the connection's thread, as lab_internet.py
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)


def parser() -> argparse.ArgumentParser:
    """The options every service takes; each adds its own."""
    p = argparse.ArgumentParser()
    p.add_argument("--listen", default="127.0.0.1:0", help="HOST:PORT (port 0: any free port)")
    p.add_argument("--log", required=True)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--port-file", help="write the bound port here once listening")
    return p


def serve(args: argparse.Namespace, handler: type[BaseHTTPRequestHandler], record: Callable[..., None]) -> int:
    """Listen as args say, record the start, publish the port, serve until interrupted."""
    host, _, port = args.listen.rpartition(":")
    server = Server((host, int(port)), handler)
    if args.cert:
        server.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        server.tls.load_cert_chain(args.cert, args.key)
    record(kind="start", port=server.server_address[1])
    if args.port_file:
        with open(args.port_file + ".tmp", "w") as fh:
            fh.write(str(server.server_address[1]))
        os.replace(args.port_file + ".tmp", args.port_file)
    print(f"{handler.__module__} on {host}:{server.server_address[1]} ready", flush=True)  # the lab waits for it
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    return 0
