"""`stage up`'s convergence wait and `stage verify` on a cloud stack, without a cloud:
loopback OpenSSH servers stand in for the hosts the stack outputs name (the proxy, and
an agent reached through it as jump host, the way the Hetzner stack documents its admin
path), the outputs are handed over the way the Automation API hands them
(pulumi.automation.OutputValue from Stack.outputs()), and only that boundary is
replaced. The role suites, the escape probe (as an unprivileged user) and the proxy
audit all really run over SSH, with host keys pinned. AWS's flow-log rejects come from
moto's CloudWatch Logs."""
from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import xml.etree.ElementTree as ET
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path

import pytest
from pulumi import automation as auto

from agentctl import sshtrust
from agentctl.stackfile import load
from agentctl.stage import adminpath, cloud
from agentctl.stage import pulumi as stage_pulumi
from tests.labrun import ROOT
from tests.loopback import start_sshd

STACK = "stage-test"
OUTSIDE = cloud.Outside(ip="127.77.0.9", dns="127.77.0.9", ip6=None, name="outside.invalid", imds="127.77.0.254")
PROXY_IP, AGENT_IP = "127.77.0.1", "127.77.0.2"   # nothing listens there: a closed network
STACK_FILE = """
config:
  agentctl:cloud: hcloud
  agentctl:region: fsn1
  agentctl:distro: ubuntu-24.04
  agentctl:adminSshKeys: [{key}]
  agentctl:network: {{cidr: 10.0.0.0/16, adminCidrs: [203.0.113.0/24]}}
  agentctl:proxy: {{name: proxy, size: cx23, install: {{pip: "agentctl-proxy==0.1.0"}}}}
  agentctl:agents:
    - name: scout
      size: cx23
      runtime: {{command: {{exec: /usr/local/bin/scout}}}}
      egress:
        rules:
          - {{host: api.stage-test.invalid, methods: [GET], paths: ["/repos/*"]}}
"""
# sudo on the stand-ins: `sudo -n -u agentuser -- CMD` runs CMD as nobody (this machine
# has no agentuser), plain `sudo -n CMD` runs it as the login (root).
FAKE_SUDO = """#!/bin/sh
user=
while [ $# -gt 0 ]; do case "$1" in -n) shift;; -u) user=$2; shift 2;; --) shift; break;; *) break;; esac; done
[ -n "$user" ] && exec setpriv --reuid=65534 --regid=65534 --clear-groups "$@"
exec "$@"
"""


def _bin(folder: Path, files: dict[str, str]) -> Path:
    b = folder / "bin"
    b.mkdir(exist_ok=True)
    for name, text in files.items():
        (b / name).write_text(text)
        (b / name).chmod(0o755)
    return b


@pytest.fixture()
def world(tmp_path, monkeypatch):
    """Two sshds (proxy, agent), a project with the stack file, the admin key."""
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "admin")], check=True)
    pub = (tmp_path / "admin.pub").read_text().strip()
    hosts = {}
    for name in ("proxy", "scout"):
        folder = tmp_path / name
        folder.mkdir()
        b = _bin(folder, {"sudo": FAKE_SUDO, "cloud-init": "#!/bin/sh\necho 'status: running'\n"})
        port, proc = start_sshd(folder, pub + "\n", f"SetEnv PATH={b}:/usr/sbin:/usr/bin:/sbin:/bin\n")
        hosts[name] = {"port": port, "proc": proc, "folder": folder, "bin": b}
    project = tmp_path / "project"
    project.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", project)
    (project / f"Pulumi.{STACK}.yaml").write_text(STACK_FILE.format(key=pub))
    marker, audit = tmp_path / "converged", tmp_path / "audit.jsonl"
    audit.write_text("")   # the proxy's audit file, there since the proxy started
    monkeypatch.setattr(cloud, "CONVERGED_MARKER", str(marker))
    monkeypatch.setattr(cloud, "AUDIT", str(audit))
    monkeypatch.setenv("AGENTCTL_SSH_KEY", str(tmp_path / "admin"))
    monkeypatch.setenv("HCLOUD_TOKEN", "not-a-token")
    proxy_key = sshtrust.fingerprint(_host_key(hosts["proxy"]["folder"]))
    outputs = {
        "proxyPublicIp": "127.0.0.1", "proxyPrivateIp": PROXY_IP, "agentPrivateIps": {"scout": AGENT_IP},
        "proxyHostKey": proxy_key,
        # What stacks/hcloud_deployment.py writes, with the loopback ports spelled out.
        "ssh": {"proxy": f"ssh -p {hosts['proxy']['port']} root@127.0.0.1",
                "scout": f"ssh -J root@127.0.0.1:{hosts['proxy']['port']} -p {hosts['scout']['port']} root@127.0.0.1"},
    }
    yield {"hosts": hosts, "project": project, "outputs": outputs, "marker": marker, "audit": audit,
           "tmp": tmp_path}
    for h in hosts.values():
        h["proc"].terminate()
        h["proc"].wait(5)


