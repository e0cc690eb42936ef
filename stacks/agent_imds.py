"""Close an agent's instance metadata service once cloud-init no longer needs it.

On EC2, cloud-init reads user-data from IMDS: an agent launched with the endpoint
disabled boots with no users, no hardening and no agent. So an agent launches with
IMDSv2 required (hop limit 1, no tags, no instance profile: IMDS holds no credential),
and this dynamic resource, one per agent, closes the endpoint once the host converged:

1. wait until the host's converge script reports its result on the instance's serial
   console: "agentctl: agent host NAME converge succeeded" (printed only as the last
   step of a complete run, and again on every later boot) or "... converge failed (exit
   N, line L: CMD)" (agentctl.render, templates/converge.sh.j2). cloud-init's own final
   message prints even when a step failed, so it only tells that cloud-init is done. The
   console needs no network path to the private host: `ec2:GetConsoleOutput` with
   `Latest=True` (Nitro) reads it through the EC2 API;
2. `ec2:ModifyInstanceMetadataOptions(HttpEndpoint=disabled)`, and wait until EC2
   reports the change applied.

A host that failed, or finished cloud-init without a result, fails `pulumi up` with the
console's line and leaves IMDS as launched (IMDSv2 only, no credential in it); so does
no result within the timeout. The next `pulumi up` waits again.

It runs inside `pulumi up` (no provider plugin) with the credentials pulumi-aws uses
for the stack: `aws:profile`, `aws:accessKey`/`secretKey`/`token`,
`aws:sharedCredentialsFiles`/`sharedConfigFiles`, and `aws:assumeRoles` (or the older
`aws:assumeRole`) assumed in order; with none of them, boto3's default chain, which
reads the same environment variables pulumi-aws does.
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
    """The start of the line converge prints on this agent's console when it ends."""
    return render.converge_result_marker("agent", host)


def console_text(ec2: Any, instance_id: str) -> str:
    from botocore.exceptions import ClientError

    try:
        reply = ec2.get_console_output(InstanceId=instance_id, Latest=True)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") not in LATEST_UNSUPPORTED:
            raise
        reply = ec2.get_console_output(InstanceId=instance_id)  # the buffered output instead
    return reply.get("Output") or ""  # botocore has already decoded the base64


def converge_result(text: str, marker: str) -> str | None:
    """The last result line for marker on the console: 'succeeded', 'failed (...)', or None."""
    results = [line.split(marker, 1)[1].strip() for line in text.splitlines() if marker in line]
    return results[-1] if results else None


def wait_for_convergence(ec2: Any, instance_id: str, marker: str, *, timeout: float = DEFAULT_TIMEOUT_SECONDS,
                         poll: float = POLL_SECONDS) -> None:
    deadline = clock() + timeout
    look = f"`aws ec2 get-console-output --latest --instance-id {instance_id}`"
    finished_polls = 0
    while True:
        text = console_text(ec2, instance_id)
        result = converge_result(text, marker)
        if result == render.CONVERGE_OK:
            return
        if result is not None:
            raise ImdsCloseError(f"{instance_id}: {marker}{result}; IMDS left enabled (IMDSv2 only, no credentials "
                                 f"in it). Look at {look}, fix, and run `pulumi up` again")
        host = marker.split(" host ", 1)[1].split(" ", 1)[0]
        if render.converged_marker("agent", host) in text:
            # cloud-init is done and converge never reported: it did not run, or was killed.
            # One more poll in case the console is still flushing.
            finished_polls += 1
            if finished_polls > 1:
                raise ImdsCloseError(f"{instance_id}: cloud-init finished but converge reported no result; IMDS "
                                     f"left enabled (IMDSv2 only). Look at {look}, then run `pulumi up` again")
        if clock() >= deadline:
            raise ImdsCloseError(
                f"{instance_id}: no {marker.strip()!r} result on the serial console after {int(timeout)} s; "
                f"IMDS left enabled (IMDSv2 only, no credentials in it). Look at {look}, then run `pulumi up` again")
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


def aws_credentials() -> dict[str, Any]:
    """The credential settings of the stack's pulumi-aws provider (its config keys,
    camelCase as in the stack file), for the provider below. Secret ones stay secret."""
    config = pulumi.Config("aws")
    creds: dict[str, Any] = {}
    for key in ("profile",):
        if config.get(key):
            creds[key] = config.get(key)
    for key in ("sharedCredentialsFiles", "sharedConfigFiles"):
        if config.get_object(key):
            creds[key] = list(config.get_object(key))
    for key in ("accessKey", "secretKey", "token"):
        if config.get(key):
            creds[key] = config.require_secret(key)
    roles = config.get_object("assumeRoles") or ([config.get_object("assumeRole")] if config.get_object("assumeRole")
                                                 else [])
    if roles:
        creds["assumeRoles"] = roles
    if config.get_object("assumeRoleWithWebIdentity"):
        raise ValueError("aws:assumeRoleWithWebIdentity is not supported for closing the agents' IMDS; "
                         "use aws:assumeRoles, a profile or keys")
    return creds


