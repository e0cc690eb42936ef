"""AgentImds, the dynamic resource that closes an agent's IMDS once it has converged,
against the EC2 API: moto for the instance and its metadata options; the serial
console (moto's is a fixed Xen boot log) injected at the boto3 client boundary."""
from __future__ import annotations

import base64
import subprocess

import boto3
import pytest
import yaml
from botocore.awsrequest import AWSResponse
from botocore.exceptions import ClientError
from botocore.stub import Stubber
from moto import mock_aws

from agentctl.ca import new_ca
from agentctl.render import render_hosts
from agentctl.stackfile import load
from agentctl_stacks import agent_imds
from tests.test_stacks_harness import ROOT

pytestmark = pytest.mark.slow  # over 5 s (the fast tier: ./dev test -m "not lab and not slow")

REGION = "us-east-1"
LAUNCH = {"HttpEndpoint": "enabled", "HttpTokens": "required", "HttpPutResponseHopLimit": 1,
          "InstanceMetadataTags": "disabled"}
BOOT_LOG = "[    0.000000] Linux version 6.8.0-1012-aws\nCloud-init v. 24.4 running 'init' ...\n"
CONVERGED = ("agentctl: agent host scout converge succeeded\nCloud-init v. 24.4 finished\n"
             "agentctl: agent host scout converged after 312.4 s\n")
# cloud-init prints its final message even when converge failed: that is no success.
FAILED = ("agentctl: agent host scout converge failed (exit 100, line 57: apt-get install -y hermes)\n"
          "Cloud-init v. 24.4 finished\nagentctl: agent host scout converged after 612.0 s\n")


class Console:
    """Serves successive console outputs to get_console_output, as EC2 would (base64:
    botocore decodes it after the call, so the decoding is exercised too)."""

    def __init__(self, client, *outputs: str):
        self.outputs, self.calls = list(outputs), []
        client.meta.events.register("before-parameter-build.ec2.GetConsoleOutput", self._record)
        client.meta.events.register("before-call.ec2.GetConsoleOutput", self._answer)

    def _record(self, params, **_):
        self.calls.append(dict(params))

    def _answer(self, **_):
        text = self.outputs.pop(0) if len(self.outputs) > 1 else self.outputs[0]
        return AWSResponse("https://ec2.amazonaws.com", 200, {}, None), {
            "InstanceId": self.calls[-1]["InstanceId"], "Output": base64.b64encode(text.encode()).decode()}


class FakeClock:
    def __init__(self):
        self.now, self.sleeps = 0.0, []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def ec2(monkeypatch):
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    with mock_aws():
        client = boto3.client("ec2", region_name=REGION)
        monkeypatch.setattr(agent_imds, "_client", lambda region, creds=None: client)
        yield client


@pytest.fixture
def instance_id(ec2):
    ami = ec2.describe_images(Owners=["amazon"])["Images"][0]["ImageId"]
    return ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.medium",
                             MetadataOptions=LAUNCH)["Instances"][0]["InstanceId"]


def endpoint(ec2, instance_id) -> str:
    return agent_imds.metadata_options(ec2, instance_id)["HttpEndpoint"]


def props(instance_id, timeout=600):
    return {"instanceId": instance_id, "region": REGION, "host": "scout", "timeoutSeconds": timeout,
            "marker": agent_imds.converged_marker("scout"), "httpEndpoint": None}


def test_closes_the_endpoint_only_after_the_host_converged(ec2, instance_id, monkeypatch):
    console = Console(ec2, "", BOOT_LOG, BOOT_LOG + CONVERGED)
    clock = FakeClock()
    states = []
    monkeypatch.setattr(agent_imds, "sleep", lambda s: (states.append(endpoint(ec2, instance_id)), clock.sleep(s)))
    monkeypatch.setattr(agent_imds, "clock", clock)

    result = agent_imds.AgentImdsProvider().create(props(instance_id))

    assert states == ["enabled", "enabled"], "IMDS must stay open while cloud-init may still read it"
    assert endpoint(ec2, instance_id) == "disabled"
    assert result.outs["httpEndpoint"] == "disabled" and result.id == f"{instance_id}/imds"
    assert [c["Latest"] for c in console.calls] == [True, True, True], "Nitro: the latest output, not the buffer"
    assert {c["InstanceId"] for c in console.calls} == {instance_id}


