"""`stage` on a cloud stack, after Pulumi: wait for convergence over SSH, pin host keys,
run every host's role suite and, from each agent host, the escape probe `lab escape`
uses (agentctl/lab/assets/escape_probe.py, run as agentuser over the admin path), judged
with what the cloud itself recorded: the proxy's audit file (read over SSH from the proxy
host) and, on AWS, the VPC flow log's REJECT records (boto3, CloudWatch Logs).

Only the vectors that mean something on a cloud are tried: there are no lab internet
servers to see a request arrive, so an attempt at the outside world is aimed at a public
address (`Outside`), and judged by whether the probe got an answer plus the flow log."""
from __future__ import annotations

import json
import os
import secrets
import shlex
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import paramiko

from agentctl import sshtrust
from agentctl.lab import escape as lab_escape
from agentctl.lab import internet
from agentctl.model import Agent, Deployment
from agentctl.stage import adminpath
from agentctl.stage.adminpath import Route
from agentctl.stage.results import Check, EscapeRow, Suite, suite_from_pytest_junit

Progress = Callable[[str], None]
CONVERGED_MARKER = "/var/lib/agentctl/converged"  # templates/converge.sh.j2 writes it last
AUDIT = lab_escape.AUDIT
PROBE_SOURCE = internet.ASSETS / "escape_probe.py"
AGENT_USER = "agentuser"
POLL_SECONDS = 10.0


@dataclass(frozen=True)
class Outside:
    """Addresses outside the deployment an escape would aim at (public anycast resolvers:
    always up, so "no answer" means the deployment blocked it)."""

    ip: str = "1.1.1.1"
    dns: str = "9.9.9.9"
    ip6: str | None = "2606:4700:4700::1111"
    name: str = "example.com"
    imds: str = "169.254.169.254"


@dataclass
class Access:
    """How stage logs in: the stack's routes, the pinned keys, the admin key."""

    routes: dict[str, Route]
    known_hosts: Path
    first_contact: str            # for hosts nothing publishes a key of (hcloud agents)
    key_filename: str | None = None

    def connect(self, host: str, timeout: float = 10) -> paramiko.SSHClient:
        return adminpath.connect(self.routes[host], self.known_hosts, self.first_contact, self.key_filename, timeout)


def key_filename() -> str | None:
    # The key the stacks' own SSH step uses (stacks/proxy_secrets.py); else ssh-agent / ~/.ssh.
    return os.environ.get("AGENTCTL_SSH_KEY") or None


# --- convergence over SSH (hcloud: no console API) --------------------------------------
def converged_over_ssh(access: Access, hosts: list[str], timeout: float, progress: Progress,
                       poll: float = POLL_SECONDS) -> list[Check]:
    """Wait until each host wrote the converged marker; a cloud-init that ended in error,
    a host key that is not the pinned one, or the deadline fails that host with why."""
    deadline, checks = time.monotonic() + timeout, []
    probe = (f"if [ -e {CONVERGED_MARKER} ]; then echo converged; "
             "else cloud-init status 2>/dev/null || echo 'status: unknown'; fi")
    for host in hosts:
        progress(f"waiting for {host}'s cloud-init (converged marker over SSH)")
        t0, ok, why = time.monotonic(), False, "not reached"
        while True:
            try:
                client = access.connect(host)
                try:
                    _, out, _ = adminpath.run(client, probe, timeout=60)
                finally:
                    client.close()
                if out.strip() == "converged":
                    ok = True
                    break
                why = "cloud-init " + " ".join(out.split())[:200]
                if "status: error" in out or "status: degraded" in out:
                    break  # it will not converge by waiting
            except sshtrust.HostKeyError as exc:
                why = str(exc)
                if "CHANGED" in why or "not the one" in why or "no pinned host key" in why:
                    break  # never retried: waiting will not make a key trustworthy
            except (OSError, paramiko.SSHException) as exc:
                why = f"SSH: {exc}"
            if time.monotonic() + poll > deadline:
                why += f" (gave up after {timeout:.0f} s)"
                break
            time.sleep(poll)
        checks.append(Check(f"{host}: converged", ok, "converge", time.monotonic() - t0,
                            "" if ok else f"{host} did not converge: {why}"))
    return checks


