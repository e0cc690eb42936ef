"""The AWS program, asserted on what it registers (under mocks), invariant by invariant.

Each invariant is a check over the recorded registrations (and stack outputs). It must
hold on the example stack, and it must FAIL on every variant where the program was
deliberately broken in one facet of it: a check that cannot fail is not a test.
"""
from __future__ import annotations

import base64
import gzip
import json

import pytest
import yaml
from tests.test_stacks_harness import Ctx, Plan, evaluate_variants, make_project, named, of_type

from agentctl.ca import ensure_ca
from agentctl.plan import PLACEHOLDER_ACCOUNT, SECRET_PLACEHOLDER, mock_id
from agentctl.secrets import ca_key_parameter_name, proxy_config_parameter_name
from agentctl.stackfile import load
from agentctl_stacks.agent_imds import DEFAULT_TIMEOUT_SECONDS, converged_marker

pytestmark = pytest.mark.slow  # over 5 s (the fast tier: ./dev test -m "not lab and not slow")

STACK = "example-aws"
N = "agentctl"  # the component's name: children are f"{N}-..."
PROXY_IP, AGENT_IP = "10.0.1.10", "10.0.2.11"
AGENT_PORTS = {("tcp", 80), ("tcp", 443), ("tcp", 8080), ("tcp", 53), ("udp", 53), ("udp", 123)}
SG_EGRESS = "aws:vpc/securityGroupEgressRule:SecurityGroupEgressRule"
SG_INGRESS = "aws:vpc/securityGroupIngressRule:SecurityGroupIngressRule"
INSTANCE = "aws:ec2/instance:Instance"
IMDS = "pulumi-python:dynamic/agentctl:AgentImds"
ARN = f"arn:aws:mock:us-east-1:{PLACEHOLDER_ACCOUNT}"  # how the mocks name an ARN




def rules_of(rs, token, sg_name):
    return [r["inputs"] for r in of_type(rs, token) if r["inputs"]["securityGroupId"] == mock_id(sg_name)]


def agents(rs):
    return [r for r in of_type(rs, INSTANCE) if r["name"].startswith(f"{N}-agent-")]