def test_no_signal_fails_loudly_and_leaves_imdsv2(ec2, instance_id, monkeypatch):
    Console(ec2, BOOT_LOG + "agentctl: agent host scribe converged after 9 s\n")  # another host's message
    clock = FakeClock()
    monkeypatch.setattr(agent_imds, "sleep", clock.sleep)
    monkeypatch.setattr(agent_imds, "clock", clock)

    with pytest.raises(agent_imds.ImdsCloseError) as info:
        agent_imds.AgentImdsProvider().create(props(instance_id, timeout=120))

    message = str(info.value)
    assert instance_id in message and "120 s" in message and "get-console-output" in message
    assert clock.now >= 120 and endpoint(ec2, instance_id) == "enabled"
    assert agent_imds.metadata_options(ec2, instance_id)["HttpTokens"] == "required"


def test_refresh_sees_a_reopened_endpoint_and_update_closes_it(ec2, instance_id):
    provider = agent_imds.AgentImdsProvider()
    state = {**props(instance_id), "httpEndpoint": "disabled"}
    assert not provider.diff("id", state, props(instance_id)).changes
    # Someone re-enabled it by hand: refresh records it, the next up closes it without waiting.
    refreshed = provider.read("id", state).outs
    assert refreshed["httpEndpoint"] == "enabled"
    assert provider.diff("id", refreshed, props(instance_id)).changes
    provider.update("id", refreshed, props(instance_id))
    assert endpoint(ec2, instance_id) == "disabled"


def test_a_replaced_instance_is_waited_for_again():
    diff = agent_imds.AgentImdsProvider().diff("id", {**props("i-old"), "httpEndpoint": "disabled"}, props("i-new"))
    assert diff.changes and diff.replaces == ["instanceId"]