# --- escape attempts that apply on a cloud ----------------------------------------------
def attempts(d: Deployment, agent: Agent, outputs: dict, nonce: str, outside: Outside) -> list[lab_escape.Attempt]:
    A = lab_escape.Attempt
    px = str(outputs.get("proxyPrivateIp") or d.proxy_ip)
    listen = d.proxy.listen
    me = str((outputs.get("agentPrivateIps") or {}).get(agent.name) or d.agent_ip(agent))
    others = sorted({str(ip) for ip in (outputs.get("agentPrivateIps") or {}).values()} - {me})
    mark = lambda tag: f"/escape/{nonce}/{tag}"  # noqa: E731
    api = next((_concrete(r.host) for r in agent.egress.rules), outside.name)
    # A GET the allowlist grants: a rule path ending in /* and concrete before it (lab
    # escape's own choice; /bot*/* is a path with a secret in it, not one to send).
    grant = next(((_concrete(r.host), p[:-1]) for r in agent.egress.rules if "GET" in r.methods
                  for p in r.paths if p.endswith("/*") and "*" not in p[:-1]), None)
    out = [
        A("port scan", "scan", f"TCP connect to {2 + len(others)} addresses x {len(lab_escape.SCAN_PORTS)} ports",
          "no-answer", {"kind": "scan", "targets": [px, *others, outside.ip], "ports": lab_escape.SCAN_PORTS,
                        "expected_open": [f"{px}:{p}" for p in sorted({listen.tunnel, listen.https, listen.http,
                                                                         listen.dns})]}),
        A("ssh to proxy", "ssh-proxy", f"TCP {px}:22 (sshd banner)", "no-answer", {"kind": "tcp", "host": px, "port": 22}),
        A("https by name, no proxy", "name-api", f"GET https://{api}{mark('name-api')} direct", "refused",
          {"kind": "http", "url": f"https://{api}{mark('name-api')}", "insecure": True}, mark("name-api")),
        A("https by IP, no proxy", "ip-outside", f"GET https://{outside.ip}{mark('ip')}", "no-answer",
          {"kind": "http", "url": f"https://{outside.ip}{mark('ip')}", "insecure": True}, mark("ip")),
        A("https by IP, no proxy", "ip-outside-http", f"GET http://{outside.ip}{mark('ip-http')}", "no-answer",
          {"kind": "http", "url": f"http://{outside.ip}{mark('ip-http')}"}, mark("ip-http")),
        A("rogue DNS resolver", "dns-udp", f"UDP DNS query to {outside.dns}:53", "no-answer",
          {"kind": "dns", "server": outside.dns, "name": f"{nonce}.udp.{outside.name}"}),
        A("rogue DNS resolver", "dns-tcp", f"TCP DNS query to {outside.dns}:53", "no-answer",
          {"kind": "dns", "server": outside.dns, "name": f"{nonce}.tcp.{outside.name}", "tcp": True}),
        A("DNS over HTTPS by IP", "doh-direct", f"DoH GET https://{outside.ip}/dns-query direct", "no-answer",
          {"kind": "doh", "url": f"https://{outside.ip}/dns-query", "name": f"{nonce}.doh.{outside.name}"}),
        A("DNS over HTTPS by IP", "doh-proxy", f"DoH GET https://{outside.ip}/dns-query via the proxy", "refused",
          {"kind": "doh", "url": f"https://{outside.ip}/dns-query", "name": f"{nonce}.dohp.{outside.name}",
           "via_proxy": True}),
        A("metadata address", "imds-direct", f"GET http://{outside.imds}/latest/meta-data/ direct", "no-answer",
          {"kind": "http", "url": f"http://{outside.imds}/latest/meta-data/"}),
        A("metadata address", "imds-proxy", f"GET http://{outside.imds}/latest/meta-data/ via the proxy", "refused",
          {"kind": "http", "url": f"http://{outside.imds}/latest/meta-data/", "via_proxy": True}),
        A("request outside the allowlist", "denied", f"GET https://{api}{mark('denied')} via the proxy",
          "denied-audited", {"kind": "http", "url": f"https://{api}{mark('denied')}", "via_proxy": True},
          mark("denied")),
        A("request outside the allowlist", "denied-host", f"GET https://{outside.name}{mark('denied-host')} via the proxy",
          "refused", {"kind": "http", "url": f"https://{outside.name}{mark('denied-host')}", "via_proxy": True},
          mark("denied-host")),
    ]
    if outside.ip6:
        out.append(A("IPv6", "v6-outside", f"TCP [{outside.ip6}]:443", "no-answer",
                     {"kind": "tcp", "host": outside.ip6, "port": 443}))
    if grant:
        host, path = grant
        url = f"https://{host}{path}escape-{nonce}"
        secret = next(iter(agent.egress.secrets), None)
        out.append(A("allowlisted request", "allowed", f"GET {url} via the proxy", "allowed",
                     {"kind": "http", "url": url, "via_proxy": True}, f"{path}escape-{nonce}",
                     lab_escape.secret_path(agent, secret) if secret else None))
    return out


def _concrete(host: str) -> str:
    """A name a rule's host pattern matches: *.example.org -> www.example.org."""
    return "www." + host[2:] if host.startswith("*.") else host


