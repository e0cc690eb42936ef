#!/usr/bin/env python3
"""Escape probe: run on an agent host as `agentuser` by `agentctl lab escape`.

Standard library only. Reads a JSON plan on stdin, tries each attempt, and prints one
JSON object: {"attempts": [{"id", "reached", "detail", ...}]}. "reached" means the
probe got an answer from the target; whether that is an escape is judged outside,
together with what the lab internet servers and the proxy's audit recorded.
"""
from __future__ import annotations

import base64
import errno
import json
import os
import selectors
import socket
import ssl
import struct
import sys
import time
import urllib.error
import urllib.request

TIMEOUT = 3.0


def scan(targets: list[str], ports: list[int], timeout: float = 2.5) -> list[str]:
    """Non-blocking connects to every target:port at once; returns those that accepted."""
    sel = selectors.DefaultSelector()
    for host in targets:
        for port in ports:
            fam = socket.AF_INET6 if ":" in host else socket.AF_INET
            s = socket.socket(fam, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect_ex((host, port))
                sel.register(s, selectors.EVENT_WRITE, f"{host}:{port}")
            except OSError:
                s.close()
    open_ = []
    deadline = time.monotonic() + timeout
    while sel.get_map() and time.monotonic() < deadline:
        for key, _ in sel.select(timeout=max(0.05, deadline - time.monotonic())):
            s = key.fileobj
            if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                open_.append(key.data)
            sel.unregister(s)
            s.close()
    for key in list(sel.get_map().values()):
        key.fileobj.close()
    return sorted(open_)


def tcp_banner(host: str, port: int) -> tuple[bool, str]:
    try:
        with socket.create_connection((host, port), timeout=TIMEOUT) as s:
            s.settimeout(TIMEOUT)
            return True, s.recv(64).decode(errors="replace").strip() or "connected"
    except OSError as exc:
        return False, _err(exc)


def _err(exc: BaseException) -> str:
    if isinstance(exc, urllib.error.URLError) and isinstance(exc.reason, BaseException):
        exc = exc.reason
    code = getattr(exc, "errno", None)
    name = errno.errorcode.get(code, "") if code else ""
    return f"{type(exc).__name__}{' ' + name if name else ''}: {exc}"[:160]


def http(url: str, *, via_proxy: str, method: str = "GET", body: bytes | None = None,
         headers: dict | None = None, insecure: bool = False) -> dict:
    """One request; returns status (0 = no HTTP answer), headers of interest, timing."""
    # Explicit either way: the probe must not pick up (or miss) a proxy by accident.
    handlers = [urllib.request.ProxyHandler({"http": via_proxy, "https": via_proxy} if via_proxy else {})]
    if insecure:  # a direct escape must not fail just because the lab CA is unknown here
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
        handlers.append(urllib.request.HTTPSHandler(context=ctx))
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=body, method=method, headers=headers or {})
    start = time.monotonic()
    try:
        with opener.open(req, timeout=TIMEOUT + 5) as resp:
            events = []
            for line in resp:
                if line.startswith(b"data:"):
                    events.append(round(time.monotonic() - start, 3))
            return {"status": resp.status, "ctype": resp.headers.get("Content-Type", ""), "events": events,
                    "ms": round((time.monotonic() - start) * 1000)}
    except urllib.error.HTTPError as exc:
        return {"status": exc.code, "ctype": exc.headers.get("Content-Type", ""), "detail": exc.reason}
    except (OSError, ValueError) as exc:
        return {"status": 0, "detail": _err(exc)}


def dns_query(server: str, name: str, tcp: bool) -> tuple[bool, str]:
    q = struct.pack("!HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    q += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
    try:
        if tcp:
            with socket.create_connection((server, 53), timeout=TIMEOUT) as s:
                s.sendall(struct.pack("!H", len(q)) + q)
                data = s.recv(512)
        else:
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.settimeout(TIMEOUT)
                s.sendto(q, (server, 53))
                data = s.recv(512)
        return bool(data), f"{len(data)}-byte answer"
    except OSError as exc:
        return False, _err(exc)


def run(plan: dict) -> list[dict]:
    # Attempts run side by side: most of them end in a timeout, one after another
    # they would take minutes.
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=16) as pool:
        return list(pool.map(lambda a: attempt(a, plan.get("proxy", "")), plan["attempts"]))


def attempt(a: dict, proxy: str) -> dict:
    if True:
        kind, res = a["kind"], {"id": a["id"]}
        if kind == "scan":
            found = scan(a["targets"], a["ports"])
            res.update(open=found, reached=bool(set(found) - set(a.get("expected_open", []))),
                       detail=f"open: {', '.join(found) or 'none'}")
        elif kind == "tcp":
            ok, detail = tcp_banner(a["host"], a["port"])
            res.update(reached=ok, detail=detail)
        elif kind == "http":
            body = a.get("body", "").encode() or None
            r = http(a["url"], via_proxy=proxy if a.get("via_proxy") else "", method=a.get("method", "GET"), body=body,
                     headers=a.get("headers"), insecure=a.get("insecure", False))
            res.update(r, reached=r["status"] != 0,
                       detail=r.get("detail") or f"HTTP {r['status']}" + (f", {len(r['events'])} SSE events at "
                                                                          f"{r['events']} s" if r.get('events') else ""))
        elif kind == "dns":
            ok, detail = dns_query(a["server"], a["name"], a.get("tcp", False))
            res.update(reached=ok, detail=detail)
        elif kind == "doh":
            q = struct.pack("!HHHHHH", 0, 0x0100, 1, 0, 0, 0) + b"".join(
                bytes([len(p)]) + p.encode() for p in a["name"].split(".")) + b"\x00" + struct.pack("!HH", 1, 1)
            url = a["url"] + "?dns=" + base64.urlsafe_b64encode(q).decode().rstrip("=")
            r = http(url, via_proxy=proxy if a.get("via_proxy") else "", headers={"Accept": "application/dns-message"},
                     insecure=True)
            res.update(r, reached=r["status"] == 200 and "dns-message" in r.get("ctype", ""),
                       detail=r.get("detail") or f"HTTP {r['status']} {r.get('ctype', '')}")
        elif kind == "resolve":
            try:
                addrs = sorted({ai[4][0] for ai in socket.getaddrinfo(a["name"], 443, proto=socket.IPPROTO_TCP)})
                res.update(reached=bool(set(addrs) - set(a.get("allowed", []))), addrs=addrs,
                           detail=f"resolves to {', '.join(addrs)}")
            except OSError as exc:
                res.update(reached=False, addrs=[], detail=_err(exc))
    return res


def main() -> int:
    plan = json.load(sys.stdin)
    print(json.dumps({"uid": os.getuid(), "attempts": run(plan)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
