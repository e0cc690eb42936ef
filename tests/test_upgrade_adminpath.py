"""snapshot-upgrade reaches a cloud agent host the way `agentctl verify` does: through a
jump host (`--jump`, its key pinned and checked first) or a ProxyCommand
(`--proxy-command`, %h/%p substituted), host keys by the stack's host names, never
accepted. Real sshd on loopback: `proxy` is the jump host (it logs its forwards), `scout`
the agent; the harness logs in as root (the commands' admin)."""
from __future__ import annotations

import http.server
import json
import os
import shutil
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from agentctl import sshtrust
from agentctl.errors import ConfigError
from agentctl.sshtrust import Endpoint
from agentctl.upgrade.command import CloudAdmin, cloud_verify_argv
from agentctl.upgrade.ssh import AdminSsh
from tests.conftest import ROOT
from tests.loopback import SSHD, Front, keygen, relay_command, sshd_hosts

pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason="needs openssh-server (./dev setup installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd logging in as root needs root"),
]
STACK = "example-hcloud"


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    # DEBUG1: the jump host logs each direct-tcpip forward (server_request_direct_tcpip).
    with sshd_hosts(tmp_path_factory.mktemp("ssh"), ("scout", "proxy"),
                    "AllowTcpForwarding yes\nLogLevel DEBUG1\n") as servers:
        yield servers


