"""A config written for iron-proxy loads and means what it means there (ironproxy.py),
except where our pinned semantics are stricter: then `check` prints one warning line per
difference and still exits 0. What iron-proxy reads is its own source: internal/config/
config.go (listeners, tls, log, dns), internal/transform/allowlist/allowlist.go
(domains:, cidrs:, rules:) and internal/hostmatch/rule.go (a missing methods or paths
means all; hostmatch.go: host globs are Go path.Match patterns)."""

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from agentctl_proxy.config import ConfigError, load_checked
from agentctl_proxy.policy import Policy

DATA = Path(__file__).parent / "data" / "iron-proxy.yaml"


@pytest.fixture
def iron(tmp_path, pki):
    def write(text=None, mutate=None):
        text = (text or DATA.read_text()).replace("CA_CERT", pki["ca_cert"]).replace("CA_KEY", pki["ca_key"])
        if mutate:
            data = yaml.safe_load(text)
            mutate(data)
            text = yaml.safe_dump(data)
        p = tmp_path / "iron.yaml"
        p.write_text(text)
        return p
    return write


def _check(path):
    return subprocess.run([sys.executable, "-m", "agentctl_proxy", "check", "--config", str(path)],
                          capture_output=True, text=True, timeout=60)


def test_iron_proxy_config_loads_with_one_warning_per_difference(iron, monkeypatch):
    p = iron()
    out = _check(p)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"{p}: ok"
    assert out.stderr.splitlines() == [
        f"warning: {p}: transforms[0].config.rules[3]: iron-proxy would also match evilopenai.com; here"
        " '*openai.com' is refused (left out; expected an exact name, '*' or '*.example.com')",
        f"warning: {p}: proxy.http_listen: not set; iron-proxy would listen on :80, agentctl-proxy does not",
        f"warning: {p}: proxy.upstream_deny_cidrs: not set; iron-proxy would refuse only 169.254.169.254/32,"
        " fd00:ec2::254/128, 127.0.0.0/8, ::1/128, here private, link-local and multicast ranges too",
        f"warning: {p}: tls.cert_cache_size: accepted but not applied; mitmproxy keeps its own certificate cache",
        f"warning: secret 'system/secrets[0]': environment variable ANTHROPIC_API_KEY is not set",
    ]


def test_iron_proxy_config_means_what_it_means_there(iron):
    cfg, _ = load_checked(iron())
    assert cfg.proxy.tunnel_listen is None and cfg.proxy.max_request_body_bytes == 1048576
    assert cfg.proxy.max_response_body_bytes is None and cfg.log.level == "warn"
    assert cfg.tls.cert_cache_size == 1000 and cfg.dns.records[0].value == "10.20.0.5"
    allow = Policy(cfg, now=0.0).identify("10.0.2.11").allow

    def allowed(host, method, path, ip=None):
        import ipaddress
        return allow.decide(host, ipaddress.ip_address(ip) if ip else None, 443, True, method, path).grant is not None

    # domains: every method and path; "*.github.com" also the apex, as in iron-proxy's MatchGlob
    assert allowed("httpbin.org", "DELETE", "/anything/x") and allowed("github.com", "PUT", "/")
    assert allowed("api.github.com", "GET", "/repos")
    assert allowed("172.20.0.9", "POST", "/x", ip="172.20.0.9") and not allowed("172.21.0.9", "GET", "/", "172.21.0.9")
    # a rule with only host: all methods and paths; paths without methods: every method
    assert allowed("pypi.org", "POST", "/simple/x") and allowed("files.pythonhosted.org", "PUT", "/packages/a/b")
    assert not allowed("files.pythonhosted.org", "GET", "/other")
    assert allowed("api.anthropic.com", "POST", "/v1/messages") and not allowed("api.anthropic.com", "GET", "/v1/messages")
    # the glob we refuse was left out: neither the look-alike nor the real name is open
    assert not allowed("evilopenai.com", "GET", "/") and not allowed("api.openai.com", "GET", "/")


@pytest.mark.parametrize("mutate,message", [
    (lambda d: d.update(metrics={"listen": ":9090"}),
     "metrics: iron-proxy key 'metrics' is not supported by agentctl-proxy; remove it"),
    (lambda d: d["proxy"].update(upstream_response_header_timeout="60s"),
     "proxy.upstream_response_header_timeout: iron-proxy key 'upstream_response_header_timeout' is not"
     " supported by agentctl-proxy; remove it"),
    (lambda d: d["dns"].update(upstream_resolver="1.1.1.1:53"),
     "dns.upstream_resolver: iron-proxy key 'upstream_resolver' is not supported by agentctl-proxy; remove it"),
    (lambda d: d["tls"].update(leaf_cert_expiry_hours=72),
     "tls.leaf_cert_expiry_hours: iron-proxy key 'leaf_cert_expiry_hours' is not supported by agentctl-proxy"),
    (lambda d: d["transforms"][0]["config"].update(warn=True),
     "transforms[0].config.warn: iron-proxy key 'warn' is not supported by agentctl-proxy; remove it"),
    (lambda d: d["transforms"][1]["config"]["secrets"][0].update(replace={"proxy_value": "x"}),
     "transforms[1].config.secrets[0].replace: iron-proxy key 'replace' is not supported by agentctl-proxy"),
    (lambda d: d["transforms"][1]["config"]["secrets"][0]["source"].update(type="aws_sm"),
     "transforms[1].config.secrets[0].source: iron-proxy source type 'aws_sm' is not supported by"
     " agentctl-proxy; expected one of env, file, aws_ssm"),
    (lambda d: d["tls"].update(mode="sni-only"), "tls.mode: 'sni-only' is not allowed; expected one of mitm"),
    (lambda d: d["dns"]["records"].append({"name": "a.example.test", "type": "CNAME", "value": "b.example.test"}),
     "dns.records[1].type: CNAME records are not supported by agentctl-proxy (iron-proxy has them)"),
    # a key path after a left-out rule still counts the rules as the file does
    (lambda d: d["transforms"][0]["config"]["rules"].append({"host": "x.test", "methods": ["STEAL"]}),
     "transforms[0].config.rules[4].methods: 'STEAL' is not an HTTP method a rule may name"),
    (lambda d: d["proxy"].pop("https_listen"),
     "proxy: no listener; expected at least one of tunnel_listen, https_listen or http_listen"),
])
def test_iron_proxy_keys_we_lack_are_named_as_such(iron, mutate, message):
    p = iron(mutate=mutate)
    out = _check(p)
    assert out.returncode == 2 and out.stdout == ""
    assert out.stderr.startswith(f"{p}: {message}"), out.stderr
    assert len(out.stderr.splitlines()) == 1 and "Traceback" not in out.stderr


def test_our_own_format_gets_no_leniency(iron):
    """With agents: (what render writes) a glob is an error, as in the stack file."""
    def mutate(d):
        d["agents"] = [{"name": "scout", "sources": ["10.0.2.11/32"], "transforms": [d["transforms"][0]]}]
    with pytest.raises(ConfigError, match=r"yaml: transforms\[0\]\.config\.rules\[3\]\.host: '\*openai.com'"
                                          r" is not a host pattern; expected an exact name"):
        load_checked(iron(mutate=mutate))