def _host_key(folder: Path):
    import paramiko
    return paramiko.Ed25519Key.from_private_key_file(str(folder / "host_key"))


class FakeStack:
    """The Automation API's Stack as far as stage uses it after `up`."""

    def __init__(self, outputs: dict):
        self._outputs = outputs

    def outputs(self):
        return {k: auto.OutputValue(v, k == "proxyHostKey") for k, v in self._outputs.items()}


def _stage(world, monkeypatch) -> stage_pulumi.CloudStage:
    d = load(world["project"], STACK)
    monkeypatch.setattr(auto, "create_or_select_stack", lambda **kw: FakeStack(world["outputs"]))
    st = stage_pulumi.CloudStage(world["project"], STACK, d)
    st.outside = OUTSIDE
    # Read-only checks only: this machine stands in for the hosts and must not be converged.
    st.suite_args = ["-k", "test_legal_banner or test_converge_recorded"]
    return st


def test_routes_follow_the_stacks_ssh_outputs():
    aws = adminpath.parse_command("proxy", "ssh -o ProxyCommand='aws ec2-instance-connect open-tunnel "
                                           "--instance-id i-0abc' admin@i-0abc")
    assert aws.target == sshtrust.Endpoint("proxy", "admin", "i-0abc", 22)
    assert aws.proxy_command == "aws ec2-instance-connect open-tunnel --instance-id i-0abc" and aws.jump is None
    r = adminpath.routes({"ssh": {"proxy": "ssh admin@198.51.100.7",
                                  "scout": "ssh -J admin@198.51.100.7 admin@10.0.2.11"}}, ["proxy", "scout"])
    assert r["scout"].jump == sshtrust.Endpoint("proxy", "admin", "198.51.100.7", 22)   # pinned as the proxy
    assert r["scout"].target == sshtrust.Endpoint("scout", "admin", "10.0.2.11", 22)
    with pytest.raises(adminpath.AdminPathError, match="no ssh command for scout"):
        adminpath.routes({"ssh": {"proxy": "ssh admin@198.51.100.7"}}, ["proxy", "scout"])


def test_hcloud_convergence_waits_for_the_marker_over_the_admin_path(world, monkeypatch):
    st = _stage(world, monkeypatch)
    steps: list[str] = []
    world["marker"].write_text("2026-01-01T00:00:00Z\n")
    checks = st._wait_converged(steps.append)
    assert [(c.name, c.ok) for c in checks] == [("proxy: converged", True), ("scout: converged", True)], checks
    pins = sshtrust._load(st.known_hosts)
    assert set(pins.keys()) == {"proxy", "scout"}   # proxy by proxyHostKey, scout recorded through it
    assert any("proxyHostKey" in s for s in steps)


def test_hcloud_convergence_fails_with_the_host_and_why(world, monkeypatch):
    st = _stage(world, monkeypatch)
    _bin(world["hosts"]["scout"]["folder"], {"cloud-init": "#!/bin/sh\necho 'status: error'\n"})
    world["marker"].unlink(missing_ok=True)
    checks = cloud.converged_over_ssh(st.access(lambda _s: None), ["scout"], timeout=30, progress=lambda _s: None,
                                      poll=0.2)
    assert len(checks) == 1 and not checks[0].ok
    assert checks[0].message == "scout did not converge: cloud-init status: error"


