"""The AWS backend against moto in server mode on loopback, through the real boto3 calls.

moto has no CreateReplaceRootVolumeTask (its server answers 500), so these tests prove
the fallback swap end to end, and that the primary call's failure leads to it; the
primary path's polling is proven with botocore's Stubber (the API's recorded shapes)."""
from __future__ import annotations

import urllib.request

import boto3
import pytest
from botocore.config import Config
from botocore.stub import Stubber
from moto.server import ThreadedMotoServer

from agentctl.upgrade import engine
from agentctl.upgrade.backends.aws import PROJECT_TAG, AwsBackend, AwsError

STACK = "prod"


@pytest.fixture(scope="module")
def endpoint():
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


@pytest.fixture
def ec2(endpoint):
    client = boto3.client("ec2", region_name="us-east-1", endpoint_url=endpoint, aws_access_key_id="testing",
                          aws_secret_access_key="testing",
                          config=Config(retries={"max_attempts": 1, "mode": "standard"}))
    urllib.request.urlopen(urllib.request.Request(f"{endpoint}/moto-api/reset", method="POST")).read()
    return client


def launch(ec2, host: str = "scout", stack: str = STACK) -> str:
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    inst = ec2.run_instances(ImageId=ami, MinCount=1, MaxCount=1, InstanceType="t3.medium", TagSpecifications=[
        {"ResourceType": "instance", "Tags": [{"Key": "agentctl:stack", "Value": stack},
                                              {"Key": "agentctl:role", "Value": f"agent-{host}"}]}])
    return inst["Instances"][0]["InstanceId"]


def tags_of(resource: dict) -> dict[str, str]:
    return {t["Key"]: t["Value"] for t in resource.get("Tags", [])}


def backend(ec2) -> AwsBackend:
    return AwsBackend(ec2, STACK, delay=0.1, max_attempts=50)


def tags(run_id: str = "20261205T091327Z-abcdef") -> dict[str, str]:
    return engine.snapshot_tags(STACK, "scout", "1.0.0", "1.1.0", run_id)


def test_snapshot_of_the_root_volume_with_the_projects_tags(ec2):
    iid = launch(ec2)
    launch(ec2, host="other")
    b = backend(ec2)
    snap_id = b.snapshot("scout", tags())
    b.wait(snap_id)
    [snap] = ec2.describe_snapshots(SnapshotIds=[snap_id])["Snapshots"]
    root = b.root_volume(b.instance("scout"))
    assert snap["VolumeId"] == root and snap["State"] == "completed"
    assert b.instance("scout")["InstanceId"] == iid
    assert tags_of(snap) == {PROJECT_TAG: engine.PROJECT, "agentctl:stack": STACK, "agentctl:host": "scout",
                             "agentctl:from": "1.0.0", "agentctl:to": "1.1.0", "agentctl:time": "20261205T091327Z",
                             "agentctl:run-id": "20261205T091327Z-abcdef"}
    [listed] = b.list_snapshots("scout")
    assert (listed.id, listed.run_id) == (snap_id, "20261205T091327Z-abcdef")


def test_an_unknown_host_is_an_error(ec2):
    launch(ec2)
    with pytest.raises(AwsError, match="0 instances tagged agentctl:stack=prod, agentctl:role=agent-nope"):
        backend(ec2).instance("nope")


def test_restore_falls_back_to_the_volume_swap_and_keeps_the_old_root(ec2):
    iid = launch(ec2)
    b = backend(ec2)
    old_root = b.root_volume(b.instance("scout"))
    snap_id = b.snapshot("scout", tags())
    b.wait(snap_id)
    b.restore("scout", snap_id)  # moto: CreateReplaceRootVolumeTask fails -> the swap
    inst = b.instance("scout")
    new_root = b.root_volume(inst)
    assert new_root != old_root and inst["State"]["Name"] == "running"
    [vol] = ec2.describe_volumes(VolumeIds=[new_root])["Volumes"]
    assert vol["SnapshotId"] == snap_id and tags_of(vol)["agentctl:restore-of"] == snap_id
    assert vol["Attachments"][0]["InstanceId"] == iid and vol["Attachments"][0]["Device"] == inst["RootDeviceName"]
    [old] = ec2.describe_volumes(VolumeIds=[old_root])["Volumes"]
    assert old["State"] == "available" and tags_of(old)["agentctl:replaced-by-restore-of"] == snap_id
    # Resumed after the swap: it sees the restored root and only makes sure it runs.
    b.restore("scout", snap_id)
    assert b.root_volume(b.instance("scout")) == new_root
    assert len(ec2.describe_volumes(Filters=[{"Name": "tag:agentctl:restore-of", "Values": [snap_id]}])["Volumes"]) == 1