def judge(a: lab_escape.Attempt, r: dict, audit: list[dict], rejects: list[dict]) -> lab_escape.Verdict:
    """`lab escape`'s verdicts with no internet log (nothing outside the cloud to ask);
    the allowlisted request is judged by the proxy's audit (allowed, secret injected) and
    the upstream having answered at all. Flow-log rejects are added as evidence."""
    if a.expect == "allowed":
        lines = [e for e in audit if str(e.get("path", "")).startswith(a.marker or "-")]
        allowed = [e for e in lines if e.get("action") == "allow"]
        injected = any("secrets" in (e.get("request_transforms") or []) for e in allowed)
        ev = [f"proxy audit: {allowed[0].get('action')}, rule {allowed[0].get('rule')}" if allowed
              else "proxy audit: no allow line"]
        if a.secret:
            ev.append("proxy injected the credential" if injected else "proxy did NOT inject the credential")
        status = r.get("status", 0)
        ok = bool(allowed) and status not in (0, 403, 407, 502) and (injected or not a.secret)
        v = lab_escape.Verdict(a, r.get("detail", "") or f"HTTP {status}", ok, ev)
    else:
        v = lab_escape.judge(a, r, [], audit, {})
    dst = a.probe.get("host") or a.probe.get("server") or _url_host(a.probe.get("url", ""))
    seen = [x for x in rejects if x["dstaddr"] == dst]
    if seen:
        v.evidence.append(f"flow log: REJECT {seen[0]['srcaddr']} -> {dst}:{seen[0]['dstport']} "
                          f"({len(seen)} record(s))")
    return v


def _url_host(url: str) -> str:
    from urllib.parse import urlsplit
    return urlsplit(url).hostname or ""


def proxy_audit_size(access: Access, proxy: str) -> int:
    client = access.connect(proxy)
    try:
        rc, out, _ = adminpath.run(client, f"sudo -n stat -c %s {shlex.quote(AUDIT)}", timeout=30)
    finally:
        client.close()
    return int(out.strip()) if rc == 0 and out.strip().isdigit() else 0


def proxy_audit_since(access: Access, proxy: str, offset: int) -> list[dict]:
    client = access.connect(proxy)
    try:
        rc, out, err = adminpath.run(client, f"sudo -n tail -c +{offset + 1} {shlex.quote(AUDIT)}", timeout=60)
    finally:
        client.close()
    if rc != 0:  # no evidence is not "nothing happened": the escape run errs
        raise RuntimeError(f"cannot read the proxy audit {AUDIT} on {proxy} (exit {rc}): {err.strip()[-200:]}")
    lines = []
    for line in out.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


# --- AWS VPC flow log: REJECT records of the agent subnet -------------------------------
FLOW_FIELDS = ("version", "account_id", "interface_id", "srcaddr", "dstaddr", "srcport", "dstport", "protocol",
               "packets", "bytes", "start", "end", "action", "log_status")


def flow_log_group(project: str, stack: str) -> str:
    return f"/agentctl/{project}/{stack}/rejected"  # stacks/aws_deployment.py _flow_logs


def flow_rejects(logs, group: str, source: str, since_ms: int) -> list[dict]:
    """REJECT records (the default v2 format) from `source`, in events since since_ms."""
    out, kw = [], {"logGroupName": group, "startTime": since_ms}
    while True:
        page = logs.filter_log_events(**kw)
        for ev in page.get("events", []):
            f = dict(zip(FLOW_FIELDS, ev.get("message", "").split()))
            if f.get("action") == "REJECT" and f.get("srcaddr") == source:
                out.append(f)
        token = page.get("nextToken")
        if not token or token == kw.get("nextToken"):
            return out
        kw["nextToken"] = token


@dataclass
class FlowLog:
    """Where the stack sends its agent subnet's rejects, and how long to wait for them
    (EC2 aggregates for up to 60 s and delivers minutes later)."""

    client: object          # a boto3 CloudWatch Logs client
    group: str
    wait: float = 600.0
    poll: float = 20.0
    seen: dict[str, list[dict]] = field(default_factory=dict)

    def collect(self, source: str, since_ms: int, expected: set[str], progress: Progress) -> list[dict]:
        deadline = time.monotonic() + self.wait
        while True:
            rejects = flow_rejects(self.client, self.group, source, since_ms)
            if expected <= {r["dstaddr"] for r in rejects} or time.monotonic() + self.poll > deadline:
                return rejects
            progress(f"waiting for the flow log's REJECT records from {source}")
            time.sleep(self.poll)


