"""The proxy's secret installer and its sudo rule, read back as the host reads them:
sudoers through the real `visudo -c`, the script through `bash -n`. The lab test
(tests/test_lab_secret_push_logs.py) proves the same on a running host with a real push."""
from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from agentctl.secrets import INSTALL_SECRET_BIN
from agentctl.secrets_push import PushFile, write_command

SUDOERS = "/etc/agentctl/sudoers"
PROXIES = [("lab", "proxy"), ("example-aws", "proxy"), ("example-hcloud", "proxy")]
AGENTS = [("lab", "scout"), ("example-hcloud", "scout")]
EXEMPTION = re.compile(r"^Defaults!(\S+) !log_input, !log_output$", re.M)


@pytest.mark.skipif(not shutil.which("visudo"), reason="needs visudo (apt-get install sudo)")
@pytest.mark.parametrize("stack,name", PROXIES)
def test_proxy_sudoers_exempts_only_the_installer_and_visudo_accepts_it(hosts, stack, name, tmp_path):
    text = hosts[stack, name].file(SUDOERS)
    assert EXEMPTION.findall(text) == [INSTALL_SECRET_BIN]
    assert re.search(r"^Defaults log_input, log_output$", text, re.M), "every other command stays I/O-logged"
    path = tmp_path / "sudoers"
    path.write_text(text)
    check = subprocess.run(["visudo", "-cf", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("stack,name", AGENTS)
def test_agents_have_no_unlogged_command(hosts, stack, name):
    assert "!log_input" not in hosts[stack, name].file(SUDOERS)
    assert INSTALL_SECRET_BIN not in hosts[stack, name].files


@pytest.mark.parametrize("stack,name", PROXIES)
def test_the_push_runs_exactly_the_exempted_installer(hosts, stack, name, tmp_path):
    """sudo matches `Defaults!CMD` on the command path: the push must run that path, the
    secret only on stdin."""
    item = PushFile("/etc/agentctl-proxy/secrets/scout/github-pat", b"sk-secret", "agentctl-proxy")
    argv = shlex.split(write_command(item, use_sudo=True))
    assert argv[:3] == ["sudo", "-n", INSTALL_SECRET_BIN] and "sk-secret" not in argv
    script = hosts[stack, name].files[INSTALL_SECRET_BIN]
    assert script["permissions"] == "0755" and script["owner"] == "root:root"
    (tmp_path / "s").write_text(script["content"])
    assert subprocess.run(["bash", "-n", str(tmp_path / "s")]).returncode == 0
