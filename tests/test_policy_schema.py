"""One policy schema (agentctl_proxy.schema, docs/policy-schema.md): what the stack file
accepts, the proxy accepts, and both decide a request the same way.

The property test generates stack files (valid and not), renders the proxy config the
way `agentctl render` does, and checks that (1) whatever the stack model accepts, the
proxy's own loader accepts, and (2) the proxy's decision function (Policy + Matcher, no
network) allows exactly the requests the stack file's rules describe.
"""
from __future__ import annotations

import copy
import fnmatch
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from agentctl.errors import ConfigError
from agentctl.model import Deployment
from agentctl.proxyconfig import proxy_config
from agentctl.stackfile import from_config
from agentctl_proxy.config import ConfigError as ProxyConfigError
from agentctl_proxy.config import parse_config
from agentctl_proxy.policy import Policy

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]

HOSTS = ["api.example.com", "example.com", "x.api.example.com", "other.test"]
# (what a valid stack may say, what it may get wrong): one value in 40 is drawn from the second
HOST_PATTERNS = (HOSTS + ["*.example.com", "*", "API.Example.com."], ["*example.com", "api.*.com", "10.0.0.1"])
CIDRS = (["198.51.100.0/24", "198.51.100.7/32", "2001:db8::/64"], ["198.51.100.7/24", "198.51.100.0"])
METHODS = (["GET", "POST", "get", "DELETE", "*"], ["STEAL"])
PATHS = (["/*", "/v1/*", "/v1/models", "/v1/m*"], ["v1", "/v1/../x", "//v1"])
DURATIONS = (["30s", "15m", "1h", "250ms"], ["1d", "90", "soon"])
REQUEST_PATHS = ["/", "/v1", "/v1/models", "/v1/models/x", "/v1/mx", "/v2/models"]
REQUEST_METHODS = ["GET", "POST", "DELETE", "PUT"]


def pick(draw, values: tuple[list, list], valid_only: bool = False):
    good, bad = values
    return draw(st.sampled_from(bad if not valid_only and draw(st.integers(0, 39)) == 39 else good))


@st.composite
def rules(draw, valid_only: bool = False):
    rule: dict = {}
    if draw(st.integers(0, 4)) or valid_only:
        rule["host"] = pick(draw, HOST_PATTERNS, valid_only)
    else:
        rule["cidr"] = pick(draw, CIDRS, valid_only)
    if draw(st.booleans()):
        rule["methods"] = [pick(draw, METHODS, valid_only) for _ in range(draw(st.integers(1, 3)))]
    if draw(st.booleans()):
        rule["paths"] = [pick(draw, PATHS, valid_only) for _ in range(draw(st.integers(1, 2)))]
    if draw(st.integers(0, 4)) == 0:
        rule["ports"] = [443]
    return rule


@st.composite
def stacks(draw):
    config = copy.deepcopy(BASE)
    agents = []
    for i in range(draw(st.integers(1, 2))):
        secrets = []
        for j in range(draw(st.integers(0, 2))):
            source = draw(st.sampled_from([
                {"type": "file", "path": f"/etc/agentctl-proxy/secrets/a{i}/s{j}"},
                {"type": "env", "var": "TOKEN"},
                {"type": "file", "path": "/etc/agentctl-proxy/secrets/shared", "ttl": pick(draw, DURATIONS)}]))
            secrets.append({"name": f"s{j}", "source": source,
                            "inject": pick(draw, ([{"header": "Authorization"}, {"query_param": "key"}],
                                                  [{"header": "Bad Header"}])),
                            "rules": draw(st.lists(rules(), min_size=1, max_size=2))})
        agents.append({"name": f"agent{i}", "runtime": {"command": {"exec": "/bin/true"}},
                       "egress": {"rules": draw(st.lists(rules(), max_size=4)), "secrets": secrets},
                       "backups": {"enabled": True},
                       "bootstrap": {"maxDuration": pick(draw, DURATIONS),
                                     "rules": draw(st.lists(rules(valid_only=True), max_size=1))}})
    config["agentctl:agents"] = agents
    records = [pick(draw, ([{"name": "api.lab.test", "type": "A", "value": "198.18.0.10"},
                            {"name": "v6.lab.test", "type": "AAAA", "value": "2001:db8::10"}],
                           [{"name": "alias.lab.test", "type": "CNAME", "value": "api.lab.test"},
                            {"name": "bad.lab.test", "type": "A", "value": "2001:db8::10"}]))]
    listen = pick(draw, ([{}, {"tunnel": 3128}, {"https": 8443, "http": 8081}], [{"tunnel": 443}, {"dns": 80}]))
    config["agentctl:proxy"] = dict(config["agentctl:proxy"], dnsRecords=records, listen=listen)
    return config


