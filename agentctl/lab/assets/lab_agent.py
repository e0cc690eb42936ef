#!/usr/bin/env python3
"""The lab's stand-in agent: what the example stack grants, exercised on a timer.

Runs on the agent host as `agentuser` in the sandboxed agent unit, with HTTPS_PROXY
and the proxy's CA from the unit's environment, like a real agent. Each round makes
the stack's allowed calls (a GET under /repos/acme/app/, a streamed chat completion)
and one call outside the grants, which the proxy must refuse. One JSON line per call
on stdout (the journal) and in /var/log/agentctl-agent/lab-agent.jsonl.
Standard library only: the agent host has no route to a package index.
"""
from __future__ import annotations

import json
import os
import signal
import sys
import time
import urllib.error
import urllib.request

LOG = "/var/log/agentctl-agent/lab-agent.jsonl"
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


def main() -> int:
    interval = float(os.environ.get("LAB_AGENT_INTERVAL", "30"))
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
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
