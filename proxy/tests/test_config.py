"""Config parsing: the documented example passes; every bad key gives one line with its path."""

import subprocess
import sys

import pytest
import yaml

from agentctl_proxy.config import DEFAULT_DENY_CIDRS, ConfigError, load_config, parse_duration

EXAMPLE = """
proxy:
  tunnel_listen: "10.0.1.10:8080"
  https_listen: "10.0.1.10:443"
  http_listen: "10.0.1.10:80"
  max_request_body_bytes: 1048576
  max_response_body_bytes: null
  health_listen: "127.0.0.1:9099"
dns:
  listen: "10.0.1.10:53"
  proxy_ip: 10.0.1.10
  records: [{name: api.example.test, type: A, value: 10.20.0.5}]
  passthrough: []
tls:
  ca_cert: CA_CERT
  ca_key: CA_KEY
transforms:
  - name: allowlist
    config:
      rules:
        - {name: apt-mirrors, host: deb.debian.org, methods: [GET, HEAD], paths: ["/debian/*", "/debian-security/*"]}
agents:
  - name: scout
    sources: ["10.0.2.11/32"]
    transforms:
      - name: allowlist
        config: {rules: [{host: api.github.com, methods: [GET], paths: ["/repos/acme/app/*"], rate_limit: 60}]}
      - name: secrets
        config:
          secrets:
            - name: github-pat
              source: {type: file, path: /etc/agentctl-proxy/secrets/scout/github-pat, ttl: 15m, failure_ttl: 30s}
              inject: {header: Authorization, formatter: "Bearer {{ .Value }}"}
              rules: [{host: api.github.com, methods: [GET, PATCH], paths: ["/repos/acme/app/*"]}]
            - source: {type: aws_ssm, name: /acme/scout/key, region: us-east-1, with_decryption: true}
              inject: {query_param: key}
              rules: [{host: api.github.com, methods: ["*"]}]
    bootstrap:
      max_duration: 30m
      rules: [{host: pypi.org, methods: [GET], paths: ["/simple/*"]}]
log:
  audit_path: /var/log/agentctl-proxy/audit.jsonl
"""


@pytest.fixture
def write(tmp_path, pki):
    def w(text_or_data):
        text = text_or_data if isinstance(text_or_data, str) else yaml.safe_dump(text_or_data)
        text = text.replace("CA_CERT", pki["ca_cert"]).replace("CA_KEY", pki["ca_key"])
        p = tmp_path / "proxy.yaml"
        p.write_text(text)
        return p
    return w


def test_documented_example_loads(write):
    cfg = load_config(write(EXAMPLE))
    assert cfg.agents[0].transforms[1].config.secrets[0].source.ttl == 900
    assert cfg.proxy.upstream_deny_cidrs == list(DEFAULT_DENY_CIDRS)
    assert "127.0.0.0/8" in DEFAULT_DENY_CIDRS and "169.254.0.0/16" in DEFAULT_DENY_CIDRS


@pytest.mark.parametrize("mutate,expected", [
    (lambda d: d["proxy"].update(tunnel_lisen="x"), "proxy.tunnel_lisen: unknown key"),
    (lambda d: d["agents"][0]["transforms"][0]["config"]["rules"][0].update(methdos=["GET"]),
     "agents[0].transforms[0].config.rules[0].methdos: unknown key"),
    (lambda d: d["agents"][0]["transforms"][1]["config"]["secrets"][0]["source"].update(type="vault"),
     "agents[0].transforms[1].config.secrets[0].source: unknown type: 'vault'"),
    (lambda d: d["transforms"][0]["config"]["rules"][0].update(host="*openai.com"),
     "transforms[0].config.rules[0].host: '*openai.com' is not a host pattern"),
    (lambda d: d["proxy"].update(tunnel_listen="localhost"), "proxy.tunnel_listen: expected HOST:PORT"),
    (lambda d: d["agents"][0]["transforms"][1]["config"]["secrets"][0]["inject"].update(formatter="Bearer"),
     "formatter must contain {{ .Value }} exactly once"),
    (lambda d: d["agents"][0]["transforms"][1]["config"]["secrets"][0]["source"].update(ttl="soon"),
     "source.ttl: expected a duration"),
    (lambda d: d["agents"].append({"name": "b", "sources": ["10.0.2.0/24"]}), "overlaps"),
    (lambda d: d["tls"].pop("ca_cert"), "tls.ca_cert: required key is missing"),
    (lambda d: d["transforms"][0]["config"]["rules"][0].update(paths=["/a/../b"]), "dot segments never match"),
])
def test_bad_config_one_line_with_key_path(write, mutate, expected):
    data = yaml.safe_load(EXAMPLE)
    mutate(data)
    p = write(data)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    msg = str(e.value)
    assert msg.startswith(f"{p}: ") and expected in msg and "\n" not in msg


def test_missing_files_are_config_errors(write, tmp_path):
    p = write(EXAMPLE.replace("CA_KEY", str(tmp_path / "nope.key")))
    with pytest.raises(ConfigError, match=r"tls.ca_key: file .* does not exist"):
        load_config(p)


def test_durations():
    assert parse_duration("15m") == 900 and parse_duration("30s") == 30 and parse_duration(5) == 5
    with pytest.raises(ValueError):
        parse_duration("-1s")


def test_check_command_exit_codes(write, tmp_path):
    good = write(EXAMPLE)
    out = subprocess.run([sys.executable, "-m", "agentctl_proxy", "check", "--config", str(good)],
                         capture_output=True, text=True)
    assert out.returncode == 0
    # warns about the secret file and SSM parameter it cannot read, without failing
    assert "warning: secret 'github-pat'" in out.stderr
    bad = tmp_path / "bad.yaml"
    bad.write_text(EXAMPLE.replace("CA_CERT", "/x").replace("passthrough: []", "passthrough: []\n  forward: true"))
    out = subprocess.run([sys.executable, "-m", "agentctl_proxy", "check", "--config", str(bad)],
                         capture_output=True, text=True)
    assert out.returncode == 2
    assert out.stderr.strip() == f"{bad}: dns.forward: unknown key; remove it or check its spelling"
    assert "Traceback" not in out.stderr


def test_run_with_bad_config_exits_2_and_opens_no_listener(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxy: {tunnel_listen: '127.0.0.1:1'}\ntls: {ca_cert: /x, ca_key: /y}\nextra: 1\n")
    out = subprocess.run([sys.executable, "-m", "agentctl_proxy", "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.strip() == f"{bad}: extra: unknown key; remove it or check its spelling"
