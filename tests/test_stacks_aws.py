"""The AWS program, asserted on what it registers (under mocks), invariant by invariant.

Each invariant is a check over the recorded registrations. It must hold on the example
stack, and it must FAIL on a variant where the program was deliberately broken in
exactly that respect: a check that cannot fail is not a test.
"""
from __future__ import annotations

import base64
import gzip
import json

import pytest
from tests.test_stacks_harness import evaluate_variants, make_project, named, of_type

from agentctl.plan import PLACEHOLDER_ACCOUNT, SECRET_PLACEHOLDER, mock_id

STACK = "example-aws"
N = "agentctl"  # the component's name: children are f"{N}-..."
PROXY_IP, AGENT_IP = "10.0.1.10", "10.0.2.11"
AGENT_PORTS = {("tcp", 80), ("tcp", 443), ("tcp", 8080), ("tcp", 53), ("udp", 53), ("udp", 123)}
SG_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
INSTANCE = "aws:ec2/instance:Instance"


def rules_of(rs, token, sg_name):
    return [r["inputs"] for r in of_type(rs, token) if r["inputs"]["securityGroupId"] == mock_id(sg_name)]


def agents(rs):
    return [r for r in of_type(rs, INSTANCE) if r["name"].startswith(f"{N}-agent-")]


# --- invariants ------------------------------------------------------------------------

def check_agent_egress_only_to_proxy(rs):
    sg = named(rs, f"{N}-agent-sg")["inputs"]
    assert not sg.get("egress") and not sg.get("ingress"), "rules must be separate resources, none inline"
    out = rules_of(rs, SG_EGRESS, f"{N}-agent-sg")
    assert {(r["ipProtocol"], r["fromPort"]) for r in out} == AGENT_PORTS
    for r in out:
        assert r["cidrIpv4"] == f"{PROXY_IP}/32" and r["fromPort"] == r["toPort"], r


def check_agent_ingress_only_ssh_from_endpoint(rs):
    ins = rules_of(rs, SG_INGRESS, f"{N}-agent-sg")
    assert ins == [{**ins[0], "ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
                    "referencedSecurityGroupId": mock_id(f"{N}-eice-sg")}]
    assert "cidrIpv4" not in ins[0]


def check_proxy_security_group(rs):
    ins = rules_of(rs, SG_INGRESS, f"{N}-proxy-sg")
    from_agents = {(r["ipProtocol"], r["fromPort"]) for r in ins if r.get("referencedSecurityGroupId") == mock_id(f"{N}-agent-sg")}
    assert from_agents == AGENT_PORTS
    others = [r for r in ins if r.get("referencedSecurityGroupId") != mock_id(f"{N}-agent-sg")]
    assert all(r["fromPort"] == r["toPort"] == 22 for r in others), others
    assert not any(r.get("cidrIpv4") == "0.0.0.0/0" for r in ins)
    out = rules_of(rs, SG_EGRESS, f"{N}-proxy-sg")
    assert {(r["ipProtocol"], r["fromPort"]) for r in out} == {("tcp", 80), ("tcp", 443), ("tcp", 53), ("udp", 53)}


def check_agent_route_table_has_no_way_out(rs):
    rt = named(rs, f"{N}-agent-rt")["inputs"]
    assert not rt.get("routes"), f"agent route table must only hold the implicit local route: {rt.get('routes')}"
    assoc = named(rs, f"{N}-agent-rta")["inputs"]
    assert assoc == {"subnetId": mock_id(f"{N}-agent-subnet"), "routeTableId": mock_id(f"{N}-agent-rt")}
    assert not of_type(rs, "aws:ec2/natGateway:NatGateway")
    assert not of_type(rs, "aws:ec2/route:Route")
    assert named(rs, f"{N}-proxy-rt")["inputs"]["routes"] == [{"cidrBlock": "0.0.0.0/0", "gatewayId": mock_id(f"{N}-igw")}]


def check_agent_has_no_imds(rs):
    for a in agents(rs):
        assert a["inputs"]["metadataOptions"]["httpEndpoint"] == "disabled", a["name"]


def check_agent_has_no_identity_and_no_public_ip(rs):
    for a in agents(rs):
        i = a["inputs"]
        assert "iamInstanceProfile" not in i, a["name"]
        assert i["associatePublicIpAddress"] is False and i["subnetId"] == mock_id(f"{N}-agent-subnet")
        assert i["privateIp"] == AGENT_IP
        assert not [e for e in of_type(rs, "aws:ec2/eip:Eip") if e["inputs"].get("instance") == mock_id(a["name"])]


def check_root_volumes_encrypted_gp3(rs):
    for inst in of_type(rs, INSTANCE):
        root = inst["inputs"]["rootBlockDevice"]
        assert root["encrypted"] is True and root["volumeType"] == "gp3", inst["name"]


