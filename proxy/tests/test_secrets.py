"""Secret sources and their TTL cache; errors name the secret, never the value."""

import boto3
import pytest
from moto import mock_aws

from agentctl_proxy import config as c
from agentctl_proxy.secrets import SecretCache, SecretUnavailable, render


class Clock:
    def __init__(self):
        self.t = 0.0

    def __call__(self):
        return self.t


def test_file_source_cached_for_ttl_then_refetched(tmp_path):
    f = tmp_path / "s"
    f.write_text("one\n")
    clock = Clock()
    cache = SecretCache(clock)
    src = c.FileSource(type="file", path=str(f), ttl="60s", failure_ttl="5s")
    assert cache.get("s", src) == "one"
    f.write_text("two")
    clock.t = 59
    assert cache.get("s", src) == "one"
    clock.t = 61
    assert cache.get("s", src) == "two"


def test_failure_remembered_for_failure_ttl_and_never_leaks(tmp_path, monkeypatch):
    clock = Clock()
    cache = SecretCache(clock)
    src = c.EnvSource(type="env", var="AGENTCTL_T_SECRET", ttl="60s", failure_ttl="5s")
    with pytest.raises(SecretUnavailable, match="'pat'.*AGENTCTL_T_SECRET is not set"):
        cache.get("pat", src)
    monkeypatch.setenv("AGENTCTL_T_SECRET", "v4lue")
    clock.t = 4
    with pytest.raises(SecretUnavailable):
        cache.get("pat", src)  # still within failure_ttl
    clock.t = 6
    assert cache.get("pat", src) == "v4lue"
    assert cache.get_cached(src) == "v4lue"


@mock_aws
def test_aws_ssm_source_with_decryption(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    ssm = boto3.client("ssm", region_name="us-east-1")
    ssm.put_parameter(Name="/acme/scout/pat", Value="ssm-s3cret", Type="SecureString")
    cache = SecretCache()
    src = c.SsmSource(type="aws_ssm", name="/acme/scout/pat", region="us-east-1", with_decryption=True)
    assert cache.get("pat", src) == "ssm-s3cret"
    missing = c.SsmSource(type="aws_ssm", name="/acme/none", region="us-east-1")
    with pytest.raises(SecretUnavailable, match="ParameterNotFound") as e:
        cache.get("none", missing)
    assert "ssm-s3cret" not in str(e.value)


def test_render():
    assert render("Bearer {{ .Value }}", "x") == "Bearer x"
    assert render("{{.Value}}", "a{{ .Value }}") == "a{{ .Value }}"  # a value is never re-expanded
