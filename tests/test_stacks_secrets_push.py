"""Secrets reach the Hetzner proxy over SSH, never through user-data: tested against a
real sshd on loopback (throwaway host and client keys)."""
from __future__ import annotations

import os
import pwd
import stat
import subprocess
from pathlib import Path

import paramiko
import pytest

import jinja2

from agentctl import escape, secrets_push
from agentctl.resources import ROLES
from agentctl.secrets import INSTALL_SECRET_BIN
from agentctl.secrets_push import PushFile, SecretPushError, host_key_fingerprint, push_files, write_command
from tests.loopback import SSHD, free_port, start_sshd

SECRET = b"ghp_this-must-never-be-printed-0123456789"

pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason="needs openssh-server (apt-get install openssh-server)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd with a chown target needs root"),
]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client_key")], check=True)
    port, proc = start_sshd(tmp, (tmp / "client_key.pub").read_text())
    yield {"port": port, "key": str(tmp / "client_key"), "dir": tmp, "proc": proc,
           "fingerprint": subprocess.run(["ssh-keygen", "-l", "-f", str(tmp / "host_key.pub")], capture_output=True,
                                         text=True, check=True).stdout.split()[1]}
    proc.terminate()
    proc.wait(timeout=5)


def _owner_user() -> str:
    # Any unprivileged account with a login group stands in for agentctl-proxy.
    return pwd.getpwnam("nobody").pw_name


def installer(tmp_path: Path) -> str:
    """The proxy role's real installer, rendered with tmp_path standing in for /etc:
    secrets under tmp_path/secrets/<agent>/<name>, the CA key at tmp_path/ca.key."""
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(ROLES / "proxy" / "templates")),
                             undefined=jinja2.StrictUndefined)
    env.filters.update(escape.FILTERS)
    script = tmp_path / "agentctl-install-secret"
    script.write_text(env.get_template("install-secret.sh.j2").render(
        install_secret_bin=INSTALL_SECRET_BIN, secrets_dir=str(tmp_path / "secrets"),
        ca_key_path=str(tmp_path / "ca.key"), tailscale_authkey_path=str(tmp_path / "tailscale-authkey"),
        proxy_config_path=str(tmp_path / "config.yaml"),
        secret_owners=(_owner_user(), "root")))
    script.chmod(0o755)
    return str(script)


def push(tmp_path, sshd, files, **kw):
    kw.setdefault("wait_seconds", 10)
    return push_files("127.0.0.1", files, user="root", port=sshd["port"], key_filename=sshd["key"],
                      installer=installer(tmp_path), **kw)


def test_push_writes_files_0600_owned_by_the_proxy_user(sshd, tmp_path, capfd):
    target = tmp_path / "secrets" / "scout" / "github-pat"
    ca_key = tmp_path / "ca.key"
    (tmp_path / "secrets").mkdir()  # made by the role's converge, root-owned
    fingerprint = push(tmp_path, sshd, [PushFile(str(target), SECRET, _owner_user()),
                                        PushFile(str(ca_key), b"-----BEGIN PRIVATE KEY-----\n", _owner_user())])
    assert fingerprint == sshd["fingerprint"]
    assert target.read_bytes() == SECRET
    for path in (target, ca_key, target.parent):
        st = path.stat()
        assert pwd.getpwuid(st.st_uid).pw_name == _owner_user(), path
        assert stat.S_IMODE(st.st_mode) == (0o700 if path.is_dir() else 0o600), path
    assert not list(target.parent.glob("*.agentctl-tmp"))
    # An existing folder (like /etc/agentctl-proxy) keeps its owner: root, not the proxy user.
    assert tmp_path.stat().st_uid == 0 and (tmp_path / "secrets").stat().st_uid == 0
    out, err = capfd.readouterr()
    assert SECRET.decode() not in out + err


def test_second_push_with_pinned_key_replaces_content(sshd, tmp_path):
    target = tmp_path / "ca.key"
    for content in (b"old", b"new"):
        push(tmp_path, sshd, [PushFile(str(target), content, _owner_user())], expected_host_key=sshd["fingerprint"])
    assert target.read_bytes() == b"new"


