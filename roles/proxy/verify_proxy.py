"""What a converged proxy host must show beyond the base: the proxy running under its
own user with a valid config, its CA key private, its audit log written."""
from __future__ import annotations

import json

import pytest

SERVICE = "agentctl-proxy.service"
BIN = "/opt/agentctl-proxy/venv/bin/agentctl-proxy"
CONFIG = "/etc/agentctl-proxy/config.yaml"
AUDIT = "/var/log/agentctl-proxy/audit.jsonl"


def test_proxy_service_running(host):
    assert host.service(SERVICE).is_running and host.service(SERVICE).is_enabled


def test_proxy_runs_as_its_own_user(host):
    pid = host.check_output(f"systemctl show -p MainPID --value {SERVICE}")
    assert host.check_output(f"ps -o user= -p {pid}").strip() == "agentctl-proxy"


def test_proxy_config_valid(root):
    result = root.run(f"{BIN} check --config {CONFIG}")
    assert result.rc == 0, result.stderr


def test_proxy_listens_on_its_ports(host, deployment):
    ip, listen = deployment.proxy_ip, deployment.proxy.listen
    for port in (listen.tunnel, listen.https, listen.http, listen.dns):
        assert host.socket(f"tcp://{ip}:{port}").is_listening, port
    assert host.socket(f"udp://{ip}:{listen.dns}").is_listening


def test_ca_key_private(host):
    key = host.file("/etc/agentctl-proxy/ca.key")
    if key.exists:  # on AWS the key comes from SSM and is never a file
        assert key.user == "agentctl-proxy" and key.mode == 0o600


def test_secrets_unreadable_by_others(root):
    assert root.run("sudo -u agentuser ls /etc/agentctl-proxy/secrets").rc != 0
    assert root.run("sudo -u agentuser cat /etc/agentctl-proxy/ca.key").rc != 0
    assert root.check_output("find /etc/agentctl-proxy/secrets -type f -perm /044 | wc -l").strip() == "0"


def test_denied_request_is_audited(root, deployment):
    """The proxy host itself is no agent: its request is denied, and the audit says so."""
    ip, port = deployment.proxy_ip, deployment.proxy.listen.tunnel
    marker = "/verify-probe-from-proxy-host"
    status = root.check_output(f"curl -s -o /dev/null -w '%{{http_code}}' -x http://{ip}:{port} "
                               f"http://not-granted.invalid{marker} || true")
    assert status.strip() in {"403", "407"}
    lines = root.check_output(f"grep -F '{marker}' {AUDIT} | tail -n 1")
    entry = json.loads(lines)
    assert entry["action"] == "deny" and entry["path"] == marker


def test_chrony_configured_to_serve_the_agents(host, deployment):
    assert f"allow {deployment.agent_subnet}" in host.file("/etc/chrony/conf.d/agentctl-serve.conf").content_string


def test_chrony_serving(host, deployment, in_container):
    if in_container:
        pytest.skip("chronyd needs CAP_SYS_TIME, which a container never gets: the clock is the machine's")
    assert host.service("chrony").is_running
    assert host.socket(f"udp://{deployment.proxy_ip}:123").is_listening


def test_a_person_reading_a_secret_is_audited(root, own_kernel, audited):
    """The proxy's own reads have no login uid and are not logged; an admin's read
    through sudo is, by name. Reads nothing out: head -c0 only opens the file."""
    own_kernel("the audit subsystem")
    secret = root.check_output("find /etc/agentctl-proxy/secrets -type f -print -quit").strip()
    if not secret:
        pytest.skip("no secret installed on this proxy")
    found = audited("agentctl-secret-read", f"head -c0 {secret}")
    assert "auid=admin" in found, found
