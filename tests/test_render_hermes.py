"""Hermes on an agent host, as rendered from the example stacks: installed as published
(through bootstrap grants that cover pip's real requests), configured from the stack
with stand-ins for every credential, and run by a unit with Hermes' own restart and
stop semantics. What Hermes makes of these files is proven on the real Hermes in
tests/test_hermes_real.py; on a host by roles/agent/verify_agent.py."""
from __future__ import annotations

import pytest
import yaml

from agentctl import hermes
from agentctl.render import RUNTIME_BASE, RUNTIME_INSTALL
from agentctl.stackfile import load
from agentctl_proxy.config import parse_config
from agentctl_proxy.policy import Policy

from .conftest import ROOT
from .test_render import _commands, _unit, _values, unit_environment

STACKS = ["example-aws", "example-hcloud"]
# pip's requests for `hermes-agent[anthropic,messaging]==0.19.0`, as `pip install
# --dry-run --report` listed them against PyPI (two of its 81 wheels) and the simple index.
PIP_REQUESTS = [
    ("pypi.org", "/simple/hermes-agent/"),
    ("pypi.org", "/simple/python-telegram-bot/"),
    ("files.pythonhosted.org", "/packages/e5/30/c85be8290e9565dc3c7a9720e93f3e59e09b1b163487be4946c3aa848f80/"
                               "hermes_agent-0.19.0-py3-none-any.whl"),
    ("files.pythonhosted.org", "/packages/13/97/7298f0e1afe3a1ae52ff4c5af5087ed4de319ea73eb3b5c8c4dd4e76e708/"
                               "python_telegram_bot-22.6-py3-none-any.whl"),
]


@pytest.fixture(scope="module")
def scout(hosts):
    return {stack: hosts[stack, "scout"] for stack in STACKS}


@pytest.mark.parametrize("stack", STACKS)
def test_hermes_installs_as_published(scout, stack):
    h = load(ROOT, stack).agents[0].runtime.hermes
    script = scout[stack].file(RUNTIME_INSTALL)
    # agentctl-runtime-install installs NAME$EXTRAS==VERSION from INDEX
    assert "NAME=hermes-agent\n" in script and "EXTRAS='[anthropic,messaging]'\n" in script
    assert "INDEX=https://pypi.org/simple/\n" in script
    assert h.pin.requirement == f"hermes-agent[anthropic,messaging]=={h.version}"
    converge = scout[stack].file("/usr/local/sbin/agentctl-converge")
    assert [RUNTIME_INSTALL, h.version] in _commands(converge, RUNTIME_INSTALL)
    # its venv is the one the unit runs
    assert hermes.VENV == f"{RUNTIME_BASE}/venv"


@pytest.mark.parametrize("stack", STACKS)
def test_bootstrap_grants_cover_pips_real_requests(rendered, stack):
    proxy = next(h for h in rendered[stack] if h.role == "proxy")
    policy = Policy(parse_config(yaml.safe_load(proxy.proxy_config)))
    scout = policy.identities["scout"]
    for host, path in PIP_REQUESTS:
        assert scout.allow.decide(host, None, 443, True, "GET", path).grant is not None, (host, path)
    # and nothing from git, which Hermes is no longer installed from
    assert scout.allow.decide("github.com", None, 443, True, "GET", "/NousResearch/hermes-agent/info/refs").grant is None


@pytest.mark.parametrize("stack", STACKS)
def test_hermes_config_comes_from_the_stack(scout, stack):
    h = load(ROOT, stack).agents[0].runtime.hermes
    config = yaml.safe_load(scout[stack].file("/etc/agentctl/agent-config.yaml"))
    assert config == hermes.config(h)
    assert config["model"] == {"provider": "anthropic", "default": h.model.name, "base_url": h.model.base_url}
    assert config["approvals"] == {"mode": "manual", "cron_mode": "deny"}
    assert config["platforms"]["telegram"]["enabled"] is True
    assert config["security"]["allow_lazy_installs"] is False


@pytest.mark.parametrize("stack", STACKS)
def test_the_agent_host_holds_stand_ins_not_credentials(scout, stack):
    env = scout[stack].file("/etc/hermes/.env")
    values = dict(line.split("=", 1) for line in env.splitlines() if line and not line.startswith("#"))
    # "sk-ant-api": Hermes sends it as x-api-key, the header the proxy replaces (not OAuth)
    assert values["ANTHROPIC_API_KEY"] == hermes.PLACEHOLDER_MODEL_KEY and \
        values["ANTHROPIC_API_KEY"].startswith("sk-ant-api")
    assert values["TELEGRAM_BOT_TOKEN"] == hermes.PLACEHOLDER_BOT_TOKEN
    assert values["TELEGRAM_ALLOWED_USERS"] == "123456789"
    assert values["HERMES_YOLO_MODE"] == "0"


@pytest.mark.parametrize("stack", STACKS)
def test_the_unit_fits_hermes(scout, stack):
    d = load(ROOT, stack)
    unit = _unit(scout[stack].file("/etc/systemd/system/agentctl-agent.service"))
    s = unit["Service"]
    assert s["ExecStart"] == f"{hermes.VENV}/bin/hermes gateway run"
    assert (s["Restart"], s["RestartForceExitStatus"], s["RestartPreventExitStatus"]) == ("always", "75", "78")
    assert (s["KillMode"], s["KillSignal"], s["TimeoutStopSec"]) == ("mixed", "SIGINT", "90s")
    env = unit_environment(unit)
    assert env["HERMES_MANAGED_DIR"] == hermes.MANAGED_DIR and env["HERMES_HOME"] == hermes.HOME
    # the sandbox stays
    assert s["CapabilityBoundingSet"] == "" and s["ProtectSystem"] == "strict"
    assert _values(unit, "Service", "IPAddressAllow") == [f"{d.proxy_ip}/32", "localhost"]
    readonly = " ".join(_values(unit, "Service", "ReadOnlyPaths")).split()
    assert set(hermes.root_paths()) <= set(readonly)


def test_a_command_agent_keeps_its_own_restart_policy(hosts):
    unit = _unit(hosts["example-hcloud", "scribe"].file("/etc/systemd/system/agentctl-agent.service"))
    assert unit["Service"]["Restart"] == "on-failure" and "KillSignal" not in unit["Service"]
    assert "/etc/hermes/.env" not in hosts["example-hcloud", "scribe"].files


@pytest.mark.parametrize("stack", STACKS)
def test_the_examples_let_hermes_reach_the_bot_api_with_the_token_injected(rendered, stack):
    """What PTB sends (POST {base_url}{token}/{method}, telegram/_bot.py) with Hermes' stand-in
    is allowed, and the bot-token secret goes into its path; the model call gets its key."""
    proxy = next(h for h in rendered[stack] if h.role == "proxy")
    scout = Policy(parse_config(yaml.safe_load(proxy.proxy_config))).identities["scout"]
    path = f"/bot{hermes.PLACEHOLDER_BOT_TOKEN}/getUpdates"
    assert scout.allow.decide("api.telegram.org", None, 443, True, "POST", path).grant is not None
    secret = scout.secrets.decide("api.telegram.org", None, 443, True, "POST", path).grant
    assert secret is not None and secret.payload.inject.path_prefix == "/bot"
    model = scout.secrets.decide("api.anthropic.com", None, 443, True, "POST", "/v1/messages").grant
    assert model is not None and model.payload.inject.header == "x-api-key"
