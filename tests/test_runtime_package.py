"""The versioned package runtime: the model's PackagePin, the grants it opens at
first boot, and the one install script every host renders from it."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agentctl.errors import ConfigError
from agentctl.model import PackagePin
from agentctl.stackfile import from_config, load

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]


def _with_runtime(runtime: dict):
    cfg = copy.deepcopy(BASE)
    cfg["agentctl:agents"][0]["runtime"] = runtime
    return from_config(cfg, "Pulumi.t.yaml")


CMD = {"exec": "/opt/agentctl-runtime/venv/bin/agent"}


def test_the_lab_agent_is_a_pinned_package_from_the_lab_index():
    pin = load(ROOT, "lab").agents[0].runtime.package_pin
    assert pin == PackagePin("agentctl-lab-agent", "1.0.0", (), "https://pypi.lab.test/simple/", ())
    assert pin.requirement == "agentctl-lab-agent==1.0.0"


def test_a_bare_command_runtime_has_no_pin():
    assert _with_runtime({"command": CMD}).agents[0].runtime.package_pin is None


def test_pypi_default_grants_the_simple_pages_and_the_files_host():
    d = _with_runtime({"package": {"name": "some-agent", "version": "2.0.1", "extras": ["web"]}, "command": CMD})
    agent = d.agents[0]
    pin = agent.runtime.package_pin
    assert pin.requirement == "some-agent[web]==2.0.1" and pin.index == "https://pypi.org/simple/"
    rules = [(r.host, r.methods, r.paths) for r in agent.bootstrap_rules]
    assert rules == [("pypi.org", ["GET"], ["/simple/*"]),
                     ("files.pythonhosted.org", ["GET"], ["/packages/*"])]


@pytest.mark.parametrize("package,where,what", [
    ({"name": "x", "version": ">=1.0"}, "version", "not a version"),
    ({"name": "x", "version": "1.0.0+local"}, "version", "not an exact version"),
    ({"name": "x", "version": "v1.0"}, "version", "expected '1.0'"),
    ({"name": "x y", "version": "1.0"}, "name", "'x y' is not in the expected form; expected a package name"),
    ({"name": "x", "version": "1.0", "index": "http://pypi.org/simple/"}, "index", "https"),
    ({"name": "x", "version": "1.0", "index": "https://pypi.org/simple"}, "index", "must end with '/'"),
])
def test_a_bad_package_is_one_line_naming_its_key(package, where, what):
    with pytest.raises(ConfigError) as exc:
        _with_runtime({"package": package, "command": CMD})
    msg = str(exc.value)
    assert "\n" not in msg and f"runtime.package.{where}" in msg and what in msg, msg


def test_a_package_needs_the_command_that_runs_it():
    with pytest.raises(ConfigError) as exc:
        _with_runtime({"package": {"name": "x", "version": "1.0"}})
    assert "needs 'command'" in str(exc.value)


def test_the_lab_proxy_grants_first_boot_the_index_and_converge_installs_through_the_script():
    from agentctl.ca import new_ca
    from agentctl.render import RUNTIME_INSTALL, render_hosts
    d = load(ROOT, "lab")
    _key, cert = new_ca("t")
    hosts = render_hosts(d, cert.decode(), stack="lab")
    proxy = next(h for h in hosts if h.role == "proxy")
    scout = yaml.safe_load(proxy.proxy_config)["agents"][0]
    assert scout["bootstrap"]["rules"] == [{"host": "pypi.lab.test", "methods": ["GET"], "paths": ["/simple/*"],
                                            "name": "runtime-package"}]
    agent = next(h for h in hosts if h.role == "agent")
    files = {f["path"]: f for f in yaml.safe_load(agent.user_data)["write_files"]}
    script = files[RUNTIME_INSTALL]
    assert script["permissions"] == "0700" and script["owner"] == "root:root"
    converge = files["/usr/local/sbin/agentctl-converge"]["content"]
    assert f"{RUNTIME_INSTALL} 1.0.0" in converge
    assert converge.index(f"{RUNTIME_INSTALL} 1.0.0") < converge.index("unit_on agentctl-agent.service")