def check_proxy_instance(rs):
    p = named(rs, f"{N}-proxy")["inputs"]
    assert p["metadataOptions"]["httpTokens"] == "required"
    assert p["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert p["iamInstanceProfile"] == f"{N}-proxy-profile"
    assert p["privateIp"] == PROXY_IP and p["subnetId"] == mock_id(f"{N}-proxy-subnet")
    assert named(rs, f"{N}-proxy-eip")["inputs"]["instance"] == mock_id(f"{N}-proxy")


def check_proxy_role_least_privilege(rs):
    doc = json.loads(named(rs, f"{N}-proxy-policy")["inputs"]["policy"])
    allowed = {(a, res) for s in doc["Statement"] for a in s["Action"] for res in s["Resource"]}
    path = f"arn:aws:ssm:us-east-1:{PLACEHOLDER_ACCOUNT}:parameter/agentctl/{STACK}/*"
    key = named(rs, f"{N}-key")
    assert allowed == {("ssm:GetParameter", path), ("ssm:GetParameters", path),
                       ("kms:Decrypt", f"arn:aws:mock:us-east-1:{PLACEHOLDER_ACCOUNT}:{key['name']}")}
    assert all(s["Effect"] == "Allow" for s in doc["Statement"])
    trust = json.loads(named(rs, f"{N}-proxy-role")["inputs"]["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert named(rs, f"{N}-proxy-profile")["inputs"]["role"] == f"{N}-proxy-role"


def check_kms_rotation(rs):
    (key,) = of_type(rs, "aws:kms/key:Key")
    assert key["inputs"]["enableKeyRotation"] is True


def check_secrets_in_ssm(rs):
    params = {p["inputs"]["name"]: p["inputs"] for p in of_type(rs, "aws:ssm/parameter:Parameter")}
    assert set(params) == {f"/agentctl/{STACK}/scout/anthropic-key", f"/agentctl/{STACK}/scout/github-pat",
                           f"/agentctl/{STACK}/proxy/ca-key"}
    for p in params.values():
        assert p["type"] == "SecureString" and p["keyId"].endswith(f":{N}-key") and p["value"] == SECRET_PLACEHOLDER


def check_dns_firewall_blocks_vpc_resolver(rs):
    assert named(rs, f"{N}-dns-block-all")["inputs"]["domains"] == ["*"]
    rule = named(rs, f"{N}-dns-block-all-rule")["inputs"]
    assert rule["action"] == "BLOCK" and rule["firewallDomainListId"] == mock_id(f"{N}-dns-block-all")
    assoc = named(rs, f"{N}-dns-firewall-assoc")["inputs"]
    assert assoc["vpcId"] == mock_id(f"{N}-vpc") and assoc["firewallRuleGroupId"] == rule["firewallRuleGroupId"]
    assert named(rs, f"{N}-dns-firewall-config")["inputs"] == {"resourceId": mock_id(f"{N}-vpc"),
                                                                 "firewallFailOpen": "DISABLED"}


def check_rejected_egress_alarm(rs):
    flow = named(rs, f"{N}-agent-flow-log")["inputs"]
    assert flow["trafficType"] == "REJECT" and flow["subnetId"] == mock_id(f"{N}-agent-subnet")
    assert flow["logDestinationType"] == "cloud-watch-logs"
    metric_filter = named(rs, f"{N}-agent-rejected-egress")["inputs"]
    assert 'srcaddr="10.0.2.*"' in metric_filter["pattern"] and 'action="REJECT"' in metric_filter["pattern"]
    alarm = named(rs, f"{N}-agent-escape-alarm")["inputs"]
    assert alarm["metricName"] == metric_filter["metricTransformation"]["name"]
    assert alarm["namespace"] == metric_filter["metricTransformation"]["namespace"]
    assert alarm["threshold"] == 1 and alarm["alarmActions"]


def check_user_data_is_rendered_cloud_init(rs):
    for inst in of_type(rs, INSTANCE):
        raw = base64.b64decode(inst["inputs"]["userDataBase64"])
        text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()
        assert text.startswith("#cloud-config"), inst["name"]
        assert "PRIVATE KEY" not in text, "the CA key must never travel in user-data"


CHECKS = {f.__name__.removeprefix("check_"): f for f in [
    check_agent_egress_only_to_proxy, check_agent_ingress_only_ssh_from_endpoint, check_proxy_security_group,
    check_agent_route_table_has_no_way_out, check_agent_has_no_imds, check_agent_has_no_identity_and_no_public_ip,
    check_root_volumes_encrypted_gp3, check_proxy_instance, check_proxy_role_least_privilege, check_kms_rotation,
    check_secrets_in_ssm, check_dns_firewall_blocks_vpc_resolver, check_rejected_egress_alarm,
    check_user_data_is_rendered_cloud_init]}

# One deliberate break per invariant: Python run in the harness before evaluation.
BREAKS = {
    "agent_egress_only_to_proxy":
        "orig = policy.agent_to_proxy_ports\n"
        "policy.agent_to_proxy_ports = lambda d: orig(d) + [policy.PortRule('tcp', 25, 'smtp')]",
    "agent_ingress_only_ssh_from_endpoint":
        "after(aws_deployment.AwsDeployment, '_security_groups', lambda self: pulumi_aws.vpc.SecurityGroupIngressRule("
        "self._name + '-agent-in-any', security_group_id=self.agent_sg.id, ip_protocol='tcp', from_port=22,"
        " to_port=22, cidr_ipv4='0.0.0.0/0', opts=self._opts()))",
    "proxy_security_group":
        "policy.proxy_upstream_ports = lambda: [policy.PortRule('tcp', p, 'x') for p in (22, 80, 443, 53)]",
    "agent_route_table_has_no_way_out": "policy.agent_route_destinations = lambda: ['0.0.0.0/0']",
    "agent_has_no_imds": "policy.agent_metadata_options = lambda: {'http_endpoint': 'enabled', 'http_tokens': 'required'}",
    "agent_has_no_identity_and_no_public_ip":
        "override(pulumi_aws.ec2, 'Instance', '-agent-', iam_instance_profile='borrowed-profile')",
    "root_volumes_encrypted_gp3":
        "override(pulumi_aws.ec2, 'Instance', '-agent-', root_block_device={'volume_type': 'gp2', 'encrypted': False})",
    "proxy_instance":
        "override(pulumi_aws.ec2, 'Instance', '-proxy', metadata_options={'http_tokens': 'optional',"
        " 'http_put_response_hop_limit': 2})",
    "proxy_role_least_privilege":
        "orig = policy.proxy_role_policy\n"
        "def wide(**kw):\n"
        "    doc = orig(**kw)\n"
        "    doc['Statement'][0]['Resource'] = ['*']\n"
        "    return doc\n"
        "policy.proxy_role_policy = wide",
    "kms_rotation": "override(pulumi_aws.kms, 'Key', '-key', enable_key_rotation=False)",
    "secrets_in_ssm": "override(pulumi_aws.ssm, 'Parameter', '-secret-', type='String')",
    "dns_firewall_blocks_vpc_resolver": "policy.dns_firewall_block_domains = lambda: ['evil.example.']",
    "rejected_egress_alarm": "override(pulumi_aws.ec2, 'FlowLog', '-agent-', traffic_type='ACCEPT')",
    "user_data_is_rendered_cloud_init":
        "import base64\n"
        "orig = agentctl.render.render_hosts\n"
        "def leaky(*a, **kw):\n"
        "    hosts = orig(*a, **kw)\n"
        "    return [type(h)(**{**h.__dict__, 'user_data': h.user_data + '\\n# -----BEGIN PRIVATE KEY-----'}) for h in hosts]\n"
        "agentctl.render.render_hosts = leaky",
}


def _ami_override(config):
    config["agentctl:ami"] = "ami-0123456789abcdef0"


@pytest.fixture(scope="module")
def plans(tmp_path_factory):
    project = make_project(tmp_path_factory.mktemp("aws"), STACK)
    ami = make_project(tmp_path_factory.mktemp("aws-ami"), STACK, _ami_override)
    jobs = {"baseline": {"dir": str(project), "stack": STACK, "patch": ""},
            "ami": {"dir": str(ami), "stack": STACK, "patch": ""}}
    jobs.update({name: {"dir": str(project), "stack": STACK, "patch": patch} for name, patch in BREAKS.items()})
    return evaluate_variants(jobs)


def test_every_invariant_has_a_break():
    assert set(BREAKS) == set(CHECKS)


@pytest.mark.parametrize("invariant", sorted(CHECKS))
def test_invariant_holds(plans, invariant):
    CHECKS[invariant](plans["baseline"])


@pytest.mark.parametrize("invariant", sorted(BREAKS))
def test_invariant_fails_on_broken_program(plans, invariant):
    with pytest.raises(AssertionError):
        CHECKS[invariant](plans[invariant])


def test_children_are_parented_and_named_after_the_component(plans):
    names = [r["name"] for r in plans["baseline"]]
    assert named(plans["baseline"], N)["type"] == "agentctl:aws:Deployment"
    assert all(n == N or n.startswith(f"{N}-") for n in names)


def test_ami_defaults_to_lookup_and_is_overridable(plans):
    from agentctl.plan import PLACEHOLDER_AMI

    assert {i["inputs"]["ami"] for i in of_type(plans["baseline"], INSTANCE)} == {PLACEHOLDER_AMI}
    assert {i["inputs"]["ami"] for i in of_type(plans["ami"], INSTANCE)} == {"ami-0123456789abcdef0"}
