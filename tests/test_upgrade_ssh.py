"""snapshot-upgrade's SSH: a real paramiko SSH server on loopback; the host key must match
the pinned one, and every way of not reaching the host is one line of bad input."""
from __future__ import annotations

import shlex
import socket
import threading
import time
from pathlib import Path

import paramiko
import pytest

from agentctl.errors import ConfigError
from agentctl.upgrade.ssh import AdminSsh
from tests.loopback import Front


class _Server(paramiko.ServerInterface):
    def __init__(self, allowed: paramiko.PKey):
        self.allowed, self.event = allowed, threading.Event()

    def check_auth_publickey(self, username, key):
        ok = username == "admin" and key.get_base64() == self.allowed.get_base64()
        return paramiko.AUTH_SUCCESSFUL if ok else paramiko.AUTH_FAILED

    def get_allowed_auths(self, username):
        return "publickey"

    def check_channel_request(self, kind, chanid):
        return paramiko.OPEN_SUCCEEDED if kind == "session" else paramiko.OPEN_FAILED_ADMINISTRATIVELY_PROHIBITED

    def check_channel_exec_request(self, channel, command):
        def answer():
            channel.sendall(b"ran: " + command)
            channel.sendall_stderr(b"warn")
            channel.send_exit_status(3)
            channel.close()
        # Answer only after paramiko has sent the exec request's success reply (it does
        # so when this returns): closing first makes the client see 'Channel closed'.
        timer = threading.Timer(0.2, answer)
        timer.daemon = True
        timer.start()
        return True


@pytest.fixture
def server():
    host_key = paramiko.Ed25519Key.generate() if hasattr(paramiko.Ed25519Key, "generate") else paramiko.ECDSAKey.generate()
    client_key = paramiko.ECDSAKey.generate()
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(5)
    transports = []

    def serve():
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            t = paramiko.Transport(conn)
            t.add_server_key(host_key)
            transports.append(t)
            try:
                t.start_server(server=_Server(client_key))
            except Exception:
                pass

    threading.Thread(target=serve, daemon=True).start()
    yield listener.getsockname()[1], host_key, client_key
    listener.close()
    for t in transports:
        t.close()


def pin(path: Path, key: paramiko.PKey, name: str = "scout") -> Path:
    """The key pinned by the stack's host name, as `agentctl hostkeys` and verify pin it."""
    path.write_text(f"{name} {key.get_name()} {key.get_base64()}\n")
    return path


def key_file(tmp_path: Path, key: paramiko.PKey) -> Path:
    path = tmp_path / "id"
    key.write_private_key_file(str(path))
    return path


def test_pinned_key_connects_and_runs(tmp_path, server):
    port, host_key, client_key = server
    with AdminSsh("scout", "127.0.0.1", pin(tmp_path / "kh", host_key), key_file(tmp_path, client_key),
                  port=port) as ssh:
        result = ssh.run("cat /etc/agentctl/runtime-version")
    assert (result.rc, result.out, result.err) == (3, "ran: cat /etc/agentctl/runtime-version", "warn")


def test_a_changed_host_key_is_refused_in_one_line(tmp_path, server):
    port, _, client_key = server
    other = paramiko.ECDSAKey.generate()
    other_line = pin(tmp_path / "kh", other)
    with pytest.raises(ConfigError) as err:
        AdminSsh("scout", "127.0.0.1", other_line, key_file(tmp_path, client_key), port=port).connect()
    line = str(err.value)
    assert "\n" not in line and line.startswith("--host: scout:")
    assert "changed" in line or "is not pinned" in line


def test_a_changed_key_of_the_same_type_names_both_fingerprints(tmp_path, server):
    port, host_key, client_key = server
    same_type = type(host_key).generate() if hasattr(type(host_key), "generate") else None
    if same_type is None:
        pytest.skip("this paramiko cannot generate the server's key type")
    with pytest.raises(ConfigError, match="host key of 127.0.0.1 changed") as err:
        AdminSsh("scout", "127.0.0.1", pin(tmp_path / "kh", same_type), key_file(tmp_path, client_key),
                 port=port).connect()
    assert same_type.fingerprint in str(err.value) and host_key.fingerprint in str(err.value)


