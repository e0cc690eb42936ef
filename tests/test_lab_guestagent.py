"""agentctl/lab/guestagent.py against the real QEMU guest agent (qemu-ga from Debian's
qemu-guest-agent, the same binary the VM image runs), listening on a unix socket here
instead of a virtio port: the protocol is the same, only the transport differs."""
from __future__ import annotations

import os
import shutil
import subprocess
import time

import pytest

from agentctl.lab import guestagent, hosts

pytestmark = [pytest.mark.skipif(shutil.which("qemu-ga") is None, reason="qemu-ga (qemu-guest-agent) is needed"),
              pytest.mark.skipif(os.geteuid() != 0, reason="qemu-ga runs commands as its own user: root here")]


@pytest.fixture
def agent(tmp_path):
    sock = tmp_path / "qga.sock"
    proc = subprocess.Popen(["qemu-ga", "-m", "unix-listen", "-p", str(sock), "-t", str(tmp_path),
                             "-f", str(tmp_path / "qga.pid")], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 10
    while not sock.exists():
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode()
        time.sleep(0.05)
    yield sock
    proc.terminate()
    proc.wait(10)


def test_output_exit_code_and_input_come_back(agent):
    proc = guestagent.run(agent, ["sh", "-c", "cat; echo to-stderr >&2; exit 3"], input="in\u00e9put")
    assert (proc.returncode, proc.stdout, proc.stderr) == (3, "in\u00e9put", "to-stderr\n")


def test_a_command_that_outlasts_its_timeout_raises_and_is_killed_in_the_guest(agent, tmp_path):
    marker = tmp_path / "still-running"
    with pytest.raises(subprocess.TimeoutExpired):
        guestagent.run(agent, ["sh", "-c", f"sleep 3; touch {marker}"], timeout=1)
    time.sleep(4)  # the guest's own `timeout` ended it: the file never appears
    assert not marker.exists()


def test_as_user_drops_to_the_user_with_no_capabilities(agent):
    proc = guestagent.run(agent, hosts.as_user(["sh", "-c", "id -un; grep ^CapEff /proc/self/status"], "daemon"))
    assert proc.returncode == 0, proc.stderr
    user, caps = proc.stdout.splitlines()
    assert user == "daemon" and caps.split()[1] == "0000000000000000", proc.stdout


def test_no_agent_is_an_error_not_a_hang(tmp_path):
    with pytest.raises(guestagent.GuestAgentError, match="qga.sock"):
        guestagent.run(tmp_path / "qga.sock", ["true"], connect_timeout=2)
