"""A real secret push onto the lab's proxy host leaves the secret in no log.

The lab's proxy runs the sudo config every proxy gets (templates/sudoers.j2, with
`Defaults log_input, log_output`). The push goes as on Hetzner: paramiko from the admin
namespace, as `admin`, through sudo. Then every file under /var/log (sudo's I/O logs
are gzip-compressed: read through `zcat -f`) and the whole journal are searched for the
secret. A control in the same session pipes another value into `sudo sh -c 'cat > ...'`
(what the push did before) and must be found in /var/log/sudo-io: it proves the search
would see a leak. Needs root, systemd-nspawn and mmdebstrap; run under
`flock /run/agentctl-lab.lock`.
"""
from __future__ import annotations

import secrets
import subprocess
import sys

import pytest

from agentctl.lab import hosts, lab, topology
from agentctl.secrets import secret_file_path
from agentctl.stackfile import load
from tests.labrun import ROOT, lab_cli, needs_lab

pytestmark = needs_lab

PUSH = r'''
import sys
from agentctl.secrets_push import PushFile, push_files
host, key, path, value = sys.argv[1:5]
push_files(host, [PushFile(path, value.encode(), "agentctl-proxy")], user="admin", key_filename=key,
           wait_seconds=120)
'''


@pytest.fixture(scope="module")
def proxy_lab(tmp_path_factory):
    state_dir = tmp_path_factory.mktemp("labstate")
    cli = lab_cli(state_dir)
    try:
        cli("up", check=0)
        yield {"state_dir": state_dir, "deployment": load(ROOT, "lab")}
    finally:
        cli("down")


def found_in_logs(ns: str, value: str) -> list[str]:
    """Where value appears on the host: each log file (decompressed) and the journal."""
    where = []
    files = hosts.run_in(ns, "sh", "-c", "find /var/log -type f 2>/dev/null", timeout=30).stdout.split()
    for path in files:
        if hosts.run_in(ns, "sh", "-c", f"zcat -f '{path}' | grep -qaF -e \"$0\"", value, timeout=30).returncode == 0:
            where.append(path)
    if hosts.run_in(ns, "sh", "-c", 'journalctl --no-pager -o export | grep -qaF -e "$0"', value,
                    timeout=60).returncode == 0:
        where.append("journal")
    return where


def test_a_pushed_secret_is_in_no_log_but_the_old_way_was(proxy_lab):
    d, state_dir = proxy_lab["deployment"], proxy_lab["state_dir"]
    ns = topology.host_netns(d.proxy.name)
    agent = d.agents[0].name
    pushed, control = f"sk-pushed-{secrets.token_hex(12)}", f"sk-control-{secrets.token_hex(12)}"
    path = secret_file_path(agent, "log-canary")

    push = subprocess.run(["ip", "netns", "exec", topology.ADMIN_NS, sys.executable, "-c", PUSH,
                           d.proxy_ip, str(lab.ssh_key(state_dir)), path, pushed],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert push.returncode == 0, push.stderr[-2000:]
    assert hosts.run_in(ns, "cat", path).stdout == pushed  # it did land
    assert hosts.run_in(ns, "stat", "-c", "%U %a", path).stdout.split() == ["agentctl-proxy", "600"]

    old_way = subprocess.run(lab.ssh_argv(d, state_dir, d.proxy.name, ["sudo", "-n", "sh", "-c", "'cat > /dev/null'"]),
                             input=control, capture_output=True, text=True, timeout=60)
    assert old_way.returncode == 0, old_way.stderr
    hosts.run_in(ns, "journalctl", "--flush", timeout=30)

    assert any(p.startswith("/var/log/sudo-io/") for p in found_in_logs(ns, control)), \
        "the control value piped through `sudo sh -c` is not in sudo's I/O log: the search is blind"
    assert found_in_logs(ns, pushed) == []
