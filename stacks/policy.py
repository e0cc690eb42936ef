"""Pure rule tables and documents for both clouds: no Pulumi, no I/O.

Every network opening the programs declare comes from a function here, so the tables
can be tested on their own and the components stay a thin mapping onto resources.
"""
from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from agentctl.model import Deployment
from agentctl.stackcheck import HCLOUD_FINGERPRINT  # what tells a key's fingerprint from its name

ANYWHERE_V4 = "0.0.0.0/0"
SSH_PORT = 22
NTP_PORT = 123
CANONICAL_OWNER = "099720109477"
DEBIAN_OWNER = "136693071363"


@dataclass(frozen=True)
class PortRule:
    """One opening: protocol ('tcp'|'udp'), a single port, and why it exists."""

    protocol: str
    port: int
    purpose: str


def agent_to_proxy_ports(deployment: Deployment) -> list[PortRule]:
    """What an agent host may send to the proxy, and nothing else anywhere."""
    listen = deployment.proxy.listen
    return [
        PortRule("tcp", listen.http, "plain HTTP routed by Host (DNS mode)"),
        PortRule("tcp", listen.https, "TLS routed by SNI (DNS mode)"),
        PortRule("tcp", listen.tunnel, "explicit proxy (CONNECT)"),
        PortRule("tcp", listen.dns, "DNS answered by the proxy"),
        PortRule("udp", listen.dns, "DNS answered by the proxy"),
        # TLS needs a correct clock; the proxy serves time (docs/design.md, "Time").
        PortRule("udp", NTP_PORT, "time from the proxy's chrony"),
    ]


def proxy_upstream_ports() -> list[PortRule]:
    """What the proxy host may send to the internet."""
    return [
        PortRule("tcp", 80, "upstream HTTP"),
        PortRule("tcp", 443, "upstream HTTPS, SSM and package mirrors"),
        # The VPC resolver answers nothing (DNS Firewall blocks all), so the proxy
        # resolves upstream names through public resolvers.
        PortRule("udp", 53, "upstream DNS"),
        PortRule("tcp", 53, "upstream DNS"),
    ]


def agent_route_destinations() -> list[str]:
    """Routes of the agent subnet's route table beyond the implicit local route: none."""
    return []


def proxy_route_destinations() -> list[str]:
    """The proxy subnet reaches the internet through the internet gateway."""
    return [ANYWHERE_V4]


def agent_metadata_options() -> dict[str, object]:
    """How an agent instance LAUNCHES. On EC2, cloud-init reads user-data from IMDS, so
    the endpoint must answer on first boot: IMDSv2 only, hop limit 1, no instance tags.
    There is no instance profile, so IMDS holds no credential. AgentImds (agent_imds.py)
    disables the endpoint once the host reports converged: that is the steady state."""
    return {"http_endpoint": "enabled", "http_tokens": "required",
            "http_put_response_hop_limit": 1, "instance_metadata_tags": "disabled"}


def agent_instance_ignore_changes(agent: str, rebuild: frozenset[str] = frozenset()) -> list[str]:
    """AgentImds closes the endpoint outside the instance's inputs; a refresh would see
    `disabled` and `pulumi up` would re-open it to match the launch value. Never.
    And the agent's user-data (see agent_user_data_ignored)."""
    return ["metadataOptions.httpEndpoint", *agent_user_data_ignored("userDataBase64", agent, rebuild)]


REBUILD_ENV = "AGENTCTL_REBUILD"


def rebuild_requested(environ: dict[str, str]) -> frozenset[str]:
    """AGENTCTL_REBUILD=scout,scribe: the agents whose user-data `pulumi up` applies (by
    replacing them, delete first) on this run."""
    return frozenset(filter(None, (n.strip() for n in environ.get(REBUILD_ENV, "").split(","))))


def agent_user_data_ignored(key: str, agent: str, rebuild: frozenset[str]) -> list[str]:
    """An agent's user-data is read at first boot only, so `pulumi up` ignores a change to
    it: the runtime version that `agentctl snapshot-upgrade` moves on the running host and
    records in the stack file must neither replace nor restart the host (a user-data
    change replaces an EC2 instance, user_data_replace_on_change, and a Hetzner server).
    New hosts get the current user-data, new version included. Pulumi keeps an ignored
    input at its value in state even when the resource is replaced (the engine's
    step_generator.go, processIgnoreChanges; pulumi docs, "ignoreChanges"), so a replace
    trigger could only rebuild the host with its old user-data: a rebuild with the new
    one is asked for by name (AGENTCTL_REBUILD), and then nothing is ignored."""
    return [] if agent in rebuild else [key]