def test_exact_api_calls_and_non_nitro_fallback(monkeypatch):
    """Stubbed end to end: the console without Latest when the type is not Nitro-based,
    then one modify call that changes the endpoint and nothing else, then a wait until
    EC2 reports the change applied."""
    client = boto3.client("ec2", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    iid = "i-0123456789abcdef0"
    encoded = base64.b64encode(CONVERGED.encode()).decode()
    with Stubber(client) as stub:
        stub.add_client_error("get_console_output", "UnsupportedOperation", expected_params={
            "InstanceId": iid, "Latest": True})
        stub.add_response("get_console_output", {"InstanceId": iid, "Output": encoded}, {"InstanceId": iid})
        stub.add_response("modify_instance_metadata_options",
                          {"InstanceId": iid, "InstanceMetadataOptions": {"State": "pending", "HttpEndpoint": "disabled"}},
                          {"InstanceId": iid, "HttpEndpoint": "disabled"})
        for state in ("pending", "applied"):
            stub.add_response("describe_instances", {"Reservations": [{"Instances": [{"InstanceId": iid,
                              "MetadataOptions": {"State": state, "HttpEndpoint": "disabled"}}]}]},
                              {"InstanceIds": [iid]})
        monkeypatch.setattr(agent_imds, "sleep", lambda s: None)
        agent_imds.wait_for_convergence(client, iid, agent_imds.converged_marker("scout"))
        options = agent_imds.close_endpoint(client, iid)
        stub.assert_no_pending_responses()
    assert options == {"State": "applied", "HttpEndpoint": "disabled"}


def test_other_console_errors_are_not_swallowed():
    client = boto3.client("ec2", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
    with Stubber(client) as stub:
        stub.add_client_error("get_console_output", "UnauthorizedOperation")
        with pytest.raises(ClientError, match="UnauthorizedOperation"):
            agent_imds.console_text(client, "i-0123456789abcdef0")


def test_a_failed_converge_fails_with_its_reason_and_leaves_imdsv2(ec2, instance_id, monkeypatch):
    Console(ec2, BOOT_LOG, BOOT_LOG + FAILED)
    monkeypatch.setattr(agent_imds, "sleep", FakeClock().sleep)
    with pytest.raises(agent_imds.ImdsCloseError) as info:
        agent_imds.AgentImdsProvider().create(props(instance_id))
    assert "converge failed (exit 100, line 57: apt-get install -y hermes)" in str(info.value)
    assert endpoint(ec2, instance_id) == "enabled"


def test_cloud_init_done_without_a_result_fails(ec2, instance_id, monkeypatch):
    """The original defect: the final message alone closed IMDS on a host that never converged."""
    Console(ec2, BOOT_LOG + "Cloud-init v. 24.4 finished\nagentctl: agent host scout converged after 9 s\n")
    clock = FakeClock()
    monkeypatch.setattr(agent_imds, "sleep", clock.sleep)
    monkeypatch.setattr(agent_imds, "clock", clock)
    with pytest.raises(agent_imds.ImdsCloseError, match="converge reported no result"):
        agent_imds.AgentImdsProvider().create(props(instance_id))
    assert clock.now < 600 and endpoint(ec2, instance_id) == "enabled"


def _agent_converge(tmp_path, body: str) -> subprocess.CompletedProcess:
    """The rendered agent converge script with its steps replaced by body, run by bash."""
    (host,) = [h for h in render_hosts(load(ROOT, "example-aws"), new_ca("t")[1].decode(), stack="example-aws")
               if h.role == "agent"]
    files = {f["path"]: f["content"] for f in yaml.safe_load(host.user_data)["write_files"]}
    script = files["/usr/local/sbin/agentctl-converge"]
    head, rest = script.split("mkdir -p /var/lib/agentctl /run/agentctl\n", 1)
    tail = rest[rest.index("date -u +%FT%TZ > /var/lib/agentctl/converged"):]
    text = (head + body + "\n" + tail).replace("/var/lib/agentctl", str(tmp_path))
    (tmp_path / "converge").write_text(text)
    return subprocess.run(["bash", str(tmp_path / "converge")], capture_output=True, text=True, timeout=30)


def test_converge_reports_success_only_after_every_step(tmp_path):
    ok = _agent_converge(tmp_path, "true")
    assert ok.returncode == 0 and agent_imds.converge_result(ok.stdout, agent_imds.converged_marker("scout")) == "succeeded"
    (tmp_path / "converged").unlink()
    bad = _agent_converge(tmp_path, "true\nfalse\ntrue")
    result = agent_imds.converge_result(bad.stdout, agent_imds.converged_marker("scout"))
    assert bad.returncode != 0 and result.startswith("failed (exit 1, line ") and result.endswith(": false)")
    assert not (tmp_path / "converged").exists()


def test_marker_is_what_the_rendered_user_data_prints():
    """The waiter and agentctl.render agree on the result line, host by host, and every
    boot after a success repeats it (the console after converge's one reboot)."""
    deployment = load(ROOT, "example-aws")
    for host in render_hosts(deployment, new_ca("t")[1].decode(), stack="example-aws"):
        if host.role == "agent":
            doc = yaml.safe_load(host.user_data)
            marker = agent_imds.converged_marker(host.name)
            converge = next(f["content"] for f in doc["write_files"] if f["path"].endswith("agentctl-converge"))
            assert f"result_prefix='{marker}'" in converge
            assert any(f"echo '{marker}succeeded'" in cmd[-1] for cmd in doc["bootcmd"])
            assert not doc["final_message"].startswith(marker)


def test_credentials_follow_the_stack_provider_config(monkeypatch):
    """Keys, then each assumeRoles entry in order: the session is the last role's."""
    monkeypatch.delenv("AWS_PROFILE", raising=False)
    with mock_aws():
        iam = boto3.client("iam", region_name=REGION, aws_access_key_id="x", aws_secret_access_key="x")
        arn = iam.create_role(RoleName="deployer", AssumeRolePolicyDocument="{}")["Role"]["Arn"]
        creds = {"accessKey": "AKIAIOSFODNN7EXAMPLE", "secretKey": "s3cret",
                 "assumeRoles": [{"roleArn": arn, "sessionName": "ops", "duration": "1h"}]}
        who = agent_imds.session(REGION, creds).client("sts").get_caller_identity()
        assert who["Arn"].endswith(":assumed-role/deployer/ops"), who["Arn"]
        plain = agent_imds.session(REGION, {"accessKey": "AKIAIOSFODNN7EXAMPLE", "secretKey": "s3cret"})
        assert plain.get_credentials().access_key == "AKIAIOSFODNN7EXAMPLE"


def test_a_named_profile_is_used(tmp_path, monkeypatch):
    (tmp_path / "credentials").write_text("[prod]\naws_access_key_id = AKIAPRODEXAMPLE\naws_secret_access_key = x\n")
    for var in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_PROFILE"):
        monkeypatch.delenv(var, raising=False)
    s = agent_imds.session(REGION, {"profile": "prod", "sharedCredentialsFiles": [str(tmp_path / "credentials")]})
    assert s.get_credentials().access_key == "AKIAPRODEXAMPLE"
