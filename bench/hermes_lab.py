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
from agentctl.lab.internet import ca_cert_path, chat_operator, fake_log
from agentctl.model import Deployment

# One client process per measurement: N POSTs on one kept-alive connection, each timed.
CLIENT = r"""
import http.client, json, ssl, sys, time
via, ca, n, model_ip = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
ctx = ssl.create_default_context(cafile=ca)
if via == "direct":
    conn = http.client.HTTPSConnection(model_ip, 443, context=ctx)
    ctx.check_hostname = False  # the fake's certificate names api.anthropic.com; the address is given here
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


def per_call(d: Deployment, stack: str, state_dir: Path, n: int = 50) -> dict:
    """Median seconds per POST: straight to the fake from the proxy host, and from the
    agent host through the proxy."""
    model_ip = next(s.ip for s in topology.internet_servers(d) if s.role == "model")

    def run(host: str, via: str, ca: Path) -> list[float]:
        ns = topology.host_netns(host)
        proc = subprocess.run(["ip", "netns", "exec", ns, sys.executable, "-c", CLIENT, via, str(ca), str(n), model_ip],
                              capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"{ns} {via}: {proc.stderr.strip()[-300:]}")
        return json.loads(proc.stdout)
    direct = run(d.proxy.name, "direct", ca_cert_path(state_dir))
    proxied = run(d.agents[0].name, f"{d.proxy_ip}:{d.proxy.listen.tunnel}",
                  ensure_ca(state_dir, stack).cert_path)  # what agents trust
    return {"direct": statistics.median(direct), "proxied": statistics.median(proxied), "n": n}


def message_to_answer(d: Deployment, state_dir: Path, n: int = 5, timeout: float = 120) -> dict:
    """Median seconds from the operator's message to Hermes' answer, and model calls per message."""
    model_log = fake_log(state_dir, "model")
    times, calls = [], []
    _ask(d, state_dir, "warm up", timeout, needle="ECHO:")  # Hermes' onboarding rides on the first turn
    for i in range(n):
        before = len(model_log.read_text().splitlines())
        times.append(_ask(d, state_dir, f"bench{i}x{int(time.time())}", timeout))
        calls.append(len(model_log.read_text().splitlines()) - before)
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "calls": statistics.median(calls), "n": n}


def _ask(d: Deployment, state_dir: Path, text: str, timeout: float, needle: str = "") -> float:
    needle = needle or f"ECHO: {text}"
    operator = d.agents[0].runtime.hermes.telegram.allowed_users[0]
    since = len(chat_operator(d, state_dir, "sent"))
    t0 = time.monotonic()
    chat_operator(d, state_dir, "send", {"text": text, "user_id": operator})
    while time.monotonic() - t0 < timeout:
        if any(needle in (m.get("text") or "") for m in chat_operator(d, state_dir, "sent")[since:]):
            return time.monotonic() - t0
        time.sleep(0.02)
    raise RuntimeError(f"no answer to {text!r} in {timeout:.0f} s")
