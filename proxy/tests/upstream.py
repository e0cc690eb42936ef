"""A real upstream for the tests: HTTP/1.1 over TLS (trustme cert) or cleartext, on loopback.

Echoes what it received as JSON, so tests can see exactly which headers and path
reached the upstream. /sse streams events with a pause; /ws speaks WebSocket.
"""

from __future__ import annotations

import base64
import hashlib
import json
import socket
import ssl
import struct
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

WS_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "upstream-test"
    disable_nagle_algorithm = True  # small writes must not wait for delayed ACKs

    def log_message(self, *args) -> None:  # quiet
        pass

    def _body(self) -> bytes:
        n = int(self.headers.get("content-length") or 0)
        if self.headers.get("transfer-encoding", "").lower() == "chunked":
            data = b""
            while True:
                size = int(self.rfile.readline().strip(), 16)
                if size == 0:
                    self.rfile.readline()
                    return data
                data += self.rfile.read(size)
                self.rfile.readline()
        return self.rfile.read(n) if n else b""

    def _handle(self) -> None:
        body = self._body()
        self.server.seen.append({"method": self.command, "path": self.path,
                                 "headers": dict(self.headers.items())})
        if "/sse" in self.path:
            return self._sse()
        if "/ws" in self.path and self.headers.get("upgrade", "").lower() == "websocket":
            return self._ws()
        if "/big" in self.path:
            n = int(self.path.split("=")[1])
            out = b"x" * n
        else:
            out = json.dumps({"method": self.command, "path": self.path, "body_len": len(body),
                              "headers": {k.lower(): v for k, v in self.headers.items()}}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(out)))
        self.end_headers()
        self.wfile.write(out)

    def _sse(self) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.end_headers()
        for i, pause in enumerate((0.0, 1.5)):
            time.sleep(pause)
            data = f"data: event {i}\n\n".encode()
            self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
            self.wfile.flush()
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _ws(self) -> None:
        key = self.headers["sec-websocket-key"]
        accept = base64.b64encode(hashlib.sha1((key + WS_GUID).encode()).digest()).decode()
        self.send_response(101)
        self.send_header("upgrade", "websocket")
        self.send_header("connection", "Upgrade")
        self.send_header("sec-websocket-accept", accept)
        self.end_headers()
        self.wfile.flush()
        head = self.rfile.read(2)
        n = head[1] & 0x7F
        if n == 126:
            n = struct.unpack("!H", self.rfile.read(2))[0]
        mask = self.rfile.read(4)
        payload = bytes(b ^ mask[i % 4] for i, b in enumerate(self.rfile.read(n)))
        reply = b"echo " + payload
        self.wfile.write(bytes([0x81, len(reply)]) + reply)
        self.wfile.flush()
        self.close_connection = True

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle


