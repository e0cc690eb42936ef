"""The proxy's config (docs/design.md format plus our `agents:` extension), from a deployment.

Each agent gets its own grants keyed by its address, so one proxy serves several
agents without sharing what they may reach. Apt mirrors and the heartbeat are a
separate system policy: GET-only, named `system/...` in the audit.
"""
from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from agentctl.model import Agent, Deployment, Rule, Secret
from agentctl.secrets import CA_KEY_PATH, ca_key_parameter_name, secret_file_path, ssm_parameter_name

CONFIG_PATH = "/etc/agentctl-proxy/config.yaml"
CA_CERT_PATH = "/etc/agentctl-proxy/ca.crt"
AUDIT_PATH = "/var/log/agentctl-proxy/audit.jsonl"
HEALTH_LISTEN = "127.0.0.1:9099"
STATE_PATH = "/var/lib/agentctl-proxy/state.json"  # the unit's StateDirectory

# Mirror hosts the distro images are configured with, per cloud.
DEFAULT_APT_MIRRORS = {
    ("debian-12", "aws"): ["deb.debian.org", "security.debian.org", "cdn-aws.deb.debian.org"],
    ("debian-12", "hcloud"): ["deb.debian.org", "security.debian.org", "mirror.hetzner.com"],
    ("debian-12", "lab"): ["deb.debian.org", "security.debian.org"],
    ("ubuntu-24.04", "aws"): ["archive.ubuntu.com", "security.ubuntu.com", "{region}.ec2.archive.ubuntu.com"],
    ("ubuntu-24.04", "hcloud"): ["archive.ubuntu.com", "security.ubuntu.com", "mirror.hetzner.com"],
    ("ubuntu-24.04", "lab"): ["archive.ubuntu.com", "security.ubuntu.com"],
}


def apt_mirrors(d: Deployment) -> list[str]:
    if d.proxy.apt_mirrors is not None:
        return list(d.proxy.apt_mirrors)
    return [m.format(region=d.region) for m in DEFAULT_APT_MIRRORS[(d.distro, d.cloud)]]


def system_rules(d: Deployment) -> list[dict[str, Any]]:
    rules = [{"name": f"apt-{host}", "host": host, "methods": ["GET", "HEAD"], "paths": ["/*"]}
             for host in apt_mirrors(d)]
    if d.heartbeat_url:
        url = urlsplit(d.heartbeat_url)
        rules.append({"name": "heartbeat", "host": url.hostname, "methods": ["GET", "HEAD", "POST"],
                      "paths": [url.path or "/"]})
    return rules


def _rule(rule: Rule) -> dict[str, Any]:
    # methods and paths written out even at their defaults: a reader sees what is allowed
    return rule.model_dump(exclude_none=True, exclude_defaults=True) | {"methods": rule.methods, "paths": rule.paths}


def secret_source(d: Deployment, agent: Agent, secret: Secret, *, project: str, stack: str) -> dict[str, Any]:
    """Where the proxy reads a secret: a reference, never the value."""
    if secret.source is not None:
        fields = secret.source.model_dump(exclude_none=True)
        return {"type": fields.pop("type"), **fields}  # the kind first, as a reader expects
    if d.cloud == "aws":
        return {"type": "aws_ssm", "name": ssm_parameter_name(project, stack, agent.name, secret.name),
                "region": d.region, "with_decryption": True, "ttl": "15m", "failure_ttl": "30s"}
    return {"type": "file", "path": secret_file_path(agent.name, secret.name), "ttl": "15m", "failure_ttl": "30s"}


def _agent(d: Deployment, agent: Agent, *, project: str, stack: str) -> dict[str, Any]:
    transforms: list[dict[str, Any]] = [
        {"name": "allowlist", "config": {"rules": [_rule(r) for r in agent.egress.rules]}}]
    if agent.egress.secrets:
        transforms.append({"name": "secrets", "config": {"secrets": [
            {"name": s.name, "source": secret_source(d, agent, s, project=project, stack=stack),
             "inject": s.inject.model_dump(exclude_none=True), "rules": [_rule(r) for r in s.rules]}
            for s in agent.egress.secrets]}})
    entry: dict[str, Any] = {"name": agent.name, "sources": [f"{d.agent_ip(agent)}/32"], "transforms": transforms}
    if agent.bootstrap_rules:
        entry["bootstrap"] = {"max_duration": agent.bootstrap.max_duration,
                              "rules": [_rule(r) for r in agent.bootstrap_rules]}
    return entry


def proxy_config(d: Deployment, *, project: str, stack: str) -> dict[str, Any]:
    ip, listen = d.proxy_ip, d.proxy.listen
    tls: dict[str, Any] = {"ca_cert": CA_CERT_PATH}
    if d.cloud == "aws":
        # The proxy fetches its CA key with its instance profile: it never travels in user-data.
        tls["ca_key_source"] = {"type": "aws_ssm", "name": ca_key_parameter_name(project, stack),
                                "region": d.region, "with_decryption": True}
    else:
        tls["ca_key"] = CA_KEY_PATH
    if d.proxy.upstream_ca_bundle:
        tls["upstream_ca_bundle"] = d.proxy.upstream_ca_bundle
    return {
        "proxy": {
            "tunnel_listen": f"{ip}:{listen.tunnel}",
            "https_listen": f"{ip}:{listen.https}",
            "http_listen": f"{ip}:{listen.http}",
            "max_request_body_bytes": d.proxy.max_request_body_bytes,
            "health_listen": HEALTH_LISTEN,
            "state_path": STATE_PATH,
        },
        "dns": {
            "listen": f"{ip}:{listen.dns}",
            "proxy_ip": ip,
            "records": [r.model_dump() for r in d.proxy.dns_records],
            "passthrough": [],
        },
        "tls": tls,
        "transforms": [{"name": "allowlist", "config": {"rules": system_rules(d)}}],
        "agents": [_agent(d, a, project=project, stack=stack) for a in d.agents],
        "log": {"audit_path": AUDIT_PATH},
    }
