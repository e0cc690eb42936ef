"""Operations on a running proxy: iron-proxy mode (no agents:), SIGHUP reload, audit
rotation, SSM secrets and CA key from moto, response cap, the default deny list."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import boto3
import pytest
import yaml

from conftest import SCOUT, STRANGER, UP_OK, base_config, free_port
from test_e2e_battery import curl

SSM_PAT = "ssm-pat-value-9876543210"


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    port = free_port()
    log = open(tmp_path_factory.mktemp("moto") / "moto.log", "w")
    p = subprocess.Popen(["moto_server", "-H", "127.0.0.1", "-p", str(port)], stdout=log, stderr=subprocess.STDOUT)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    ssm = boto3.client("ssm", region_name="us-east-1", endpoint_url=env["AWS_ENDPOINT_URL"],
                       aws_access_key_id="testing", aws_secret_access_key="testing")
    for _ in range(100):
        try:
            ssm.describe_parameters()
            break
        except Exception:
            time.sleep(0.1)
    yield env, ssm
    p.terminate()
    p.wait(10)


RECORDS = [{"name": "api.example.test", "type": "A", "value": UP_OK}]


@pytest.fixture(scope="module")
def proxy(pki, upstreams, start_proxy, tmp_path_factory, moto):
    env, ssm = moto
    ssm.put_parameter(Name="/acme/pat", Value=SSM_PAT, Type="SecureString")
    ssm.put_parameter(Name="/acme/proxy/ca-key", Value=Path(pki["ca_key"]).read_text(), Type="SecureString")
    work = tmp_path_factory.mktemp("ops")
    cfg = base_config(pki, work, max_response_body_bytes=10000)
    del cfg["tls"]["ca_key"]  # the CA key comes from SSM, as on AWS
    cfg["tls"]["ca_key_source"] = {"type": "aws_ssm", "name": "/acme/proxy/ca-key", "region": "us-east-1"}
    cfg["dns"] = {"listen": f"127.0.0.1:{free_port()}", "proxy_ip": "127.0.0.1", "records": RECORDS}
    cfg["transforms"] = [
        {"name": "allowlist", "config": {"rules": [{"host": "api.example.test", "methods": ["GET"],
                                                   "paths": ["/v1/*", "/big/*"]}]}},
        {"name": "secrets", "config": {"secrets": [
            {"name": "ssm-pat", "source": {"type": "aws_ssm", "name": "/acme/pat", "region": "us-east-1"},
             "inject": {"header": "Authorization", "formatter": "token {{ .Value }}"},
             "rules": [{"host": "api.example.test", "methods": ["GET"], "paths": ["/v1/secret/*"]}]}]}},
    ]
    return start_proxy(cfg, env=env, workdir=work)


def test_without_agents_every_client_gets_the_top_level_rules(proxy, pki):
    for source in (SCOUT, STRANGER):
        assert curl(proxy, "https://api.example.test/v1/x", pki=pki, source=source)[0] == 200
    assert proxy.last_audit(remote_addr=STRANGER, path="/v1/x")["rule"] == "system/allowlist[0]"


def test_ssm_secret_injected_and_ca_key_from_ssm(proxy, pki):
    code, body, _ = curl(proxy, "https://api.example.test/v1/secret/x", "-H", "Authorization: forged", pki=pki)
    assert code == 200 and json.loads(body)["headers"]["authorization"] == f"token {SSM_PAT}"
    assert SSM_PAT not in proxy.audit_path.read_text() + proxy.logs()


def test_response_cap(proxy, pki):
    assert curl(proxy, "https://api.example.test/big/x?n=5000", pki=pki)[0] == 200
    code, body, rc = curl(proxy, "https://api.example.test/big/x?n=20000", pki=pki)
    assert code != 200 and len(body) < 20000
    assert proxy.last_audit(rejected_by="max_response_body_bytes")["action"] == "deny"


def test_health_endpoint(proxy):
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{proxy.port('health_listen')}/healthz", timeout=5) as r:
        assert r.status == 200 and json.load(r)["status"] == "ok"


def test_audit_rotation_followed_after_sigusr1(proxy, pki):
    rotated = proxy.audit_path.with_suffix(".1")
    os.rename(proxy.audit_path, rotated)
    proxy.signal(signal.SIGUSR1)
    time.sleep(0.3)
    assert curl(proxy, "https://api.example.test/v1/after-rotation", pki=pki)[0] == 200
    assert proxy.last_audit(path="/v1/after-rotation")["action"] == "allow"
    assert "/v1/after-rotation" not in rotated.read_text()


def _reload(proxy, cfg) -> None:
    before = proxy.logs().count("reload")
    proxy.config_path.write_text(yaml.safe_dump(cfg) if isinstance(cfg, dict) else cfg)
    proxy.signal(signal.SIGHUP)
    deadline = time.monotonic() + 5
    while proxy.logs().count("reload") == before and time.monotonic() < deadline:
        time.sleep(0.05)


def test_sighup_reload_is_atomic_and_bad_config_keeps_old(proxy, pki):
    assert curl(proxy, "https://api.example.test/v2/x", pki=pki)[0] == 403
    cfg = yaml.safe_load(proxy.config_path.read_text())
    cfg["transforms"][0]["config"]["rules"][0]["paths"].append("/v2/*")
    _reload(proxy, cfg)
    assert curl(proxy, "https://api.example.test/v2/x", pki=pki)[0] == 200
    _reload(proxy, proxy.config_path.read_text() + "\nbogus: 1\n")
    assert "reload refused, still serving the previous config" in proxy.logs()
    assert "bogus: unknown key" in proxy.logs()
    assert curl(proxy, "https://api.example.test/v2/x", pki=pki)[0] == 200
    assert proxy.proc.poll() is None


def test_default_deny_list_blocks_loopback(pki, upstreams, start_proxy, tmp_path_factory):
    work = tmp_path_factory.mktemp("defaults")
    cfg = base_config(pki, work)
    del cfg["proxy"]["upstream_deny_cidrs"]  # the defaults: loopback, IMDS, RFC 1918 ...
    cfg["dns"] = {"listen": f"127.0.0.1:{free_port()}", "proxy_ip": "127.0.0.1", "records": RECORDS}
    cfg["transforms"] = [{"name": "allowlist", "config": {"rules": [
        {"host": "api.example.test", "methods": ["GET"]}, {"cidr": "127.0.0.0/8", "methods": ["GET"]}]}}]
    p = start_proxy(cfg, workdir=work)
    code, body, _ = curl(p, "https://api.example.test/v1/x", pki=pki)
    assert code == 403 and "upstream_deny_cidrs" in body
    assert curl(p, "https://127.0.0.2/v1/x", pki=pki)[0] == 403
    assert p.last_audit(host="127.0.0.2", method="GET")["rejected_by"] == "upstream_deny_cidrs"
