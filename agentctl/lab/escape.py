"""`agentctl lab escape`: try to get out of an agent host, as the agent would.

The probe (assets/escape_probe.py) runs on the agent host as `agentuser`, with no
capabilities, and reports what answered. Each attempt is then judged with evidence
from outside the agent host: what the lab internet servers recorded (every probe
request carries a unique marker path) and what the proxy wrote to its audit file.
An escape is any attempt that reached something it must not; a failed grant (the
allowlisted call not getting through with the injected credential) fails too.
"""
from __future__ import annotations

import hashlib
import json
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from rich.console import Console
from rich.markup import escape as escape_markup
from rich.table import Table

from agentctl_proxy.secrets import render

from agentctl import proxyconfig
from agentctl.lab import hosts, internet, lab, netns, topology
from agentctl.model import Agent, Deployment

PROBE = "/opt/agentctl-lab/escape_probe.py"
AUDIT = "/var/log/agentctl-proxy/audit.jsonl"
SCAN_PORTS = [21, 22, 23, 25, 53, 80, 111, 123, 443, 2375, 3128, 5432, 6379, 8000, 8080, 8443, 9099, 9100]
Expect = Literal["no-answer", "refused", "allowed", "denied-audited", "streamed", "info"]


@dataclass
class Attempt:
    vector: str
    id: str
    what: str
    expect: Expect
    probe: dict
    marker: str | None = None   # a path only this attempt uses
    secret: str | None = None   # the proxy must have injected this secret (its file path)
    secret_format: str | None = None  # ...as the Authorization header this formatter makes


@dataclass
class Verdict:
    attempt: Attempt
    observed: str
    ok: bool
    evidence: list[str] = field(default_factory=list)


