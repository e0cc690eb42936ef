"""Every check across fields of a stack, in one place: what the typed model cannot see
alone (other keys of the file, the cloud, the project and stack names).

`stackfile.from_config` runs them all, and every command reads a stack through it
(`render`, `plan`, `verify`, `lab`, and the Pulumi program itself), so whatever one
refuses, all refuse, with the same line. A check is a function of a `StackContext`
that raises ConfigError; cloud-specific ones are registered per cloud, which is where
a cloud's catalog (server types, locations) plugs in: `register("hcloud", check)`.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable

from agentctl.errors import ConfigError
from agentctl.model import Deployment
from agentctl.secrets import ca_key_parameter_name, ssm_prefix

NAMESPACE = "agentctl"
CLOUD_NAMES = {"aws": "AWS", "hcloud": "Hetzner Cloud", "lab": "the lab"}
# Shapes only; the exact names are a cloud catalog's business (registered below).
AWS_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-[0-9]+$")
AWS_SIZE = re.compile(r"^[a-z][a-z0-9-]*\.[a-z0-9]+$")        # t3.medium, m7i-flex.large
HCLOUD_SIZE = re.compile(r"^[a-z]+[0-9]+[a-z]*$")              # cx22, cpx11, cax21, ccx13


@dataclass(frozen=True)
class StackContext:
    deployment: Deployment
    config: dict[str, Any]   # the whole Pulumi config mapping: provider keys (aws:region) too
    source: str              # the file name every message starts with
    project: str
    stack: str | None        # None only where no stack exists (unit tests of the model)

    def fail(self, key_path: str, problem: str, expected: str = "") -> ConfigError:
        return ConfigError(self.source, f"{NAMESPACE}:{key_path}", problem, expected)


Check = Callable[[StackContext], None]


def check_host_names(ctx: StackContext) -> None:
    d = ctx.deployment
    seen: set[str] = {d.proxy.name}
    for i, agent in enumerate(d.agents):
        if agent.name in seen:
            raise ctx.fail(f"agents[{i}].name", f"host name {agent.name!r} is used twice",
                           "unique host names across the proxy and the agents")
        seen.add(agent.name)


def check_host_numbers(ctx: StackContext) -> None:
    d = ctx.deployment
    numbers: dict[int, str] = {}
    for i, agent in enumerate(d.agents):
        number = d.agent_host_number(agent)
        if number in numbers:
            raise ctx.fail(f"agents[{i}]", f"would take address .{number}, which agent {numbers[number]!r} has",
                           "a unique hostNumber per agent (unset ones follow the list from .11)")
        numbers[number] = agent.name


def check_secret_names(ctx: StackContext) -> None:
    """A secret's name is where it is stored (an SSM parameter or a file per agent and
    name) and what the proxy config calls it: two of one name in one agent would each
    overwrite the other. (Agent and secret names cannot spell the CA key's or the
    Tailscale key's path: see agentctl/secrets.py.)"""
    seen: dict[tuple[str, str], str] = {}
    for key_path, agent, secret in ctx.deployment.agent_secrets():
        first = seen.setdefault((agent.name, secret.name), key_path)
        if first != key_path:
            raise ctx.fail(f"{key_path}.name", f"{secret.name!r} is the name of {NAMESPACE}:{first} too",
                           "a unique secret name per agent")


def check_backups(ctx: StackContext) -> None:
    """The watchdog's backup-age check needs backups that write the marker it reads."""
    d = ctx.deployment
    max_age = d.watchdog.backup_max_age_hours
    if max_age is None:
        return
    backed_up = [(i, a) for i, a in enumerate(d.agents) if a.backups.enabled]
    if not backed_up:
        raise ctx.fail("watchdog.backupMaxAgeHours", "is set, but no agent has backups enabled, so no backup "
                       "would ever be recent", "backups: {enabled: true} on an agent, or no backupMaxAgeHours")
    for i, agent in backed_up:
        if agent.backups.interval_hours >= max_age:
            raise ctx.fail("watchdog.backupMaxAgeHours", f"is {max_age}, but agents[{i}] backs up every "
                           f"{agent.backups.interval_hours} hours, so the check would fail between two good backups",
                           f"more than {agent.backups.interval_hours} hours")


def check_ssm_sources_cloud(ctx: StackContext) -> None:
    """Only the AWS proxy has a role that reads SSM; elsewhere every request needing the
    secret would get 503 forever."""
    d = ctx.deployment
    if d.cloud == "aws":
        return
    for key_path, _, secret in d.agent_secrets():
        if secret.source is not None and secret.source.type == "aws_ssm":
            raise ctx.fail(f"{key_path}.source.type", f"is 'aws_ssm', but the proxy on {CLOUD_NAMES[d.cloud]} "
                           "has no AWS role to read it, so every request that needs it would fail",
                           "`from: {config: KEY}` (a Pulumi secret), or a 'file' or 'env' source")


def check_sizes(ctx: StackContext) -> None:
    d = ctx.deployment
    shape = {"aws": (AWS_SIZE, "an EC2 instance type such as t3.medium"),
             "hcloud": (HCLOUD_SIZE, "a Hetzner server type such as cx23")}.get(d.cloud)
    if shape is None:
        return  # the lab ignores sizes
    pattern, expected = shape
    sizes = [("proxy.size", d.proxy.size)] + [(f"agents[{i}].size", a.size) for i, a in enumerate(d.agents)]
    for key_path, size in sizes:
        if size is not None and not pattern.match(size):
            raise ctx.fail(key_path, f"{size!r} is not a size {CLOUD_NAMES[d.cloud]} has", expected)


def check_images(ctx: StackContext) -> None:
    """`ami` is an AWS image id, `image` a Hetzner image name: another cloud's key would
    be ignored silently, and the hosts would boot something else than asked."""
    d = ctx.deployment
    if d.ami is not None and d.cloud != "aws":
        raise ctx.fail("ami", f"is an AWS image, but this stack runs on {CLOUD_NAMES[d.cloud]}",
                       "no ami" + (" (image: a Hetzner image name)" if d.cloud == "hcloud" else ""))
    if d.image is not None and d.cloud != "hcloud":
        raise ctx.fail("image", f"is a Hetzner image, but this stack runs on {CLOUD_NAMES[d.cloud]}",
                       "no image" + (" (ami: an AMI id)" if d.cloud == "aws" else ""))
    if d.ami is not None and not re.fullmatch(r"ami-[0-9a-f]{8,17}", d.ami):
        raise ctx.fail("ami", f"{d.ami!r} is not an AMI id", "ami- and 8 to 17 hex digits, e.g. ami-0abcdef1234567890")


def check_aws(ctx: StackContext) -> None:
    d = ctx.deployment
    if not AWS_REGION.match(d.region):
        raise ctx.fail("region", f"{d.region!r} is not an AWS region", "an AWS region such as us-east-1")
    provider_region = ctx.config.get("aws:region")
    if provider_region and provider_region != d.region:
        raise ctx.fail("region", f"is {d.region!r} but aws:region is {provider_region!r}", "the same region in both")
    if ctx.stack is None:
        return
    # The proxy's instance role may read only this deployment's parameters, in its region.
    prefix, ca_key = ssm_prefix(ctx.project, ctx.stack), ca_key_parameter_name(ctx.project, ctx.stack)
    for secret_path, _, secret in d.agent_secrets():
        ref = secret.source
        if ref is None or ref.type != "aws_ssm":
            continue
        key_path = f"{secret_path}.source"
        if not ref.name.startswith(prefix):
            raise ctx.fail(f"{key_path}.name", f"{ref.name!r} is outside this deployment's parameter path, so "
                           "the proxy's instance role cannot read it", f"a parameter under {prefix} encrypted with "
                           f"alias/{ctx.project}-{ctx.stack}, or `from: {{config: KEY}}`")
        if ref.name == ca_key:
            raise ctx.fail(f"{key_path}.name", "is the proxy's CA key",
                           "a credential parameter (the CA key is never injected into requests)")
        if ref.region not in (None, d.region):
            raise ctx.fail(f"{key_path}.region", f"is {ref.region!r}, but the proxy's instance role reads "
                           f"parameters in {d.region!r} only", f"{d.region} or no region")


HCLOUD_FINGERPRINT = re.compile(r"^([0-9a-f]{2}:){15}[0-9a-f]{2}$")


def check_hcloud_ssh_keys(ctx: StackContext) -> None:
    """Named SSH keys exist in the project: with HCLOUD_TOKEN, asked of the Hetzner API
    (hcloud-python ssh_keys.get_by_fingerprint / get_by_name); offline the program looks
    them up at `pulumi up` (and `plan` says it did not)."""
    import os

    d = ctx.deployment
    if not d.hcloud_ssh_keys:
        return
    if d.cloud != "hcloud":
        raise ctx.fail("hcloudSshKeys", f"names Hetzner SSH keys, but this stack runs on {CLOUD_NAMES[d.cloud]}",
                       "no hcloudSshKeys (adminSshKeys are what the hosts trust)")
    token = os.environ.get("HCLOUD_TOKEN")
    if not token:
        return
    from hcloud import APIException, Client

    endpoint = os.environ.get("HCLOUD_ENDPOINT")
    client = Client(token=token, application_name="agentctl", **({"api_endpoint": endpoint} if endpoint else {}))
    for i, ref in enumerate(d.hcloud_ssh_keys):
        by = "fingerprint" if HCLOUD_FINGERPRINT.match(ref) else "name"
        try:
            found = (client.ssh_keys.get_by_fingerprint(ref) if by == "fingerprint"
                     else client.ssh_keys.get_by_name(ref))
        except APIException as exc:
            raise ctx.fail(f"hcloudSshKeys[{i}]", f"the Hetzner API did not answer ({exc.code}: {exc.message})",
                           "a valid HCLOUD_TOKEN, or none to leave the look-up to `pulumi up`") from None
        if found is None:
            raise ctx.fail(f"hcloudSshKeys[{i}]", f"no SSH key with {by} {ref!r} in the Hetzner project "
                           "(checked against the Hetzner API)",
                           "the name or fingerprint of a key `hcloud ssh-key list` shows, or leave it out "
                           "and let agentctl create the admin keys")


def check_aws_policy_size(ctx: StackContext) -> None:
    """AWS: the proxy's policy travels as one SSM parameter (agentctl/policy_parameter.py),
    at most 8 KB packed; say how many agents fit, as for user-data."""
    from agentctl import policy_parameter
    from agentctl.userdata import _agents_that_fit

    d = ctx.deployment
    if ctx.stack is None:
        return

    def packed(n: int) -> int:
        return len(policy_parameter.packed_policy(d.model_copy(update={"agents": d.agents[:n]}),
                                                  ctx.project, ctx.stack))

    size = packed(len(d.agents))
    if size <= policy_parameter.SSM_ADVANCED_LIMIT:
        return
    fits = _agents_that_fit(len(d.agents), lambda n: packed(n) <= policy_parameter.SSM_ADVANCED_LIMIT)
    raise ctx.fail("agents", f"the proxy's policy is {size} bytes packed with {len(d.agents)} agents, and its SSM "
                   f"parameter holds {policy_parameter.SSM_ADVANCED_LIMIT}; at most {fits} fit",
                   f"at most {fits} agents (or fewer rules) per stack on aws: split the agents into several stacks")


def check_hcloud(ctx: StackContext) -> None:
    from agentctl import hcloud_catalog  # the server types and locations Hetzner offers

    d = ctx.deployment
    try:
        found = hcloud_catalog.problems(d)
    except Exception as exc:  # the live catalogue: hcloud's APIException, a network error
        raise ctx.fail("region", f"cannot be checked against the Hetzner API ({type(exc).__name__}: {exc})",
                       "a valid HCLOUD_TOKEN (and HCLOUD_ENDPOINT), or neither to use the built-in list") from None
    for path, what, expected in found:
        raise ctx.fail(path, what, expected)
    if not d.network.admin_cidrs:
        raise ctx.fail("network.adminCidrs", "is empty, but on Hetzner the proxy's secrets and CA key are pushed "
                       "over SSH from an admin address", "at least one CIDR of the machine that runs `pulumi up`")


COMMON: list[Check] = [check_host_names, check_host_numbers, check_secret_names, check_backups,
                       check_ssm_sources_cloud, check_sizes, check_images, check_hcloud_ssh_keys]
BY_CLOUD: dict[str, list[Check]] = {"aws": [check_aws, check_aws_policy_size], "hcloud": [check_hcloud], "lab": []}


def register(cloud: str, check: Check) -> None:
    """Add a cloud's own check (e.g. its catalog of server types and locations)."""
    BY_CLOUD[cloud].append(check)


def check_stack(ctx: StackContext) -> None:
    for check in [*COMMON, *BY_CLOUD[ctx.deployment.cloud]]:
        check(ctx)


def require_pulumi_cloud(deployment: Deployment, source: str) -> None:
    """Not a config error but a command's: the lab stack is valid, only not for Pulumi."""
    if deployment.cloud == "lab":
        raise ConfigError(source, f"{NAMESPACE}:cloud", "'lab' is run by `agentctl lab up`, not by Pulumi",
                          "aws or hcloud for `pulumi up` and `agentctl plan`")