def run_escape(d: Deployment, outputs: dict, access: Access, outside: Outside, flow: FlowLog | None,
               progress: Progress) -> tuple[list[Suite], list[EscapeRow]]:
    suites, rows = [], []
    private = outputs.get("agentPrivateIps") or {}
    for agent in d.agents:
        progress(f"escape attempts from {agent.name} (as {AGENT_USER}, over the admin path)")
        suite = Suite(f"escape: {agent.name}")
        plan = attempts(d, agent, outputs, secrets.token_hex(6), outside)
        proxy_url = f"http://{outputs.get('proxyPrivateIp') or d.proxy_ip}:{d.proxy.listen.tunnel}"
        t0, since_ms = time.monotonic(), int(time.time() * 1000) - 60_000
        try:
            offset = proxy_audit_size(access, d.proxy.name)
            client = access.connect(agent.name)
            try:
                cmd = (f"sudo -n -u {AGENT_USER} -- /usr/bin/python3 -c "
                       f"{shlex.quote(PROBE_SOURCE.read_text())}")
                rc, out, err = adminpath.run(client, cmd, json.dumps(
                    {"proxy": proxy_url, "attempts": [a.probe | {"id": a.id} for a in plan]}), timeout=300)
            finally:
                client.close()
            if rc != 0:
                raise RuntimeError(f"escape probe failed on {agent.name} (exit {rc}): {err.strip()[-300:]}")
            report = json.loads(out)
            if report.get("uid") == 0:
                raise RuntimeError(f"escape probe ran as root on {agent.name}; it must run as {AGENT_USER}")
            audit = proxy_audit_since(access, d.proxy.name, offset)
        except (RuntimeError, ValueError, OSError, paramiko.SSHException, sshtrust.HostKeyError) as exc:
            suite.checks.append(Check("escape probe ran", False, f"escape.{agent.name}", message=str(exc), error=True))
            suites.append(suite)
            continue
        by_id = {r["id"]: r for r in report["attempts"]}
        rejects: list[dict] = []
        if flow is not None:
            source = str(private.get(agent.name) or d.agent_ip(agent))
            blocked = {a.probe.get("host") or a.probe.get("server") or _url_host(a.probe.get("url", ""))
                       for a in plan if a.expect == "no-answer" and a.probe["kind"] != "scan"}
            rejects = flow.collect(source, since_ms, blocked - {outside.imds}, progress)
        per = (time.monotonic() - t0) / max(1, len(plan))
        for a in plan:
            v = judge(a, by_id.get(a.id, {}), audit, rejects)
            verdict, seen = lab_escape.outcome(v), "; ".join(filter(None, [v.observed, *v.evidence]))
            suite.checks.append(Check(f"{a.id}: {a.vector}", v.ok, f"escape.{agent.name}", per,
                                      "" if v.ok else f"{verdict}: {a.what}: expected {a.expect}, observed {seen}",
                                      details=seen))
            rows.append(EscapeRow(agent.name, a.vector, a.id, a.what, a.expect, seen, verdict))
        if flow is not None:
            ok = bool(rejects)
            suite.checks.append(Check("flow log recorded the rejected attempts", ok, f"escape.{agent.name}",
                                      message="" if ok else f"no REJECT record from {source} in {flow.group} "
                                      f"within {flow.wait:.0f} s (are the flow logs delivered?)"))
        suites.append(suite)
    return suites, rows


# --- role suites over the admin path ----------------------------------------------------
def run_suites(project_dir: Path, stack: str, access: Access, hosts: list[str], junit_dir: Path,
               extra_args: list[str] | None = None) -> list[Suite]:
    """`agentctl verify` per host (each its own route: a jump or a ProxyCommand of its
    own), side by side; each host's JUnit report read back as one suite."""
    from agentctl.verify import Trust, run_verify
    junit_dir.mkdir(parents=True, exist_ok=True)

    def one(host: str) -> None:
        r = access.routes[host]
        trust = Trust(access.known_hosts, access.first_contact, r.jump_spec(), r.proxy_command)
        key = Path(access.key_filename) if access.key_filename else None
        try:
            run_verify(project_dir, stack, [f"{host}={r.spec()}"], key, extra_args=extra_args, trust=trust,
                       junit_dir=junit_dir)
        except sshtrust.HostKeyError as exc:
            (junit_dir / f"{host}.error").write_text(str(exc))

    with ThreadPoolExecutor(max_workers=max(1, len(hosts))) as pool:
        list(pool.map(one, hosts))
    suites = []
    for host in hosts:
        err = junit_dir / f"{host}.error"
        if err.is_file():
            suites.append(Suite(f"role suite: {host}", [Check("role suite ran", False, f"role suite: {host}",
                                                              message=err.read_text(), error=True)]))
        else:
            suites.append(suite_from_pytest_junit(junit_dir / f"{host}.xml", f"role suite: {host}"))
    return suites