def user_data_of(inst) -> str:
    raw = base64.b64decode(inst["inputs"]["userDataBase64"])
    return (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode()


# --- invariants ------------------------------------------------------------------------

def check_agent_egress_only_to_proxy(p, ctx):
    rs = p.resources
    sg = named(rs, f"{N}-agent-sg")["inputs"]
    assert not sg.get("egress") and not sg.get("ingress"), "rules must be separate resources, none inline"
    out = rules_of(rs, SG_EGRESS, f"{N}-agent-sg")
    assert {(r["ipProtocol"], r["fromPort"]) for r in out} == AGENT_PORTS
    for r in out:
        assert r["cidrIpv4"] == f"{PROXY_IP}/32" and r["fromPort"] == r["toPort"], r


def check_agent_ingress_only_ssh_from_endpoint(p, ctx):
    ins = rules_of(p.resources, SG_INGRESS, f"{N}-agent-sg")
    assert ins == [{**ins[0], "ipProtocol": "tcp", "fromPort": 22, "toPort": 22,
                    "referencedSecurityGroupId": mock_id(f"{N}-eice-sg")}]
    assert "cidrIpv4" not in ins[0]


def check_proxy_security_group(p, ctx):
    rs = p.resources
    ins = rules_of(rs, SG_INGRESS, f"{N}-proxy-sg")
    from_agents = {(r["ipProtocol"], r["fromPort"]) for r in ins if r.get("referencedSecurityGroupId") == mock_id(f"{N}-agent-sg")}
    assert from_agents == AGENT_PORTS
    others = [r for r in ins if r.get("referencedSecurityGroupId") != mock_id(f"{N}-agent-sg")]
    assert all(r["fromPort"] == r["toPort"] == 22 for r in others), others
    assert not any(r.get("cidrIpv4") == "0.0.0.0/0" for r in ins)
    out = rules_of(rs, SG_EGRESS, f"{N}-proxy-sg")
    assert {(r["ipProtocol"], r["fromPort"]) for r in out} == {("tcp", 80), ("tcp", 443), ("tcp", 53), ("udp", 53)}


def check_instances_carry_exactly_their_security_group(p, ctx):
    rs = p.resources
    for a in agents(rs):
        assert a["inputs"]["vpcSecurityGroupIds"] == [mock_id(f"{N}-agent-sg")], a["name"]
    assert named(rs, f"{N}-proxy-nic")["inputs"]["securityGroups"] == [mock_id(f"{N}-proxy-sg")]
    assert named(rs, f"{N}-proxy")["inputs"]["primaryNetworkInterface"] == {
        "networkInterfaceId": mock_id(f"{N}-proxy-nic")}
    assert named(rs, f"{N}-eice")["inputs"]["securityGroupIds"] == [mock_id(f"{N}-eice-sg")]


def check_default_security_group_is_empty(p, ctx):
    (default,) = of_type(p.resources, "aws:ec2/defaultSecurityGroup:DefaultSecurityGroup")
    assert default["inputs"]["vpcId"] == mock_id(f"{N}-vpc")
    assert default["inputs"]["ingress"] == [] and default["inputs"]["egress"] == [], default["inputs"]


def check_agent_route_table_has_no_way_out(p, ctx):
    rs = p.resources
    rt = named(rs, f"{N}-agent-rt")["inputs"]
    assert not rt.get("routes"), f"agent route table must only hold the implicit local route: {rt.get('routes')}"
    assoc = named(rs, f"{N}-agent-rta")["inputs"]
    assert assoc == {"subnetId": mock_id(f"{N}-agent-subnet"), "routeTableId": mock_id(f"{N}-agent-rt")}
    assert not of_type(rs, "aws:ec2/natGateway:NatGateway")
    assert not of_type(rs, "aws:ec2/route:Route")
    assert named(rs, f"{N}-proxy-rt")["inputs"]["routes"] == [{"cidrBlock": "0.0.0.0/0", "gatewayId": mock_id(f"{N}-igw")}]


def check_agent_imds_closed_after_convergence(p, ctx):
    """Launch: IMDSv2 only, hop limit 1, no tags (cloud-init must read its user-data).
    Then one AgentImds per agent, on that very instance, waits for that host's final
    message and disables the endpoint."""
    rs = p.resources
    closers = {r["inputs"]["instanceId"]: r for r in of_type(rs, IMDS)}
    assert len(closers) == len(of_type(rs, IMDS)) == len(ctx.deployment.agents)
    for a in agents(rs):
        assert a["inputs"]["metadataOptions"] == {"httpEndpoint": "enabled", "httpTokens": "required",
                                                  "httpPutResponseHopLimit": 1, "instanceMetadataTags": "disabled"}
        host = a["name"].removeprefix(f"{N}-agent-")
        closer = closers.get(mock_id(a["name"]))
        assert closer is not None, f"nothing closes the IMDS of {a['name']}"
        assert closer["name"] == f"{a['name']}-imds"
        assert closer["inputs"] == {"__provider": "[dynamic provider]", "instanceId": mock_id(a["name"]),
                                    "region": "us-east-1", "host": host, "marker": converged_marker(host),
                                    "timeoutSeconds": DEFAULT_TIMEOUT_SECONDS}
        # The marker starts the result line that this host's converge prints (not cloud-init's
        # final message, which prints even when a step failed).
        doc = yaml.safe_load(user_data_of(a))
        converge = next(f["content"] for f in doc["write_files"] if f["path"] == "/usr/local/sbin/agentctl-converge")
        assert f"result_prefix='{closer['inputs']['marker']}'" in converge
        assert not doc["final_message"].startswith(closer["inputs"]["marker"])


def check_agent_has_no_identity_and_no_public_ip(p, ctx):
    rs = p.resources
    for a in agents(rs):
        i = a["inputs"]
        assert "iamInstanceProfile" not in i, a["name"]
        assert i["associatePublicIpAddress"] is False and i["subnetId"] == mock_id(f"{N}-agent-subnet")
        assert i["privateIp"] == AGENT_IP
        assert not [e for e in of_type(rs, "aws:ec2/eip:Eip") if e["inputs"].get("instance") == mock_id(a["name"])]


def check_root_volumes_encrypted_gp3(p, ctx):
    for inst in of_type(p.resources, INSTANCE):
        root = inst["inputs"].get("rootBlockDevice") or {}
        assert root.get("encrypted") is True and root.get("volumeType") == "gp3", inst["name"]


def check_proxy_instance(p, ctx):
    """The proxy's address lives on its own interface, which holds the Elastic IP before
    the instance boots (its first boot installs packages), and the instance waits for
    its role's policy and its parameters (its first boot reads them)."""
    rs = p.resources
    proxy = named(rs, f"{N}-proxy")
    p_ = proxy["inputs"]
    assert p_["metadataOptions"]["httpTokens"] == "required"
    assert p_["metadataOptions"]["httpPutResponseHopLimit"] == 1
    assert p_["iamInstanceProfile"] == f"{N}-proxy-profile"
    assert "privateIp" not in p_ and "associatePublicIpAddress" not in p_
    nic = named(rs, f"{N}-proxy-nic")["inputs"]
    assert nic["privateIps"] == [PROXY_IP] and nic["subnetId"] == mock_id(f"{N}-proxy-subnet")
    (eip,) = of_type(rs, "aws:ec2/eip:Eip")
    assert eip["name"] == f"{N}-proxy-eip" and eip["inputs"]["networkInterface"] == mock_id(f"{N}-proxy-nic")
    assert "instance" not in eip["inputs"]
    parameters = {r["name"] for r in of_type(rs, "aws:ssm/parameter:Parameter")}
    assert {f"{N}-proxy-eip", f"{N}-proxy-policy", *parameters} <= set(proxy["options"]["dependsOn"])


def check_proxy_role_least_privilege(p, ctx):
    rs = p.resources
    doc = json.loads(named(rs, f"{N}-proxy-policy")["inputs"]["policy"])
    allowed = {(a, res) for s in doc["Statement"] for a in s["Action"] for res in s["Resource"]}
    path = f"arn:aws:ssm:us-east-1:{PLACEHOLDER_ACCOUNT}:parameter/agentctl/{STACK}/*"
    assert allowed == {("ssm:GetParameter", path), ("ssm:GetParameters", path),
                       ("kms:Decrypt", f"{ARN}:{N}-key")}
    assert all(s["Effect"] == "Allow" for s in doc["Statement"])
    trust = json.loads(named(rs, f"{N}-proxy-role")["inputs"]["assumeRolePolicy"])
    assert trust["Statement"][0]["Principal"] == {"Service": "ec2.amazonaws.com"}
    assert named(rs, f"{N}-proxy-profile")["inputs"]["role"] == f"{N}-proxy-role"


def check_kms_rotation(p, ctx):
    keys = of_type(p.resources, "aws:kms/key:Key")
    assert {k["name"] for k in keys} == {f"{N}-key", f"{N}-alerts-key"}
    for key in keys:
        assert key["inputs"]["enableKeyRotation"] is True, key["name"]


def check_secrets_in_ssm(p, ctx):
    params = {x["inputs"]["name"]: x["inputs"] for x in of_type(p.resources, "aws:ssm/parameter:Parameter")}
    # The proxy's policy is a parameter too, and no secret (test_stacks_lifecycle).
    policy_parameter = params.pop(proxy_config_parameter_name("agentctl", STACK))
    assert policy_parameter["type"] == "String" and "value" not in policy_parameter
    assert set(params) == {f"/agentctl/{STACK}/scout/anthropic-key", f"/agentctl/{STACK}/scout/github-pat",
                           f"/agentctl/{STACK}/scout/bot-token",
                           ca_key_parameter_name("agentctl", STACK)}
    for x in params.values():
        assert x["type"] == "SecureString" and x["keyId"] == f"{ARN}:{N}-key" and x["value"] == SECRET_PLACEHOLDER


def check_dns_firewall_blocks_vpc_resolver(p, ctx):
    rs = p.resources
    assert named(rs, f"{N}-dns-block-all")["inputs"]["domains"] == ["*"]
    rule = named(rs, f"{N}-dns-block-all-rule")["inputs"]
    assert rule["action"] == "BLOCK" and rule["firewallDomainListId"] == mock_id(f"{N}-dns-block-all")
    assoc = named(rs, f"{N}-dns-firewall-assoc")["inputs"]
    assert assoc["vpcId"] == mock_id(f"{N}-vpc") and assoc["firewallRuleGroupId"] == rule["firewallRuleGroupId"]
    # ENABLED makes AWS refuse the disassociation `pulumi destroy` needs (RSLVR-02307).
    assert assoc["mutationProtection"] == "DISABLED"
    assert named(rs, f"{N}-dns-firewall-config")["inputs"] == {"resourceId": mock_id(f"{N}-vpc"),
                                                                 "firewallFailOpen": "DISABLED"}


def check_rejected_egress_alarm(p, ctx):
    rs = p.resources
    flow = named(rs, f"{N}-agent-flow-log")["inputs"]
    assert flow["trafficType"] == "REJECT" and flow["subnetId"] == mock_id(f"{N}-agent-subnet")
    assert flow["logDestinationType"] == "cloud-watch-logs" and flow["logDestination"] == f"{ARN}:{N}-flow-log"
    metric_filter = named(rs, f"{N}-agent-rejected-egress")["inputs"]
    assert metric_filter["logGroupName"] == f"/agentctl/agentctl/{STACK}/rejected"
    prefix = ".".join(str(ctx.deployment.agent_subnet.network_address).split(".")[:3])
    fields = metric_filter["pattern"].strip("[]").split(", ")
    assert f'srcaddr="{prefix}.*"' in fields and 'action="REJECT"' in fields, fields
    assert metric_filter["metricTransformation"]["value"] == "1"
    alarm = named(rs, f"{N}-agent-escape-alarm")["inputs"]
    assert alarm["metricName"] == metric_filter["metricTransformation"]["name"]
    assert alarm["namespace"] == metric_filter["metricTransformation"]["namespace"]
    assert alarm["threshold"] == 1 and alarm["comparisonOperator"] == "GreaterThanOrEqualToThreshold"
    assert alarm["alarmActions"] == [f"{ARN}:{N}-alerts"]


def check_alarm_can_publish_to_its_encrypted_topic(p, ctx):
    rs = p.resources
    topic = named(rs, f"{N}-alerts")["inputs"]
    assert topic["kmsMasterKeyId"] == f"{ARN}:{N}-alerts-key", "alias/aws/sns cannot be granted to CloudWatch"
    key_policy = json.loads(named(rs, f"{N}-alerts-key")["inputs"]["policy"])
    by_principal = {json.dumps(s["Principal"], sort_keys=True): s for s in key_policy["Statement"]}
    cloudwatch = by_principal.get(json.dumps({"Service": "cloudwatch.amazonaws.com"})) or {}
    assert cloudwatch.get("Effect") == "Allow", "no key policy statement for CloudWatch alarms"
    assert sorted(cloudwatch["Action"]) == ["kms:Decrypt", "kms:GenerateDataKey*"]
    admin = by_principal.get(json.dumps({"AWS": f"arn:aws:iam::{PLACEHOLDER_ACCOUNT}:root"})) or {}
    assert admin.get("Action") == "kms:*", "without the account statement the key locks its owners out"
    assert len(key_policy["Statement"]) == 2
    topic_policy = named(rs, f"{N}-alerts-policy")["inputs"]
    assert topic_policy["arn"] == f"{ARN}:{N}-alerts"
    (statement,) = json.loads(topic_policy["policy"])["Statement"]
    assert statement == {"Sid": "EscapeAlarmPublishes", "Effect": "Allow",
                         "Principal": {"Service": "cloudwatch.amazonaws.com"}, "Action": "sns:Publish",
                         "Resource": f"{ARN}:{N}-alerts",
                         "Condition": {"ArnEquals": {"aws:SourceArn": f"{ARN}:{N}-agent-escape-alarm"},
                                       "StringEquals": {"aws:SourceAccount": PLACEHOLDER_ACCOUNT}}}


def check_user_data_is_the_hosts_rendered_user_data(p, ctx):
    instances = {i["name"]: i for i in of_type(p.resources, INSTANCE)}
    hosts = {f"{N}-proxy": ctx.deployment.proxy.name, **{f"{N}-agent-{a.name}": a.name for a in ctx.deployment.agents}}
    assert set(instances) == set(hosts)
    for name, inst in instances.items():
        text = user_data_of(inst)
        assert text == p.rendered[hosts[name]], f"{name} does not get its own rendered user-data"
        assert "PRIVATE KEY" not in text, "the CA key must never travel in user-data"


def check_stack_outputs(p, ctx):
    d = ctx.deployment

    def connect(iid):
        return f"ssh -o ProxyCommand='aws ec2-instance-connect open-tunnel --instance-id {iid}' admin@{iid}"
    assert p.outputs == {
        "proxyPublicIp": "203.0.113.20",  # the Elastic IP's address, as the mocks answer it
        "proxyPrivateIp": PROXY_IP,
        "agentPrivateIps": {"scout": AGENT_IP},
        "caFingerprintSha256": ctx.ca_fingerprint,
        "alertsTopicArn": f"{ARN}:{N}-alerts",
        "ssh": {d.proxy.name: connect(mock_id(f"{N}-proxy")), "scout": connect(mock_id(f"{N}-agent-scout"))},
        "instanceConnectEndpointId": mock_id(f"{N}-eice"),
    }


def check_hosts_are_deleted_before_their_replacement(p, ctx):
    """Every host (and the proxy's interface) holds a fixed private address: a
    replacement created first would fail with InvalidIPAddress.InUse. A looked-up image
    is read at creation only, so a newly published one replaces nothing."""
    rs = p.resources
    for host in [*agents(rs), named(rs, f"{N}-proxy")]:
        assert host["options"]["deleteBeforeReplace"] is True, host["name"]
        assert "ami" in host["options"]["ignoreChanges"], host["name"]
    assert named(rs, f"{N}-proxy-nic")["options"]["deleteBeforeReplace"] is True


def check_subnets_in_a_standard_zone(p, ctx):
    """The mocks answer like an account opted in to a Local Zone, which sorts first."""
    zones = {named(p.resources, f"{N}-{role}-subnet")["inputs"]["availabilityZone"] for role in ("proxy", "agent")}
    assert zones == {"us-east-1a"}


CHECKS = {f.__name__.removeprefix("check_"): f for f in [
    check_agent_egress_only_to_proxy, check_agent_ingress_only_ssh_from_endpoint, check_proxy_security_group,
    check_instances_carry_exactly_their_security_group, check_default_security_group_is_empty,
    check_agent_route_table_has_no_way_out, check_agent_imds_closed_after_convergence,
    check_agent_has_no_identity_and_no_public_ip, check_root_volumes_encrypted_gp3, check_proxy_instance,
    check_proxy_role_least_privilege, check_kms_rotation, check_secrets_in_ssm,
    check_dns_firewall_blocks_vpc_resolver, check_rejected_egress_alarm, check_alarm_can_publish_to_its_encrypted_topic,
    check_user_data_is_the_hosts_rendered_user_data, check_stack_outputs,
    check_hosts_are_deleted_before_their_replacement, check_subnets_in_a_standard_zone]}


def _append_to(cls_path: str, name_part: str, kwarg: str, extra: str) -> str:
    """Mutation: instances of cls_path whose name contains name_part get `extra` appended to a list kwarg."""
    module, cls = cls_path.rsplit(".", 1)
    return (f"orig_cls = {module}.{cls}\n"
            f"class Mutant(orig_cls):\n"
            f"    def __init__(self, name, *a, **kw):\n"
            f"        if {name_part!r} in name:\n"
            f"            kw[{kwarg!r}] = list(kw[{kwarg!r}]) + [{extra}]\n"
            f"        super().__init__(name, *a, **kw)\n"
            f"{module}.{cls} = Mutant\n")


def _replace_policy(func: str, edit: str) -> str:
    """Mutation: the policy document `func` returns is edited by `edit` (Python on `doc`)."""
    return (f"orig_{func} = policy.{func}\n"
            f"def mutant(*a, **kw):\n"
            f"    doc = orig_{func}(*a, **kw)\n"
            f"    {edit}\n"
            f"    return doc\n"
            f"policy.{func} = mutant\n")


EMPTY_CLOUD_CONFIG = "__import__('base64').b64encode(b'#cloud-config\\n').decode()"

# Deliberate breaks, one per facet of each invariant: Python run in the harness before evaluation.
BREAKS = {
    "agent_egress_only_to_proxy": [
        "orig = policy.agent_to_proxy_ports\n"
        "policy.agent_to_proxy_ports = lambda d: orig(d) + [policy.PortRule('tcp', 25, 'smtp')]",
    ],
    "agent_ingress_only_ssh_from_endpoint": [
        "after(aws_deployment.AwsDeployment, '_security_groups', lambda self: pulumi_aws.vpc.SecurityGroupIngressRule("
        "self._name + '-agent-in-any', security_group_id=self.agent_sg.id, ip_protocol='tcp', from_port=22,"
        " to_port=22, cidr_ipv4='0.0.0.0/0', opts=self._opts()))",
    ],
    "proxy_security_group": [
        "policy.proxy_upstream_ports = lambda: [policy.PortRule('tcp', p, 'x') for p in (22, 80, 443, 53)]",
    ],
    "instances_carry_exactly_their_security_group": [
        _append_to("pulumi_aws.ec2.Instance", "-agent-", "vpc_security_group_ids", "'sg-0badbadbadbadbad0'"),
        _append_to("pulumi_aws.ec2.NetworkInterface", "-proxy-nic", "security_groups", "'sg-0badbadbadbadbad0'"),
        _append_to("pulumi_aws.ec2transitgateway.InstanceConnectEndpoint", "-eice", "security_group_ids",
                   "'sg-0badbadbadbadbad0'"),
    ],
    "default_security_group_is_empty": [
        "override(pulumi_aws.ec2, 'DefaultSecurityGroup', '-default-sg', ingress=[{'protocol': '-1', 'from_port': 0,"
        " 'to_port': 0, 'self': True}])",
        "override(pulumi_aws.ec2, 'DefaultSecurityGroup', '-default-sg', egress=[{'protocol': '-1', 'from_port': 0,"
        " 'to_port': 0, 'cidr_blocks': ['0.0.0.0/0']}])",
    ],
    "agent_route_table_has_no_way_out": ["policy.agent_route_destinations = lambda: ['0.0.0.0/0']"],
    "agent_imds_closed_after_convergence": [
        # The original defect: launched with the endpoint off, cloud-init never gets its user-data.
        "policy.agent_metadata_options = lambda: {'http_endpoint': 'disabled', 'http_tokens': 'required'}",
        "policy.agent_metadata_options = lambda: {'http_endpoint': 'enabled', 'http_tokens': 'optional',"
        " 'http_put_response_hop_limit': 1, 'instance_metadata_tags': 'disabled'}",
        "policy.agent_metadata_options = lambda: {'http_endpoint': 'enabled', 'http_tokens': 'required',"
        " 'http_put_response_hop_limit': 2, 'instance_metadata_tags': 'disabled'}",
        "policy.agent_metadata_options = lambda: {'http_endpoint': 'enabled', 'http_tokens': 'required',"
        " 'http_put_response_hop_limit': 1, 'instance_metadata_tags': 'enabled'}",
        # Nothing ever closes the endpoint.
        "aws_deployment.AgentImds = lambda *a, **kw: None",
        # It watches the wrong host's console, or the wrong instance.
        # (a wrapper, not a subclass: a dynamic resource's subclass gets another type token)
        "orig_imds = aws_deployment.AgentImds\n"
        "aws_deployment.AgentImds = lambda name, **kw: orig_imds(name, **{**kw, 'host': 'proxy'})",
        "orig_imds = aws_deployment.AgentImds\n"
        "aws_deployment.AgentImds = lambda name, **kw: orig_imds(name, **{**kw, 'instance_id': 'i-0123456789abcdef0'})",
        "agent_imds.converged_marker = lambda host: 'Cloud-init v. '",
    ],
    "agent_has_no_identity_and_no_public_ip": [
        "override(pulumi_aws.ec2, 'Instance', '-agent-', iam_instance_profile='borrowed-profile')",
        "override(pulumi_aws.ec2, 'Instance', '-agent-', associate_public_ip_address=True)",
        "after(aws_deployment.AwsDeployment, '_instances', lambda self: pulumi_aws.ec2.Eip(self._name + '-agent-eip',"
        " domain='vpc', instance=self.agents['scout'].id, opts=self._opts()))",
        "override(pulumi_aws.ec2, 'Instance', '-agent-', private_ip='10.0.2.99')",
    ],
    "root_volumes_encrypted_gp3": [
        "override(pulumi_aws.ec2, 'Instance', '-agent-', root_block_device={'volume_type': 'gp2', 'encrypted': False})",
        "override(pulumi_aws.ec2, 'Instance', '-proxy', root_block_device={'volume_type': 'gp3', 'encrypted': False})",
        "override(pulumi_aws.ec2, 'Instance', '-proxy', root_block_device={'volume_type': 'gp2', 'encrypted': True})",
        "override(pulumi_aws.ec2, 'Instance', '-agent-', root_block_device=None)",
    ],
    "proxy_instance": [
        "override(pulumi_aws.ec2, 'Instance', '-proxy', metadata_options={'http_tokens': 'optional',"
        " 'http_put_response_hop_limit': 2})",
        "override(pulumi_aws.ec2, 'Eip', '-proxy-eip', network_interface='eni-0123456789abcdef0')",
        "override(pulumi_aws.ec2, 'Instance', '-proxy', opts=pulumi.ResourceOptions())",
    ],
    "proxy_role_least_privilege": [
        _replace_policy("proxy_role_policy", "doc['Statement'][0]['Resource'] = ['*']"),
    ],
    "kms_rotation": [
        "override(pulumi_aws.kms, 'Key', '-key', enable_key_rotation=False)",
        "override(pulumi_aws.kms, 'Key', '-alerts-key', enable_key_rotation=False)",
    ],
    "secrets_in_ssm": ["override(pulumi_aws.ssm, 'Parameter', '-secret-', type='String')"],
    "dns_firewall_blocks_vpc_resolver": [
        "policy.dns_firewall_block_domains = lambda: ['evil.example.']",
        # The original defect: `pulumi destroy` could not remove the association.
        "override(pulumi_aws.route53, 'ResolverFirewallRuleGroupAssociation', '-assoc', mutation_protection='ENABLED')",
    ],
    "rejected_egress_alarm": [
        "override(pulumi_aws.ec2, 'FlowLog', '-agent-', traffic_type='ACCEPT')",
        "override(pulumi_aws.ec2, 'FlowLog', '-agent-', subnet_id='subnet-0123456789abcdef0')",
        "orig = policy.rejected_egress_pattern\n"
        "policy.rejected_egress_pattern = lambda d: orig(d).replace('srcaddr=\"10.0.2.', 'srcaddr=\"10.0.1.')",
        "orig = policy.rejected_egress_pattern\n"
        "policy.rejected_egress_pattern = lambda d: orig(d).replace('action=\"REJECT\"', 'action=\"ACCEPT\"')",
        "override(pulumi_aws.cloudwatch, 'LogMetricFilter', '-agent-rejected-egress', log_group_name='/other')",
        "override(pulumi_aws.cloudwatch, 'MetricAlarm', '-escape-alarm', metric_name='Other')",
        "override(pulumi_aws.cloudwatch, 'MetricAlarm', '-escape-alarm', alarm_actions=[])",
        "override(pulumi_aws.cloudwatch, 'MetricAlarm', '-escape-alarm', threshold=100)",
    ],
    "alarm_can_publish_to_its_encrypted_topic": [
        # The original defect: the AWS-managed SNS key, which CloudWatch can never use.
        "override(pulumi_aws.sns, 'Topic', '-alerts', kms_master_key_id='alias/aws/sns')",
        _replace_policy("alerts_key_policy", "doc['Statement'] = doc['Statement'][:1]"),
        _replace_policy("alerts_key_policy", "doc['Statement'][1]['Action'] = ['kms:Decrypt']"),
        _replace_policy("alerts_key_policy", "doc['Statement'] = doc['Statement'][1:]"),
        _replace_policy("alerts_topic_policy", "del doc['Statement'][0]['Condition']"),
        _replace_policy("alerts_topic_policy", "doc['Statement'][0]['Principal'] = {'AWS': '*'}"),
        "override(pulumi_aws.sns, 'TopicPolicy', '-alerts-policy', arn='arn:aws:sns:us-east-1:1:other')",
    ],
    "user_data_is_the_hosts_rendered_user_data": [
        f"override(pulumi_aws.ec2, 'Instance', '-agent-', user_data_base64={EMPTY_CLOUD_CONFIG})",
        f"override(pulumi_aws.ec2, 'Instance', '-proxy', user_data_base64={EMPTY_CLOUD_CONFIG})",
        "orig = agentctl.render.render_hosts\n"
        "def leaky(*a, **kw):\n"
        "    hosts = orig(*a, **kw)\n"
        "    return [type(h)(**{**h.__dict__, 'user_data': h.user_data + '\\n# -----BEGIN PRIVATE KEY-----'}) for h in hosts]\n"
        "agentctl.render.render_hosts = leaky",
    ],
    "stack_outputs": [
        "orig = aws_deployment.AwsDeployment.outputs\n"
        "aws_deployment.AwsDeployment.outputs = lambda self: {**orig(self), 'agentPrivateIps': {}}",
        "orig_export = pulumi.export\n"
        "pulumi.export = lambda k, v: None if k == 'ssh' else orig_export(k, v)",
        "orig = aws_deployment.AwsDeployment.outputs\n"
        "aws_deployment.AwsDeployment.outputs = lambda self: {**orig(self), 'proxyPublicIp': self._d.proxy_ip}",
        # The original defect: a command that pushes a key the agent would read from IMDS (closed).
        "policy.eice_ssh_command = lambda iid, user='admin': "
        "'aws ec2-instance-connect ssh --connection-type eice --os-user admin --instance-id ' + iid",
    ],
    "hosts_are_deleted_before_their_replacement": [
        "orig_host_opts = aws_deployment.AwsDeployment._host_opts\n"
        "aws_deployment.AwsDeployment._host_opts = lambda self, **kw: pulumi.ResourceOptions.merge("
        "orig_host_opts(self, **kw), pulumi.ResourceOptions(delete_before_replace=False))",
        "override(pulumi_aws.ec2, 'NetworkInterface', '-proxy-nic', opts=pulumi.ResourceOptions())",
        # A new image published would replace every host.
        "orig_host_opts = aws_deployment.AwsDeployment._host_opts\n"
        "aws_deployment.AwsDeployment._host_opts = lambda self, *, depends_on, ignore: orig_host_opts("
        "self, depends_on=depends_on, ignore=ignore) if False else self._opts(depends_on=depends_on, "
        "delete_before_replace=True, ignore_changes=list(ignore))",
    ],
    "subnets_in_a_standard_zone": ["policy.standard_zone_filters = lambda: []"],
}
BROKEN = [f"{inv}/{i}" for inv, patches in sorted(BREAKS.items()) for i in range(len(patches))]


def _ami_override(config):
    config["agentctl:ami"] = "ami-0123456789abcdef0"


def _context(project) -> Ctx:
    # A CA in the project: plan uses it (so its fingerprint is known) and the harness
    # renders every host's expected user-data with it.
    return Ctx(load(project, STACK), ensure_ca(project, STACK).fingerprint_sha256)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
    return make_project(tmp_path_factory.mktemp("aws"), STACK)


@pytest.fixture(scope="module")
def ctx(project):
    return _context(project)


@pytest.fixture(scope="module")
def plans(project, ctx, tmp_path_factory):
    ami = make_project(tmp_path_factory.mktemp("aws-ami"), STACK, _ami_override)
    jobs = {"baseline": {"dir": str(project), "stack": STACK, "patch": ""},
            "ami": {"dir": str(ami), "stack": STACK, "patch": ""},
            "imds-reopened": {"dir": str(project), "stack": STACK,
                              "patch": "policy.agent_instance_ignore_changes = lambda *a: []"}}
    for key in BROKEN:
        inv, i = key.split("/")
        jobs[key] = {"dir": str(project), "stack": STACK, "patch": BREAKS[inv][int(i)]}
    return {k: Plan(v["resources"], v["outputs"], v["rendered"])
            for k, v in evaluate_variants(jobs, with_outputs=True).items()}


def test_every_invariant_has_a_break():
    assert set(BREAKS) == set(CHECKS) and all(BREAKS.values())


@pytest.mark.parametrize("invariant", sorted(CHECKS))
def test_invariant_holds(plans, ctx, invariant):
    CHECKS[invariant](plans["baseline"], ctx)


@pytest.mark.parametrize("broken", BROKEN)
def test_invariant_fails_on_broken_program(plans, ctx, broken):
    with pytest.raises(AssertionError):
        CHECKS[broken.split("/")[0]](plans[broken], ctx)


def test_refresh_never_reopens_the_agents_imds(plans):
    """AgentImds disables the endpoint outside the instance's inputs: the instance must
    ignore that field, or `pulumi up --refresh` would enable it again."""
    def ignored(plan):
        return {i["name"]: i["options"]["ignoreChanges"] for i in of_type(plan.resources, INSTANCE)}

    assert ignored(plans["baseline"]) == {f"{N}-agent-scout": ["ami", "metadataOptions.httpEndpoint", "userDataBase64"],
                                          f"{N}-proxy": ["ami"]}
    assert ignored(plans["imds-reopened"])[f"{N}-agent-scout"] == ["ami"]


def test_children_are_parented_and_named_after_the_component(plans):
    names = [r["name"] for r in plans["baseline"].resources]
    assert named(plans["baseline"].resources, N)["type"] == "agentctl:aws:Deployment"
    assert all(n == N or n.startswith(f"{N}-") for n in names)


def test_ami_defaults_to_lookup_and_is_overridable(plans):
    from agentctl.plan import PLACEHOLDER_AMI

    assert {i["inputs"]["ami"] for i in of_type(plans["baseline"].resources, INSTANCE)} == {PLACEHOLDER_AMI}
    assert {i["inputs"]["ami"] for i in of_type(plans["ami"].resources, INSTANCE)} == {"ami-0123456789abcdef0"}
    # A pinned image is a decision: changing it replaces the hosts (delete first).
    assert all("ami" not in i["options"]["ignoreChanges"] for i in of_type(plans["ami"].resources, INSTANCE))
