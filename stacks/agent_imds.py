"""Close an agent's instance metadata service once cloud-init no longer needs it.

On EC2, cloud-init reads user-data from IMDS: an agent launched with the endpoint
disabled boots with no users, no hardening and no agent. So an agent launches with
IMDSv2 required (hop limit 1, no tags, no instance profile: IMDS holds no credential),
and this dynamic resource, one per agent, closes the endpoint once the host converged:

1. wait until cloud-init's final message for that host, "agentctl: agent host NAME
   converged after N s" (agentctl.render), is on the instance's serial console. The
   console needs no network path to the private host: `ec2:GetConsoleOutput` with
   `Latest=True` (Nitro) reads it through the EC2 API;
2. `ec2:ModifyInstanceMetadataOptions(HttpEndpoint=disabled)`, and wait until EC2
   reports the change applied.

It runs inside `pulumi up` (no provider plugin) with the operator's AWS credentials
(boto3's default chain). No signal within the timeout fails the deployment, loudly,
and leaves the endpoint as launched (IMDSv2 only); the next `pulumi up` waits again.
"""
from __future__ import annotations

import time
from typing import Any, Callable

import pulumi
from pulumi.dynamic import CreateResult, DiffResult, ReadResult, ResourceProvider, UpdateResult

from agentctl import render
from agentctl.errors import AgentctlError

DEFAULT_TIMEOUT_SECONDS = 45 * 60  # packages, the proxy's bootstrap grants, the agent runtime
POLL_SECONDS = 15
APPLY_TIMEOUT_SECONDS = 300
# What EC2 answers `Latest=True` on an instance type that is not Nitro-based.
LATEST_UNSUPPORTED = {"UnsupportedOperation", "InvalidParameterCombination"}


# Looked up at call time, so tests can run the waits on a fake clock.
clock: Callable[[], float] = time.monotonic
sleep: Callable[[float], None] = time.sleep


class ImdsCloseError(AgentctlError):
    exit_code = 1


def converged_marker(host: str) -> str:
    """The start of cloud-init's final_message for this agent."""
    return render.converged_marker("agent", host)


def console_text(ec2: Any, instance_id: str) -> str:
    from botocore.exceptions import ClientError

    try:
        reply = ec2.get_console_output(InstanceId=instance_id, Latest=True)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in LATEST_UNSUPPORTED:
            raise
        reply = ec2.get_console_output(InstanceId=instance_id)  # the buffered output instead
    return reply.get("Output") or ""  # botocore has already decoded the base64


def wait_for_convergence(ec2: Any, instance_id: str, marker: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                         poll: float = POLL_SECONDS) -> None:
    deadline = clock() + timeout
    while marker not in console_text(ec2, instance_id):
        if clock() >= deadline:
            raise ImdsCloseError(
                f"{instance_id}: no {marker.strip()!r} on the serial console after {int(timeout)} s; "
                "IMDS left enabled (IMDSv2 only, no credentials in it). Look at "
                f"`aws ec2 get-console-output --latest --instance-id {instance_id}`, then run `pulumi up` again")
        sleep(poll)


def metadata_options(ec2: Any, instance_id: str) -> dict[str, Any]:
    reply = ec2.describe_instances(InstanceIds=[instance_id])
    return reply["Reservations"][0]["Instances"][0].get("MetadataOptions", {})


def close_endpoint(ec2: Any, instance_id: str, *, timeout: float = APPLY_TIMEOUT_SECONDS,
                   poll: float = 5) -> dict[str, Any]:
    """Disable the endpoint (other options stay as launched); return the applied options."""
    ec2.modify_instance_metadata_options(InstanceId=instance_id, HttpEndpoint="disabled")
    deadline = clock() + timeout
    while True:
        options = metadata_options(ec2, instance_id)
        if options.get("HttpEndpoint") == "disabled" and options.get("State", "applied") == "applied":
            return options
        if clock() >= deadline:
            raise ImdsCloseError(f"{instance_id}: IMDS endpoint still {options.get('HttpEndpoint')!r} "
                                 f"({options.get('State')}) {int(timeout)} s after disabling it")
        sleep(poll)


def _client(region: str) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.client("ec2", region_name=region, config=Config(retries={"mode": "standard", "max_attempts": 8}))


def _outs(props: dict[str, Any]) -> dict[str, Any]:
    return {**props, "httpEndpoint": "disabled"}


class AgentImdsProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        ec2 = _client(props["region"])
        wait_for_convergence(ec2, props["instanceId"], props["marker"], timeout=float(props["timeoutSeconds"]))
        close_endpoint(ec2, props["instanceId"])
        return CreateResult(id_=f"{props['instanceId']}/imds", outs=_outs(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # `pulumi refresh` records what EC2 says, so a re-opened endpoint shows as drift.
        options = metadata_options(_client(props["region"]), props["instanceId"])
        return ReadResult(id_=id_, outs={**props, "httpEndpoint": options.get("HttpEndpoint")})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new instance (replaced for new user-data) must converge and be closed again.
        replaces = [k for k in ("instanceId", "region") if olds.get(k) != news.get(k)]
        reopened = olds.get("httpEndpoint") != "disabled"
        return DiffResult(changes=bool(replaces) or reopened, replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Same instance, endpoint found open again: it converged long ago, close it now.
        close_endpoint(_client(news["region"]), news["instanceId"])
        return UpdateResult(outs=_outs(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # The endpoint stays closed; a replaced or terminated instance takes it along.
        return None


class AgentImds(pulumi.dynamic.Resource, module="agentctl", name="AgentImds"):
    """Closes the IMDS endpoint of one agent instance after it has converged."""

    def __init__(self, name: str, *, instance_id: pulumi.Input[str], region: str, host: str,
                 timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS, opts: pulumi.ResourceOptions | None = None):
        props = {"instanceId": instance_id, "region": region, "host": host, "timeoutSeconds": timeout_seconds,
                 "marker": converged_marker(host), "httpEndpoint": None}
        super().__init__(AgentImdsProvider(), name, props, opts)