def test_an_unpinned_host_is_refused_never_accepted(tmp_path, server):
    port, host_key, client_key = server
    # Pinned by address only: the stack knows hosts by name (a key for 127.0.0.1 vouches for
    # no host of the stack), as verify looks them up.
    (tmp_path / "kh").write_text(f"[127.0.0.1]:{port} {host_key.get_name()} {host_key.get_base64()}\n")
    before = (tmp_path / "kh").read_text()
    with pytest.raises(ConfigError, match="the host key of 127.0.0.1 is not pinned") as err:
        AdminSsh("scout", "127.0.0.1", tmp_path / "kh", key_file(tmp_path, client_key), port=port).connect()
    assert str(err.value).startswith("--host: scout:") and "pinned under scout" in str(err.value)
    assert (tmp_path / "kh").read_text() == before  # nothing learned
    with pytest.raises(ConfigError, match="no pinned host keys"):
        AdminSsh("scout", "127.0.0.1", tmp_path / "missing", key_file(tmp_path, client_key), port=port).connect()


def test_an_unreachable_host_is_bad_input(tmp_path):
    probe = socket.socket()
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()  # nothing listens there now
    (tmp_path / "kh").write_text("")
    with pytest.raises(ConfigError, match=f"127.0.0.1:{port} is unreachable") as err:
        AdminSsh("scout", "127.0.0.1", tmp_path / "kh", port=port, timeout=3).connect()
    assert err.value.exit_code == 2


def test_a_wrong_client_key_is_refused(tmp_path, server):
    port, host_key, _ = server
    with pytest.raises(ConfigError, match="refused our key"):
        AdminSsh("scout", "127.0.0.1", pin(tmp_path / "kh", host_key),
                 key_file(tmp_path, paramiko.ECDSAKey.generate()), port=port).connect()


def test_a_host_still_booting_is_waited_for(tmp_path, server):
    port, host_key, client_key = server
    booting = Front(to=port, close_first=2)  # the first two connections meet a host still booting
    impatient = AdminSsh("scout", "127.0.0.1", pin(tmp_path / "kh", host_key), key_file(tmp_path, client_key),
                         port=booting.port, timeout=3)
    with pytest.raises(ConfigError, match="is unreachable .*Error reading SSH protocol banner"):
        impatient.connect()
    assert booting.accepted == 1
    ssh = AdminSsh("scout", "127.0.0.1", pin(tmp_path / "kh", host_key), key_file(tmp_path, client_key),
                   port=booting.port, timeout=3)
    with ssh.patient(60) as ready:
        assert ready.run("true").rc == 3
    assert booting.accepted == 3
    booting.close()


def test_patience_never_retries_a_changed_host_key(tmp_path, server):
    port, _, client_key = server
    other = paramiko.ECDSAKey.generate()
    started = time.monotonic()
    with pytest.raises(ConfigError, match="changed|is not pinned"):
        AdminSsh("scout", "127.0.0.1", pin(tmp_path / "kh", other), key_file(tmp_path, client_key),
                 port=port).patient(120).connect()
    assert time.monotonic() - started < 20  # refused at the first answer, not after the patience


def test_lab_relay_keeps_an_idle_session_open():
    """The lab's relay run as the lab runs it (paramiko's ProxyCommand, minus the admin
    namespace), with a short connect timeout: a session idle past that timeout still
    carries bytes (acceptance holds its session open while the role suite runs)."""
    from agentctl.upgrade.command import lab_relay

    connect_timeout = 1.0
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def echo():
        conn, _ = listener.accept()
        with conn:
            while data := conn.recv(65536):
                conn.sendall(data)
    threading.Thread(target=echo, daemon=True).start()
    relay = paramiko.ProxyCommand(shlex.join(lab_relay("127.0.0.1", port, connect_timeout=connect_timeout)))
    relay.settimeout(5)  # without one, paramiko's recv spins forever on a dead relay's EOF
    try:
        relay.send(b"first\n")
        assert relay.recv(6) == b"first\n"
        time.sleep(connect_timeout + 1)  # idle past the connect timeout
        try:
            relay.send(b"after idle\n")
            echoed = relay.recv(11)
        except (OSError, paramiko.ProxyCommandFailure) as exc:  # a dead relay: EPIPE, or no answer
            echoed = repr(exc)
        if echoed != b"after idle\n":
            relay.process.kill()  # its stderr can be read to the end now
            pytest.fail(f"the idle session is gone ({echoed!r}): {relay.process.stderr.read().decode()}")
    finally:
        relay.process.kill()  # (paramiko's close() would os.kill a pid the failure above reaped)
        relay.process.wait()
        listener.close()
