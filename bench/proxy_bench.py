"""agentctl-proxy benchmark (not a test): `python bench/proxy_bench.py [--seconds 2 --reps 9]`.

In one run on this machine:
  1. throughput and latency, keep-alive and one-connection-per-request, each configuration
     run --reps times, interleaved (the order rotates every repetition): direct to a TLS
     upstream; a minimal mitmproxy master (Core, Proxyserver, NextLayer, TlsConfig and the
     same mitmproxy options agentctl-proxy sets, no other addon); `mitmdump` with its
     default addons (reference only); agentctl-proxy to an IP target (cidr rule) and to a
     name resolved through `dns.records`; Squid with ssl-bump (Debian's `squid-openssl`,
     which this bench needs: `apt-get install squid-openssl`), on loopback only, with the
     same host + port + method + path allowlist, to the same two targets. Ratios are taken
     within each repetition, then reported as median [interquartile range];
  2. policy decision time (check_path + compiled match) at 1,000 and 10,000 rules, for the
     friendly shape (rules spread over many hosts) and two adversarial ones (every rule on
     one host, or on `*`, each with a glob segment of its own);
  3. RSS over 10,000 keep-alive requests and 10,000 connections (agentctl-proxy, and the
     minimal mitmproxy for reference).
Everything runs on loopback; the upstream is the test suite's threaded TLS server.
Writes bench/results/proxy.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import shutil
import signal
import socket
import ssl
import statistics
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

from proxy_start import extract, start_proxy, wait_port  # noqa: E402

from agentctl_proxy.ca import init_ca  # noqa: E402
from agentctl_proxy.matcher import Grant, Matcher  # noqa: E402
from agentctl_proxy.paths import check_path  # noqa: E402

# an address and port of its own: the proxy tests use 127.0.0.2/.3 and may run meanwhile
UP_IP = "127.0.0.42"
UP_PORT = free_port(UP_IP)
UP_NAME = "api.bench.test"  # agentctl-proxy resolves it through dns.records


SQUID_NAME = "squid ssl-bump, name (hosts_file)"
SQUID = "/usr/sbin/squid"
CERTGEN = "/usr/lib/squid/security_file_certgen"

def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


# ------------------------------------------------------------------ client side


def read_response(sock) -> None:
    """One HTTP/1.1 response off a keep-alive socket (Content-Length framed); a
    status other than 200 is an error."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise ConnectionError("closed")
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = int(next(l.split(b":")[1] for l in head.split(b"\r\n") if l.lower().startswith(b"content-length")))
    while len(body) < length:
        body += sock.recv(65536)
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head[:80])


