"""The lab on Ubuntu 24.04, the clouds' default image: ssh is socket-activated there,
so the first boot ends in the one reboot converge asks for, and the host must come
back hardened. Runs when Ubuntu's archive answers (the image is built from it)."""
import json
import re
import shlex

import pytest

from tests.labrun import UBUNTU_RELEASE, booted_lab, escape_failures, needs_lab, root_network, ubuntu_archive_answers

pytestmark = [*needs_lab,
              pytest.mark.skipif(not ubuntu_archive_answers(), reason=f"{UBUNTU_RELEASE} does not answer")]


@pytest.fixture(scope="module")
def ubuntu_lab(tmp_path_factory):
    yield from booted_lab(tmp_path_factory.mktemp("labstate-ubuntu"), "--distro", "ubuntu-24.04")


def test_up_converges_after_the_first_boot_reboot(ubuntu_lab):
    up = ubuntu_lab["up"]
    assert up.returncode == 0, up.stdout + up.stderr
    assert "ubuntu-24.04" in up.stdout and up.stdout.count(" done ") >= 2, up.stdout


@pytest.mark.parametrize("host", ["proxy", "scout"])
def test_host_rebooted_once_for_sshd(ubuntu_lab, host):
    """The drop-in was newer than boot under socket activation: converge asked for one
    reboot, the host rebooted, and the second boot converged without asking again."""
    console = (ubuntu_lab["state_dir"] / "hosts" / host / "console.log").read_text(errors="replace")
    asked = [m.start() for m in re.finditer(r"rebooting once at the end of first boot", console)]
    rebooted = console.find("Rebooting.", asked[0] if asked else 0)
    converged = [m.start() for m in re.finditer(r"agentctl: \w+ host \w+ converged after", console)]
    assert len(asked) == 1 and rebooted > asked[0], "converge did not ask for exactly one reboot"
    assert converged and converged[-1] > rebooted, "the host did not converge again after its reboot"
    # systemd-shutdown waits 90 s for a process left in the host; the lab's wait once was one
    assert "Waiting for process" not in console[asked[0]:rebooted], console[asked[0]:rebooted][-2000:]


def test_proxy_runs_mitmproxy_12_as_on_a_real_ubuntu_host(ubuntu_lab):
    """Ubuntu 24.04's Python 3.12 gets what `pip install agentctl-proxy` gives a real host:
    mitmproxy 12.x (lab/image.py pins nothing there); the proxy imports with it."""
    probe = "import mitmproxy.version as v, agentctl_proxy.internals, sys; print(v.VERSION, sys.version[:4])"
    # ssh hands the remote shell one command line: quote it as one
    proc = ubuntu_lab["cli"]("ssh", "proxy", shlex.join(["/opt/agentctl-proxy/venv/bin/python", "-c", probe]))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    mitm, python = proc.stdout.split()
    assert mitm.startswith("12.") and python == "3.12", proc.stdout


def test_verify_passes(ubuntu_lab):
    proc = ubuntu_lab["cli"]("verify")
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]


def test_escape_holds(ubuntu_lab):
    rc, failed = escape_failures(ubuntu_lab["cli"])
    assert rc == 0 and not failed, json.dumps(failed, indent=1)


def test_down_leaves_the_machine_as_it_was(ubuntu_lab):
    ubuntu_lab["cli"]("down", check=0)
    assert root_network() == ubuntu_lab["before"]
