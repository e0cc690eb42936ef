"""SSH host keys are never accepted blindly: real sshd on loopback (a target and a jump
host, throwaway keys), paramiko and testinfra as verify uses them."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from agentctl import sshtrust
from agentctl.sshtrust import Endpoint, HostKeyError
from tests.conftest import ROOT
from tests.loopback import SSHD, keygen, relay_command, sshd_hosts


pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason="needs openssh-server (./dev setup installs it)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd logging in as root needs root"),
]


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    """Two sshd: `scout` (the target) and `proxy` (the jump host)."""
    with sshd_hosts(tmp_path_factory.mktemp("ssh"), ("scout", "proxy")) as servers:
        yield servers


def _target(hosts, name="scout") -> Endpoint:
    return Endpoint(name, "root", "127.0.0.1", hosts[name]["port"])


def _run(client, command="echo ok") -> str:
    _, out, _ = client.exec_command(command)
    return out.read().decode().strip()


def _other_key(tmp_path) -> list[tuple[str, str]]:
    keygen(tmp_path / "impostor")
    return [tuple((tmp_path / "impostor.pub").read_text().split()[:2])]


def test_unknown_key_is_refused_when_first_contact_may_not_record(hosts, tmp_path):
    known = tmp_path / "known_hosts"
    with pytest.raises(HostKeyError) as err:
        sshtrust.connect(_target(hosts), known_hosts=known, first_contact="refuse", key_filename=hosts["key"])
    line = str(err.value)
    assert "\n" not in line and line.startswith("scout: no pinned host key in ") and "SHA256:" in line
    assert not known.exists(), "nothing recorded"


def test_first_contact_records_then_only_that_key_is_accepted(hosts, tmp_path, capfd):
    known = tmp_path / "known_hosts"
    client = sshtrust.connect(_target(hosts), known_hosts=known, first_contact="record", key_filename=hosts["key"])
    assert _run(client) == "ok"
    client.close()
    assert "first contact, recorded host key ssh-ed25519" in capfd.readouterr().err
    assert known.read_text().split()[:3] == ["scout", *hosts["scout"]["pub"]]
    client = sshtrust.connect(_target(hosts), known_hosts=known, first_contact="refuse", key_filename=hosts["key"])
    client.close()


def test_changed_key_is_refused_with_one_line_even_when_first_contact_may_record(hosts, tmp_path):
    known = tmp_path / "known_hosts"
    sshtrust.pin(known, "scout", _other_key(tmp_path))
    before = known.read_text()
    with pytest.raises(HostKeyError) as err:
        sshtrust.connect(_target(hosts), known_hosts=known, first_contact="record", key_filename=hosts["key"])
    line = str(err.value)
    assert "\n" not in line and line.startswith("scout: host key CHANGED: ") and "refusing to log in" in line
    assert known.read_text() == before, "a changed key never replaces the pinned one"


def test_keys_pinned_from_cloud_inits_console_output(hosts, tmp_path):
    """The block cloud-init's keys_to_console prints (cloudinit/config/cc_keys_to_console.py,
    via /usr/lib/cloud-init/write-ssh-key-fingerprints), as EC2's console output holds it."""
    keytype, data = hosts["scout"]["pub"]
    console = tmp_path / "console.txt"
    console.write_text("[   12.3] cloud-init[800]: Cloud-init v. 24.1 running 'modules:final'\n"
                       "ec2: #############################################################\n"
                       "ec2: -----BEGIN SSH HOST KEY FINGERPRINTS-----\n"
                       "ec2: 256 SHA256:abc root@scout (ED25519)\n"
                       "ec2: -----END SSH HOST KEY FINGERPRINTS-----\n"
                       "-----BEGIN SSH HOST KEY KEYS-----\n"
                       f"{keytype} {data} root@scout\n"
                       "-----END SSH HOST KEY KEYS-----\n")
    known = tmp_path / "known_hosts"
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "hostkeys", "--stack", "lab", "--host", "scout",
                           "--console", str(console), "--known-hosts", str(known)], cwd=ROOT, capture_output=True,
                          text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("scout: pinned SHA256:")
    client = sshtrust.connect(_target(hosts), known_hosts=known, first_contact="refuse", key_filename=hosts["key"])
    assert _run(client) == "ok"
    client.close()


@pytest.mark.parametrize("console,known,words", [
    ("nothing here\n", "k", "holds no host keys"),
    ("-----BEGIN SSH HOST KEY KEYS-----\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP1gNSTVBhHG0F8Og1eTBNdfdHLEHSdJSxtE3z/QQGWz"
     "\n-----END SSH HOST KEY KEYS-----\n", "c/under-a-file", "--known-hosts"),
])
def test_hostkeys_bad_input_is_one_line(tmp_path, console, known, words):
    (tmp_path / "c").write_text(console)
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "hostkeys", "--stack", "lab", "--host", "scout",
                           "--console", str(tmp_path / "c"), "--known-hosts", str(tmp_path / known)], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and words in proc.stderr, proc.stderr


def test_jump_host_carries_the_connection_and_both_keys_are_checked(hosts, tmp_path):
    known = tmp_path / "known_hosts"
    sshtrust.pin(known, "scout", [tuple(hosts["scout"]["pub"])])
    sshtrust.pin(known, "proxy", [tuple(hosts["proxy"]["pub"])])
    jump = _target(hosts, "proxy")
    client = sshtrust.connect(_target(hosts), known_hosts=known, key_filename=hosts["key"], jump=jump)
    # The target saw the jump host's forwarded connection, not ours.
    assert _run(client, "echo $SSH_CONNECTION").split()[2:] == ["127.0.0.1", str(hosts["scout"]["port"])]
    client.close()
    sshtrust.pin(known, "proxy", _other_key(tmp_path))
    with pytest.raises(HostKeyError, match=r"^proxy: host key CHANGED"):
        sshtrust.connect(_target(hosts), known_hosts=known, key_filename=hosts["key"], jump=jump)