def _path_ok(pattern: str, path: str) -> bool:
    """docs/design.md, Paths: a glob over whole segments; a trailing /* is the path and all below."""
    if pattern.endswith("/*"):
        base = pattern[:-2]
        return base == "" or path == base or path.startswith(base + "/")
    want, have = pattern.split("/"), path.split("/")
    return len(want) == len(have) and all(fnmatch.fnmatchcase(h, w) for w, h in zip(want, have))


def _host_ok(pattern: str, host: str) -> bool:
    if pattern == "*":
        return True
    if pattern.startswith("*."):
        return host == pattern[2:] or host.endswith(pattern[1:])
    return host == pattern


def _stack_allows(stack_rules: list[dict], host: str, method: str, path: str) -> bool:
    """What the stack file says, read from its own words (not through the schema)."""
    for r in stack_rules:
        if "host" not in r:
            continue  # cidr rules match IP literals only; these requests name hosts
        methods = [m.upper() for m in r.get("methods", ["*"])]
        if _host_ok(r["host"].lower().rstrip("."), host) and ("*" in methods or method in methods) \
                and any(_path_ok(p, path) for p in r.get("paths", ["/*"])):
            return True
    return False


def _drift(mutate) -> dict:
    """The lab stack with one change the two old schemas read differently."""
    config = copy.deepcopy(BASE)
    mutate(config)
    return config


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(stacks())
# what the old model accepted and the old proxy refused at boot, drawn every run
@example(_drift(lambda c: c["agentctl:proxy"]["dnsRecords"].append({"name": "a.lab.test", "type": "CNAME",
                                                                    "value": "api.lab.test"})))
@example(_drift(lambda c: c["agentctl:agents"][0]["egress"]["rules"].append({"host": "x.test", "methods": ["GET"],
                                                                             "cidr": "198.51.100.7/24"})))
@example(_drift(lambda c: c["agentctl:agents"][0]["egress"]["rules"].append({"host": "x.test", "methods": ["GET"],
                                                                             "paths": ["/v1/../admin"]})))
@example(_drift(lambda c: c["agentctl:agents"][0]["egress"]["secrets"][0]["inject"].update(header="Bad Header")))
def test_what_render_accepts_the_proxy_accepts_and_decides_alike(config):
    try:
        d = from_config(config, "Pulumi.prop.yaml")
    except ConfigError:
        return  # refused by the stack model: nothing rendered, nothing to compare
    rendered = proxy_config(d, project="agentctl", stack="prop")
    text = yaml.safe_dump(rendered)  # what render writes and `check` reads
    try:
        cfg = parse_config(yaml.safe_load(text), "proxy.yaml")
    except ProxyConfigError as e:
        pytest.fail(f"render accepted a stack whose proxy.yaml the proxy refuses: {e}")
    policy = Policy(cfg, now=0.0)
    closed = frozenset(a.name for a in d.agents)  # bootstrap windows closed: the egress rules alone
    for agent in d.agents:
        ident = policy.identify(d.agent_ip(agent))
        assert ident is not None and ident.name == agent.name
        raw = next(a for a in config["agentctl:agents"] if a["name"] == agent.name)
        for host in HOSTS:
            for method in REQUEST_METHODS:
                for path in REQUEST_PATHS:
                    got = ident.allow.decide(host, None, 443, True, method, path, closed=closed).grant is not None
                    assert got == _stack_allows(raw["egress"]["rules"], host, method, path), (host, method, path)
                    # while the bootstrap window is open, its rules too
                    opened = ident.allow.decide(host, None, 443, True, method, path).grant is not None
                    assert opened == _stack_allows(raw["egress"]["rules"] + raw["bootstrap"]["rules"], host, method,
                                                   path), (host, method, path)
                    # the secret injected is the first whose rules match, in the stack file's order
                    hit = ident.secrets.decide(host, None, 443, True, method, path).grant
                    said = [s for s in raw["egress"]["secrets"] if _stack_allows(s["rules"], host, method, path)]
                    assert (hit.payload.label if hit else None) == (said[0]["name"] if said else None)
    assert policy.identify("10.77.2.250") is None  # no agent there: fail closed