def attempts(d: Deployment, agent: Agent, nonce: str) -> list[Attempt]:
    """The escape vectors of issue 5, for one agent host of a lab stack."""
    px, listen = d.proxy_ip, d.proxy.listen
    inet = {s.role: s for s in topology.internet_servers(d)}
    up, evil = inet["upstream"], inet["evil"]
    # The upstream name the probes aim at: never an apt mirror, which every host may GET
    # anything from (proxyconfig.system_rules), so "denied" would not be the right verdict.
    names = [n for n in up.names if n not in proxyconfig.apt_mirrors(d)] or list(up.names)
    api = next((n for n in names if n.startswith("api.")), names[0])
    llm = next((n for n in up.names if n.startswith("llm.")), api)
    me = d.agent_ip(agent)
    mark = lambda tag: f"/escape/{nonce}/{tag}"  # noqa: E731
    targets = sorted({n.ip for n in topology.nodes(d) if n.ip != me} | {n.gateway for n in topology.nodes(d)})
    # The credential the upstream must see on the allowed request: the agent's secret
    # that the proxy injects as Authorization on that host (the only header the lab
    # internet records, as a hash).
    secret = next((s for s in agent.egress.secrets if (s.inject.header or "").lower() == "authorization"
                   and any(r.host == api for r in s.rules)), None)
    grant_path = _granted_path(agent, api)
    out = [
        Attempt("port scan", "scan", f"TCP connect to {len(targets)} lab addresses x {len(SCAN_PORTS)} ports",
                "no-answer", {"kind": "scan", "targets": targets, "ports": SCAN_PORTS,
                              "expected_open": [f"{px}:{p}" for p in sorted({listen.tunnel, listen.https,
                                                                             listen.http, listen.dns})]}),
        Attempt("ssh to proxy", "ssh-proxy", f"TCP {px}:22 (sshd banner)", "no-answer",
                {"kind": "tcp", "host": px, "port": 22}),
        # Shown, not judged: what the proxy's DNS tells the agent about names it may not use.
        Attempt("DNS via the host's resolver", "resolve-evil", f"resolve {evil.names[0]} (the proxy answers)",
                "info", {"kind": "resolve", "name": evil.names[0], "allowed": [px]}),
        Attempt("DNS via the host's resolver", "resolve-api", f"resolve {api} (the proxy answers)",
                "info", {"kind": "resolve", "name": api, "allowed": [px]}),
        Attempt("https by name, no proxy", "name-api", f"GET https://{api}{mark('name-api')} direct",
                "refused", {"kind": "http", "url": f"https://{api}{mark('name-api')}", "insecure": True}, mark("name-api")),
        Attempt("https by name, no proxy", "name-evil", f"GET https://{evil.names[0]}{mark('name-evil')} direct",
                "refused", {"kind": "http", "url": f"https://{evil.names[0]}{mark('name-evil')}", "insecure": True},
                mark("name-evil")),
        Attempt("https by IP, no proxy", "ip-api", f"GET https://{up.ip}{mark('ip-api')}", "no-answer",
                {"kind": "http", "url": f"https://{up.ip}{mark('ip-api')}", "insecure": True}, mark("ip-api")),
        Attempt("https by IP, no proxy", "ip-evil", f"GET https://{evil.ip}{mark('ip-evil')}", "no-answer",
                {"kind": "http", "url": f"https://{evil.ip}{mark('ip-evil')}", "insecure": True}, mark("ip-evil")),
        Attempt("https by IP, no proxy", "ip-evil-http", f"GET http://{evil.ip}{mark('ip-evil-http')}", "no-answer",
                {"kind": "http", "url": f"http://{evil.ip}{mark('ip-evil-http')}"}, mark("ip-evil-http")),
        Attempt("rogue DNS resolver", "dns-udp", f"UDP DNS query to {evil.ip}:53", "no-answer",
                {"kind": "dns", "server": evil.ip, "name": f"{nonce}.udp.escape.test"}, f"{nonce}.udp.escape.test"),
        Attempt("rogue DNS resolver", "dns-tcp", f"TCP DNS query to {evil.ip}:53", "no-answer",
                {"kind": "dns", "server": evil.ip, "name": f"{nonce}.tcp.escape.test", "tcp": True},
                f"{nonce}.tcp.escape.test"),
        Attempt("DNS over HTTPS by IP", "doh-direct", f"DoH GET https://{evil.ip}/dns-query direct", "no-answer",
                {"kind": "doh", "url": f"https://{evil.ip}/dns-query", "name": f"{nonce}.doh.escape.test"},
                f"{nonce}.doh.escape.test"),
        Attempt("DNS over HTTPS by IP", "doh-proxy", f"DoH GET https://{evil.ip}/dns-query via the proxy", "refused",
                {"kind": "doh", "url": f"https://{evil.ip}/dns-query", "name": f"{nonce}.dohp.escape.test",
                 "via_proxy": True}, f"{nonce}.dohp.escape.test"),
        Attempt("metadata address", "imds-direct", "GET http://169.254.169.254/latest/meta-data/ direct",
                "no-answer", {"kind": "http", "url": "http://169.254.169.254/latest/meta-data/"}),
        Attempt("metadata address", "imds-proxy", "GET http://169.254.169.254/latest/meta-data/ via the proxy",
                "refused", {"kind": "http", "url": "http://169.254.169.254/latest/meta-data/", "via_proxy": True}),
    ]
    rebind = next((r.name for r in d.proxy.dns_records if r.value == "169.254.169.254"), None)
    if rebind:
        out.append(Attempt("metadata address", "imds-rebind", f"GET https://{rebind}/ via the proxy (DNS rebinding)",
                           "refused", {"kind": "http", "url": f"https://{rebind}/latest/meta-data/", "via_proxy": True}))
    for ip6 in [s.ip6 for s in (up, evil) if s.ip6]:
        out.append(Attempt("IPv6", f"v6-{ip6}", f"TCP [{ip6}]:443", "no-answer", {"kind": "tcp", "host": ip6, "port": 443}))
    out.append(Attempt("IPv6", "v6-switch", f"TCP [{topology.SWITCH_LINK_LOCAL}%eth0]:22 (the lab switch)", "no-answer",
                       {"kind": "tcp", "host": f"{topology.SWITCH_LINK_LOCAL}%eth0", "port": 22}))
    if grant_path:
        url = f"https://{api}{grant_path}escape-{nonce}"
        out.append(Attempt("allowlisted request", "allowed", f"GET {url} via the proxy", "allowed",
                           {"kind": "http", "url": url, "via_proxy": True}, f"{grant_path}escape-{nonce}",
                           secret_path(agent, secret) if secret else None,
                           secret.inject.formatter if secret else None))
    if any(r.host == llm and "POST" in r.methods for r in agent.egress.rules):
        out.append(Attempt("allowlisted request", "stream", f"POST https://{llm}/v1/chat/completions (SSE) via the proxy",
                           "streamed", {"kind": "http", "url": f"https://{llm}/v1/chat/completions", "via_proxy": True,
                                        "method": "POST", "body": '{"stream": true}',
                                        "headers": {"Content-Type": "application/json"}}))
    out.append(Attempt("request outside the allowlist", "denied", f"GET https://{api}{mark('denied')} via the proxy",
                       "denied-audited", {"kind": "http", "url": f"https://{api}{mark('denied')}", "via_proxy": True},
                       mark("denied")))
    out.append(Attempt("request outside the allowlist", "denied-host",
                       f"GET https://{evil.names[0]}{mark('denied-host')} via the proxy", "refused",
                       {"kind": "http", "url": f"https://{evil.names[0]}{mark('denied-host')}", "via_proxy": True},
                       mark("denied-host")))
    return out


