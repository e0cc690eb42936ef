#!/usr/bin/env python3
"""A lab internet server, run by `agentctl lab up` inside its own lab namespace.

Standard library only. Two roles:
  upstream  the example allowlist's APIs (api/llm/deb.lab.test): answers GET under
            /repos/, streams server-sent events on POST /v1/chat/completions, and
            records which Authorization header arrived (as a SHA-256, never the value)
            so `lab escape` can prove the proxy injected the credential. With
            --wheels, it is also a package index (pypi.lab.test): a PEP 503 simple
            index, with PEP 691 JSON on request, of every wheel in those folders,
            under /simple/. With --apt, it is also the lab's apt mirror (deb.lab.test)
            under /debian/.
  evil      what an escaping agent would reach: HTTPS, a DNS-over-HTTPS endpoint and
            a rogue DNS resolver on port 53 that answers every name with its own
            address. Every hit is recorded: a hit here is an escape.
Every request is one JSON line in --log.
"""
from __future__ import annotations

import argparse
import base64
import hashlib
import html
import json
import re
import socket
import socketserver
import ssl
import struct
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LOCK = threading.Lock()
ARGS: argparse.Namespace


def record(kind: str, **fields) -> None:
    line = json.dumps({"time": time.time(), "server": ARGS.role, "kind": kind, **fields}, sort_keys=True)
    with LOCK, open(ARGS.log, "a") as fh:
        fh.write(line + "\n")


def normalize(name: str) -> str:
    """PEP 503's normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def wheels() -> dict[str, dict[str, Path]]:
    """{project: {file name: path}} of every wheel in the --wheels folders (read per
    request: a folder the lab fills later is served without a restart)."""
    out: dict[str, dict[str, Path]] = {}
    for folder in ARGS.wheels:
        for whl in sorted(Path(folder).glob("*.whl")):
            out.setdefault(normalize(whl.name.split("-", 1)[0]), {})[whl.name] = whl
    return out


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def dns_answer(query: bytes, ip: str) -> bytes:
    """Answer the first question with one A record (or no answer for other types)."""
    ident, _flags, qdcount = struct.unpack("!HHH", query[:6])
    pos = 12
    while query[pos] != 0:
        pos += query[pos] + 1
    qtype = struct.unpack("!H", query[pos + 1:pos + 3])[0]
    question = query[12:pos + 5]
    answers = b""
    if qtype == 1:
        answers = b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 60, 4) + socket.inet_aton(ip)
    header = struct.pack("!HHHHHH", ident, 0x8180, 1, 1 if answers else 0, 0, 0)
    return header + question + answers


def qname(query: bytes) -> str:
    labels, pos = [], 12
    while query[pos] != 0:
        labels.append(query[pos + 1:pos + 1 + query[pos]].decode(errors="replace"))
        pos += query[pos] + 1
    return ".".join(labels)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "lab-internet"

    def log_message(self, *_args) -> None:  # the JSON log is the record
        pass

    def _note(self, status: int, body_len: int = 0) -> None:
        auth = self.headers.get("Authorization")
        record("http", method=self.command, host=self.headers.get("Host", ""), path=self.path,
               client=self.client_address[0], status=status, tls=isinstance(self.connection, ssl.SSLSocket),
               authorization_sha256=hashlib.sha256(auth.encode()).hexdigest() if auth else None,
               authorization_scheme=auth.split(" ", 1)[0] if auth else None,
               proxy_authorization=self.headers.get("Proxy-Authorization") is not None, body_bytes=body_len)

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def _body(self) -> bytes:
        n = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(n) if n else b""

    def do_GET(self) -> None:
        if ARGS.role == "evil" and self.path.startswith("/dns-query"):
            return self._doh(None)
        if ARGS.wheels and self.path.startswith("/simple/"):
            return self._index()
        if ARGS.apt and self.path.startswith("/debian/"):
            return self._apt_file()
        status = 200 if ARGS.role == "evil" or self.path.startswith("/repos/") else 404
        self._note(status)
        self._send(status, json.dumps({"server": ARGS.role, "path": self.path,
                                       "authorized": self.headers.get("Authorization") is not None}).encode())

    def do_POST(self) -> None:
        body = self._body()
        if ARGS.role == "evil" and self.path.startswith("/dns-query"):
            return self._doh(body)
        if ARGS.role == "upstream" and self.path == "/v1/chat/completions":
            return self._sse(len(body))
        self._note(200 if ARGS.role == "evil" else 404, len(body))
        self._send(200 if ARGS.role == "evil" else 404, b'{"server": "%s"}' % ARGS.role.encode())

    def _apt_file(self) -> None:
        """/debian/PATH: a file of the lab's apt mirror (agentctl/lab/aptrepo.py)."""
        root = Path(ARGS.apt).resolve()
        path = (root / self.path.split("?", 1)[0][len("/debian/"):]).resolve()
        if root not in path.parents or not path.is_file():
            self._note(404)
            return self._send(404, b'{"error": "not in the mirror"}')
        self._reply(200, path.read_bytes(), "application/octet-stream")

    def _index(self) -> None:
        """/simple/, /simple/NAME/ (HTML, or PEP 691 JSON when asked for) and
        /simple/NAME/FILE. Links are relative, so every file is under /simple/ too."""
        parts = [p for p in self.path.split("?", 1)[0].split("/") if p][1:]
        index = wheels()
        as_json = "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", "")
        if not parts:
            names = sorted(index)
            if as_json:
                body = json.dumps({"meta": {"api-version": "1.0"}, "projects": [{"name": n} for n in names]})
                return self._reply(200, body.encode(), "application/vnd.pypi.simple.v1+json")
            links = "".join(f'<a href="{n}/">{n}</a>\n' for n in names)
            return self._reply(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html")
        files = index.get(normalize(parts[0]))
        if files is None or len(parts) > 2 or parts[0] != normalize(parts[0]):
            return self._reply(404, b"not found\n", "text/plain")
        if len(parts) == 2:
            path = files.get(parts[1])
            if path is None:
                return self._reply(404, b"not found\n", "text/plain")
            return self._reply(200, path.read_bytes(), "application/octet-stream")
        if as_json:
            body = json.dumps({"meta": {"api-version": "1.0"}, "name": parts[0], "files": [
                {"filename": f, "url": f, "hashes": {"sha256": sha256(p)}} for f, p in sorted(files.items())]})
            return self._reply(200, body.encode(), "application/vnd.pypi.simple.v1+json")
        links = "".join(f'<a href="{html.escape(f)}#sha256={sha256(p)}">{html.escape(f)}</a>\n'
                        for f, p in sorted(files.items()))
        self._reply(200, f"<!DOCTYPE html><html><body>\n{links}</body></html>\n".encode(), "text/html")

    def _reply(self, status: int, body: bytes, ctype: str) -> None:
        self._note(status)
        self._send(status, body, ctype)

    def _sse(self, body_len: int) -> None:
        """An LLM-style streaming answer: events spaced out in time, so a proxy that
        buffers instead of streaming shows up as one late burst."""
        self._note(200, body_len)
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Connection", "close")
        self.end_headers()
        for i in range(3):
            chunk = json.dumps({"choices": [{"delta": {"content": f"token{i} "}}], "sent_at": time.time()})
            self.wfile.write(f"data: {chunk}\n\n".encode())
            self.wfile.flush()
            time.sleep(0.2)
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()
        self.close_connection = True

    def _doh(self, body: bytes | None) -> None:
        if body is None:
            raw = self.path.partition("dns=")[2].split("&")[0]
            body = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
        record("doh", name=qname(body), client=self.client_address[0])
        self._send(200, dns_answer(body, ARGS.ip), "application/dns-message")


class DualStackServer(ThreadingHTTPServer):
    address_family = socket.AF_INET6
    daemon_threads = True
    tls: ssl.SSLContext | None = None

    def finish_request(self, request, client_address) -> None:
        # The TLS handshake runs in the connection's thread: a client that stalls in
        # it must not hold up accept() for everyone else.
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError):
                return
        super().finish_request(request, client_address)

    def server_bind(self) -> None:
        self.socket.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        super().server_bind()


