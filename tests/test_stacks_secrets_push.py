"""Secrets reach the Hetzner proxy over SSH, never through user-data: tested against a
real sshd on loopback (throwaway host and client keys)."""
from __future__ import annotations

import os
import pwd
import socket
import stat
import subprocess
import time
from pathlib import Path

import paramiko
import pytest

from agentctl.secrets_push import PushFile, SecretPushError, host_key_fingerprint, push_files, write_command

SSHD = "/usr/sbin/sshd"
SECRET = b"ghp_this-must-never-be-printed-0123456789"

pytestmark = [
    pytest.mark.skipif(not Path(SSHD).exists(), reason="needs openssh-server (apt-get install openssh-server)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="sshd with a chown target needs root"),
]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("sshd")
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "host_key")], check=True)
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp / "client_key")], check=True)
    (tmp / "authorized_keys").write_text((tmp / "client_key.pub").read_text())
    port = _free_port()
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    (tmp / "sshd_config").write_text(
        f"ListenAddress 127.0.0.1\nPort {port}\nHostKey {tmp / 'host_key'}\nPidFile {tmp / 'sshd.pid'}\n"
        f"AuthorizedKeysFile {tmp / 'authorized_keys'}\nPermitRootLogin prohibit-password\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\nStrictModes no\n")
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(tmp / "sshd_config")], stderr=subprocess.PIPE)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            time.sleep(0.05)
    yield {"port": port, "key": str(tmp / "client_key"), "dir": tmp, "proc": proc,
           "fingerprint": subprocess.run(["ssh-keygen", "-l", "-f", str(tmp / "host_key.pub")], capture_output=True,
                                         text=True, check=True).stdout.split()[1]}
    proc.terminate()
    proc.wait(timeout=5)


def _owner_user() -> str:
    # Any unprivileged account with a login group stands in for agentctl-proxy.
    return pwd.getpwnam("nobody").pw_name


def test_push_writes_files_0600_owned_by_the_proxy_user(sshd, tmp_path, capfd):
    target = tmp_path / "secrets" / "scout" / "github-pat"
    ca_key = tmp_path / "ca.key"
    fingerprint = push_files("127.0.0.1", [PushFile(str(target), SECRET, _owner_user()),
                                           PushFile(str(ca_key), b"-----BEGIN PRIVATE KEY-----\n", _owner_user())],
                             user="root", port=sshd["port"], key_filename=sshd["key"], wait_seconds=10)
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
    target = tmp_path / "s"
    for content in (b"old", b"new"):
        push_files("127.0.0.1", [PushFile(str(target), content, _owner_user())], user="root", port=sshd["port"],
                   key_filename=sshd["key"], expected_host_key=sshd["fingerprint"], wait_seconds=10)
    assert target.read_bytes() == b"new"


def test_wrong_pinned_host_key_refuses_before_sending(sshd, tmp_path):
    target = tmp_path / "s"
    with pytest.raises(SecretPushError, match="not the pinned") as info:
        push_files("127.0.0.1", [PushFile(str(target), SECRET, _owner_user())], user="root", port=sshd["port"],
                   key_filename=sshd["key"], expected_host_key="SHA256:someoneelse", wait_seconds=10)
    assert not target.exists()
    assert SECRET.decode() not in str(info.value)


def test_failed_write_names_the_path_not_the_secret(sshd, tmp_path):
    with pytest.raises(SecretPushError) as info:
        push_files("127.0.0.1", [PushFile(str(tmp_path / "x"), SECRET, "no-such-user-agentctl")], user="root",
                   port=sshd["port"], key_filename=sshd["key"], wait_seconds=10)
    assert str(tmp_path / "x") in str(info.value) and SECRET.decode() not in str(info.value)


def test_unreachable_host_gives_up_with_one_line():
    with pytest.raises(SecretPushError, match="cannot connect"):
        push_files("127.0.0.1", [], user="root", port=_free_port(), wait_seconds=0)


def test_secret_never_on_the_command_line():
    item = PushFile("/etc/agentctl-proxy/secrets/scout/github-pat", SECRET, "agentctl-proxy")
    command = write_command(item, use_sudo=True)
    assert command.startswith("sudo -n sh -c ")
    assert SECRET.decode() not in command and SECRET.decode() not in repr(item)


def test_fingerprint_format_matches_openssh(sshd):
    transport = paramiko.Transport(("127.0.0.1", sshd["port"]))
    transport.start_client(timeout=5)
    try:
        assert host_key_fingerprint(transport.get_remote_server_key()) == sshd["fingerprint"]
    finally:
        transport.close()