def proxy_metadata_options() -> dict[str, object]:
    # IMDSv2 only, hop limit 1: a request relayed by the proxy process (or from a
    # container) can never reach the instance credentials.
    return {"http_endpoint": "enabled", "http_tokens": "required",
            "http_put_response_hop_limit": 1, "instance_metadata_tags": "disabled"}


def root_volume(size_gb: int = 20) -> dict[str, object]:
    return {"volume_type": "gp3", "encrypted": True, "volume_size": size_gb, "delete_on_termination": True}


def parameter_path_arn(region: str, account: str, project: str, stack: str) -> str:
    return f"arn:aws:ssm:{region}:{account}:parameter/{project}/{stack}/*"


def proxy_role_policy(*, region: str, account: str, project: str, stack: str, key_arn: str) -> dict:
    """The proxy's workload identity: read its own parameters, decrypt with its own key."""
    return {
        "Version": "2012-10-17",
        "Statement": [
            {"Sid": "ReadOwnParameters", "Effect": "Allow",
             "Action": ["ssm:GetParameter", "ssm:GetParameters"],
             "Resource": [parameter_path_arn(region, account, project, stack)]},
            {"Sid": "DecryptOwnParameters", "Effect": "Allow", "Action": ["kms:Decrypt"],
             "Resource": [key_arn],
             # Only when SSM asks on the proxy's behalf, not for arbitrary ciphertext.
             "Condition": {"StringEquals": {"kms:ViaService": f"ssm.{region}.amazonaws.com"}}},
        ],
    }


def assume_role_policy(service: str, account: str | None = None) -> dict:
    statement: dict = {"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}
    if account:
        # Confused-deputy guard: only this account's resources may use the role.
        statement["Condition"] = {"StringEquals": {"aws:SourceAccount": account}}
    return {"Version": "2012-10-17", "Statement": [statement]}


def flow_log_policy(log_group_arn: str) -> dict:
    return {"Version": "2012-10-17", "Statement": [{
        "Effect": "Allow",
        "Action": ["logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
        "Resource": [log_group_arn, f"{log_group_arn}:*"]}]}


def alerts_key_policy(account: str) -> dict:
    """Key policy of the alert topic's own KMS key. CloudWatch alarms cannot publish to a
    topic under the AWS-managed alias/aws/sns (its policy cannot grant them the key), so
    the topic has a customer-managed key that grants the CloudWatch service exactly what
    SNS asks on its behalf (AWS's documented statement). A key of its own: the secrets
    key never names a service principal."""
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "AccountAdministersTheKey", "Effect": "Allow",
         "Principal": {"AWS": f"arn:aws:iam::{account}:root"}, "Action": "kms:*", "Resource": "*"},
        {"Sid": "CloudWatchAlarmsPublishEncrypted", "Effect": "Allow",
         "Principal": {"Service": "cloudwatch.amazonaws.com"},
         "Action": ["kms:Decrypt", "kms:GenerateDataKey*"], "Resource": "*"},
    ]}


def alerts_topic_policy(*, topic_arn: str, alarm_arn: str, account: str) -> dict:
    """Only this deployment's escape alarm, in this account, may publish to the topic."""
    return {"Version": "2012-10-17", "Statement": [{
        "Sid": "EscapeAlarmPublishes", "Effect": "Allow",
        "Principal": {"Service": "cloudwatch.amazonaws.com"}, "Action": "sns:Publish", "Resource": topic_arn,
        "Condition": {"ArnEquals": {"aws:SourceArn": alarm_arn},
                      "StringEquals": {"aws:SourceAccount": account}}}]}


def rejected_egress_pattern(deployment: Deployment) -> str:
    """CloudWatch Logs filter for REJECT records whose source is an agent host.

    The agent subnet is always a /24, so the first three octets name it exactly."""
    net = deployment.agent_subnet
    assert net.prefixlen == 24, "agent subnet is a /24 by construction"
    prefix = ".".join(str(net.network_address).split(".")[:3])
    return ("[version, account_id, interface_id, srcaddr=\"" + prefix + ".*\", dstaddr, srcport, dstport, "
            "protocol, packets, bytes, start, end, action=\"REJECT\", log_status]")