class _Server(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        import sys

        if not isinstance(sys.exc_info()[1], (ConnectionError, ssl.SSLError)):
            super().handle_error(request, client_address)
        # a client (or the proxy, killed on purpose) going away mid-response is expected


class Upstream:
    def __init__(self, host: str, port: int, certfile: str | None = None) -> None:
        self.server = _Server((host, port), Handler)
        self.server.daemon_threads = True
        self.server.seen = []
        if certfile:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(certfile)
            ctx.set_alpn_protocols(["http/1.1"])
            self.server.socket = ctx.wrap_socket(self.server.socket, server_side=True)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def seen(self) -> list[dict]:
        return self.server.seen

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


class RawUpstream:
    """A TLS upstream that logs every byte it receives, for the framing tests.

    `alpn` is what it offers: ["http/1.1"] (an HTTP/1.1-only server) or ["h2", "http/1.1"].
    Over HTTP/1.1 it parses with h11 (strict, as a real server would) and answers every
    request it finds, pipelined ones included; over h2 it answers every stream. Each
    request lands in `requests` as (protocol, method, target, headers, body).
    """

    def __init__(self, host: str, port: int, certfile: str, alpn: list[str]) -> None:
        self.raw: list[bytes] = []  # every byte received, one entry per connection
        self.requests: list[tuple[str, str, str, list, bytes]] = []
        self.errors: list[str] = []
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(certfile)
        ctx.set_alpn_protocols(alpn)
        self.ctx = ctx
        self.sock = socket.create_server((host, port))
        self.sock.settimeout(0.2)
        self.closing = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except (TimeoutError, socket.timeout, OSError):
                continue
            threading.Thread(target=self._conn, args=(conn,), daemon=True).start()

    def _conn(self, conn: socket.socket) -> None:
        idx = len(self.raw)
        self.raw.append(b"")
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
            tls.settimeout(3)
            if tls.selected_alpn_protocol() == "h2":
                self._h2(tls, idx)
            else:
                self._h1(tls, idx)
        except (OSError, ssl.SSLError, ValueError) as e:
            self.errors.append(repr(e))
        finally:
            conn.close()

    def _recv(self, tls, idx: int) -> bytes:
        try:
            data = tls.recv(65536)
        except (TimeoutError, socket.timeout):
            return b""
        self.raw[idx] += data
        return data

    def _h1(self, tls, idx: int) -> None:
        import h11

        conn = h11.Connection(h11.SERVER)
        req, body = None, b""
        while True:
            try:
                ev = conn.next_event()
            except h11.RemoteProtocolError as e:
                self.errors.append(f"h11: {e}")
                return
            if ev is h11.NEED_DATA:
                data = self._recv(tls, idx)
                conn.receive_data(data)  # b"": EOF
                if not data:
                    return
            elif isinstance(ev, h11.Request):
                req, body = ev, b""
            elif isinstance(ev, h11.Data):
                body += ev.data
            elif isinstance(ev, h11.EndOfMessage):
                assert req is not None
                self.requests.append(("HTTP/1.1", req.method.decode(), req.target.decode(),
                                      [(k.decode(), v.decode("latin-1")) for k, v in req.headers], body))
                out = json.dumps({"n": len(self.requests), "body_len": len(body)}).encode()
                tls.sendall(conn.send(h11.Response(status_code=200, headers=[
                    ("content-type", "application/json"), ("content-length", str(len(out)))])))
                tls.sendall(conn.send(h11.Data(data=out)) + conn.send(h11.EndOfMessage()))
                if conn.our_state is h11.MUST_CLOSE:
                    return
                conn.start_next_cycle()
            elif isinstance(ev, h11.ConnectionClosed):
                return

    def _h2(self, tls, idx: int) -> None:
        import h2.config
        import h2.connection
        import h2.events

        conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=False, header_encoding="utf-8"))
        conn.initiate_connection()
        tls.sendall(conn.data_to_send())
        streams: dict[int, list] = {}
        while True:
            data = self._recv(tls, idx)
            if not data:
                return
            for ev in conn.receive_data(data):
                if isinstance(ev, h2.events.RequestReceived):
                    streams[ev.stream_id] = [ev.headers, b""]
                elif isinstance(ev, h2.events.DataReceived):
                    streams[ev.stream_id][1] += ev.data
                    conn.acknowledge_received_data(ev.flow_controlled_length, ev.stream_id)
                elif isinstance(ev, h2.events.StreamEnded):
                    headers, body = streams.pop(ev.stream_id)
                    pseudo = dict(h for h in headers if h[0].startswith(":"))
                    self.requests.append(("HTTP/2", pseudo[":method"], pseudo[":path"],
                                          [h for h in headers if not h[0].startswith(":")], body))
                    out = json.dumps({"n": len(self.requests), "body_len": len(body)}).encode()
                    conn.send_headers(ev.stream_id, [(":status", "200"), ("content-length", str(len(out)))])
                    conn.send_data(ev.stream_id, out, end_stream=True)
                elif isinstance(ev, h2.events.ConnectionTerminated):
                    return
            tls.sendall(conn.data_to_send())

    def close(self) -> None:
        self.closing = True
        self.sock.close()
