"""The Hermes lab's rows for bench/lab_bench.py (`--stack lab-hermes`): what a message
costs, measured on the lab that is up.

- message to answer: the operator's message sent on the fake chat until Hermes' answer
  is there (polled every 20 ms), with the model calls it took (the fake model answers
  at once: --latency-ms 0 in the lab), so the time is Hermes' own plus what we add;
- per model call, what we add: the same POST /v1/messages (kept-alive connection, the
  body Hermes sends is not needed for the fake) from the agent host's namespace through
  the proxy (CONNECT, TLS interception, policy, key injection, audit) against the
  baseline from the proxy host's namespace straight to the fake, both measured here,
  now. The sandbox adds nothing per call (systemd sets it up once, at start).
"""
from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from agentctl.ca import ensure_ca
from agentctl.lab import topology

CHAT_NS, CHAT_IP = f"{topology.PREFIX}net-chat", "198.18.0.12"
MODEL_IP = "198.18.0.11"

# One client process per measurement: N POSTs on one kept-alive connection, each timed.
CLIENT = r"""
import http.client, json, ssl, sys, time
via, ca, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
ctx = ssl.create_default_context(cafile=ca)
if via == "direct":
    conn = http.client.HTTPSConnection("198.18.0.11", 443, context=ctx)
    ctx.check_hostname = False  # the fake's certificate names api.anthropic.com; the address is fixed here
else:
    host, port = via.split(":")
    conn = http.client.HTTPSConnection(host, int(port), context=ctx)
    conn.set_tunnel("api.anthropic.com", 443)
body = json.dumps({"model": "claude-sonnet-4-5", "max_tokens": 16,
                   "messages": [{"role": "user", "content": "bench"}]})
out = []
for i in range(n + 1):
    t0 = time.perf_counter()
    conn.request("POST", "/v1/messages", body, {"Host": "api.anthropic.com", "Content-Type": "application/json",
                                                "x-api-key": "sk-ant-api03-bench", "anthropic-version": "2023-06-01"})
    r = conn.getresponse(); r.read()
    if r.status != 200:
        sys.exit(f"status {r.status}")
    if i:  # the first one pays the handshake
        out.append(time.perf_counter() - t0)
print(json.dumps(out))
"""


def per_call(state_dir: Path, stack: str, proxy_ns: str, agent_ns: str, proxy_addr: str, n: int = 50) -> dict:
    """Median seconds per POST: straight to the fake, and through the proxy."""
    def run(ns: str, via: str, ca: Path) -> list[float]:
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, via, str(ca), str(n)],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{ns} {via}: {proc.stderr.strip()[-300:]}")
        return json.loads(proc.stdout)
    direct = run(proxy_ns, "direct", state_dir / "internet" / "ca" / "ca.crt")
    proxied = run(agent_ns, proxy_addr, ensure_ca(state_dir, stack).cert_path)  # what agents trust
    return {"direct": statistics.median(direct), "proxied": statistics.median(proxied), "n": n}


def _operator(state_dir: Path, verb: str, body: dict | None = None):
    argv = ["ip", "netns", "exec", CHAT_NS, "curl", "-sS", "-m", "10", "--cacert",
            str(state_dir / "internet" / "ca" / "ca.crt"), "--resolve", f"api.telegram.org:443:{CHAT_IP}",
            f"https://api.telegram.org/_operator/{verb}"]
    if body is not None:
        argv += ["-H", "Content-Type: application/json", "-d", json.dumps(body)]
    return json.loads(subprocess.run(argv, capture_output=True, text=True, check=True, timeout=30).stdout)


def message_to_answer(state_dir: Path, operator_id: int, n: int = 5, timeout: float = 120) -> dict:
    """Median seconds from the operator's message to Hermes' answer, and model calls per message."""
    model_log = state_dir / "internet" / "model.jsonl"
    times, calls = [], []
    _ask(state_dir, operator_id, "warm up", timeout, needle="ECHO:")  # Hermes' onboarding rides on the first turn
    for i in range(n):
        before = len(model_log.read_text().splitlines())
        times.append(_ask(state_dir, operator_id, f"bench{i}x{int(time.time())}", timeout))
        calls.append(len(model_log.read_text().splitlines()) - before)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "calls": statistics.median(calls), "n": n}


def _ask(state_dir: Path, operator_id: int, text: str, timeout: float, needle: str = "") -> float:
    needle = needle or f"ECHO: {text}"
    since = len(_operator(state_dir, "sent"))
    t0 = time.monotonic()
    _operator(state_dir, "send", {"text": text, "user_id": operator_id})
    while time.monotonic() - t0 < timeout:
        if any(needle in (m.get("text") or "") for m in _operator(state_dir, "sent")[since:]):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError(f"no answer to {text!r} in {timeout:.0f} s")
