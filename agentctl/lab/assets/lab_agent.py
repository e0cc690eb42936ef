#!/usr/bin/env python3
"""The lab's stand-in agent: what the example stack grants, exercised on a timer.

Runs on the agent host as `agentuser` in the sandboxed agent unit, with HTTPS_PROXY
and the proxy's CA from the unit's environment, like a real agent. Each round makes
the stack's allowed calls (a GET under /repos/acme/app/, a streamed chat completion)
and one call outside the grants, which the proxy must refuse. One JSON line per call
on stdout (the journal) and in /var/log/agentctl-agent/lab-agent.jsonl.

It is installed like a real runtime: the lab builds it into the package
`agentctl-lab-agent` (agentctl/lab/packages.py, versions 1.0.0, 1.1.0 and a broken
1.2.0), served by the lab's package index, installed by agentctl-runtime-install
through the proxy. It answers GET http://127.0.0.1:8790/health with its version
(the runtime health that snapshot-upgrade's acceptance asks for); a build marked
broken starts and runs, but answers 503 there. Standard library only.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import time
import urllib.error
import urllib.request
from http.server import BaseHTTPRequestHandler, HTTPServer

try:  # written by the lab's package build (agentctl/lab/packages.py)
    from agentctl_lab_agent_build import BROKEN, VERSION
except ImportError:  # run as a plain script
    BROKEN, VERSION = False, "0+script"

LOG = "/var/log/agentctl-agent/lab-agent.jsonl"
HEALTH_PORT = 8790
CALLS = [
    # (name, method, url, body, expected status)
    ("allowed-get", "GET", "https://api.lab.test/repos/acme/app/releases", None, 200),
    ("allowed-stream", "POST", "https://llm.lab.test/v1/chat/completions",
     b'{"model": "lab", "stream": true, "messages": [{"role": "user", "content": "hi"}]}', 200),
    ("denied-get", "GET", "https://api.lab.test/admin/keys", None, 403),
]


def call(method: str, url: str, body: bytes | None) -> tuple[int, int, str]:
    req = urllib.request.Request(url, data=body, method=method,
                                 headers={"Content-Type": "application/json", "User-Agent": "agentctl-lab-agent"})
    try:
        with urllib.request.urlopen(req, timeout=15) as resp:
            chunks = 0
            for line in resp:  # read line by line: SSE events arrive one at a time
                chunks += line.startswith(b"data:")
            return resp.status, chunks, ""
    except urllib.error.HTTPError as exc:
        return exc.code, 0, exc.reason or ""
    except OSError as exc:
        return 0, 0, f"{type(exc).__name__}: {exc}"


def log(entry: dict) -> None:
    line = json.dumps(entry, sort_keys=True)
    print(line, flush=True)
    try:
        with open(LOG, "a") as fh:
            fh.write(line + "\n")
    except OSError:
        pass  # the journal still has it


class Health(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        status = 503 if BROKEN or self.path != "/health" else 200
        body = json.dumps({"version": VERSION, "healthy": status == 200}).encode() + b"\n"
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


def serve_health() -> None:
    server = HTTPServer(("127.0.0.1", int(os.environ.get("LAB_AGENT_HEALTH_PORT", HEALTH_PORT))), Health)
    threading.Thread(target=server.serve_forever, daemon=True).start()


def main() -> int:
    interval = float(os.environ.get("LAB_AGENT_INTERVAL", "30"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    if not os.environ.get("LAB_AGENT_ONCE"):
        serve_health()
    log({"time": time.time(), "event": "start", "version": VERSION})
    while True:
        for name, method, url, body, expected in CALLS:
            start = time.monotonic()
            status, events, error = call(method, url, body)
            log({"time": time.time(), "call": name, "method": method, "url": url, "status": status,
                 "expected": expected, "ok": status == expected, "sse_events": events, "error": error,
                 "ms": round((time.monotonic() - start) * 1000)})
        if os.environ.get("LAB_AGENT_ONCE"):
            return 0
        time.sleep(interval)


if __name__ == "__main__":
    sys.exit(main())