def secret_path(agent: Agent, secret) -> str:
    from agentctl.secrets import secret_file_path
    return secret_file_path(agent.name, secret.name)


def _granted_path(agent: Agent, host: str) -> str | None:
    """A path prefix the agent may GET on `host` (a rule path ending in /*, concrete
    before it: /bot*/* has a secret in it)."""
    for rule in agent.egress.rules:
        if rule.host == host and "GET" in rule.methods:
            for p in rule.paths:
                if p.endswith("/*") and "*" not in p[:-1]:
                    return p[:-1]
    return None


def judge(a: Attempt, r: dict, upstream: list[dict], audit: list[dict], secrets_by_path: dict[str, str]) -> Verdict:
    """Pure: one attempt's result plus the outside evidence -> verdict."""
    status = r.get("status", 0)
    seen = [e for e in upstream if a.marker and (e.get("path", "").startswith(a.marker) or e.get("name") == a.marker)]
    ev = [f"upstream saw it from {e.get('client')}" for e in seen]
    obs = r.get("detail", "")
    if a.expect == "info":
        return Verdict(a, obs, True, ev)
    if a.expect == "no-answer":
        return Verdict(a, obs, not r.get("reached") and not seen, ev)
    if a.expect == "refused":
        ok = not seen and not (r.get("reached") and (200 <= status < 400 or a.probe["kind"] == "doh"))
        return Verdict(a, obs, ok, ev)
    if a.expect == "allowed":
        want = None
        if a.secret and a.secret in secrets_by_path:
            want = hashlib.sha256(render(a.secret_format or "{{ .Value }}",
                                         secrets_by_path[a.secret]).encode()).hexdigest()
        injected = any(e.get("authorization_sha256") == want for e in seen) if want else bool(seen)
        ev.append("upstream saw the injected credential" if injected else "upstream did NOT see the credential")
        return Verdict(a, obs, status == 200 and bool(seen) and injected, ev)
    if a.expect == "streamed":
        events = r.get("events", [])
        streamed = len(events) >= 3 and events[-1] - events[0] >= 0.3
        return Verdict(a, obs, status == 200 and streamed,
                       ["events arrived spread out (streamed)" if streamed else "events not streamed"])
    # denied-audited
    denied = [e for e in audit if e.get("action") == "deny" and str(e.get("path", "")).startswith(a.marker or "-")]
    ev.append(f"proxy audit: deny, {denied[0].get('rejected_by')}" if denied else "proxy audit: no deny line")
    return Verdict(a, obs, status == 403 and bool(denied) and not seen, ev)


