"""Messages in the user's words, for the stack file and proxy.yaml alike (one formatter,
agentctl_proxy/schema/errors.py): file, key path, what is wrong, what is expected, with
an example; an unknown key named as unknown even when a required key is also missing;
never pydantic's wording or a regular expression. Each message is read in full."""
from __future__ import annotations

import copy
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentctl.errors import ConfigError
from agentctl.stackfile import from_config
from agentctl_proxy.config import ConfigError as ProxyConfigError
from agentctl_proxy.config import parse_config

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
JARGON = re.compile(r"should (match|have|be)|after validation|Input should|valid string|\^\[|Value error|type=")
RULE_KEYS = "allow_encoded_slashes, cidr, host, methods, name, paths, ports, rate_limit"


def _agent(c):
    return c["agentctl:agents"][0]


STACK_CASES = [
    (lambda c: _agent(c)["egress"]["rules"][0].update(method=["GET"]),
     f"agentctl:agents[0].egress.rules[0].method: unknown key (did you mean 'methods'?); expected one of: {RULE_KEYS}"),
    # runtime is required and missing too: the typo is what the user must see
    (lambda c: _agent(c).update(runtim=_agent(c).pop("runtime")),
     "agentctl:agents[0].runtim: unknown key (did you mean 'runtime'?) (and 1 more problem); expected one of:"
     " backups, bootstrap,"
     " egress, hostNumber, name, runtime, size"),
    (lambda c: c.update({"agentctl:network": {"cidr": "10.20.0.0"}}),
     "agentctl:network.cidr: '10.20.0.0' has no prefix length; expected address/prefix, e.g. 10.20.0.0/16"
     " (a network) or 10.20.0.0/32 (one address)"),
    (lambda c: _agent(c).update(name="Scout_1"),
     "agentctl:agents[0].name: 'Scout_1' is not in the expected form; expected a host name of 2 to 32"
     " lower-case letters, digits and -, starting with a letter, e.g. scout"),
    (lambda c: _agent(c)["egress"]["secrets"][0].update(rules=[]),
     "agentctl:agents[0].egress.secrets[0].rules: is empty; expected at least one rule saying where to inject,"
     ' e.g. [{"host": "api.github.com"}]'),
    (lambda c: c.update({"agentctl:adminSshKeys": []}),
     "agentctl:adminSshKeys: is empty; expected at least one entry"),
    (lambda c: _agent(c)["egress"]["rules"][0].update(methods=[]),
     "agentctl:agents[0].egress.rules[0].methods: is empty; leave methods out (or write ['*']) to allow every"
     " method, e.g. [GET, POST]"),
    (lambda c: _agent(c)["egress"]["rules"][0].update(host=["api.lab.test"]),
     "agentctl:agents[0].egress.rules[0].host: a list is not text; expected an exact name, '*' or"
     " '*.example.com', e.g. api.github.com"),
    (lambda c: _agent(c)["egress"]["secrets"][0]["source"].update(ttl=900),
     "agentctl:agents[0].egress.secrets[0].source.ttl: 900 is not a duration; expected a whole number and a"
     " unit (ms, s, m or h), e.g. 30s or 15m"),
    (lambda c: c["agentctl:proxy"].update(listen={"tunnel": 443}),
     "agentctl:proxy.listen: tunnel and https both listen on port 443; expected a different port or address"
     " for each listener"),
]


def test_render_refuses_a_listener_clash_with_one_line(tmp_path):
    for name in ("Pulumi.yaml", "Pulumi.lab.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    stack = tmp_path / "Pulumi.lab.yaml"
    stack.write_text(stack.read_text().replace("listen: {tunnel: 8080, https: 443, http: 80, dns: 53}",
                                               "listen: {tunnel: 443}"))
    proc = subprocess.run([sys.executable, "-m", "agentctl.cli", "render", "--stack", "lab", "--out", "out"],
                          cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and not (tmp_path / "out").exists()
    assert proc.stderr == ("agentctl: Pulumi.lab.yaml: agentctl:proxy.listen: tunnel and https both listen on port 443; expected a"
                           " different port or address for each listener\n")


PROXY = {"proxy": {"tunnel_listen": "10.0.1.10:8080"}, "tls": {"ca_cert": "/c", "ca_key": "/k"},
         "agents": [{"name": "scout", "sources": ["10.0.2.11/32"], "transforms": [
             {"name": "allowlist", "config": {"rules": [{"host": "api.github.com", "methods": ["GET"]}]}},
             {"name": "secrets", "config": {"secrets": [{"source": {"type": "env", "var": "T"},
                                                         "inject": {"header": "Authorization"},
                                                         "rules": [{"host": "api.github.com"}]}]}}]}]}
SECRET = ("agents", 0, "transforms", 1, "config", "secrets", 0)

PROXY_CASES = [
    (lambda d: d["proxy"].update(tunnel_listen=8080),
     'proxy.tunnel_listen: 8080 is a number; expected HOST:PORT in quotes, e.g. "10.0.1.10:8080" or ":8080"'
     " (every address)"),
    (lambda d: d["agents"][0]["transforms"][0]["config"]["rules"][0].update(method=["GET"]),
     f"agents[0].transforms[0].config.rules[0].method: unknown key (did you mean 'methods'?); expected one of:"
     f" {RULE_KEYS}"),
    (lambda d: _at(d, SECRET).update(injct=_at(d, SECRET).pop("inject")),
     "agents[0].transforms[1].config.secrets[0].injct: unknown key (did you mean 'inject'?); expected one of:"
     " inject, name, rules, source"),
    (lambda d: d["agents"][0].update(sources=[]),
     'agents[0].sources: is empty; expected the agent\'s addresses as networks, e.g. ["10.0.2.11/32"]'),
    (lambda d: d["agents"][0].update(sources=["10.0.2.11"]),
     "agents[0].sources[0]: '10.0.2.11' has no prefix length; expected address/prefix, e.g. 10.0.2.11/16"
     " (a network) or 10.0.2.11/32 (one address)"),
    (lambda d: d["agents"][0].update(name="Scout"),
     "agents[0].name: 'Scout' is not an agent name; expected a lower-case name of letters, digits, - and _,"
     " e.g. scout"),
    (lambda d: d["proxy"].update(max_request_body_bytes="big"),
     "proxy.max_request_body_bytes: 'big' is not a whole number; expected a whole number"),
    (lambda d: d["tls"].pop("ca_cert"), "tls.ca_cert: required key is missing; expected the interception CA"
     " certificate (a PEM file), e.g. /etc/agentctl-proxy/ca.crt"),
]


def _at(d, path):
    for p in path:
        d = d[p]
    return d


# each file: its base document, its loader, the error that loader raises, the file name
FILES = {"stack": (BASE, lambda d: from_config(d, "Pulumi.t.yaml"), ConfigError, "Pulumi.t.yaml"),
         "proxy": (PROXY, lambda d: parse_config(d, "proxy.yaml"), ProxyConfigError, "proxy.yaml")}


@pytest.mark.parametrize("kind,mutate,line", [("stack", *c) for c in STACK_CASES] +
                         [("proxy", *c) for c in PROXY_CASES])
def test_messages(kind, mutate, line):
    base, load, error, name = FILES[kind]
    data = copy.deepcopy(base)
    mutate(data)
    with pytest.raises(error) as e:
        load(data)
    assert str(e.value) == f"{name}: {line}"
    assert not JARGON.search(str(e.value))
