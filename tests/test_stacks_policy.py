"""Pure tables behind the programs: ports, routes, policy documents, images, zones."""
from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agentctl import hcloud_catalog
from agentctl.errors import ConfigError
from agentctl.stackfile import load
from agentctl_stacks import policy, program
from tests.test_stacks_harness import ROOT


@pytest.fixture(scope="module")
def aws():
    return load(ROOT, "example-aws")


def test_agent_ports_are_the_proxy_listeners_and_time(aws):
    ports = {(r.protocol, r.port) for r in policy.agent_to_proxy_ports(aws)}
    assert ports == {("tcp", 80), ("tcp", 443), ("tcp", 8080), ("tcp", 53), ("udp", 53), ("udp", 123)}
    assert policy.SSH_PORT not in {r.port for r in policy.agent_to_proxy_ports(aws)}


def test_agent_subnet_has_no_routes_and_proxy_one():
    assert policy.agent_route_destinations() == []
    assert policy.proxy_route_destinations() == ["0.0.0.0/0"]


def test_metadata_options():
    # Agents launch with IMDSv2 only (cloud-init needs it once); AgentImds then closes it.
    assert policy.agent_metadata_options() == {"http_endpoint": "enabled", "http_tokens": "required",
                                               "http_put_response_hop_limit": 1, "instance_metadata_tags": "disabled"}
    assert policy.agent_instance_ignore_changes("scout") == ["metadataOptions.httpEndpoint", "userDataBase64"]
    assert policy.agent_instance_ignore_changes("scout", frozenset({"scout"})) == ["metadataOptions.httpEndpoint"]
    proxy = policy.proxy_metadata_options()
    assert proxy["http_tokens"] == "required" and proxy["http_put_response_hop_limit"] == 1


def test_alert_key_and_topic_policies():
    key = policy.alerts_key_policy("111122223333")
    principals = [s["Principal"] for s in key["Statement"]]
    assert principals == [{"AWS": "arn:aws:iam::111122223333:root"}, {"Service": "cloudwatch.amazonaws.com"}]
    assert key["Statement"][1]["Action"] == ["kms:Decrypt", "kms:GenerateDataKey*"]
    (publish,) = policy.alerts_topic_policy(topic_arn="arn:t", alarm_arn="arn:a", account="111122223333")["Statement"]
    assert publish["Action"] == "sns:Publish" and publish["Resource"] == "arn:t"
    assert publish["Condition"] == {"ArnEquals": {"aws:SourceArn": "arn:a"},
                                    "StringEquals": {"aws:SourceAccount": "111122223333"}}


def test_proxy_role_policy_is_scoped():
    doc = policy.proxy_role_policy(region="eu-west-1", account="111122223333", project="p", stack="s",
                                   key_arn="arn:aws:kms:eu-west-1:111122223333:key/k")
    ssm, kms = doc["Statement"]
    assert ssm["Action"] == ["ssm:GetParameter", "ssm:GetParameters"]
    assert ssm["Resource"] == ["arn:aws:ssm:eu-west-1:111122223333:parameter/p/s/*"]
    assert kms["Action"] == ["kms:Decrypt"] and kms["Resource"] == ["arn:aws:kms:eu-west-1:111122223333:key/k"]
    assert kms["Condition"]["StringEquals"]["kms:ViaService"] == "ssm.eu-west-1.amazonaws.com"
    assert "*" not in str([s["Action"] for s in doc["Statement"]])


@pytest.mark.parametrize("distro,itype,owner,needle", [
    ("ubuntu-24.04", "t3.small", "099720109477", "ubuntu-noble-24.04-amd64-server-"),
    ("ubuntu-24.04", "t4g.small", "099720109477", "ubuntu-noble-24.04-arm64-server-"),
    ("ubuntu-24.04", "c7gn.large", "099720109477", "arm64"),
    ("ubuntu-24.04", "g5.xlarge", "099720109477", "amd64"),
    ("debian-12", "m7g.large", "136693071363", "debian-12-arm64-"),
])
def test_ami_filters(distro, itype, owner, needle):
    got_owner, filters = policy.ami_filters(distro, itype)
    assert got_owner == owner and needle in filters[0]["values"][0]


@given(st.integers(min_value=0, max_value=2**22 - 1).map(lambda n: ipaddress.ip_network((n << 10, 22))))
def test_rejected_egress_pattern_matches_exactly_the_agent_subnet(net):
    from agentctl.model import Deployment

    d = Deployment.model_validate({"cloud": "aws", "region": "r", "agents": [{"name": "ab", "runtime": {"command": {"exec": "/usr/bin/x"}}}],
                                   "adminSshKeys": ["ssh-ed25519 AAAA"], "network": {"cidr": str(net)}})
    prefix = re.search(r'srcaddr="([0-9.]+)\.\*"', policy.rejected_egress_pattern(d)).group(1)
    assert ipaddress.ip_network(prefix + ".0/24") == d.agent_subnet


def test_hcloud_zone_and_firewall():
    assert hcloud_catalog.network_zone("fsn1") == "eu-central"
    with pytest.raises(ValueError, match="not a Hetzner location"):
        hcloud_catalog.network_zone("us-east-1")
    hc = load(ROOT, "example-hcloud")
    rules = policy.hcloud_firewall_rules(hc)
    assert rules[0] == {"direction": "in", "protocol": "tcp", "port": "22", "source_ips": ["203.0.113.0/24"],
                        "description": "break-glass SSH from admin CIDRs"}
    out = {(r["protocol"], r["port"]) for r in rules if r["direction"] == "out"}
    assert out == {("tcp", "80"), ("tcp", "443"), ("tcp", "53"), ("udp", "53"), ("udp", "123"),
                   ("udp", "41641"), ("udp", "3478")}
    assert all(r["destination_ips"] == ["0.0.0.0/0"] for r in rules if r["direction"] == "out")
    without = hc.model_copy(update={"tailscale": None})
    assert {r["port"] for r in policy.hcloud_firewall_rules(without) if r["direction"] == "out"} == {"80", "443", "53", "123"}
    assert policy.agent_public_nets() == [{"ipv4_enabled": False, "ipv6_enabled": False}]


def test_pulumi_refuses_the_lab_stack_and_accepts_examples(aws):
    from agentctl.stackcheck import require_pulumi_cloud

    require_pulumi_cloud(aws, "f")
    require_pulumi_cloud(load(ROOT, "example-hcloud"), "f")
    with pytest.raises(ConfigError, match="agentctl lab up"):
        require_pulumi_cloud(load(ROOT, "lab"), "f")


def test_config_mapping_from_runtime_restores_the_file_shape():
    import json
    import os

    import pulumi

    # as the language host hands config to a program: PULUMI_CONFIG, PULUMI_CONFIG_SECRET_KEYS
    config = {"agentctl:network": '{"cidr": "10.0.0.0/16"}', "agentctl:region": "fsn1",
              "agentctl:githubPat": "ghp_plain"}
    os.environ.update(PULUMI_CONFIG=json.dumps(config), PULUMI_CONFIG_SECRET_KEYS='["agentctl:githubPat"]')
    try:
        mapping = program.config_mapping_from_runtime()
    finally:
        del os.environ["PULUMI_CONFIG"], os.environ["PULUMI_CONFIG_SECRET_KEYS"]
        pulumi.runtime.set_all_config({}, [])
    assert mapping["agentctl:network"] == {"cidr": "10.0.0.0/16"}
    assert mapping["agentctl:githubPat"] == {"secure": "<runtime secret>"}, "the value never reaches the model"
