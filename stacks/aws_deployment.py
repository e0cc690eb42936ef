"""AWS: one deployment = a VPC whose agent subnet has no way out but the proxy.

Child names are this component's API (`f"{name}-..."`): renaming one replaces the
resource, so add an alias if you ever must.
"""
from __future__ import annotations

import json

import pulumi
import pulumi_aws as aws

from agentctl import policy_parameter
from agentctl_stacks import policy
from agentctl_stacks.agent_imds import AgentImds, aws_credentials
from agentctl_stacks.args import DeploymentArgs
from agentctl.secrets import ca_key_parameter_name, proxy_config_parameter_name, ssm_parameter_name
from agentctl.userdata import ec2_user_data_base64

DEFAULT_PROXY_SIZE = "t3.small"
DEFAULT_AGENT_SIZE = "t3.medium"


class AwsDeployment(pulumi.ComponentResource):
    def __init__(self, name: str, args: DeploymentArgs, opts: pulumi.ResourceOptions | None = None):
        super().__init__("agentctl:aws:Deployment", name, None, opts)
        self._name, self._args, self._d = name, args, args.deployment
        self._child = pulumi.ResourceOptions(parent=self)
        self._amis: dict[str, pulumi.Output[str]] = {}
        self._account = aws.get_caller_identity_output(opts=pulumi.InvokeOutputOptions(parent=self)).account_id
        self._network()
        self._dns_firewall()
        self._security_groups()
        self._secrets()
        self._proxy_identity()
        self._instances()
        self._flow_logs()
        self.register_outputs(self.outputs())

    def _opts(self, **kw) -> pulumi.ResourceOptions:
        return pulumi.ResourceOptions.merge(self._child, pulumi.ResourceOptions(**kw))

    def _tags(self, role: str) -> dict[str, str]:
        return {"Name": f"{self._name}-{role}", "agentctl:stack": self._args.stack, "agentctl:role": role}

    # --- network: no NAT, and no route out of the agent subnet ----------------------
    def _network(self) -> None:
        n, d = self._name, self._d
        self.vpc = aws.ec2.Vpc(f"{n}-vpc", cidr_block=d.network.cidr, enable_dns_support=True,
                               enable_dns_hostnames=False, tags=self._tags("vpc"), opts=self._opts())
        # The default security group allows all traffic between its members: empty it.
        aws.ec2.DefaultSecurityGroup(f"{n}-default-sg", vpc_id=self.vpc.id, ingress=[], egress=[],
                                     tags=self._tags("default-sg-unused"), opts=self._opts())
        # A region's standard zones only: an opted-in Local Zone (us-east-1-atl-2a sorts
        # before us-east-1a) has fewer instance types and services.
        zone = aws.get_availability_zones_output(state="available", filters=policy.standard_zone_filters(),
                                                 opts=pulumi.InvokeOutputOptions(parent=self)).names[0]
        self.proxy_subnet = aws.ec2.Subnet(f"{n}-proxy-subnet", vpc_id=self.vpc.id, cidr_block=str(d.proxy_subnet),
                                           availability_zone=zone, map_public_ip_on_launch=False,
                                           tags=self._tags("proxy-subnet"), opts=self._opts())
        self.agent_subnet = aws.ec2.Subnet(f"{n}-agent-subnet", vpc_id=self.vpc.id, cidr_block=str(d.agent_subnet),
                                           availability_zone=zone, map_public_ip_on_launch=False,
                                           tags=self._tags("agent-subnet"), opts=self._opts())
        self.igw = aws.ec2.InternetGateway(f"{n}-igw", vpc_id=self.vpc.id, tags=self._tags("igw"), opts=self._opts())
        proxy_rt = aws.ec2.RouteTable(
            f"{n}-proxy-rt", vpc_id=self.vpc.id, tags=self._tags("proxy-rt"), opts=self._opts(),
            routes=[{"cidr_block": dest, "gateway_id": self.igw.id} for dest in policy.proxy_route_destinations()])
        # Only the implicit local route: an agent packet for anywhere outside the VPC has no next hop.
        agent_rt = aws.ec2.RouteTable(
            f"{n}-agent-rt", vpc_id=self.vpc.id, tags=self._tags("agent-rt"), opts=self._opts(),
            routes=[{"cidr_block": dest, "gateway_id": self.igw.id} for dest in policy.agent_route_destinations()])
        aws.ec2.RouteTableAssociation(f"{n}-proxy-rta", subnet_id=self.proxy_subnet.id, route_table_id=proxy_rt.id,
                                      opts=self._opts())
        aws.ec2.RouteTableAssociation(f"{n}-agent-rta", subnet_id=self.agent_subnet.id, route_table_id=agent_rt.id,
                                      opts=self._opts())

    # --- the VPC resolver is not filtered by security groups: it must answer nothing --
    def _dns_firewall(self) -> None:
        n = self._name
        domains = aws.route53.ResolverFirewallDomainList(f"{n}-dns-block-all", domains=policy.dns_firewall_block_domains(),
                                                         tags=self._tags("dns-firewall"), opts=self._opts())
        group = aws.route53.ResolverFirewallRuleGroup(f"{n}-dns-firewall", tags=self._tags("dns-firewall"),
                                                      opts=self._opts())
        aws.route53.ResolverFirewallRule(f"{n}-dns-block-all-rule", firewall_rule_group_id=group.id,
                                         firewall_domain_list_id=domains.id, action="BLOCK", block_response="NXDOMAIN",
                                         priority=100, opts=self._opts())
        aws.route53.ResolverFirewallRuleGroupAssociation(f"{n}-dns-firewall-assoc", vpc_id=self.vpc.id,
                                                         firewall_rule_group_id=group.id, priority=101,
                                                         # ENABLED makes AWS refuse the disassociation that
                                                         # `pulumi destroy` needs (RSLVR-02307).
                                                         mutation_protection="DISABLED", opts=self._opts())
        # If the firewall cannot evaluate a query, refuse it rather than resolve it.
        aws.route53.ResolverFirewallConfig(f"{n}-dns-firewall-config", resource_id=self.vpc.id,
                                           firewall_fail_open="DISABLED", opts=self._opts())

    # --- security groups: rules as separate resources, none inline ----------------------
    def _security_groups(self) -> None:
        n, d = self._name, self._d
        self.agent_sg = aws.ec2.SecurityGroup(f"{n}-agent-sg", vpc_id=self.vpc.id, tags=self._tags("agent-sg"),
                                              description="agent hosts: out to the proxy only", opts=self._opts())
        self.proxy_sg = aws.ec2.SecurityGroup(f"{n}-proxy-sg", vpc_id=self.vpc.id, tags=self._tags("proxy-sg"),
                                              description="egress proxy", opts=self._opts())
        self.eice_sg = aws.ec2.SecurityGroup(f"{n}-eice-sg", vpc_id=self.vpc.id, tags=self._tags("eice-sg"),
                                             description="EC2 Instance Connect Endpoint: SSH to hosts",
                                             opts=self._opts())
        proxy_cidr = f"{d.proxy_ip}/32"
        for rule in policy.agent_to_proxy_ports(d):
            key = f"{rule.protocol}-{rule.port}"
            aws.vpc.SecurityGroupEgressRule(f"{n}-agent-out-{key}", security_group_id=self.agent_sg.id,
                                            ip_protocol=rule.protocol, from_port=rule.port, to_port=rule.port,
                                            cidr_ipv4=proxy_cidr, description=rule.purpose, opts=self._opts())
            aws.vpc.SecurityGroupIngressRule(f"{n}-proxy-in-{key}", security_group_id=self.proxy_sg.id,
                                             ip_protocol=rule.protocol, from_port=rule.port, to_port=rule.port,
                                             referenced_security_group_id=self.agent_sg.id, description=rule.purpose,
                                             opts=self._opts())
        for rule in policy.proxy_upstream_ports():
            aws.vpc.SecurityGroupEgressRule(f"{n}-proxy-out-{rule.protocol}-{rule.port}",
                                            security_group_id=self.proxy_sg.id, ip_protocol=rule.protocol,
                                            from_port=rule.port, to_port=rule.port, cidr_ipv4=policy.ANYWHERE_V4,
                                            description=rule.purpose, opts=self._opts())
        # Admin path: EC2 Instance Connect Endpoint (IAM-authorised, CloudTrail-logged).
        # SSH reaches hosts only from the endpoint's group, never from the internet.
        for role, sg in (("agent", self.agent_sg), ("proxy", self.proxy_sg)):
            aws.vpc.SecurityGroupIngressRule(f"{n}-{role}-in-ssh-eice", security_group_id=sg.id, ip_protocol="tcp",
                                             from_port=policy.SSH_PORT, to_port=policy.SSH_PORT,
                                             referenced_security_group_id=self.eice_sg.id,
                                             description="SSH via EC2 Instance Connect Endpoint", opts=self._opts())
            aws.vpc.SecurityGroupEgressRule(f"{n}-eice-out-ssh-{role}", security_group_id=self.eice_sg.id,
                                            ip_protocol="tcp", from_port=policy.SSH_PORT, to_port=policy.SSH_PORT,
                                            referenced_security_group_id=sg.id, description=f"SSH to {role} hosts",
                                            opts=self._opts())
        for i, cidr in enumerate(d.network.admin_cidrs):
            # Optional break-glass straight to the proxy's public address.
            aws.vpc.SecurityGroupIngressRule(f"{n}-proxy-in-ssh-admin-{i}", security_group_id=self.proxy_sg.id,
                                             ip_protocol="tcp", from_port=policy.SSH_PORT, to_port=policy.SSH_PORT,
                                             cidr_ipv4=cidr, description="break-glass SSH from admin CIDR",
                                             opts=self._opts())
        self.eice = aws.ec2transitgateway.InstanceConnectEndpoint(
            f"{n}-eice", subnet_id=self.agent_subnet.id, security_group_ids=[self.eice_sg.id],
            preserve_client_ip=False, tags=self._tags("eice"), opts=self._opts())

    # --- secrets: one KMS key, SecureString parameters under the deployment's path ------
    def _secrets(self) -> None:
        n, a = self._name, self._args
        self.key = aws.kms.Key(f"{n}-key", description=f"agentctl {a.project}/{a.stack}: proxy secrets",
                               enable_key_rotation=True, deletion_window_in_days=30, tags=self._tags("key"),
                               opts=self._opts())
        aws.kms.Alias(f"{n}-key-alias", name=f"alias/{a.project}-{a.stack}", target_key_id=self.key.key_id,
                      opts=self._opts())
        self.parameters = []
        for agent, secret_name, value in a.agent_secrets():
            self.parameters.append(aws.ssm.Parameter(
                f"{n}-secret-{agent.name}-{secret_name}", name=ssm_parameter_name(a.project, a.stack, agent.name, secret_name),
                type="SecureString", key_id=self.key.arn, value=value, tags=self._tags("secret"), opts=self._opts()))
        self.parameters.append(aws.ssm.Parameter(
            f"{n}-ca-key", name=ca_key_parameter_name(a.project, a.stack), type="SecureString", key_id=self.key.arn,
            value=a.ca.key_pem, tags=self._tags("ca-key"), opts=self._opts()))
        # The proxy's policy: not in its user-data, so adding an agent or editing a rule
        # updates this parameter in place and the proxy's policy-pull reloads it within a
        # minute (roles/proxy/templates/policy-pull.py.j2); the proxy is not replaced.
        # Not a secret (hosts, paths, parameter names): String, the size AWS allows.
        self.proxy_config = aws.ssm.Parameter(
            f"{n}-proxy-config", name=proxy_config_parameter_name(a.project, a.stack), type="String",
            tier=policy_parameter.tier(a.proxy_config_value), insecure_value=a.proxy_config_value,
            tags=self._tags("proxy-config"), opts=self._opts())
        self.parameters.append(self.proxy_config)

    def _proxy_identity(self) -> None:
        n, a = self._name, self._args
        self.proxy_role = aws.iam.Role(f"{n}-proxy-role", assume_role_policy=json.dumps(
            policy.assume_role_policy("ec2.amazonaws.com")), tags=self._tags("proxy-role"), opts=self._opts())
        document = pulumi.Output.all(self._account, self.key.arn).apply(lambda v: json.dumps(policy.proxy_role_policy(
            region=self._d.region, account=v[0], project=a.project, stack=a.stack, key_arn=v[1])))
        self.proxy_policy = aws.iam.RolePolicy(f"{n}-proxy-policy", role=self.proxy_role.id, policy=document,
                                               opts=self._opts())
        self.proxy_profile = aws.iam.InstanceProfile(f"{n}-proxy-profile", role=self.proxy_role.name, opts=self._opts())

    # --- hosts ------------------------------------------------------------------------
    def _ami(self, instance_type: str) -> pulumi.Input[str]:
        if self._d.ami:
            return self._d.ami
        owner, filters = policy.ami_filters(self._d.distro, instance_type)
        key = filters[0]["values"][0]
        # One lookup per image, not per host: all hosts of an architecture share it.
        if key not in self._amis:
            self._amis[key] = aws.ec2.get_ami_output(most_recent=True, owners=[owner], filters=filters,
                                                     opts=pulumi.InvokeOutputOptions(parent=self)).id
        return self._amis[key]

    def _host_opts(self, *, depends_on: list, ignore: list[str]) -> pulumi.ResourceOptions:
        # A host has a fixed private address: its replacement can exist only once the old
        # one is gone (else InvalidIPAddress.InUse). A looked-up image is read at creation
        # only: Canonical or Debian publishing a new one replaces nothing (unattended-
        # upgrades keep hosts current); a pinned `agentctl:ami` replaces on purpose.
        return self._opts(depends_on=depends_on, delete_before_replace=True,
                          ignore_changes=[*ignore, *([] if self._d.ami else ["ami"])])

    def _instances(self) -> None:
        n, d, a = self._name, self._d, self._args
        proxy_size = d.proxy.size or DEFAULT_PROXY_SIZE
        # The proxy's address lives on its own interface, which holds the Elastic IP before
        # the instance exists: the first boot's packages and pip install have a way out.
        self.proxy_nic = aws.ec2.NetworkInterface(
            f"{n}-proxy-nic", subnet_id=self.proxy_subnet.id, private_ips=[d.proxy_ip],
            security_groups=[self.proxy_sg.id], tags=self._tags("proxy-nic"), opts=self._opts(delete_before_replace=True))
        self.proxy_eip = aws.ec2.Eip(f"{n}-proxy-eip", domain="vpc", network_interface=self.proxy_nic.id,
                                     tags=self._tags("proxy-eip"), opts=self._opts(depends_on=[self.igw]))
        self.proxy = aws.ec2.Instance(
            f"{n}-proxy", ami=self._ami(proxy_size), instance_type=proxy_size,
            primary_network_interface={"network_interface_id": self.proxy_nic.id},
            iam_instance_profile=self.proxy_profile.name, metadata_options=policy.proxy_metadata_options(),
            root_block_device=policy.root_volume(), user_data_base64=ec2_user_data_base64(a.proxy.user_data),
            user_data_replace_on_change=True, tags=self._tags("proxy"),
            # Its first boot reads its parameters with its role: both must exist by then.
            opts=self._host_opts(depends_on=[self.proxy_eip, self.proxy_policy, *self.parameters], ignore=[]))
        self.agents, self.agent_imds = {}, {}
        for agent in d.agents:
            size = agent.size or DEFAULT_AGENT_SIZE
            instance = self.agents[agent.name] = aws.ec2.Instance(
                f"{n}-agent-{agent.name}", ami=self._ami(size), instance_type=size, subnet_id=self.agent_subnet.id,
                private_ip=d.agent_ip(agent), vpc_security_group_ids=[self.agent_sg.id],
                associate_public_ip_address=False, metadata_options=policy.agent_metadata_options(),
                root_block_device=policy.root_volume(), user_data_base64=ec2_user_data_base64(a.host(agent.name).user_data),
                user_data_replace_on_change=True, tags=self._tags(f"agent-{agent.name}"),
                # The proxy must answer DNS and time before an agent's cloud-init needs them.
                opts=self._host_opts(depends_on=[self.proxy],
                                     ignore=policy.agent_instance_ignore_changes(agent.name, self._args.rebuild)))
            # cloud-init read its user-data from IMDS; once the host converged, close it for good.
            self.agent_imds[agent.name] = AgentImds(f"{n}-agent-{agent.name}-imds", instance_id=instance.id,
                                                    region=d.region, host=agent.name,
                                                    credentials=aws_credentials(), opts=self._opts())

    # --- detection: rejected egress from the agent subnet is an escape attempt ----------
    def _flow_logs(self) -> None:
        n, a = self._name, self._args
        group = aws.cloudwatch.LogGroup(f"{n}-flow-log", name=f"/agentctl/{a.project}/{a.stack}/rejected",
                                        retention_in_days=365, tags=self._tags("flow-log"), opts=self._opts())
        role = aws.iam.Role(f"{n}-flow-log-role", tags=self._tags("flow-log-role"), opts=self._opts(),
                            assume_role_policy=self._account.apply(lambda acct: json.dumps(
                                policy.assume_role_policy("vpc-flow-logs.amazonaws.com", acct))))
        aws.iam.RolePolicy(f"{n}-flow-log-policy", role=role.id, opts=self._opts(),
                           policy=group.arn.apply(lambda arn: json.dumps(policy.flow_log_policy(arn))))
        aws.ec2.FlowLog(f"{n}-agent-flow-log", subnet_id=self.agent_subnet.id, traffic_type="REJECT",
                        log_destination_type="cloud-watch-logs", log_destination=group.arn, iam_role_arn=role.arn,
                        max_aggregation_interval=60, tags=self._tags("flow-log"), opts=self._opts())
        namespace, metric = f"agentctl/{a.project}/{a.stack}", "AgentRejectedEgress"
        aws.cloudwatch.LogMetricFilter(f"{n}-agent-rejected-egress", log_group_name=group.name,
                                       pattern=policy.rejected_egress_pattern(self._d),
                                       metric_transformation={"name": metric, "namespace": namespace, "value": "1",
                                                              "default_value": "0"}, opts=self._opts())
        # CloudWatch cannot publish under alias/aws/sns: the topic has a key of its own.
        self.alerts_key = aws.kms.Key(f"{n}-alerts-key", description=f"agentctl {a.project}/{a.stack}: alert topic",
                                      enable_key_rotation=True, deletion_window_in_days=30,
                                      policy=self._account.apply(lambda acct: json.dumps(policy.alerts_key_policy(acct))),
                                      tags=self._tags("alerts-key"), opts=self._opts())
        self.alerts = aws.sns.Topic(f"{n}-alerts", kms_master_key_id=self.alerts_key.arn, tags=self._tags("alerts"),
                                    opts=self._opts())
        alarm = aws.cloudwatch.MetricAlarm(
            f"{n}-agent-escape-alarm", namespace=namespace, metric_name=metric,
            statistic="Sum", period=60, evaluation_periods=1, threshold=1,
            comparison_operator="GreaterThanOrEqualToThreshold", treat_missing_data="notBreaching",
            alarm_description="An agent host sent traffic the network refused: an escape attempt",
            alarm_actions=[self.alerts.arn], tags=self._tags("alarm"), opts=self._opts())
        aws.sns.TopicPolicy(f"{n}-alerts-policy", arn=self.alerts.arn, opts=self._opts(),
                            policy=pulumi.Output.all(self.alerts.arn, alarm.arn, self._account).apply(
                                lambda v: json.dumps(policy.alerts_topic_policy(topic_arn=v[0], alarm_arn=v[1],
                                                                                account=v[2]))))

    def outputs(self) -> dict[str, pulumi.Input]:
        d, a = self._d, self._args
        eice = self.eice.id
        return {
            "proxyPublicIp": self.proxy_eip.public_ip,
            "proxyPrivateIp": d.proxy_ip,
            "agentPrivateIps": {agent.name: d.agent_ip(agent) for agent in d.agents},
            "caFingerprintSha256": a.ca.fingerprint_sha256,
            "alertsTopicArn": self.alerts.arn,
            # Plain ssh through the endpoint's tunnel, with your admin key. Not `aws
            # ec2-instance-connect ssh`: it pushes a key the host reads from IMDS, which
            # is closed on agents.
            "ssh": {name: inst.id.apply(policy.eice_ssh_command)
                    for name, inst in {d.proxy.name: self.proxy, **self.agents}.items()},
            "instanceConnectEndpointId": eice,
        }