def test_hcloud_convergence_refuses_a_proxy_key_other_than_the_recorded_one(world, monkeypatch):
    world["outputs"]["proxyHostKey"] = "SHA256:" + "A" * 43
    st = _stage(world, monkeypatch)
    checks = st._wait_converged(lambda _s: None)
    assert all(not c.ok for c in checks)
    assert "host key is not the one the stack recorded" in checks[0].message
    assert not st.known_hosts.exists()


def test_verify_runs_role_suites_and_the_escape_probe_over_the_admin_path(world, monkeypatch):
    st = _stage(world, monkeypatch)
    world["audit"].write_text(json.dumps({"action": "allow", "path": "/old"}) + "\n")
    result = st.verify(world["tmp"] / "work", lambda _s: None)
    suites = {s.name: s for s in result.suites}
    assert set(suites) == {"role suite: proxy", "role suite: scout", "escape: scout"}
    for host in ("proxy", "scout"):   # the suites ran on the host, over SSH (their checks, not an error)
        names = {c.name for c in suites[f"role suite: {host}"].checks}
        assert names == {"test_legal_banner[paramiko://127.0.0.1]", "test_converge_recorded[paramiko://127.0.0.1]"}
    escape = {c.name.split(":")[0]: c for c in suites["escape: scout"].checks}
    # Nothing answers outside the closed network: every direct way out held ...
    for vector in ("scan", "ssh-proxy", "ip-outside", "ip-outside-http", "dns-udp", "dns-tcp", "doh-direct",
                   "imds-direct"):
        assert escape[vector].ok, escape[vector].message
    # ... and with no proxy answering, the request outside the allowlist is not "denied and audited": fail closed.
    assert not escape["denied"].ok and "proxy audit: no deny line" in escape["denied"].details
    rows = {e.id: e for e in result.escapes}
    assert rows["ip-outside"].result == "held" and rows["denied"].result == "FAILED"
    assert not result.ok


def test_a_way_out_is_reported_as_escaped(world, monkeypatch):
    """A hole: something outside answers plain HTTP by IP. The probe reaches it."""
    class Answer(BaseHTTPRequestHandler):
        def do_GET(self):
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b"out")

        def log_message(self, *a):
            pass

    server = HTTPServer((OUTSIDE.ip, 80), Answer)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        st = _stage(world, monkeypatch)
        st.suite_args = ["-k", "test_legal_banner"]
        result = st.verify(world["tmp"] / "work", lambda _s: None)
    finally:
        server.shutdown()
    row = next(e for e in result.escapes if e.id == "ip-outside-http")
    assert row.result == "ESCAPED", row
    failed = next(c for s in result.suites for c in s.checks if c.name == "ip-outside-http: https by IP, no proxy")
    assert failed.message.startswith("ESCAPED")


def test_the_probe_runs_unprivileged(world, monkeypatch):
    """The stand-in sudo drops to nobody; with a sudo that does not, stage refuses the run."""
    _bin(world["hosts"]["scout"]["folder"], {"sudo": "#!/bin/sh\nwhile [ \"$1\" != -- ]; do shift; done; shift; exec \"$@\"\n"})
    st = _stage(world, monkeypatch)
    st.suite_args = ["-k", "test_legal_banner"]
    result = st.verify(world["tmp"] / "work", lambda _s: None)
    broke = next(s for s in result.suites if s.name == "escape: scout").checks
    assert [c.name for c in broke] == ["escape probe ran"] and "ran as root" in broke[0].message


def test_an_unreadable_proxy_audit_is_an_error_not_an_empty_log(world, monkeypatch):
    world["audit"].unlink()
    st = _stage(world, monkeypatch)
    st.suite_args = ["-k", "test_legal_banner"]
    result = st.verify(world["tmp"] / "work", lambda _s: None)
    broke = next(s for s in result.suites if s.name == "escape: scout").checks
    assert [c.name for c in broke] == ["escape probe ran"] and broke[0].error
    assert broke[0].message.startswith(f"cannot read the proxy audit {world['audit']} on proxy (exit 1)")