def pinned(tmp_path: Path, hosts: dict, *names: str, impostor: str | None = None) -> Path:
    """A known_hosts with `names` pinned (their real keys) and `impostor` pinned to another key."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    for name in names:
        sshtrust.pin(known, name, [tuple(hosts[name]["pub"])])
    if impostor:
        keygen(tmp_path / "impostor")
        sshtrust.pin(known, impostor, [tuple((tmp_path / "impostor.pub").read_text().split()[:2])])
    return known


def jump(hosts: dict) -> Endpoint:
    return sshtrust.parse_endpoint(f"proxy=root@127.0.0.1:{hosts['proxy']['port']}")


def agent(hosts: dict, known: Path, port: int | None = None, **via) -> AdminSsh:
    return AdminSsh("scout", "127.0.0.1", known, Path(hosts["key"]), port=port or hosts["scout"]["port"],
                    user="root", timeout=5, **via)


def forwards(hosts: dict) -> list[str]:
    """The direct-tcpip forwards the jump host has opened so far."""
    return [ln for ln in hosts["proxy"]["log"].read_text().splitlines() if "server_request_direct_tcpip" in ln]


# --- through the jump host ----------------------------------------------------------------

def test_through_the_jump_host_a_command_runs_on_the_agent(hosts, tmp_path):
    known = pinned(tmp_path, hosts, "scout", "proxy")
    before = len(forwards(hosts))
    with agent(hosts, known, jump=jump(hosts)) as ssh:
        result = ssh.run("id -un")
        jump_login = ssh.client.jump
        assert (result.rc, result.out.strip()) == (0, "root")
    # The agent's connection is the one the jump host forwarded to it, not ours.
    assert [f"target 127.0.0.1 port {hosts['scout']['port']}" in ln for ln in forwards(hosts)[before:]] == [True]
    assert jump_login.get_transport() is None, "closing the agent's login closes the jump host's"


@pytest.mark.parametrize("case", ["unpinned", "changed"])
def test_a_jump_host_not_vouched_for_is_refused_and_the_agent_never_contacted(hosts, tmp_path, case):
    known = pinned(tmp_path, hosts, "scout", impostor="proxy" if case == "changed" else None)
    before_pins, before_forwards = known.read_text(), len(forwards(hosts))
    target = Front()  # the agent's address: counts what reaches it
    started = time.monotonic()
    try:
        with pytest.raises(ConfigError) as err:
            agent(hosts, known, port=target.port, jump=jump(hosts)).patient(60).connect()
    finally:
        target.close()
    assert time.monotonic() - started < 20, "a refused key is final, never waited out like a booting host"
    line = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in line
    assert line.startswith(f"--jump: proxy=root@127.0.0.1:{hosts['proxy']['port']}: the host key of 127.0.0.1 "
                           + ("is not pinned" if case == "unpinned" else "changed")), line
    assert target.accepted == 0 and len(forwards(hosts)) == before_forwards, "nothing went towards the agent"
    assert known.read_text() == before_pins, "no key learned, none replaced"


@pytest.mark.parametrize("case", ["unpinned", "changed"])
def test_an_agent_not_vouched_for_is_refused_though_the_jump_host_is(hosts, tmp_path, case):
    known = pinned(tmp_path, hosts, "proxy", impostor="scout" if case == "changed" else None)
    before = known.read_text()
    with pytest.raises(ConfigError) as err:
        agent(hosts, known, jump=jump(hosts)).connect()
    line = str(err.value)
    assert err.value.exit_code == 2 and "\n" not in line
    assert line.startswith("--host: scout: the host key of 127.0.0.1 "
                           + ("is not pinned" if case == "unpinned" else "changed")), line
    assert known.read_text() == before, "no key learned, none replaced"


def test_an_agent_still_booting_behind_the_jump_host_is_waited_for(hosts, tmp_path):
    known = pinned(tmp_path, hosts, "scout", "proxy")
    booting = Front(to=hosts["scout"]["port"], close_first=1)  # no banner at the first try
    try:
        with agent(hosts, known, port=booting.port, jump=jump(hosts)).patient(60) as ssh:
            assert ssh.run("true").rc == 0
    finally:
        booting.close()
    assert booting.accepted == 2


# --- through a ProxyCommand ---------------------------------------------------------------

def test_proxy_command_carries_the_login_with_h_and_p_substituted(hosts, tmp_path):
    known = pinned(tmp_path, hosts, "scout")
    with agent(hosts, known, proxy_command=relay_command(tmp_path)) as ssh:
        assert ssh.run("id -un").out.strip() == "root"
        relay = ssh.client.get_transport().sock  # paramiko.ProxyCommand: the command line it ran
        assert relay.cmd[-2:] == ["127.0.0.1", str(hosts["scout"]["port"])]


def test_proxy_command_to_an_unpinned_agent_is_refused(hosts, tmp_path):
    known = pinned(tmp_path, hosts, "proxy")
    with pytest.raises(ConfigError, match=r"^--host: scout: the host key of 127.0.0.1 is not pinned"):
        agent(hosts, known, proxy_command=relay_command(tmp_path)).connect()
    assert "scout" not in known.read_text()


# --- the command line: the flags in verify's words ----------------------------------------

def cli(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "agentctl.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("flags,line", [
    (["--jump", "proxy=admin@203.0.113.10", "--proxy-command", "nc %h %p"],
     "agentctl: --jump: proxy=admin@203.0.113.10: is given with --proxy-command; expected one of them"),
    (["--jump", "admin@203.0.113.10;rm"],
     "agentctl: --jump: admin@203.0.113.10;rm: is not an SSH endpoint; expected [NAME=]USER@ADDRESS[:PORT]"),
    (["--proxy-command", "aws 'ec2"],
     "agentctl: --proxy-command: aws 'ec2: is not a command line (No closing quotation); expected a command"),
])
def test_bad_admin_path_flags_are_one_line_in_verifys_words(flags, line):
    upgrade = cli("snapshot-upgrade", "--stack", STACK, "--host", "scout", "--to", "0.20.0", "--yes",
                  "--address", "10.0.2.11", "--proxy-address", "203.0.113.10", *flags)
    verify = cli("verify", "--stack", STACK, "--host", "scout=paramiko://admin@10.0.2.11", *flags)
    for proc in (upgrade, verify):
        assert proc.returncode == 2 and proc.stdout == "", proc.stderr
        assert proc.stderr.count("\n") == 1 and proc.stderr.startswith(line), proc.stderr
    assert upgrade.stderr == verify.stderr


def test_jump_or_proxy_command_on_a_lab_stack_is_bad_input():
    proc = cli("snapshot-upgrade", "--stack", "lab", "--host", "scout", "--to", "1.1.0", "--yes",
               "--proxy-command", "nc %h %p")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("agentctl: --proxy-command: nc %h %p: is for a cloud stack"), proc.stderr


@pytest.fixture
def project(tmp_path):
    """A copy of the Hetzner example whose agent `scout` installs from a package index on
    loopback (HTTPS, its CA in SSL_CERT_FILE) that has 0.20.0."""
    import trustme

    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ca.issue_cert("localhost").configure_cert(context)
    asked: list[str] = []

    class Index(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            body = json.dumps({"files": [{"filename": "hermes_agent-0.20.0-py3-none-any.whl"}]}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.pypi.simple.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Index)
    httpd.socket = context.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    folder = tmp_path / "project"
    folder.mkdir()
    shutil.copy(ROOT / "Pulumi.yaml", folder)
    text = (ROOT / f"Pulumi.{STACK}.yaml").read_text()
    marker = '          version: "0.19.0"'
    assert text.count(marker) == 1
    (folder / f"Pulumi.{STACK}.yaml").write_text(text.replace(
        marker, marker + f'\n          index: "https://localhost:{httpd.server_address[1]}/simple/"'))
    yield {"dir": folder, "asked": asked, "env": {"SSL_CERT_FILE": str(tmp_path / "ca.pem"),
                                                  "HCLOUD_TOKEN": "not-a-real-token"}}
    httpd.shutdown()


def upgrade(project: dict, hosts: dict, *flags: str) -> subprocess.CompletedProcess:
    return cli("snapshot-upgrade", "--stack", STACK, "--host", "scout", "--to", "0.20.0", "--yes",
               "--project-dir", str(project["dir"]), "--ssh-key", hosts["key"], "--address", "127.0.0.1", *flags,
               env=project["env"])


def journals(project: dict) -> list[Path]:
    return list((project["dir"] / ".agentctl" / STACK / "upgrades").rglob("*.json"))


def test_cli_refuses_an_unpinned_jump_host_in_preflight_and_snapshots_nothing(hosts, project, tmp_path):
    known = sshtrust.known_hosts_file(project["dir"], STACK)
    known.parent.mkdir(parents=True)
    sshtrust.pin(known, "scout", [tuple(hosts["scout"]["pub"])])  # the agent pinned, its jump host not
    before = len(forwards(hosts))
    spec = f"proxy=root@127.0.0.1:{hosts['proxy']['port']}"
    proc = upgrade(project, hosts, "--jump", spec)  # the proxy host: the jump host (no --proxy-address)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("agentctl:")]
    assert len(errors) == 1 and errors[0].startswith(f"agentctl: --jump: {spec}: the host key of 127.0.0.1 is "
                                                     "not pinned"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert project["asked"] == ["/simple/hermes-agent/"], "preflight got as far as SSH"
    assert len(forwards(hosts)) == before and journals(project) == [], "nothing sent to the agent, no run started"


def test_cli_goes_through_the_proxy_command_with_h_and_p_substituted(hosts, project, tmp_path):
    known = sshtrust.known_hosts_file(project["dir"], STACK)
    known.parent.mkdir(parents=True)
    known.write_text("")
    seen = tmp_path / "seen"
    # A ProxyCommand that only says where it was sent, then closes: the agent never answers.
    command = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))\" {seen} %h %p"
    proc = upgrade(project, hosts, "--proxy-address", "127.0.0.1", "--proxy-command", command)
    assert proc.returncode == 2, proc.stderr
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("agentctl:")]
    assert len(errors) == 1 and errors[0].startswith("agentctl: --host: scout: 127.0.0.1:22 is unreachable through "
                                                     "--proxy-command"), proc.stderr
    assert "Traceback" not in proc.stderr
    assert seen.read_text() == "127.0.0.1 22"
    assert journals(project) == []


# --- the acceptance's role suite child -----------------------------------------------------

def test_the_acceptance_child_goes_through_the_same_jump_host(hosts, tmp_path):
    """The child `agentctl verify` is refused at the unpinned jump host, as the command
    was; with the jump host pinned it asks the jump host for the agent's address."""
    known = tmp_path / "known_hosts"
    known.write_text("")
    admin = CloudAdmin("127.0.0.1", jump(hosts), jump=jump(hosts))
    argv = cloud_verify_argv(ROOT, STACK, "scout", admin, known, Path(hosts["key"]))
    child = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 1 and child.stderr.startswith("agentctl: proxy: no pinned host key"), child.stderr
    sshtrust.pin(known, "proxy", [tuple(hosts["proxy"]["pub"])])
    before = len(forwards(hosts))
    child = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 1 and "scout: cannot reach 127.0.0.1:22 via proxy" in child.stderr, child.stderr
    time.sleep(0.5)  # the jump host's log line is written by its session process
    assert [ln.endswith("target 127.0.0.1 port 22") for ln in forwards(hosts)[before:]] == [True]


def test_the_acceptance_child_goes_through_the_same_proxy_command(hosts, tmp_path):
    seen = tmp_path / "seen"
    command = f"{sys.executable} -c \"import sys; open(sys.argv[1], 'w').write(' '.join(sys.argv[2:]))\" {seen} %h %p"
    admin = CloudAdmin("127.0.0.1", jump(hosts), proxy_command=command)
    argv = cloud_verify_argv(ROOT, STACK, "scout", admin, tmp_path / "known_hosts", Path(hosts["key"]))
    child = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert child.returncode == 1 and child.stderr.startswith("agentctl: scout: SSH to admin@127.0.0.1:22 failed"), \
        child.stderr
    assert child.stderr.count("\n") == 1, "one line, no paramiko traceback"
    assert seen.read_text() == "127.0.0.1 22"
