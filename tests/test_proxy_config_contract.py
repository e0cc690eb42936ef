"""The proxy config render writes is one the real agentctl-proxy accepts (and one
it refuses when broken): the contract between the two distributions."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentctl.ca import new_ca

from .conftest import EXAMPLE_STACKS


def _relocate(conf: dict, root: Path, pem: tuple[bytes, bytes]) -> dict:
    """Point every host path at files under `root`, as the proxy host would have them."""
    text = yaml.safe_dump(conf).replace("/etc/agentctl-proxy/", f"{root}/etc/").replace(
        "/var/log/agentctl-proxy/", f"{root}/log/")
    moved = yaml.safe_load(text)
    (root / "etc" / "secrets").mkdir(parents=True)
    (root / "log").mkdir()
    (root / "etc" / "ca.key").write_bytes(pem[0])
    (root / "etc" / "ca.crt").write_bytes(pem[1])
    (root / "etc" / "upstream-ca.pem").write_bytes(pem[1])
    for agent in moved.get("agents", []):
        for t in agent["transforms"]:
            for s in t["config"].get("secrets", []):
                if s["source"]["type"] == "file":
                    Path(s["source"]["path"]).parent.mkdir(parents=True, exist_ok=True)
                    Path(s["source"]["path"]).write_text("test-token\n")
    return moved


def _check(conf: dict, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "proxy.yaml"
    path.write_text(yaml.safe_dump(conf))
    env = dict(os.environ, AWS_EC2_METADATA_DISABLED="true")
    return subprocess.run([sys.executable, "-m", "agentctl_proxy", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=120, env=env)


@pytest.mark.parametrize("stack", EXAMPLE_STACKS)
def test_rendered_proxy_config_passes_check(rendered, stack, tmp_path):
    proxy = next(h for h in rendered[stack] if h.role == "proxy")
    conf = _relocate(yaml.safe_load(proxy.proxy_config), tmp_path, new_ca("t"))
    result = _check(conf, tmp_path)
    assert result.returncode == 0, result.stderr


def test_broken_proxy_config_is_refused(rendered, tmp_path):
    proxy = next(h for h in rendered["lab"] if h.role == "proxy")
    conf = _relocate(yaml.safe_load(proxy.proxy_config), tmp_path, new_ca("t"))
    conf["agents"][0]["transforms"][0]["config"]["rules"][0]["hostt"] = "typo"
    result = _check(conf, tmp_path)
    assert result.returncode == 2 and "hostt" in result.stderr