class Target:
    def __init__(self, ctx: ssl.SSLContext, proxy_port: int | None, host: str = UP_IP, pid: int | None = None,
                 tree: bool = False) -> None:
        self.ctx, self.proxy_port, self.host, self.pid, self.tree = ctx, proxy_port, host, pid, tree
        self.request = f"GET /v1/bench HTTP/1.1\r\nHost: {host}:{UP_PORT}\r\n\r\n".encode()

    def cpu(self) -> float:
        if not self.pid:
            return 0.0
        return tree_cpu_seconds(self.pid) if self.tree else cpu_seconds(self.pid)

    def open(self):
        if self.proxy_port is None:
            s = socket.create_connection((UP_IP, UP_PORT))
        else:
            s = socket.create_connection(("127.0.0.1", self.proxy_port))
            s.sendall(f"CONNECT {self.host}:{UP_PORT} HTTP/1.1\r\nHost: {self.host}:{UP_PORT}\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head:
                head += s.recv(4096)
            assert b" 200 " in head.split(b"\r\n")[0], head
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return self.ctx.wrap_socket(s, server_hostname=self.host)


def load(t: Target, keepalive: bool, seconds: float | None = None, count: int | None = None, threads: int = 2):
    """Run for `seconds`, or until each thread has done `count` requests."""
    latencies: list[float] = []
    lock = threading.Lock()
    stop = time.monotonic() + (seconds or 1e9)

    def worker():
        mine = []
        sock = t.open() if keepalive else None
        while time.monotonic() < stop and (count is None or len(mine) < count):
            t0 = time.perf_counter()
            if not keepalive:
                sock = t.open()
            sock.sendall(t.request)
            read_response(sock)
            if not keepalive:
                sock.close()
            mine.append(time.perf_counter() - t0)
        if keepalive:
            sock.close()
        with lock:
            latencies.extend(mine)

    ts = [threading.Thread(target=worker) for _ in range(threads)]
    start = time.monotonic()
    for th in ts:
        th.start()
    for th in ts:
        th.join()
    elapsed = time.monotonic() - start
    latencies.sort()
    return {"rps": len(latencies) / elapsed, "p50": latencies[len(latencies) // 2] * 1000,
            "p99": latencies[int(len(latencies) * 0.99)] * 1000, "n": len(latencies)}


# ------------------------------------------------------------------ servers


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process: what a proxy spends per request, whatever else the
    shared cores are doing (the run's req/s depends on that other work, this much less)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """cpu_seconds of a process and all its descendants (Squid's certificate helpers)."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            total += cpu_seconds(p)
        except OSError:
            continue
        todo += children.get(p, [])
    return total


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    return 0


def mitm_confdir(work: Path, ca: tuple[Path, Path], name: str) -> Path:
    confdir = work / name
    confdir.mkdir()
    (confdir / "mitmproxy-ca.pem").write_bytes(ca[1].read_bytes() + ca[0].read_bytes())
    return confdir


def start_mitmdump(work: Path, ca: tuple[Path, Path], bundle: str) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = subprocess.Popen(["mitmdump", "-q", "--mode", f"regular@127.0.0.1:{port}",
                          "--set", f"confdir={mitm_confdir(work, ca, 'mitmdump')}",
                          "--set", f"ssl_verify_upstream_trusted_ca={bundle}"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, port


def start_minimal(work: Path, ca: tuple[Path, Path], bundle: str, config: Path) -> tuple[subprocess.Popen, int]:
    port = free_port()
    p = subprocess.Popen([sys.executable, __file__, "--serve-minimal", str(port),
                          str(mitm_confdir(work, ca, "minimal")), bundle, str(config)],
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, port


def serve_minimal(port: int, confdir: str, bundle: str, config: str) -> None:
    """mitmproxy with only what proxying needs: Core (options and commands), Proxyserver
    (listeners, connection handlers), NextLayer (picks HTTP/TLS layers) and TlsConfig
    (interception certificates, upstream verification). Options: agentctl-proxy's own
    (lazy upstream connections, no upstream cert sniffing, ...), so the two differ only
    by agentctl-proxy's addons."""
    from mitmproxy import options
    from mitmproxy.addons import core, next_layer, proxyserver, tlsconfig
    from mitmproxy.master import Master

    from agentctl_proxy.config import load_config
    from agentctl_proxy.runner import option_values

    async def main() -> None:
        master = Master(options.Options(), with_termlog=False)
        master.addons.add(core.Core(), proxyserver.Proxyserver(), next_layer.NextLayer(), tlsconfig.TlsConfig())
        opts = option_values(load_config(config), Path(confdir))
        opts.update(mode=[f"regular@127.0.0.1:{port}"], ssl_verify_upstream_trusted_ca=bundle)
        master.options.update(**opts)
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, master.shutdown)
        await master.run()

    asyncio.run(main())


SQUID_CONF = """\
# agentctl-proxy's bench allowlist: GET /v1/* on {up_ip} and {up_name}, port {up_port}
http_port 127.0.0.1:{port} ssl-bump generate-host-certificates=on dynamic_cert_mem_cache_size=4MB tls-cert={cert} tls-key={key}
sslcrtd_program {certgen} -s {work}/ssl_db -M 4MB
sslcrtd_children 4
acl step1 at_step SslBump1
ssl_bump peek step1
ssl_bump bump all
tls_outgoing_options cafile={bundle}
acl CONNECT method CONNECT
acl GET method GET
acl target_port port {up_port}
acl target_ip dst {up_ip}/32
acl target_name dstdomain {up_name}
acl v1 urlpath_regex ^/v1/
http_access allow CONNECT target_port target_ip
http_access allow CONNECT target_port target_name
http_access allow GET target_port target_ip v1
http_access allow GET target_port target_name v1
http_access deny all
hosts_file {work}/hosts
cache deny all
cache_mem 8 MB
access_log stdio:{work}/access.log
cache_log {work}/cache.log
pid_filename {work}/squid.pid
coredump_dir {work}
cache_effective_user proxy
shutdown_lifetime 1 seconds
"""


def start_squid(work: Path, ca: tuple[Path, Path], bundle: str) -> tuple[subprocess.Popen, int]:
    """Squid in the foreground (-N: one process, no SMP workers), bumping TLS with the same
    CA, verifying the upstream with the same bundle, logging each request (as the audit
    does), listening on loopback only. Its certificate helper processes count in its CPU."""
    port = free_port()
    d = work / "squid"
    d.mkdir()
    subprocess.run([CERTGEN, "-c", "-s", str(d / "ssl_db"), "-M", "4MB"], check=True, capture_output=True)
    (d / "hosts").write_text(f"{UP_IP} {UP_NAME}\n")
    for src, name in ((ca[0], "ca.pem"), (ca[1], "ca.key"), (Path(bundle), "upstream.pem")):
        (d / name).write_bytes(src.read_bytes())
    conf = d / "squid.conf"
    conf.write_text(SQUID_CONF.format(port=port, cert=d / "ca.pem", key=d / "ca.key", certgen=CERTGEN, work=d,
                                      bundle=d / "upstream.pem",
                                      up_ip=UP_IP, up_name=UP_NAME, up_port=UP_PORT))
    os.chmod(d / "ca.key", 0o600)
    subprocess.run(["chown", "-R", "proxy:", str(d)], check=True)  # Squid runs as `proxy`
    os.chmod(work, 0o755)  # (mkdtemp made it 0700) so `proxy` reaches its own folder
    p = subprocess.Popen([SQUID, "-N", "-f", str(conf)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_port(port)
    return p, port


def refused_by_squid(ctx: ssl.SSLContext, port: int) -> None:
    """The Squid configuration refuses what agentctl-proxy's refuses: a path outside /v1/."""
    t = Target(ctx, port, UP_NAME)
    t.request = f"GET /v2/bench HTTP/1.1\r\nHost: {UP_NAME}:{UP_PORT}\r\n\r\n".encode()
    sock = t.open()
    sock.sendall(t.request)
    head = sock.recv(4096)
    sock.close()
    assert head.startswith(b"HTTP/1.1 403"), head[:80]


def write_agentctl_config(work: Path, ca: tuple[Path, Path], bundle: str) -> tuple[Path, int]:
    port = free_port()
    def rule():
        return {"methods": ["GET"], "paths": ["/v1/*"], "ports": [UP_PORT]}
    cfg = {
        "proxy": {"tunnel_listen": f"127.0.0.1:{port}", "upstream_deny_cidrs": ["169.254.0.0/16", "10.0.0.0/8"]},
        "dns": {"listen": f"127.0.0.1:{free_port()}", "proxy_ip": "127.0.0.1",
                "records": [{"name": UP_NAME, "type": "A", "value": UP_IP}]},
        "tls": {"ca_cert": str(ca[0]), "ca_key": str(ca[1]), "upstream_ca_bundle": bundle},
        "log": {"audit_path": str(work / "audit.jsonl")},
    }
    # As deployed: one identity per agent, by source address. The client is the last of
    # ten agents; the other nine still have their bootstrap windows open.
    def allow():
        return [{"name": "allowlist", "config": {"rules": [{"cidr": f"{UP_IP}/32", **rule()}, {"host": UP_NAME, **rule()}]}}]

    cfg["agents"] = [{"name": f"agent{i}", "sources": [f"10.9.{i}.11/32"], "transforms": allow(),
                      "bootstrap": {"max_duration": "24h", "rules": [{"host": "pypi.org", "methods": ["GET"]}]}}
                     for i in range(9)]
    cfg["agents"].append({"name": "bench", "sources": ["127.0.0.1/32"], "transforms": allow()})
    (work / "proxy.yaml").write_text(yaml.safe_dump(cfg))
    return work / "proxy.yaml", port


# ------------------------------------------------------------------ policy microbench


def friendly(n: int, rng: random.Random):
    """Rules spread over n/4 hosts (about 4 per host), literal and glob segments."""
    grants, queries = [], []
    for i in range(n):
        host = f"*.svc{i}.example.com" if i % 10 == 0 else f"api{i % (n // 4 or 1)}.example.com"
        paths = (f"/v{i % 7}/repos/org{i}/*", f"/v{i % 7}/items/*/x{i}")
        grants.append(Grant(label=f"r{i}", host=host, methods=frozenset({"GET", "POST"}), paths=paths, order=i))
    for _ in range(1000):
        i = rng.randrange(n)
        host = f"a.svc{i}.example.com" if i % 10 == 0 else f"api{i % (n // 4 or 1)}.example.com"
        queries.append((host, rng.choice([f"/v{i % 7}/repos/org{i}/app/issues", f"/v{i % 7}/items/q/x{i}", "/nope/x"])))
    return grants, queries


def one_host(host: str):
    """Every rule on one host pattern, each with its own glob segment `org{i}*`."""
    def make(n: int, rng: random.Random):
        grants = [Grant(label=f"r{i}", host=host, methods=frozenset({"GET"}), paths=(f"/repos/org{i}*/app/*",),
                        order=i) for i in range(n)]
        queries = [("api.example.com", rng.choice([f"/repos/org{rng.randrange(n)}-x/app/issues",
                                                   f"/repos/org{rng.randrange(n)}/app", "/repos/zzz/app/x"]))
                   for _ in range(1000)]
        return grants, queries
    return make


SHAPES = {"friendly (n/4 hosts)": friendly, "adversarial: one host, `/repos/org{i}*/app/*`": one_host("api.example.com"),
          "adversarial: host `*`, `/repos/org{i}*/app/*`": one_host("*")}


def _per_call_us(fn, queries, reps: int = 15) -> tuple[float, float]:
    """(best, median) CPU time over reps passes of the 1,000 queries; the machine is shared."""
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        for q in queries:
            fn(*q)
        times.append((time.process_time() - t0) / len(queries) * 1e6)
    return min(times), statistics.median(times)


def calibration_ns() -> float:
    """A fixed piece of Python (one dict lookup) to scale the us figures by: the cores are
    shared, and the same code runs 2-4x slower when the other work is busy."""
    import timeit
    return min(timeit.repeat("d.get('a')", "d = {'a': 1}", number=1_000_000, repeat=5)) * 1000


def decision_bench() -> list[dict]:
    rows = []
    for shape, make in SHAPES.items():
        for n in ((10, 1000, 10000) if shape.startswith("friendly") else (1000, 10000)):
            rng = random.Random(n)
            grants, queries = make(n, rng)
            t0 = time.perf_counter()
            m = Matcher(grants)
            compile_ms = (time.perf_counter() - t0) * 1000

            # Matcher._decide: the compiled match itself. decide() keeps answers it gave
            # (a session asks the same few things); the passes here would read those.
            def full(host, path):
                v = check_path(path)
                m._decide(host, None, 443, True, "GET", path, v.encoded_slash, frozenset())

            def connect_scan(host, _path):  # what addon.http_connect computed before it used host_grant
                grants = [g for g in m.host_ports(host, None) if not (g.bootstrap and g.bootstrap in frozenset())]
                return [g for g in grants if g.port_ok(443, True)]

            rows.append({
                "shape": shape, "n": n, "compile_ms": compile_ms,
                "full": _per_call_us(full, queries),
                "match": _per_call_us(lambda h, p: m._decide(h, None, 443, True, "GET", p, False, frozenset()),
                                      queries),
                "host_grant": _per_call_us(lambda h, p: m.host_grant(h, None, 443, True), queries),
                "connect_scan": _per_call_us(connect_scan, queries, reps=3),
            })
            print("decision", rows[-1], flush=True)
    return rows


# ------------------------------------------------------------------ main


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--reps", type=int, default=9)
    ap.add_argument("--memory-requests", type=int, default=10000)
    ap.add_argument("--out", default=str(ROOT / "bench" / "results" / "proxy.md"))
    ap.add_argument("--baseline-rev", default=None,
                    help="also run agentctl-proxy's code of this git revision, in the same repetitions")
    ap.add_argument("--serve-minimal", nargs=4, metavar=("PORT", "CONFDIR", "BUNDLE", "CONFIG"))
    args = ap.parse_args()
    if args.serve_minimal:
        port, confdir, bundle, config = args.serve_minimal
        return serve_minimal(int(port), confdir, bundle, config)
    if not (os.access(SQUID, os.X_OK) and os.access(CERTGEN, os.X_OK)):
        sys.exit(f"proxy_bench: needs Squid with ssl-bump ({SQUID}, {CERTGEN}): apt-get install squid-openssl")

    loads = [("start", loadavg())]
    calib = [calibration_ns()]  # the decision microbench first, before any proxy runs
    micro = decision_bench()
    calib.append(calibration_ns())
    loads.append(("after decisions", loadavg()))
    work = Path(tempfile.mkdtemp(prefix="proxy-bench-"))
    up_ca = trustme.CA()
    up_ca.cert_pem.write_to_path(str(work / "up-ca.pem"))
    up_ca.issue_cert(UP_IP, UP_NAME).private_key_and_cert_chain_pem.write_to_path(str(work / "up.pem"))
    upstream = Upstream(UP_IP, UP_PORT, str(work / "up.pem"))
    bundle = str(work / "up-ca.pem")
    cert, key = init_ca(work / "ca")
    direct_ctx = ssl.create_default_context(cafile=bundle)
    proxy_ctx = ssl.create_default_context(cafile=str(cert))
    procs = []
    try:
        ours_dir = work / "ours"
        ours_dir.mkdir()
        config, ours_port = write_agentctl_config(ours_dir, (cert, key), bundle)
        minimal, minimal_port = start_minimal(work, (cert, key), bundle, config)
        procs.append(minimal)
        squid, squid_port = start_squid(work, (cert, key), bundle)
        procs.append(squid)
        mitmdump, mitmdump_port = start_mitmdump(work, (cert, key), bundle)
        procs.append(mitmdump)
        ours = start_proxy(config, ours_port)
        procs.append(ours)
        baseline = {}
        if args.baseline_rev:
            old_dir = work / "old"
            old_dir.mkdir()
            old_config, old_port = write_agentctl_config(old_dir, (cert, key), bundle)
            old = start_proxy(old_config, old_port, extract(args.baseline_rev, work / "old-code"))
            procs.append(old)
            baseline = {f"agentctl-proxy `{args.baseline_rev}`, IP": Target(proxy_ctx, old_port, pid=old.pid),
                        f"agentctl-proxy `{args.baseline_rev}`, name": Target(proxy_ctx, old_port, UP_NAME,
                                                                              pid=old.pid)}
        targets = {"direct": Target(direct_ctx, None),
                   "mitmproxy minimal": Target(proxy_ctx, minimal_port, pid=minimal.pid),
                   "mitmdump (defaults)": Target(proxy_ctx, mitmdump_port, pid=mitmdump.pid),
                   "agentctl-proxy, IP (cidr rule)": Target(proxy_ctx, ours_port, pid=ours.pid),
                   "agentctl-proxy, name (dns.records)": Target(proxy_ctx, ours_port, UP_NAME, pid=ours.pid),
                   **baseline,
                   SQUID_NAME: Target(proxy_ctx, squid_port, UP_NAME, pid=squid.pid, tree=True)}
        refused_by_squid(proxy_ctx, squid_port)
        names = list(targets)
        runs: dict[tuple[str, bool], list[dict]] = {(n, ka): [] for n in names for ka in (True, False)}
        for name, t in targets.items():  # warm-up: certificates generated, code paths hot
            load(t, True, 0.5)
            load(t, False, 0.5)
        for rep in range(args.reps):
            for keepalive in (True, False):
                order = names[rep % len(names):] + names[:rep % len(names)]
                for name in order:
                    t = targets[name]
                    cpu0 = t.cpu()
                    r = load(t, keepalive, args.seconds)
                    r["cpu_ms"] = (t.cpu() - cpu0) / r["n"] * 1000 if t.pid else None
                    runs[(name, keepalive)].append(r)
                    print(rep, name, "keep-alive" if keepalive else "per-request", r, flush=True)
            loads.append((f"after rep {rep + 1}", loadavg()))
        mem = {}  # (proxy, keepalive) -> [(requests, rss kB)]
        step = args.memory_requests // 5
        for proxy, proc, target in (("agentctl-proxy", ours, "agentctl-proxy, name (dns.records)"),
                                    ("mitmproxy minimal", minimal, "mitmproxy minimal")):
            for keepalive in (True, False):
                samples = [(0, rss_kb(proc.pid))]
                for i in range(5):
                    load(targets[target], keepalive, count=step // 2)
                    samples.append(((i + 1) * step, rss_kb(proc.pid)))
                mem[(proxy, keepalive)] = samples
                print("rss", proxy, "keep-alive" if keepalive else "per-request", samples, flush=True)
        loads.append(("after memory", loadavg()))
    finally:
        for p in procs:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()
        upstream.close()
        shutil.rmtree(work, ignore_errors=True)  # the throwaway CAs' keys with it
    loads.append(("end", loadavg()))
    write_report(Path(args.out), names, runs, mem, micro, args, loads, calib)


# ------------------------------------------------------------------ report


def _spread(values: list[float], fmt: str) -> str:
    """median [interquartile range]"""
    q1, med, q3 = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else values * 3
    return f"{med:{fmt}} [{q1:{fmt}}-{q3:{fmt}}]"


def _squid(runs, name: str, keepalive: bool) -> list[dict] | None:
    """The Squid runs to compare a row with: those to the same kind of target (a name)."""
    return runs[(SQUID_NAME, keepalive)] if "name" in name else None


def write_report(out: Path, names, runs, mem, micro, args, loads, calib) -> None:
    lines = [
        "# agentctl-proxy benchmark",
        "",
        f"Generated by `python bench/proxy_bench.py --seconds {args.seconds:g} --reps {args.reps}"
        f"{' --baseline-rev ' + args.baseline_rev if args.baseline_rev else ''}` on "
        f"{platform.node()} ({os.cpu_count()} cores, Python {platform.python_version()}), "
        f"{time.strftime('%Y-%m-%d %H:%M')}.",
        "The machine is shared with other work; load average (1, 5, 15 min) during the run: "
        + "; ".join(f"{k} {v}" for k, v in loads) + ".",
        "",
        "Client, proxies and upstream share the 2 cores on loopback; the client is 2 Python threads",
        "doing HTTPS GETs through CONNECT (one tunnel per thread with keep-alive; a new CONNECT + TLS",
        "handshake per request without). The upstream is the test suite's threaded TLS server.",
        "",
        "- `mitmproxy minimal`, **the baseline**: a mitmproxy `Master` with only Core, Proxyserver,",
        "  NextLayer and TlsConfig, and the mitmproxy options agentctl-proxy sets (`runner.option_values`:",
        "  lazy upstream connections, no upstream-cert sniffing, no raw TCP / HTTP/3).",
        "  agentctl-proxy runs under the same mitmproxy AddonManager (no dispatch of its own).",
        "- `mitmdump (defaults)`: mitmdump's ~30 default addons and default options; a reference only.",
        "- `agentctl-proxy`: the full proxy (policy, canonical-path check, two audit lines per request,",
        "  deny-list check of the resolved address, response streaming), configured as deployed: the",
        "  client is one of ten agents identified by source address (the other nine with bootstrap",
        "  windows open); to the IP literal (cidr rule) and to a name that its `dns.records` resolve.",
        "- `agentctl-proxy `REV``, with --baseline-rev: the same, running that git revision's",
        "  proxy code (same venv, same configuration), in the same repetitions.",
        "- `squid ssl-bump`: Squid (Debian's squid-openssl) in the foreground (`-N`, one process),",
        "  bumping TLS with the same CA (peek at the ClientHello, stare at the server's certificate,",
        "  bump; certificates mimic the upstream's), the same allowlist as ACLs (CONNECT and GET to the target's address or",
        "  name and port, path `^/v1/`; a `/v2/` request is checked to get 403), upstream verified",
        "  with the same bundle, one access-log line per request, no caching, loopback only; the",
        "  name resolved through its `hosts_file`. Its CPU includes its certificate helpers. Only",
        "  the name target: to an IP literal Squid 5.7 refuses the upstream certificate (its IP",
        "  address entry does not match: ERR_DOMAIN_MISMATCH, 503), and the certificate it makes",
        "  for an IP names it as a DNS name, which TLS clients refuse.",
        "",
        f"Every configuration ran {args.reps} times for {args.seconds:g} s each, interleaved (the order",
        "rotates every repetition). Ratios are computed within a repetition (against `direct` and the",
        "baseline measured seconds apart) and shown as median [interquartile range] over the",
        "repetitions; p50/p99 are per run (a run of one connection per request has only ~100 requests,",
        "so its p99 is close to its maximum).",
        "",
        "## Throughput and latency",
        "",
        "| mode | path | req/s | p50 ms | p99 ms | added p50 ms | added p99 ms | req/s vs direct "
        "| req/s vs minimal | req/s vs squid |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for keepalive in (True, False):
        base = runs[("direct", keepalive)]
        mini = runs[("mitmproxy minimal", keepalive)]
        for name in names:
            rs = runs[(name, keepalive)]
            # the Squid run to the same kind of target (IP or name) in the same repetition
            ratio = lambda k, ref: _spread([r[k] / b[k] for r, b in zip(rs, ref)], ".2f") if ref else "-"  # noqa: E731
            added = lambda k: _spread([r[k] - b[k] for r, b in zip(rs, base)], ".2f")  # noqa: E731
            lines.append(
                f"| {'keep-alive' if keepalive else 'conn/request'} | {name} | {_spread([r['rps'] for r in rs], '.0f')} "
                f"| {_spread([r['p50'] for r in rs], '.2f')} | {_spread([r['p99'] for r in rs], '.1f')} "
                f"| {added('p50')} | {added('p99')} "
                f"| {ratio('rps', base)} | {ratio('rps', mini)} | {ratio('rps', _squid(runs, name, keepalive))} |")
    lines += [
        "",
        "Target: agentctl-proxy >= 0.85x the minimal mitmproxy's keep-alive throughput (`req/s vs minimal`).",
        "`added` is the latency over a direct request in the same repetition; `vs squid` compares",
        "the runs to a name with the Squid run in the same repetition.",
        "",
        "### Proxy CPU time per request",
        "",
        "The proxy process's own CPU time (utime + stime) per request in the same runs. With the",
        "cores shared, req/s also moves with the other work on the machine; CPU per request much",
        "less, so `minimal / agentctl-proxy` here is the throughput ratio to expect when the proxy",
        "has a core to itself.",
        "",
        "| mode | path | proxy CPU ms/req | minimal CPU / this CPU | squid CPU / this CPU |",
        "|---|---|---:|---:|---:|",
    ]
    for keepalive in (True, False):
        mini = runs[("mitmproxy minimal", keepalive)]
        for name in names[1:]:
            rs = runs[(name, keepalive)]
            squid = _squid(runs, name, keepalive)
            lines.append(f"| {'keep-alive' if keepalive else 'conn/request'} | {name} "
                         f"| {_spread([r['cpu_ms'] for r in rs], '.2f')} "
                         f"| {_spread([b['cpu_ms'] / r['cpu_ms'] for r, b in zip(rs, mini)], '.2f')} "
                         f"| {_spread([b['cpu_ms'] / r['cpu_ms'] for r, b in zip(rs, squid)], '.2f') if squid else '-'} |")
    lines += [
        "",
        "## Policy decision per request",
        "",
        "`check_path + decide` is what a request pays the first time it is asked; `decide` is the",
        "compiled match alone (`Matcher._decide`: a repeated question is answered from the answers",
        "`Matcher.decide` keeps, which these passes leave out);",
        "`host_grant` is the CONNECT/SNI host decision (`Matcher.host_grant`, what `addon.http_connect`",
        "calls), and `CONNECT scan` the same decision computed the way `http_connect` did before (a list",
        "over `host_ports()`), for comparison. CPU time in us, best [median] of 15 passes over 1,000",
        "queries (3 for the scan); growth is 10k / 1k of the best times. Calibration on the shared cores at the time: one "
        "`dict.get` took "
        f"{calib[0]:.0f} ns before and {calib[1]:.0f} ns after (scale the us figures by it).",
        "",
        "| shape | rules | check_path + decide | decide | host_grant | CONNECT scan | compile ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    fmt = lambda bm: f"{bm[0]:.2f} [{bm[1]:.2f}]"  # noqa: E731
    for r in micro:
        lines.append(f"| {r['shape']} | {r['n']:,} | {fmt(r['full'])} | {fmt(r['match'])} | {fmt(r['host_grant'])} "
                     f"| {fmt(r['connect_scan'])} | {r['compile_ms']:.0f} |")
    lines += ["", "| shape | growth 1k -> 10k: check_path + decide | decide | host_grant | CONNECT scan |",
              "|---|---:|---:|---:|---:|"]
    for shape in SHAPES:
        by_n = {r["n"]: r for r in micro if r["shape"] == shape}
        g = lambda k: f"{by_n[10000][k][0] / by_n[1000][k][0]:.2f}x"  # noqa: E731
        lines.append(f"| {shape} | {g('full')} | {g('match')} | {g('host_grant')} | {g('connect_scan')} |")
    lines += ["", "Target: under 20 us at 1,000 rules; no worse than logarithmic growth to 10,000",
              "(log 10k / log 1k = 1.33x).", ""]
    lines += ["## Memory (RSS MiB, after the throughput runs)", "",
              "| requests | agentctl-proxy keep-alive | agentctl-proxy conn/request "
              "| minimal keep-alive | minimal conn/request |", "|---:|---:|---:|---:|---:|"]
    cols = [mem[(p, ka)] for p in ("agentctl-proxy", "mitmproxy minimal") for ka in (True, False)]
    for row in zip(*cols):
        lines.append(f"| {row[0][0]:,} | " + " | ".join(f"{kb / 1024:.1f}" for _, kb in row) + " |")
    lines += ["", "Target: flat over 10,000 requests."]
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text("\n".join(lines) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