def session(region: str, creds: dict[str, Any]) -> Any:
    """A boto3 session with the same identity pulumi-aws has for the stack."""
    import boto3
    import botocore.session

    core = botocore.session.Session()
    if creds.get("sharedCredentialsFiles"):
        core.set_config_variable("credentials_file", creds["sharedCredentialsFiles"][0])
    if creds.get("sharedConfigFiles"):
        core.set_config_variable("config_file", creds["sharedConfigFiles"][0])
    if creds.get("profile"):
        core.set_config_variable("profile", creds["profile"])
    if creds.get("accessKey"):
        core.set_credentials(creds["accessKey"], creds.get("secretKey"), creds.get("token"))
    current = boto3.Session(botocore_session=core, region_name=region)
    for role in creds.get("assumeRoles") or []:
        params = {"RoleArn": role["roleArn"], "RoleSessionName": role.get("sessionName") or "agentctl-imds"}
        if role.get("externalId"):
            params["ExternalId"] = role["externalId"]
        if role.get("policy"):
            params["Policy"] = role["policy"]
        if role.get("duration"):
            params["DurationSeconds"] = _seconds(role["duration"])
        got = current.client("sts").assume_role(**params)["Credentials"]
        current = boto3.Session(aws_access_key_id=got["AccessKeyId"], aws_secret_access_key=got["SecretAccessKey"],
                                aws_session_token=got["SessionToken"], region_name=region)
    return current


def _seconds(duration: str) -> int:
    """pulumi-aws durations: '1h', '30m', '900s' (Go's time.ParseDuration, simple forms)."""
    units = {"h": 3600, "m": 60, "s": 1}
    total, number = 0, ""
    for ch in str(duration):
        if ch.isdigit():
            number += ch
        elif ch in units and number:
            total, number = total + int(number) * units[ch], ""
        else:
            raise ValueError(f"aws:assumeRoles duration {duration!r}: expected e.g. 1h, 30m or 900s")
    return total + int(number or 0)


def _client(region: str, creds: dict[str, Any] | None = None) -> Any:
    from botocore.config import Config

    return session(region, creds or {}).client("ec2", config=Config(retries={"mode": "standard", "max_attempts": 8}))


def _outs(props: dict[str, Any]) -> dict[str, Any]:
    return {**props, "httpEndpoint": "disabled"}


class AgentImdsProvider(ResourceProvider):
    def create(self, props: dict[str, Any]) -> CreateResult:
        ec2 = _client(props["region"], props.get("credentials"))
        wait_for_convergence(ec2, props["instanceId"], props["marker"], timeout=float(props["timeoutSeconds"]))
        close_endpoint(ec2, props["instanceId"])
        return CreateResult(id_=f"{props['instanceId']}/imds", outs=_outs(props))

    def read(self, id_: str, props: dict[str, Any]) -> ReadResult:
        # `pulumi refresh` records what EC2 says, so a re-opened endpoint shows as drift.
        options = metadata_options(_client(props["region"], props.get("credentials")), props["instanceId"])
        return ReadResult(id_=id_, outs={**props, "httpEndpoint": options.get("HttpEndpoint")})

    def diff(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> DiffResult:
        # A new instance (replaced for new user-data) must converge and be closed again.
        replaces = [k for k in ("instanceId", "region") if olds.get(k) != news.get(k)]
        reopened = olds.get("httpEndpoint") != "disabled"
        return DiffResult(changes=bool(replaces) or reopened, replaces=replaces, delete_before_replace=False)

    def update(self, _id: str, olds: dict[str, Any], news: dict[str, Any]) -> UpdateResult:
        # Same instance, endpoint found open again: it converged long ago, close it now.
        close_endpoint(_client(news["region"], news.get("credentials")), news["instanceId"])
        return UpdateResult(outs=_outs(news))

    def delete(self, _id: str, _props: dict[str, Any]) -> None:
        # The endpoint stays closed; a replaced or terminated instance takes it along.
        return None


class AgentImds(pulumi.dynamic.Resource, module="agentctl", name="AgentImds"):
    """Closes the IMDS endpoint of one agent instance after it has converged."""

    def __init__(self, name: str, *, instance_id: pulumi.Input[str], region: str, host: str,
                 credentials: dict[str, Any] | None = None, timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
                 opts: pulumi.ResourceOptions | None = None):
        props = {"instanceId": instance_id, "region": region, "host": host, "timeoutSeconds": timeout_seconds,
                 "marker": converged_marker(host), "httpEndpoint": None}
        if credentials:
            props["credentials"] = credentials
        super().__init__(AgentImdsProvider(), name, props, pulumi.ResourceOptions.merge(opts, pulumi.ResourceOptions(
            additional_secret_outputs=["credentials"])))
