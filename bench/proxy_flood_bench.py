"""agentctl-proxy under a flood of oversized requests from one agent (not a test).

    python bench/proxy_flood_bench.py [--seconds 10] [--flooders 6] [--baseline-rev REV]

One agent ("good") does keep-alive HTTPS GETs through CONNECT, alone and then while
another agent ("flooder", its own source address) floods the proxy with requests every
bound refuses, each on a new connection, round-robin:
  endless-head   an HTTP/1 head that never ends (header lines up to 16 MiB per connection)
  4mib-path      a complete request with a 4 MiB path (plain explicit proxy)
  long-path-tls  a 9 KiB path inside a TLS tunnel
  body-over-cap  Content-Length over max_request_body_bytes, body sent anyway
Measured: the good agent's p50/p99 before and during (ratio within the run), the proxy's
RSS (sampled every 100 ms) and threads, the audit file's growth and its lines per agent.
With --baseline-rev the same run is repeated against the proxy code of that git revision
(extracted to a temporary directory; its RSS is capped by RLIMIT_AS, and the flood's
endless heads and 4 MiB paths are capped in total so an unbounded proxy cannot take the
machine). Loopback only, bounded in time. Writes bench/results/proxy_flood.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import trustme
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "proxy" / "tests"))
from upstream import Upstream, free_port  # noqa: E402

from proxy_start import extract, start_proxy  # noqa: E402
from proxy_bench import read_response  # noqa: E402

from agentctl_proxy.ca import init_ca  # noqa: E402

UP_IP = "127.0.0.44"  # an address of its own: the proxy tests use 127.0.0.2-5
GOOD, FLOODER = "127.0.0.21", "127.0.0.22"
ENDLESS_CAP = 512 << 20  # bytes of endless heads per run, all flooders together
PATH_CAP = 60  # 4 MiB-path requests per run
BODY_CAP = 1 << 20
AS_CAP = 3 << 30  # the proxy's address space (RLIMIT_AS), this tree's and the baseline's


def rss_kb(pid: int) -> int:
    return _status(pid, "VmRSS:")


def threads(pid: int) -> int:
    return _status(pid, "Threads:")


def _status(pid: int, key: str) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(key):
                return int(line.split()[1])
    except OSError:
        pass
    return 0


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# --------------------------------------------------------------------- the good agent


class Good:
    def __init__(self, port: int, upstream_port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.up, self.ctx = port, upstream_port, ctx
        self.request = f"GET /v1/good HTTP/1.1\r\nHost: {UP_IP}:{upstream_port}\r\n\r\n".encode()

    def open(self):
        s = socket.create_connection(("127.0.0.1", self.port), 5, source_address=(GOOD, 0))
        s.sendall(f"CONNECT {UP_IP}:{self.up} HTTP/1.1\r\nHost: {UP_IP}:{self.up}\r\n\r\n".encode())
        head = b""
        while b"\r\n\r\n" not in head:
            head += s.recv(4096)
        assert b" 200 " in head.split(b"\r\n")[0], head
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(s, server_hostname=UP_IP)

    def run(self, seconds: float) -> dict:
        lat, errors = [], 0
        stop = time.monotonic() + seconds
        sock = self.open()
        while time.monotonic() < stop:
            t0 = time.perf_counter()
            try:
                sock.sendall(self.request)
                read_response(sock)
            except (OSError, RuntimeError):
                errors += 1
                sock.close()
                sock = self.open()
                continue
            lat.append(time.perf_counter() - t0)
        sock.close()
        lat.sort()
        return {"n": len(lat), "errors": errors, "p50": lat[len(lat) // 2] * 1000,
                "p99": lat[min(len(lat) - 1, int(len(lat) * 0.99))] * 1000}


# ------------------------------------------------------------------------ the flood


class Flood:
    KINDS = ("endless-head", "4mib-path", "long-path-tls", "body-over-cap")

    def __init__(self, port: int, upstream_port: int, ctx: ssl.SSLContext) -> None:
        self.port, self.up, self.ctx = port, upstream_port, ctx
        self.sent = {k: 0 for k in self.KINDS}
        self.endless_bytes = 0
        self.lock = threading.Lock()

    def _plain(self):
        s = socket.create_connection(("127.0.0.1", self.port), 5, source_address=(FLOODER, 0))
        s.settimeout(5)
        return s

    def _count(self, kind: str) -> bool:
        with self.lock:
            if kind == "4mib-path" and self.sent[kind] >= PATH_CAP:
                return False
            if kind == "endless-head" and self.endless_bytes >= ENDLESS_CAP:
                return False
            self.sent[kind] += 1
            return True

    def one(self, kind: str) -> None:
        if not self._count(kind):
            return
        host = f"{UP_IP}:{self.up}"
        try:
            if kind == "endless-head":
                with self._plain() as s:
                    s.sendall(f"GET http://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\n".encode())
                    line = b"X-Filler: " + b"f" * 65000 + b"\r\n"
                    for _ in range((16 << 20) // len(line)):
                        with self.lock:
                            if self.endless_bytes >= ENDLESS_CAP:
                                break
                            self.endless_bytes += len(line)
                        s.sendall(line)
            elif kind == "4mib-path":
                with self._plain() as s:
                    s.sendall(f"GET http://{host}/v1/{'A' * (4 << 20)} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                    s.recv(4096)
            elif kind == "long-path-tls":
                raw = self._plain()
                raw.sendall(f"CONNECT {host} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                raw.recv(4096)
                with self.ctx.wrap_socket(raw, server_hostname=UP_IP) as s:
                    s.sendall(f"GET /v1/{'a' * 9000} HTTP/1.1\r\nHost: {host}\r\n\r\n".encode())
                    s.recv(4096)
            else:
                with self._plain() as s:
                    s.sendall(f"POST http://{host}/v1/x HTTP/1.1\r\nHost: {host}\r\n"
                              f"Content-Length: {4 * BODY_CAP}\r\n\r\n".encode() + b"b" * (4 * BODY_CAP))
                    s.recv(4096)
        except (OSError, ssl.SSLError):
            pass  # closed by the proxy: expected

    def run(self, seconds: float, workers: int) -> None:
        stop = time.monotonic() + seconds

        def worker(i: int) -> None:
            n = i
            while time.monotonic() < stop:
                self.one(self.KINDS[n % len(self.KINDS)])
                n += 1

        ts = [threading.Thread(target=worker, args=(i,)) for i in range(workers)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()


# ------------------------------------------------------------------------ one run


def write_config(work: Path, ca, bundle: str, up_port: int) -> tuple[Path, int]:
    port = free_port()
    rule = {"cidr": f"{UP_IP}/32", "methods": ["GET", "POST"], "paths": ["/v1/*"], "ports": [up_port, 80]}
    cfg = {
        "proxy": {"tunnel_listen": f"127.0.0.1:{port}", "upstream_deny_cidrs": ["169.254.0.0/16"],
                  "max_request_body_bytes": BODY_CAP},
        "tls": {"ca_cert": str(ca[0]), "ca_key": str(ca[1]), "upstream_ca_bundle": bundle},
        "log": {"audit_path": str(work / "audit.jsonl")},  # the default audit budget
        "agents": [{"name": name, "sources": [f"{src}/32"],
                    "transforms": [{"name": "allowlist", "config": {"rules": [rule]}}]}
                   for name, src in (("good", GOOD), ("flooder", FLOODER))],
    }
    (work / "proxy.yaml").write_text(yaml.safe_dump(cfg))
    return work / "proxy.yaml", port


def one_run(label: str, work: Path, ca, bundle: str, up_port: int, ctx, args, pythonpath: str | None) -> dict:
    work.mkdir(parents=True, exist_ok=True)
    config, port = write_config(work, ca, bundle, up_port)
    proc = start_proxy(config, port, pythonpath, address_space=AS_CAP)
    audit = work / "audit.jsonl"
    try:
        good = Good(port, up_port, ctx)
        good.run(1.0)  # warm up
        rss0 = rss_kb(proc.pid)
        before = good.run(args.seconds)
        size0 = audit.stat().st_size if audit.exists() else 0
        lines0 = len(audit.read_text().splitlines()) if audit.exists() else 0
        flood = Flood(port, up_port, ctx)
        samples: list[tuple[int, int]] = []
        sampling = threading.Event()

        def sample() -> None:
            while not sampling.is_set():
                samples.append((rss_kb(proc.pid), threads(proc.pid)))
                time.sleep(0.1)

        sampler = threading.Thread(target=sample)
        sampler.start()
        flooder = threading.Thread(target=flood.run, args=(args.seconds + 1.0, args.flooders))
        flooder.start()
        time.sleep(0.5)
        during = good.run(args.seconds)
        flooder.join()
        sampling.set()
        sampler.join()
        time.sleep(11)  # the audit budget's summary lines (audit.SUMMARY_SECONDS) come out
        rss_after = rss_kb(proc.pid)
        alive = proc.poll() is None
        text = audit.read_text() if audit.exists() else ""
        new = text.splitlines()[lines0:]
        flooder_lines = [x for x in new if '"agent":"flooder"' in x]
        return {
            "label": label, "before": before, "during": during, "rss0": rss0,
            "rss_peak": max(r for r, _ in samples), "rss_after": rss_after,
            "threads_peak": max(t for _, t in samples), "alive": alive,
            "audit_growth": len(text.encode()) - size0, "sent": dict(flood.sent),
            "endless_mib": flood.endless_bytes / (1 << 20),
            "flooder_denies": sum('"action":"deny"' in x and '"event":"decision"' in x for x in flooder_lines),
            "flooder_allows": sum('"action":"allow"' in x for x in flooder_lines),
            "flooder_summaries": sum('"event":"suppressed"' in x for x in flooder_lines),
            "longest_line": max((len(x) + 1 for x in new), default=0),
        }
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--flooders", type=int, default=6)
    ap.add_argument("--baseline-rev", default=None, help="also run the proxy code of this git revision")
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "proxy_flood.md"))
    args = ap.parse_args()
    loads = [("start", loadavg())]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        up_ca = trustme.CA()
        up_ca.cert_pem.write_to_path(str(work / "up-ca.pem"))
        up_ca.issue_cert(UP_IP).private_key_and_cert_chain_pem.write_to_path(str(work / "up.pem"))
        up_port = free_port(UP_IP)
        upstream = Upstream(UP_IP, up_port, str(work / "up.pem"))
        ca = init_ca(work / "ca")
        ctx = ssl.create_default_context(cafile=str(ca[0]))
        runs = [one_run("this tree", work / "new", ca, str(work / "up-ca.pem"), up_port, ctx, args, None)]
        loads.append(("after this tree", loadavg()))
        if args.baseline_rev:
            path = extract(args.baseline_rev, work / "old")
            runs.append(one_run(f"`{args.baseline_rev}`", work / "old-run", ca, str(work / "up-ca.pem"), up_port,
                                ctx, args, path))
            loads.append(("after baseline", loadavg()))
        upstream.close()
    write_report(Path(args.out), runs, args, loads)
    print(Path(args.out).read_text())


def write_report(out: Path, runs: list[dict], args, loads) -> None:
    rows = []
    for r in runs:
        b, d = r["before"], r["during"]
        rows.append(
            f"| {r['label']} | {b['p50']:.2f} / {b['p99']:.2f} | {d['p50']:.2f} / {d['p99']:.2f} "
            f"| {d['p50'] / b['p50']:.2f}x / {d['p99'] / b['p99']:.2f}x | {d['errors']} "
            f"| {r['rss0'] / 1024:.0f} | {r['rss_peak'] / 1024:.0f} | {r['rss_after'] / 1024:.0f} "
            f"| {r['threads_peak']} | {r['audit_growth'] / 1024:.0f} | {r['flooder_denies']} + "
            f"{r['flooder_summaries']} + {r['flooder_allows']} | {r['longest_line']} | {'yes' if r['alive'] else '**no**'} |")
    sent = "\n".join(f"- {r['label']}: sent " + ", ".join(f"{k} {v}" for k, v in r["sent"].items())
                     + f" ({r['endless_mib']:.0f} MiB of endless heads)" for r in runs)
    out.write_text(f"""# agentctl-proxy under a flood of oversized requests

