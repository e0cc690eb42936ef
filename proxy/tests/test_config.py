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
     "agents[0].transforms[1].config.secrets[0].source: unknown source type 'vault'; expected one of env, file, aws_ssm"),
    (lambda d: d["transforms"][0]["config"]["rules"][0].update(host="*openai.com"),
     "transforms[0].config.rules[0].host: '*openai.com' is not a host pattern"),
    (lambda d: d["proxy"].update(tunnel_listen="localhost"), "proxy.tunnel_listen: 'localhost' is not an address and port; expected HOST:PORT, e.g."),
    (lambda d: d["agents"][0]["transforms"][1]["config"]["secrets"][0]["inject"].update(formatter="Bearer"),
     "inject.formatter: 'Bearer' must contain {{ .Value }} exactly once; expected e.g. \"Bearer {{ .Value }}\""),
    (lambda d: d["agents"][0]["transforms"][1]["config"]["secrets"][0]["source"].update(ttl="soon"),
     "source.ttl: 'soon' is not a duration; expected a whole number and a unit (ms, s, m or h), e.g. 30s"),
    (lambda d: d["agents"].append({"name": "b", "sources": ["10.0.2.0/24"]}), "overlaps"),
    (lambda d: d["tls"].pop("ca_cert"), "tls.ca_cert: required key is missing"),
    (lambda d: d["transforms"][0]["config"]["rules"][0].update(paths=["/a/../b"]), "rules[0].paths: '/a/../b' has a . or .. segment, which no request path has"),
    (lambda d: d.setdefault("log", {}).update(refusal_burst=0), "log.refusal_burst: "),
    (lambda d: d.setdefault("log", {}).update(refusal_rate="fast"), "log.refusal_rate: "),
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
    assert parse_duration("15m") == 900 and parse_duration("30s") == 30 and parse_duration("250ms") == 0.25
    # one definition for both files (docs/policy-schema.md): no bare numbers, no days
    for bad in ("-1s", 5, "5", "1d", "1h30m", "15 m"):
        with pytest.raises(ValueError, match="is not a duration; expected a whole number and a unit"):
            parse_duration(bad)


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
    assert out.stderr.strip() == f"{bad}: dns.forward: unknown key; expected one of: listen, passthrough, proxy_ip, records"
    assert "Traceback" not in out.stderr