def test_proxy_audit_is_read_over_ssh_from_an_offset(world, monkeypatch):
    st = _stage(world, monkeypatch)
    access = st.access(lambda _s: None)
    world["audit"].write_text(json.dumps({"action": "allow", "path": "/a"}) + "\n")
    offset = cloud.proxy_audit_size(access, "proxy")
    with world["audit"].open("a") as fh:
        fh.write(json.dumps({"action": "deny", "path": "/escape/x/denied", "rejected_by": "no rule"}) + "\n")
    assert cloud.proxy_audit_since(access, "proxy", offset) == [
        {"action": "deny", "path": "/escape/x/denied", "rejected_by": "no rule"}]


def test_aws_flow_log_rejects_are_evidence(monkeypatch):
    import boto3
    from moto import mock_aws
    with mock_aws():
        logs = boto3.client("logs", region_name="eu-central-1")
        group = cloud.flow_log_group("agentctl", "staging-pr-1")
        logs.create_log_group(logGroupName=group)
        logs.create_log_stream(logGroupName=group, logStreamName="eni-1-all")
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=group, logStreamName="eni-1-all", logEvents=[
            {"timestamp": now, "message": "2 123456789012 eni-1 10.0.2.11 1.1.1.1 40000 443 6 1 60 1 2 REJECT OK"},
            {"timestamp": now, "message": "2 123456789012 eni-1 10.0.2.12 9.9.9.9 40000 53 17 1 60 1 2 REJECT OK"},
            {"timestamp": now, "message": "2 123456789012 eni-1 10.0.2.11 10.0.1.10 40000 3128 6 1 60 1 2 ACCEPT OK"}])
        flow = cloud.FlowLog(logs, group, wait=0)
        rejects = flow.collect("10.0.2.11", now - 1000, {"1.1.1.1"}, lambda _s: None)
    assert [(r["dstaddr"], r["dstport"]) for r in rejects] == [("1.1.1.1", "443")]
    d = load(ROOT, "example-aws")
    a = next(x for x in cloud.attempts(d, d.agents[0], {}, "n", cloud.Outside()) if x.id == "ip-outside")
    v = cloud.judge(a, {"reached": False, "detail": "timed out"}, [], rejects)
    assert v.ok and "flow log: REJECT 10.0.2.11 -> 1.1.1.1:443 (1 record(s))" in v.evidence


def test_verify_writes_a_report_naming_the_vectors(world, monkeypatch, tmp_path):
    """Through the CLI command: `stage verify --report` on the cloud stack."""
    from typer.testing import CliRunner

    from agentctl.stage import cli as stage_cli
    st = _stage(world, monkeypatch)
    monkeypatch.setattr(stage_cli, "driver", lambda *a: st)
    res = CliRunner().invoke(stage_cli.app, ["verify", "--stack", STACK, "--report", str(tmp_path / "r")])
    assert res.exit_code == 1, res.output
    root = ET.parse(tmp_path / "r" / "junit.xml").getroot()
    assert root.find("testsuite[@name='escape: scout']/testcase[@name='denied: request outside the allowlist']"
                     "/failure") is not None
    assert "not implemented" not in res.output


def test_cloud_attempts_aim_at_names_the_rules_match():
    """A wildcard rule (*.wikipedia.org) gives a real name to try, and the allowlisted
    request uses a path the rule grants."""
    d = load(ROOT, "example-hcloud")
    scribe = next(a for a in d.agents if a.name == "scribe")
    plan = {a.id: a for a in cloud.attempts(d, scribe, {}, "n1", cloud.Outside())}
    assert plan["denied"].probe["url"] == "https://www.wikipedia.org/escape/n1/denied"
    assert plan["allowed"].probe["url"] == "https://www.wikipedia.org/wiki/escape-n1"
    scout = next(a for a in d.agents if a.name == "scout")
    allowed = {a.id: a for a in cloud.attempts(d, scout, {}, "n2", cloud.Outside())}["allowed"]
    assert allowed.probe["url"] == "https://api.github.com/repos/acme/app/escape-n2"
    assert allowed.secret and allowed.marker == "/repos/acme/app/escape-n2"