def test_wrong_pinned_host_key_refuses_before_sending(sshd, tmp_path):
    target = tmp_path / "ca.key"
    with pytest.raises(SecretPushError, match="not the pinned") as info:
        push(tmp_path, sshd, [PushFile(str(target), SECRET, _owner_user())], expected_host_key="SHA256:someoneelse")
    assert not target.exists()
    assert SECRET.decode() not in str(info.value)


def test_failed_write_names_the_path_not_the_secret(sshd, tmp_path):
    with pytest.raises(SecretPushError) as info:
        push(tmp_path, sshd, [PushFile(str(tmp_path / "ca.key"), SECRET, "no-such-user-agentctl")])
    assert str(tmp_path / "ca.key") in str(info.value) and SECRET.decode() not in str(info.value)
    assert not (tmp_path / "ca.key").exists()


@pytest.mark.parametrize("where", ["etc/shadow", "secrets/scout/../../ca.key", "secrets/scout/x/y", "secrets//x"])
def test_installer_writes_only_where_secrets_belong(sshd, tmp_path, where):
    """The installer is the command sudo does not I/O-log: it must not become a way to
    write any file unlogged."""
    target = f"{tmp_path}/{where}"
    with pytest.raises(SecretPushError, match="not a (secret|canonical) path"):
        push(tmp_path, sshd, [PushFile(target, SECRET, _owner_user())])
    assert not (tmp_path / "etc").exists()


def test_push_waits_out_the_first_boot_reboot_then_writes(sshd, tmp_path, monkeypatch):
    """Ubuntu 24.04's first boot ends in a reboot right after cloud-init reports done:
    the push waits for a new boot (a host that has not gone down yet does not count)."""
    answers = iter([("boot-1", "reboot-pending"), ("boot-1", "ready"), ("boot-2", "ready")])
    seen = []
    monkeypatch.setattr(secrets_push, "_probe", lambda client, host: seen.append(1) or next(answers))
    monkeypatch.setattr(secrets_push, "RETRY_SECONDS", 0)
    push(tmp_path, sshd, [PushFile(str(tmp_path / "ca.key"), SECRET, _owner_user())])
    assert len(seen) == 3 and (tmp_path / "ca.key").read_bytes() == SECRET


def test_push_cut_off_midway_starts_again_and_completes(sshd, tmp_path, monkeypatch):
    real_run, calls = secrets_push._run, []

    def flaky(client, command, data, host, what):
        calls.append(what)
        if what.endswith("ca.key") and calls.count(what) == 1:
            client.get_transport().close()  # the host reboots under us
        return real_run(client, command, data, host, what)

    monkeypatch.setattr(secrets_push, "_run", flaky)
    monkeypatch.setattr(secrets_push, "RETRY_SECONDS", 0)
    push(tmp_path, sshd, [PushFile(str(tmp_path / "ca.key"), SECRET, _owner_user())])
    assert (tmp_path / "ca.key").read_bytes() == SECRET and calls.count(str(tmp_path / "ca.key")) == 2


def test_unreachable_host_gives_up_with_one_line():
    with pytest.raises(SecretPushError, match="cannot connect"):
        push_files("127.0.0.1", [], user="root", port=free_port(), wait_seconds=0)


def test_secret_never_on_the_command_line():
    item = PushFile("/etc/agentctl-proxy/secrets/scout/github-pat", SECRET, "agentctl-proxy")
    command = write_command(item, use_sudo=True)
    assert command == f"sudo -n {INSTALL_SECRET_BIN} /etc/agentctl-proxy/secrets/scout/github-pat agentctl-proxy 0600"
    assert SECRET.decode() not in command and SECRET.decode() not in repr(item)


def test_fingerprint_format_matches_openssh(sshd):
    transport = paramiko.Transport(("127.0.0.1", sshd["port"]))
    transport.start_client(timeout=5)
    try:
        assert host_key_fingerprint(transport.get_remote_server_key()) == sshd["fingerprint"]
    finally:
        transport.close()