class DnsUdp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        data, sock = self.request
        record("dns", name=qname(data), client=self.client_address[0], transport="udp")
        sock.sendto(dns_answer(data, ARGS.ip), self.client_address)


class DnsTcp(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        size = struct.unpack("!H", self.request.recv(2))[0]
        data = self.request.recv(size)
        record("dns", name=qname(data), client=self.client_address[0], transport="tcp")
        reply = dns_answer(data, ARGS.ip)
        self.request.sendall(struct.pack("!H", len(reply)) + reply)


class UdpServer(socketserver.ThreadingUDPServer):
    address_family = socket.AF_INET6


class TcpServer(socketserver.ThreadingTCPServer):
    address_family = socket.AF_INET6
    allow_reuse_address = True
    daemon_threads = True


def serve(server) -> threading.Thread:
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    return t


def main() -> int:
    global ARGS
    p = argparse.ArgumentParser()
    p.add_argument("--role", choices=["upstream", "evil"], required=True)
    p.add_argument("--ip", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--log", required=True)
    p.add_argument("--wheels", action="append", default=[], help="serve these folders' wheels under /simple/")
    p.add_argument("--apt", help="serve this apt repository under /debian/")
    ARGS = p.parse_args()

    tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls.load_cert_chain(ARGS.cert, ARGS.key)
    https = DualStackServer(("::", 443), Handler)
    https.tls = tls
    threads = [serve(https), serve(DualStackServer(("::", 80), Handler))]
    if ARGS.role == "evil":
        threads += [serve(UdpServer(("::", 53), DnsUdp)), serve(TcpServer(("::", 53), DnsTcp))]
    record("start", pid=__import__("os").getpid())
    print(f"lab internet {ARGS.role} on {ARGS.ip} ready", flush=True)
    for t in threads:
        t.join()
    return 0


if __name__ == "__main__":
    sys.exit(main())
