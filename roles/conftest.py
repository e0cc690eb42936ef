"""Shared fixtures of the role suites: the deployment the host was rendered from, and
this host's place in it. Run through `agentctl verify`, which passes the options."""
from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentctl import baseline, hardening
from agentctl.model import Deployment
from agentctl.stackfile import load


def pytest_addoption(parser):
    parser.addoption("--agentctl-stack", required=True)
    parser.addoption("--agentctl-project-dir", default=".")
    parser.addoption("--agentctl-distro", default=None, help="the distro the host runs, when not the stack's")
    parser.addoption("--agentctl-host", required=True, help="host name in the stack")
    parser.addoption("--agentctl-known-hosts", required=True, help="the stack's pinned SSH host keys")
    parser.addoption("--agentctl-jump", default=None, help="[NAME=]USER@ADDRESS[:PORT]")
    parser.addoption("--agentctl-proxy-command", default=None)


def pytest_configure(config):
    """Every paramiko login of the suites refuses a host key that is not the pinned one."""
    from agentctl import sshtrust
    jump, proxy_command = sshtrust.admin_path(config.getoption("--agentctl-jump"),
                                              config.getoption("--agentctl-proxy-command"))
    sshtrust.use_in_testinfra(config.getoption("--agentctl-host"),
                              known_hosts=Path(config.getoption("--agentctl-known-hosts")),
                              jump=jump, proxy_command=proxy_command)


@pytest.fixture(scope="session")
def deployment(pytestconfig) -> Deployment:
    return load(Path(pytestconfig.getoption("--agentctl-project-dir")), pytestconfig.getoption("--agentctl-stack"),
                distro=pytestconfig.getoption("--agentctl-distro"))


@pytest.fixture(scope="session")
def host_name(pytestconfig) -> str:
    return pytestconfig.getoption("--agentctl-host")


@pytest.fixture(scope="session")
def role(deployment, host_name) -> str:
    return "proxy" if host_name == deployment.proxy.name else "agent"


@pytest.fixture(scope="session")
def private_ip(deployment, host_name, role) -> str:
    if role == "proxy":
        return deployment.proxy_ip
    return deployment.agent_ip(next(a for a in deployment.agents if a.name == host_name))


@pytest.fixture(scope="session")
def root(pytestconfig):
    """The same host, every command through sudo (the suites log in as admin)."""
    import testinfra
    return testinfra.get_host(pytestconfig.getoption("--hosts"), sudo=True,
                              ssh_identity_file=pytestconfig.getoption("--ssh-identity-file"),
                              ssh_config=pytestconfig.getoption("--ssh-config"))


@pytest.fixture(scope="session")
def in_container(root) -> bool:
    return root.run("systemd-detect-virt --container --quiet").rc == 0


@pytest.fixture(scope="session")
def own_kernel(in_container):
    """own_kernel(what): skip where `what` belongs to the machine's kernel, inside a
    container (the lab's default hosts); the VM lab and the cloud hosts judge it."""
    def need(what: str) -> None:
        if in_container:
            pytest.skip(f"{what}: the machine's own inside a container; judged on a host with its own kernel")
    return need


@pytest.fixture(scope="session")
def audited(root):
    """audited(key, command): run `command` through sudo and return the audit records
    `key` holds for that very process (its pid: the shell execs it), interpreted; an
    earlier run's records cannot match."""
    def run(key: str, command: str, wait: float = 10) -> str:
        pid = root.check_output(f"sh -c 'echo $$; exec {command}'").split()[0]
        deadline = time.monotonic() + wait  # auditd writes its log a moment after the kernel sends
        while (found := root.run(f"ausearch --input-logs -i -k {key} -p {pid} -ts recent")).rc != 0:
            assert time.monotonic() < deadline, f"no audit record with key {key} for pid {pid}: {found.stderr}"
            time.sleep(0.5)
        return found.stdout
    return run


@pytest.fixture(scope="session")
def ssh_target(pytestconfig):
    """(address, port) of the host as the verifier reaches it."""
    from agentctl.verify import SPEC
    spec = pytestconfig.getoption("--hosts")
    m = SPEC.match(spec)
    return m.group("addr"), int(m.group("port") or 22)


@pytest.fixture(scope="session")
def ssh_key_file(pytestconfig):
    return pytestconfig.getoption("--ssh-identity-file")


@pytest.fixture(scope="session")
def waivers():
    """roles/baseline-waivers.yaml: the dev-sec controls these hosts fail on purpose."""
    return baseline.load_waivers()


@pytest.fixture
def judge(waivers, role):
    """judge(control, ok, detail): a baseline control's verdict (agentctl.baseline.verdict)."""
    return lambda control, ok, detail: baseline.verdict(waivers, role, control, ok, detail)


@pytest.fixture(scope="session")
def sshd_out(root) -> str:
    """`sshd -T` for an admin login: sshd's effective configuration, drop-ins included
    (read once; the base and ssh-baseline suites both judge it)."""
    return root.check_output(hardening.SSHD_T)


@pytest.fixture(scope="session")
def sshd(sshd_out) -> dict[str, str]:
    return hardening.parse_sshd_effective(sshd_out)