def test_proxy_command_carries_the_connection_like_eice_open_tunnel(hosts, tmp_path):
    known = tmp_path / "known_hosts"
    sshtrust.pin(known, "scout", [tuple(hosts["scout"]["pub"])])
    command = relay_command(tmp_path)
    client = sshtrust.connect(_target(hosts), known_hosts=known, key_filename=hosts["key"], proxy_command=command)
    assert _run(client) == "ok"
    client.close()


def test_testinfra_logins_refuse_a_changed_key(hosts, tmp_path, monkeypatch):
    """The suites connect through testinfra's paramiko backend: it must use our check."""
    import functools

    import testinfra
    from testinfra.backend import paramiko as backend

    # Canary: the one testinfra internal sshtrust.use_in_testinfra replaces.
    assert isinstance(backend.ParamikoBackend.__dict__["client"], functools.cached_property)
    monkeypatch.setattr(backend.ParamikoBackend, "client", backend.ParamikoBackend.__dict__["client"])
    # The hole: testinfra alone logs in to a host nobody vouched for (paramiko's WarningPolicy).
    spec = f"paramiko://root@127.0.0.1:{hosts['scout']['port']}"
    assert testinfra.get_host(spec + "?timeout=8", ssh_identity_file=hosts["key"]).run("echo in").stdout.strip() == "in"
    known = tmp_path / "known_hosts"
    sshtrust.pin(known, "scout", _other_key(tmp_path))
    sshtrust.use_in_testinfra("scout", known_hosts=known)
    with pytest.raises(HostKeyError, match="host key CHANGED"):
        testinfra.get_host(spec, ssh_identity_file=hosts["key"]).run("true")
    sshtrust.pin(known, "scout", [tuple(hosts["scout"]["pub"])])
    assert testinfra.get_host(spec + "?timeout=9", ssh_identity_file=hosts["key"]).run("echo ok").stdout.strip() == "ok"


def _verify(hosts, known, *extra):
    return subprocess.run([sys.executable, "-m", "agentctl.cli", "verify", "--stack", "lab",
                           "--host", f"scout=paramiko://root@127.0.0.1:{hosts['scout']['port']}",
                           "--ssh-key", hosts["key"], "--known-hosts", str(known), *extra],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)


def test_verify_refuses_a_changed_key_before_any_suite_runs(hosts, tmp_path):
    known = tmp_path / "known_hosts"
    sshtrust.pin(known, "scout", _other_key(tmp_path))
    proc = _verify(hosts, known)
    assert proc.returncode == 1 and proc.stdout == "", proc.stdout[-2000:]
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("agentctl: scout: host key CHANGED"), proc.stderr


def test_verify_refuses_an_unknown_key_where_the_cloud_publishes_keys(hosts, tmp_path):
    """The lab (and AWS) publish keys: no first-contact recording unless asked for."""
    proc = _verify(hosts, tmp_path / "known_hosts")
    assert proc.returncode == 1 and proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "no pinned host key" in proc.stderr and "hostkeys pin" in proc.stderr
    assert not (tmp_path / "known_hosts").exists()


def test_lab_pins_each_hosts_keys_from_its_root_and_lab_ssh_checks_them(tmp_path):
    from agentctl.lab import hosts as lab_hosts, lab

    keygen(tmp_path / "k")
    ssh_dir = lab_hosts.root_of(tmp_path, "scout") / "etc" / "ssh"
    ssh_dir.mkdir(parents=True)
    (ssh_dir / "ssh_host_ed25519_key.pub").write_text((tmp_path / "k.pub").read_text())
    lab.known_hosts(tmp_path).write_text("stale 1.2.3.4 key\n")
    lab.pin_host_keys(tmp_path, ["scout", "proxy"])  # proxy: not booted, nothing to pin
    lines = lab.known_hosts(tmp_path).read_text().splitlines()
    assert [line.split()[:3] for line in lines] == [["scout", *(tmp_path / "k.pub").read_text().split()[:2]]]
    argv = lab.ssh_argv(lab.load_lab(ROOT, "lab"), tmp_path, "scout", ["true"])
    assert "StrictHostKeyChecking=yes" in argv and "HostKeyAlias=scout" in argv
    assert not any("accept-new" in a for a in argv)


def test_console_keys_survive_ec2s_line_wrapping(tmp_path):
    """EC2 wraps its console output (seen: a key and its comment over three lines, CR LF)."""
    keygen(tmp_path / "a")
    subprocess.run(["ssh-keygen", "-q", "-t", "rsa", "-b", "2048", "-N", "", "-f", str(tmp_path / "b")], check=True)
    keys = [tuple((tmp_path / f"{n}.pub").read_text().split()[:2]) for n in ("a", "b")]
    wrapped = "".join(f"{t} {d} root@ip-10-0-2-11" for t, d in keys[:1])
    lines = [wrapped[i:i + 30] for i in range(0, len(wrapped), 30)]
    rsa = f"{keys[1][0]} {keys[1][1]} root@ip-10-0-2-11"
    lines += [rsa[i:i + 64] for i in range(0, len(rsa), 64)]
    text = "-----BEGIN SSH HOST KEY KEYS-----\r\n" + "\r\n".join(lines) + "\r\n-----END SSH HOST KEY KEYS-----\r\n"
    assert sshtrust.console_keys(text) == keys