def run_escape(project_dir: Path, stack: str, state_dir: Path, agent_name: str | None = None) -> list[tuple[str, list[Verdict]]]:
    lab.require_root()
    d = lab.load_lab(project_dir, stack, state_dir)
    agents = [a for a in d.agents if agent_name in (None, a.name)]
    if not agents:
        from agentctl.errors import ConfigError
        raise ConfigError("--agent", agent_name or "", "is not an agent of this stack",
                          "one of " + ", ".join(a.name for a in d.agents))
    leaks = netns.routes_out_of_lab(d)
    if leaks:
        raise lab.LabError("lab network leaks out of the lab: " + "; ".join(leaks))
    results = []
    tokens = lab.secret_values(d, state_dir)
    proxy_url = f"http://{d.proxy_ip}:{d.proxy.listen.tunnel}"
    for agent in agents:
        ns = topology.host_netns(agent.name)
        hosts.put_file(state_dir, agent.name, PROBE, (internet.ASSETS / "escape_probe.py").read_text(), 0o755)
        plan = attempts(d, agent, secrets.token_hex(6))
        offset = internet.log_size(state_dir)
        audit_offset = _audit_size(d)
        proc = hosts.run_in(ns, "python3", PROBE, user="agentuser", timeout=180,
                            input=json.dumps({"proxy": proxy_url, "attempts": [a.probe | {"id": a.id} for a in plan]}))
        if proc.returncode != 0:
            raise lab.LabError(f"escape probe failed on {agent.name}: {proc.stderr.strip()[-400:]}")
        report = json.loads(proc.stdout)
        if report.get("uid") == 0:
            raise lab.LabError("escape probe ran as root; it must run as agentuser")
        by_id = {r["id"]: r for r in report["attempts"]}
        upstream = internet.requests_since(state_dir, offset)
        audit = _audit_since(d, audit_offset)
        results.append((agent.name, [judge(a, by_id.get(a.id, {}), upstream, audit, tokens) for a in plan]))
    return results


def _audit_size(d: Deployment) -> int:
    proc = hosts.run_in(topology.host_netns(d.proxy.name), "stat", "-c", "%s", AUDIT, timeout=15)
    return int(proc.stdout.strip() or 0) if proc.returncode == 0 else 0


def _audit_since(d: Deployment, offset: int) -> list[dict]:
    proc = hosts.run_in(topology.host_netns(d.proxy.name), "tail", "-c", f"+{offset + 1}", AUDIT, timeout=15)
    lines = []
    for line in proc.stdout.splitlines():
        try:
            lines.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return lines


def outcome(v: Verdict) -> str:
    """info (shown, not judged), held, ESCAPED (a way out that must not exist was
    there), or FAILED (what must work did not, e.g. the allowlisted request)."""
    if v.attempt.expect == "info":
        return "info"
    if v.ok:
        return "held"
    return "ESCAPED" if v.attempt.expect in ("no-answer", "refused") else "FAILED"


_STYLE = {"info": "[dim]{}[/]", "held": "[green]{}[/]", "ESCAPED": "[red]{}[/]", "FAILED": "[red]{}[/]"}


def run(project_dir: Path, stack: str, state_dir: Path, agent: str | None, json_out: bool, out: Console) -> int:
    results = run_escape(project_dir, stack, state_dir, agent)
    failed = sum(not v.ok for _, verdicts in results for v in verdicts)
    if json_out:
        out.print_json(json.dumps([{"agent": name, "vector": v.attempt.vector, "id": v.attempt.id,
                                    "what": v.attempt.what, "expect": v.attempt.expect, "observed": v.observed,
                                    "ok": v.ok, "evidence": v.evidence} for name, vs in results for v in vs]))
        return 1 if failed else 0
    for name, verdicts in results:
        table = Table(title=f"lab escape from {name} (as agentuser)")
        for col in ("vector", "attempt", "expected", "observed", "result"):
            table.add_column(col, overflow="fold")
        for v in verdicts:
            table.add_row(v.attempt.vector, escape_markup(v.attempt.what), v.attempt.expect,
                          escape_markup("; ".join(filter(None, [v.observed, *v.evidence]))),
                          _STYLE[outcome(v)].format(outcome(v)))
        out.print(table)
    out.print(f"{sum(len(v) for _, v in results) - failed} passed, {failed} failed")
    return 1 if failed else 0