# --- where the two schemas disagreed, the stricter reading (each fails on the old code) ---

def _with_agent(mutate):
    config = copy.deepcopy(BASE)
    mutate(config["agentctl:agents"][0])
    return config


@pytest.mark.parametrize("mutate,key_path,message", [
    (lambda c: c["agentctl:proxy"]["dnsRecords"].append({"name": "x.lab.test", "type": "CNAME", "value": "y"}),
     "agentctl:proxy.dnsRecords[6].type", "CNAME records are not supported by agentctl-proxy (iron-proxy has them); expected A or AAAA"),
    (lambda c: c["agentctl:proxy"]["dnsRecords"].append({"name": "x.lab.test", "value": "198.18.0.9"}),
     "agentctl:proxy.dnsRecords[6].type", "required key is missing"),
    (lambda c: c["agentctl:agents"][0]["egress"]["rules"].append({"host": "x.test", "cidr": "198.51.100.7/24"}),
     "agentctl:agents[0].egress.rules[2].cidr", "'198.51.100.7/24' has host bits set; expected the network"
                                               " address, 198.51.100.0/24"),
    (lambda c: c["agentctl:agents"][0]["egress"]["rules"].append({"host": "x.test", "cidr": "198.51.100.0/24"}),
     "agentctl:agents[0].egress.rules[2]", "host and cidr are both set; expected one of them"),
    (lambda c: c["agentctl:agents"][0]["egress"]["secrets"][0]["source"].update(ttl="1d"),
     "agentctl:agents[0].egress.secrets[0].source.ttl", "'1d' is not a duration; expected a whole number and a"
                                                         " unit (ms, s, m or h), e.g. 30s or 15m"),
    (lambda c: c["agentctl:agents"][0]["egress"]["rules"].append({"host": "x.test", "paths": ["/a/../b"]}),
     "agentctl:agents[0].egress.rules[2].paths", "'/a/../b' has a . or .. segment"),
    (lambda c: c["agentctl:agents"][0]["egress"]["secrets"][0]["inject"].update(formatter="Bearer"),
     "agentctl:agents[0].egress.secrets[0].inject.formatter", "'Bearer' must contain {{ .Value }} exactly once"),
])
def test_stack_file_reads_the_policy_as_strictly_as_the_proxy(mutate, key_path, message):
    config = copy.deepcopy(BASE)
    mutate(config)
    with pytest.raises(ConfigError) as e:
        from_config(config, "Pulumi.t.yaml")
    assert str(e.value).startswith(f"Pulumi.t.yaml: {key_path}: {message}"), str(e.value)


def test_operator_install_needs_no_mitmproxy():
    """agentctl imports the schema from agentctl-proxy without its server extra."""
    code = ("import sys; sys.modules['mitmproxy'] = None\n"
            "import agentctl.cli, agentctl.render, agentctl.stackfile, agentctl.modelerrors, agentctl.proxyconfig\n"
            "from agentctl.stackfile import load; from pathlib import Path\n"
            f"load(Path({str(ROOT)!r}), 'lab')\n"
            "assert not [m for m, v in sys.modules.items() if v and m.startswith(('mitmproxy', 'agentctl_proxy.config'))]\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_the_proxy_command_without_its_server_extra_says_what_to_install():
    code = "import sys, runpy; sys.modules['typer'] = None; runpy.run_module('agentctl_proxy', run_name='__main__')"
    proc = subprocess.run([sys.executable, "-c", code, "check", "--config", "x"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 1
    assert proc.stderr == "agentctl-proxy: running the proxy needs its server extra: pip install" \
                          " 'agentctl-proxy[server]'\n"


def test_one_schema_for_both():
    from agentctl import model
    from agentctl_proxy import config
    from agentctl_proxy.schema import policy

    assert model.Rule is config.Rule is policy.Rule
    assert model.Inject is config.Inject and model.DnsRecord is config.DnsRecord
    assert issubclass(model.Secret, config.Secret)
    assert model.SecretSource is config.Source


def test_pydantic_is_not_asked_for_the_wording():
    with pytest.raises(ValidationError):
        Deployment.model_validate({})  # the raw error stays pydantic's; the formatter words it