def test_run_with_bad_config_exits_2_and_opens_no_listener(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("proxy: {tunnel_listen: '127.0.0.1:1'}\ntls: {ca_cert: /x, ca_key: /y}\nextra: 1\n")
    out = subprocess.run([sys.executable, "-m", "agentctl_proxy", "run", "--config", str(bad)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 2 and out.stderr.strip() == f"{bad}: extra: unknown key; expected one of: agents, dns, log, proxy, tls, transforms"


def _cli(*args, timeout=60):
    return subprocess.run([sys.executable, "-m", "agentctl_proxy", *args], capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def other_pem(tmp_path_factory):
    """A second, valid CA and a leaf certificate, to mismatch against the test CA."""
    import trustme

    from agentctl_proxy.ca import init_ca

    d = tmp_path_factory.mktemp("other")
    cert, key = init_ca(d / "ca")
    leaf = trustme.CA().issue_cert("leaf.example.test")
    leaf.cert_chain_pems[0].write_to_path(str(d / "leaf.crt"))
    (d / "garbage.pem").write_text("-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n")
    return {"key": str(key), "cert": str(cert), "leaf": str(d / "leaf.crt"), "garbage": str(d / "garbage.pem")}


@pytest.mark.parametrize("key,file,expected", [
    ("ca_cert", "garbage", "tls.ca_cert: {f}: not a PEM certificate"),
    ("ca_cert", "leaf", "tls.ca_cert: {f}: not a CA certificate"),
    ("ca_key", "garbage", "tls.ca_key: {f}: not a PEM private key"),
    ("ca_key", "key", "tls.ca_key: {f}: does not match tls.ca_cert"),
    ("upstream_ca_bundle", "garbage", "tls.upstream_ca_bundle: {f}: not a PEM bundle of certificates"),
    ("upstream_ca_bundle", "key", "tls.upstream_ca_bundle: {f}: not a PEM bundle of certificates"),
])
def test_tls_files_are_parsed_and_matched(write, other_pem, key, file, expected):
    data = yaml.safe_load(EXAMPLE)
    data["tls"][key] = other_pem[file]
    p = write(data)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: {expected.format(f=other_pem[file])}") and "\n" not in str(e.value)


@pytest.mark.parametrize("command", ["check", "run"])
def test_check_and_run_refuse_a_mismatched_ca_key_in_one_line(write, other_pem, command):
    """A garbage or mismatched CA made `run` die inside mitmproxy with a traceback."""
    data = yaml.safe_load(EXAMPLE)
    data["tls"]["ca_key"] = other_pem["key"]
    data["proxy"]["tunnel_listen"] = "127.0.0.1:1"  # never bound: the config is refused first
    p = write(data)
    out = _cli(command, "--config", str(p))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"{p}: tls.ca_key: {other_pem['key']}: does not match tls.ca_cert (a different key pair)"


def test_a_matching_upstream_bundle_and_ca_pass(write, pki):
    data = yaml.safe_load(EXAMPLE)
    data["tls"]["upstream_ca_bundle"] = pki["upstream_ca"]
    load_config(write(data))


MINIMAL = "proxy: {tunnel_listen: '127.0.0.1:1'}\ntls: {ca_cert: CA_CERT, ca_key: CA_KEY}\n"


@pytest.mark.parametrize("text,where", [
    (MINIMAL + "proxy: {tunnel_listen: '127.0.0.1:2'}\n", "proxy"),
    (MINIMAL + "log: {audit_path: /a, audit_path: /b}\n", "log.audit_path"),
    (MINIMAL + "transforms:\n  - name: allowlist\n    config:\n      rules:\n        - host: a.example\n"
     "          methods: [GET]\n          host: b.example\n", "transforms[0].config.rules[0].host"),
])
def test_duplicate_yaml_keys_are_refused_with_their_path(write, text, where):
    """PyYAML lets the last copy win; which copy wins decides what an agent may reach."""
    p = write(text)
    with pytest.raises(ConfigError) as e:
        load_config(p)
    assert str(e.value).startswith(f"{p}: {where}: duplicate key") and "\n" not in str(e.value)


def test_check_refuses_duplicate_keys_in_one_line(write):
    p = write(MINIMAL + "log: {audit_path: /a, audit_path: /b}\n")
    out = _cli("check", "--config", str(p))
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip() == f"{p}: log.audit_path: duplicate key (again on line 3); each key may appear once"


def test_yaml_merge_keys_may_override_what_they_merge(write):
    p = write(MINIMAL + "transforms:\n  - name: allowlist\n    config:\n      rules:\n"
                        "        - &r {host: a.example, methods: [GET]}\n        - {<<: *r, host: b.example}\n")
    rules = load_config(p).transforms[0].config.rules
    assert [r.host for r in rules] == ["a.example", "b.example"]


def test_empty_agents_list_is_a_config_error(write):
    """agents: [] would deny every client everything: refused, with what to do instead."""
    data = yaml.safe_load(EXAMPLE)
    data["agents"] = []
    with pytest.raises(ConfigError, match=r"agents: empty list; list at least one agent, or remove the key"):
        load_config(write(data))


def test_run_checks_a_ca_key_from_a_secret_source_against_the_cert(write, other_pem):
    """Only `run` can fetch it; a mismatch is the same one line, never mitmproxy's traceback."""
    import os

    data = yaml.safe_load(EXAMPLE)
    del data["tls"]["ca_key"]
    data["tls"]["ca_key_source"] = {"type": "env", "var": "AGENTCTL_TEST_SIGNING_KEY"}
    data["proxy"]["tunnel_listen"] = "127.0.0.1:1"
    p = write(data)
    env = {**os.environ, "AGENTCTL_TEST_SIGNING_KEY": open(other_pem["key"]).read()}
    out = subprocess.run([sys.executable, "-m", "agentctl_proxy", "run", "--config", str(p)],
                         capture_output=True, text=True, timeout=60, env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().splitlines()[-1] == (
        f"{p}: tls.ca_key_source: does not match tls.ca_cert (a different key pair)")
    assert "BEGIN PRIVATE KEY" not in out.stderr
