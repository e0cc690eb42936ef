"""AWS: the proxy's policy-pull (roles/proxy/templates/policy-pull.py.j2) for real: the
rendered script, run by Python with boto3 against moto_server on loopback, the real
`agentctl-proxy check`, and a recording `systemctl` on PATH. A new policy is written and
reloaded; the same one is left alone; one that does not check is refused and the old one
stays."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import boto3
import pytest

from agentctl.ca import ensure_ca
from agentctl.render import _env, render_hosts
from agentctl.secrets import proxy_config_parameter_name
from agentctl.stackfile import load
from agentctl.policy_parameter import pack as packed_config
from tests.loopback import free_port
from tests.test_stacks_harness import ROOT

VENV_BIN = Path(sys.executable).parent
PARAMETER = proxy_config_parameter_name("agentctl", "example-aws")


@pytest.fixture(scope="module")
def ssm(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    proc = subprocess.Popen([str(VENV_BIN / "moto_server"), "-H", "127.0.0.1", "-p", str(port)], stdout=log,
                            stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing"}
    client = boto3.client("ssm", region_name="us-east-1", endpoint_url=env["AWS_ENDPOINT_URL"],
                          aws_access_key_id="testing", aws_secret_access_key="testing")
    for _ in range(100):
        try:
            client.describe_parameters()
            break
        except Exception:
            time.sleep(0.1)
    yield env, client
    proc.terminate()
    proc.wait(10)


@pytest.fixture
def host(tmp_path, ssm):
    env, client = ssm
    d = load(ROOT, "example-aws")
    script = tmp_path / "policy-pull"
    script.write_text(_env("proxy").get_template("policy-pull.py.j2").render(
        proxy_config_parameter=PARAMETER, region="us-east-1", proxy_config_path=str(tmp_path / "config.yaml"),
        proxy_bin=str(VENV_BIN / "agentctl-proxy"), proxy_group="root"))
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "systemctl").write_text(f"#!/bin/sh\necho \"$@\" >> {tmp_path / 'systemctl.log'}\n")
    (fake / "systemctl").chmod(0o755)
    env = {**os.environ, **env, "PATH": f"{fake}:{os.environ['PATH']}"}

    def pull(config: str | None = None) -> subprocess.CompletedProcess:
        if config is not None:
            client.put_parameter(Name=PARAMETER, Value=packed_config(config), Type="String", Overwrite=True)
        return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=60)

    ca = ensure_ca(tmp_path, "example-aws")
    (proxy,) = [h for h in render_hosts(d, ca.cert_pem, stack="example-aws") if h.role == "proxy"]
    # check reads the CA certificate the config names: here, the test's own
    (tmp_path / "ca.crt").write_text(ca.cert_pem)
    return pull, tmp_path, proxy.proxy_config.replace("/etc/agentctl-proxy/ca.crt", str(tmp_path / "ca.crt"))


def _reloads(folder: Path) -> list[str]:
    log = folder / "systemctl.log"
    return log.read_text().splitlines() if log.exists() else []


def test_a_new_policy_is_written_and_reloaded_the_same_one_left_alone(host):
    pull, folder, config = host
    first = pull(config)
    assert first.returncode == 0, first.stderr
    assert (folder / "config.yaml").read_text() == config
    assert oct((folder / "config.yaml").stat().st_mode & 0o777) == "0o640"
    assert _reloads(folder) == ["try-reload-or-restart agentctl-proxy.service"]
    assert pull().returncode == 0 and len(_reloads(folder)) == 1, "unchanged: no reload"
    edited = config.replace("/repos/acme/app/*", "/repos/acme/other/*")
    assert edited != config
    assert pull(edited).returncode == 0
    assert (folder / "config.yaml").read_text() == edited and len(_reloads(folder)) == 2


def test_a_policy_that_does_not_check_is_refused_the_old_one_stays(host):
    pull, folder, config = host
    assert pull(config).returncode == 0
    bad = pull(config.replace("tunnel_listen:", "tunnel_lissen:"))
    assert bad.returncode == 1
    assert "refused by check, the old policy stays" in bad.stderr and PARAMETER in bad.stderr
    assert (folder / "config.yaml").read_text() == config and len(_reloads(folder)) == 1
    assert not (folder / "config.yaml.agentctl-new").exists()