Generated by `python bench/proxy_flood_bench.py --seconds {args.seconds:g} --flooders {args.flooders}"""
                   f"""{' --baseline-rev ' + args.baseline_rev if args.baseline_rev else ''}` on {platform.node()}
({os.cpu_count()} cores, Python {platform.python_version()}), {time.strftime('%Y-%m-%d %H:%M')}.
The machine is shared with other work; load average (1, 5, 15 min): {'; '.join(f'{k} {v}' for k, v in loads)}.

Two agents by source address. `good` does keep-alive HTTPS GETs through one CONNECT tunnel
({args.seconds:g} s alone, then {args.seconds:g} s during the flood); `flooder` runs {args.flooders}
threads, each opening a new connection per request, round-robin: an HTTP/1 head that never
ends (up to 16 MiB per connection), a 4 MiB path, a 9 KiB path inside TLS, a body over
`max_request_body_bytes` (1 MiB) sent anyway. The audit budget is the default (120 lines,
1 per second per agent). RSS is sampled every 100 ms during the flood; "after" is 11 s
after it ended. Audit growth counts everything written from the start of the flood to
11 s after it (the budget's summary line is written 10 s after the first suppressed line).

| proxy code | good p50 / p99 ms, alone | during flood | ratio during / alone | good errors | RSS MiB before | peak | after | threads peak | audit growth KiB | flooder lines: refusals + budget summaries + allowed CONNECTs | longest audit line, bytes | alive |
|---|---|---|---|---|---|---|---|---|---|---|---|---|
{chr(10).join(rows)}

{sent}

Refusal lines are budgeted per agent (`log.refusal_burst`, `log.refusal_rate`); the rest are
counted in the summary line. Allowed decisions are not budgeted: the 9 KiB-path kind opens
an allowed CONNECT tunnel each time (one "allow" line), and only the request inside is refused.

The flood and the good agent share the 2 cores with the proxy (and with other work), so
latency during the flood mostly measures CPU contention; what the bounds guarantee is that
memory and audit growth stay flat whatever the flood sends. The baseline revision (if run)
is capped: at most {ENDLESS_CAP >> 20} MiB of endless heads and {PATH_CAP} 4 MiB paths per run, and an
address-space limit of {AS_CAP >> 30} GiB on its process.
""")


if __name__ == "__main__":
    main()