def standard_zone_filters() -> list[dict]:
    """ec2:DescribeAvailabilityZones filters for a region's own zones: no Local Zones or
    Wavelength Zones, even opted in (they sort before the standard ones)."""
    return [{"name": "zone-type", "values": ["availability-zone"]},
            {"name": "opt-in-status", "values": ["opt-in-not-required"]}]


def eice_ssh_command(instance_id: str, user: str = "admin") -> str:
    """ssh to a host through the EC2 Instance Connect Endpoint's tunnel (IAM:
    ec2-instance-connect:OpenTunnel), authenticated by the admin key on the host."""
    return (f"ssh -o ProxyCommand='aws ec2-instance-connect open-tunnel --instance-id {instance_id}' "
            f"{user}@{instance_id}")


def dns_firewall_block_domains() -> list[str]:
    return ["*"]


def ami_filters(distro: str, instance_type: str) -> tuple[str, list[dict]]:
    """Owner and filters of the official image for distro and the type's architecture."""
    arch = "arm64" if _is_graviton(instance_type) else "amd64"
    if distro == "debian-12":
        name = f"debian-12-{arch}-*"
        owner = DEBIAN_OWNER
    else:
        name = f"ubuntu/images/hvm-ssd-gp3/ubuntu-noble-24.04-{arch}-server-*"
        owner = CANONICAL_OWNER
    return owner, [{"name": "name", "values": [name]},
                   {"name": "architecture", "values": ["arm64" if arch == "arm64" else "x86_64"]},
                   {"name": "virtualization-type", "values": ["hvm"]}]


def _is_graviton(instance_type: str) -> bool:
    family = instance_type.split(".")[0]
    # t4g, m7g, c7gn, r8g...: a 'g' after the generation digit means Graviton.
    digits = [i for i, ch in enumerate(family) if ch.isdigit()]
    return bool(digits) and "g" in family[digits[0] + 1:]


TAILSCALE_PORTS = (PortRule("udp", 41641, "tailscale: direct WireGuard"),
                   PortRule("udp", 3478, "tailscale: STUN (NAT traversal)"))


def hcloud_proxy_egress(deployment: Deployment) -> list[PortRule]:
    """What the Hetzner proxy may send to the internet: AWS's set, plus time (there is no
    link-local time service) and, with Tailscale, what a tailnet node needs (its control
    plane and DERP relays use tcp 443)."""
    rules = [*proxy_upstream_ports(), PortRule("udp", NTP_PORT, "time for the proxy's chrony")]
    if deployment.tailscale:
        rules += TAILSCALE_PORTS
    return rules


def hcloud_firewall_rules(deployment: Deployment) -> list[dict]:
    """Inbound: SSH from the admin CIDRs only (break-glass); Hetzner denies every inbound
    packet no rule allows. Outbound: with no `out` rule Hetzner allows everything, with
    one or more it denies the rest, so the proxy's egress is exactly these ports. Both
    act on public interfaces only (agents have none; the private network is unfiltered
    here and closed by each host's ufw)."""
    rules = []
    if deployment.network.admin_cidrs:
        rules.append({"direction": "in", "protocol": "tcp", "port": str(SSH_PORT),
                      "source_ips": list(deployment.network.admin_cidrs),
                      "description": "break-glass SSH from admin CIDRs"})
    rules += [{"direction": "out", "protocol": r.protocol, "port": str(r.port), "destination_ips": [ANYWHERE_V4],
               "description": r.purpose} for r in hcloud_proxy_egress(deployment)]
    return rules


def agent_public_nets() -> list[dict]:
    return [{"ipv4_enabled": False, "ipv6_enabled": False}]


def ssh_md5_fingerprint(public_key: str) -> str:
    """Hetzner's fingerprint of an OpenSSH public key: MD5 of the key blob, hex pairs."""
    digest = hashlib.md5(base64.b64decode(public_key.split()[1]), usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def hcloud_existing_keys(keys: list, stack: str) -> dict[str, int]:
    """fingerprint -> id of the project's SSH keys this stack did not create (those carry
    its `agentctl-stack` label and stay its own resources)."""
    return {k.fingerprint: k.id for k in keys if (k.labels or {}).get("agentctl-stack") != stack}