def test_restore_resumed_with_the_instance_stopped_and_the_new_volume_made(ec2):
    launch(ec2)
    b = backend(ec2)
    snap_id = b.snapshot("scout", tags())
    b.wait(snap_id)
    inst = b.instance("scout")
    ec2.stop_instances(InstanceIds=[inst["InstanceId"]])
    made = b._restore_volume("scout", snap_id, inst["Placement"]["AvailabilityZone"], "gp3")  # then killed
    b.restore("scout", snap_id)
    assert b.root_volume(b.instance("scout")) == made


def test_retention_sees_and_deletes_only_the_projects_snapshots(ec2):
    launch(ec2)
    b = backend(ec2)
    root = b.root_volume(b.instance("scout"))
    ours = [b.snapshot("scout", tags(f"2026120{i}T000000Z-00000{i}")) for i in range(3)]
    foreign = ec2.create_snapshot(VolumeId=root, TagSpecifications=[{"ResourceType": "snapshot", "Tags": [
        {"Key": "agentctl:stack", "Value": STACK}, {"Key": "agentctl:host", "Value": "scout"}]}])["SnapshotId"]
    launch(ec2, stack="staging")
    other_stack = AwsBackend(ec2, "staging").snapshot("scout", {**tags(), "stack": "staging"})
    assert {s.id for s in b.list_snapshots("scout")} == set(ours)
    with pytest.raises(AwsError, match="refusing to delete"):
        b.delete(foreign)
    with pytest.raises(AwsError, match="refusing to delete"):
        b.delete(other_stack)
    b.delete(ours[0])
    left = {s["SnapshotId"] for s in ec2.describe_snapshots(OwnerIds=["self"])["Snapshots"]}
    assert ours[0] not in left and {ours[1], ours[2], foreign, other_stack} <= left


def test_primary_path_replace_root_volume_task_is_polled_to_success():
    client = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    b = AwsBackend(client, STACK, delay=0, max_attempts=5)
    with Stubber(client) as stub:
        stub.add_response("create_replace_root_volume_task",
                          {"ReplaceRootVolumeTask": {"ReplaceRootVolumeTaskId": "replacevol-1", "TaskState": "pending"}},
                          {"InstanceId": "i-1", "SnapshotId": "snap-1", "TagSpecifications": [
                              {"ResourceType": "replace-root-volume-task",
                               "Tags": [{"Key": PROJECT_TAG, "Value": engine.PROJECT}]}]})
        for state in ("in-progress", "succeeded"):
            stub.add_response("describe_replace_root_volume_tasks",
                              {"ReplaceRootVolumeTasks": [{"ReplaceRootVolumeTaskId": "replacevol-1", "TaskState": state}]},
                              {"ReplaceRootVolumeTaskIds": ["replacevol-1"]})
        b._replace_root_volume("i-1", "snap-1")
        stub.assert_no_pending_responses()


def test_primary_path_failed_task_is_an_error_not_a_success():
    client = boto3.client("ec2", region_name="us-east-1", aws_access_key_id="x", aws_secret_access_key="x")
    b = AwsBackend(client, STACK, delay=0, max_attempts=5)
    with Stubber(client) as stub:
        stub.add_response("create_replace_root_volume_task",
                          {"ReplaceRootVolumeTask": {"ReplaceRootVolumeTaskId": "replacevol-1"}})
        stub.add_response("describe_replace_root_volume_tasks",
                          {"ReplaceRootVolumeTasks": [{"ReplaceRootVolumeTaskId": "replacevol-1", "TaskState": "failed"}]})
        with pytest.raises(AwsError, match="ended failed"):
            b._replace_root_volume("i-1", "snap-1")


def test_an_unsupported_replace_root_volume_falls_back(ec2, monkeypatch):
    """The API's own refusal (a ClientError code) also leads to the swap."""
    from botocore.exceptions import ClientError
    launch(ec2)
    b = backend(ec2)
    snap_id = b.snapshot("scout", tags())
    b.wait(snap_id)
    swapped = []
    monkeypatch.setattr(b, "_replace_root_volume", lambda *a: (_ for _ in ()).throw(ClientError(
        {"Error": {"Code": "UnsupportedOperation", "Message": "not for this instance type"}}, "CreateReplaceRootVolumeTask")))
    monkeypatch.setattr(b, "_swap_root_volume", lambda *a: swapped.append(a[2]))
    b.restore("scout", snap_id)
    assert swapped == [snap_id]
    monkeypatch.setattr(b, "_replace_root_volume", lambda *a: (_ for _ in ()).throw(ClientError(
        {"Error": {"Code": "IncorrectState", "Message": "busy"}}, "CreateReplaceRootVolumeTask")))
    with pytest.raises(ClientError):
        b.restore("scout", snap_id)
    assert swapped == [snap_id]  # any other error stops: never two restores at once
